"""The LLM suite as a Prefect flow: the ``llm/`` DVC pipeline (fetch → finetune@task → base_eval →
edit / merge / schedules → report; sft → rl@reward → rsoups, ``lines/llm/stages.py``) run with
typed parameters, saved as a DVC experiment and recorded in MLflow (experiment ``lines-llm``: one
run per flow run, nested runs per evaluation point and per rewarded-soups point).

    prefect deployment run 'llm-benchmark/smoke' --watch
    prefect deployment run 'llm-benchmark/smollm2' --param device=cuda --watch
    prefect deployment run 'llm-benchmark/smollm2' --param fan_out=true --watch   # one unit per GPU
    python -m flows.llm                 # the same, as a plain script (temporary Prefect server)

Like ``flows.clip``, it is ``flows._core.run_experiment`` for a pipeline in a folder of the
project: DVC runs from the root with ``llm/dvc.yaml`` targets; the parameters written are
``llm/params.yaml`` (+ ``llm/profiles/<profile>.yaml`` when a profile is named), checked first by
the stages' own parser (``lines.llm.config``).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._core import BlockPolicy, Experiment, FanOut, Method, RunOptions, run_experiment
from lines.llm.config import validate_llm_params
from orchestration.llm import (
    LLM_DIR,
    STAGES,
    dvc_targets,
    fan_out_phases,
    llm_record,
    overrides_of,
    summary,
)

Stage = Literal[STAGES]  # type: ignore[valid-type]


@flow(name="llm-benchmark", log_prints=True)
def llm_benchmark(
    tasks: list[str] | None = None,
    methods: list[Method] | None = None,
    lambdas: list[float] | None = None,
    betas: list[float] | None = None,
    edit_gammas: list[float] | None = None,
    rewards: list[str] | None = None,
    rsoups_lambdas: list[float] | None = None,
    rsoups_alpha: float | None = None,
    rsoups_beta: float | None = None,
    rl_steps: int | None = None,
    device: str | None = None,
    block_policy: BlockPolicy | None = None,
    params: dict[str, Any] | None = None,
    stages: list[Stage] | None = None,
    profile: str | None = None,
    fan_out: bool = False,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """Parameters left as None keep ``llm/params.yaml``'s value (or the profile's). ``tasks``:
    registry text tasks; ``methods``/``lambdas``/``betas``: the merges, the baselines' λ grid and
    LiNeS's β grid; ``edit_gammas``: the editing γ grid; ``rewards``: the two rewards of the
    rewarded soups (``sentiment``, ``readability``, ``neutrality``, ``brevity``), interpolated
    over ``rsoups_lambdas`` with LiNeS (``rsoups_alpha``, ``rsoups_beta``; the paper: 1, 1);
    ``rl_steps``: GRPO steps per policy; ``device``: cpu, cuda, cuda:N or auto; ``params``: any
    other llm/params.yaml key, dotted (``{"rl.kl_coef": 0.1}``); ``stages``: reproduce only these
    (and what they need); ``fan_out``: the per-task and per-seed fine-tuning, the GRPO policies
    and the merge sweep's methods run as ``stage-unit`` deployment runs, in parallel on the
    pool's workers (one per GPU: ``scripts/stack.sh`` with ``LINES_GPU_WORKERS``)."""
    overrides = overrides_of(
        tasks=tasks,
        methods=methods,
        lambdas=lambdas,
        betas=betas,
        edit_gammas=edit_gammas,
        rewards=rewards,
        rsoups_lambdas=rsoups_lambdas,
        rsoups_alpha=rsoups_alpha,
        rsoups_beta=rsoups_beta,
        rl_steps=rl_steps,
        device=device,
        block_policy=block_policy,
        params=params,
    )
    exp = Experiment(
        "llm",
        targets=dvc_targets(list(stages or [])),
        build_record=lambda ctx: llm_record(ctx.pipeline, ctx.params),
        pipeline_dir=LLM_DIR,
        summary=lambda ctx: summary(ctx.pipeline),
        validate=validate_llm_params,
        fan_out_phases=[FanOut(groups, upstream) for groups, upstream in fan_out_phases(stages)],
    )
    return run_experiment(
        exp, overrides, profile=profile, workspace=workspace, name=name, fan_out=fan_out, run=run
    )


if __name__ == "__main__":
    llm_benchmark()
