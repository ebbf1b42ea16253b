"""Single-task editing (forgetting): each fine-tuned model edited with LiNeS over a γ grid,
target accuracy (own task) against control accuracy (the others) — stage ``edit``.

    prefect deployment run 'single-task-editing/smoke' --param gammas='[0.0, 0.5, 1.0]' --watch
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._core import BlockPolicy, Experiment, RunOptions, run_flow
from orchestration.records import editing_record

EDITING = Experiment(
    "editing",
    targets=["edit"],
    fan_out_groups=["finetune"],
    build_record=lambda ctx: editing_record(ctx.workspace, ctx.params),
    keys={
        "tasks": "common.tasks",
        "gammas": "edit.gammas",
        "block_policy": "edit.block_policy",
        "seed": "common.seed",
    },
)


@flow(name="single-task-editing", log_prints=True)
def single_task_editing(
    profile: str | None = "smoke",
    tasks: list[str] | None = None,
    gammas: list[float] | None = None,
    block_policy: BlockPolicy | None = None,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    fan_out: bool = False,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """``gammas``: the γ grid of λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1) (γ chosen on val by
    2·target + control). None keeps the profile's value; see ``merging_benchmark``."""
    return run_flow(EDITING, locals())


if __name__ == "__main__":
    single_task_editing()
