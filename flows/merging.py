"""Multi-task merging benchmark: every merge method with and without LiNeS (λ or β chosen on val,
reported on test), then the report. Runs the whole embedded pipeline up to ``report``.

    prefect deployment run 'merging-benchmark/smoke' --param betas='[0.3, 1.0]' --watch
    python -m flows.merging            # the same, as a plain script (temporary Prefect server)
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._core import BlockPolicy, Experiment, Method, RunOptions, run_flow
from orchestration.records import merging_record

MERGING = Experiment(
    "merging",
    targets=["report"],
    fan_out_groups=["finetune", "finetune_seed"],
    build_record=lambda ctx: merging_record(ctx.workspace, ctx.params),
    keys={
        "tasks": "common.tasks",
        "methods": "merge.methods",
        "lambdas": "merge.lambdas",
        "betas": "merge.betas",
        "alpha_norm": "merge.alpha_norm",
        "block_policy": "merge.block_policy",
        "seed": "common.seed",
        "seeds": "soups.seeds",
    },
)


@flow(name="merging-benchmark", log_prints=True)
def merging_benchmark(
    profile: str | None = "smoke",
    tasks: list[str] | None = None,
    methods: list[Method] | None = None,
    lambdas: list[float] | None = None,
    betas: list[float] | None = None,
    alpha_norm: Literal["l1", "l2"] | None = None,
    block_policy: BlockPolicy | None = None,
    seed: int | None = None,
    seeds: list[int] | None = None,
    params: dict[str, Any] | None = None,
    fan_out: bool = False,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """Parameters left as None keep the profile's value (``profiles/<profile>.yaml``; None: the
    current ``params.yaml``). ``lambdas``: uniform λ grid of the baselines; ``betas``: LiNeS β
    grid (α from the rule: ``alpha_norm``); ``seeds``: extra fine-tuning seeds for the soups;
    ``params``: any other params.yaml key, dotted (``{"merge.ties_density": 0.1}``).
    ``fan_out``: fine-tune each task as a separate ``stage-unit`` deployment run."""
    return run_flow(MERGING, locals())


if __name__ == "__main__":
    merging_benchmark()
