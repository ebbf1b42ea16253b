"""Multi-task merging benchmark: every merge method with and without LiNeS (λ or β chosen on val,
reported on test), then the report. Runs the whole embedded pipeline up to ``report``.

    prefect deployment run 'merging-benchmark/smoke' --param betas='[0.3, 1.0]' --watch
    python -m flows.merging            # the same, as a plain script (temporary Prefect server)
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._core import UNIT_DEPLOYMENT, run_experiment
from tasks.records import merging_record

Method = Literal["task_arithmetic", "ties", "consensus", "dare", "magnitude_prune"]


@flow(name="merging-benchmark", log_prints=True)
def merging_benchmark(
    profile: str | None = "smoke",
    tasks: list[str] | None = None,
    methods: list[Method] | None = None,
    lambdas: list[float] | None = None,
    betas: list[float] | None = None,
    alpha_norm: Literal["l1", "l2"] | None = None,
    block_policy: Literal["reference", "depth"] | None = None,
    seed: int | None = None,
    seeds: list[int] | None = None,
    params: dict[str, Any] | None = None,
    fan_out: bool = False,
    unit_deployment: str = UNIT_DEPLOYMENT,
    unit_timeout_s: float = 6 * 3600,
    tracking: bool = True,
    on_tracking_down: Literal["fail", "local"] = "local",
    name: str | None = None,
    workspace: str = ".",
    lock_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Parameters left as None keep the profile's value (``profiles/<profile>.yaml``; None: the
    current ``params.yaml``). ``lambdas``: uniform λ grid of the baselines; ``betas``: LiNeS β
    grid (α from the rule: ``alpha_norm``); ``seeds``: extra fine-tuning seeds for the soups;
    ``params``: any other params.yaml key, dotted (``{"merge.ties_density": 0.1}``).
    ``fan_out``: fine-tune each task as a separate ``stage-unit`` deployment run."""
    overrides = {
        "common.tasks": tasks,
        "merge.methods": methods,
        "merge.lambdas": lambdas,
        "merge.betas": betas,
        "merge.alpha_norm": alpha_norm,
        "merge.block_policy": block_policy,
        "common.seed": seed,
        "soups.seeds": seeds,
        **(params or {}),
    }
    return run_experiment(
        "merging",
        workspace=workspace,
        profile=profile,
        overrides=overrides,
        targets=["report"],
        fan_out_groups=["finetune", "finetune_seed"],
        build_record=lambda ctx: merging_record(ctx.workspace, ctx.params),
        fan_out=fan_out,
        unit_deployment=unit_deployment,
        unit_timeout_s=unit_timeout_s,
        tracking=tracking,
        on_tracking_down=on_tracking_down,
        name=name,
        lock_timeout_s=lock_timeout_s,
    )


if __name__ == "__main__":
    merging_benchmark()
