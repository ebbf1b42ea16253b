"""Single-task editing (forgetting): each fine-tuned model edited with LiNeS over a γ grid,
target accuracy (own task) against control accuracy (the others) — stage ``edit``.

    prefect deployment run 'single-task-editing/smoke' --param gammas='[0.0, 0.5, 1.0]' --watch
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._core import UNIT_DEPLOYMENT, run_experiment
from tasks.records import editing_record


@flow(name="single-task-editing", log_prints=True)
def single_task_editing(
    profile: str | None = "smoke",
    tasks: list[str] | None = None,
    gammas: list[float] | None = None,
    block_policy: Literal["reference", "depth"] | None = None,
    seed: int | None = None,
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
    """``gammas``: the γ grid of λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1) (γ chosen on val by
    2·target + control). None keeps the profile's value; see ``merging_benchmark``."""
    overrides = {
        "common.tasks": tasks,
        "edit.gammas": gammas,
        "edit.block_policy": block_policy,
        "common.seed": seed,
        **(params or {}),
    }
    return run_experiment(
        "editing",
        workspace=workspace,
        profile=profile,
        overrides=overrides,
        targets=["edit"],
        fan_out_groups=["finetune"],
        build_record=lambda ctx: editing_record(ctx.workspace, ctx.params),
        fan_out=fan_out,
        unit_deployment=unit_deployment,
        unit_timeout_s=unit_timeout_s,
        tracking=tracking,
        on_tracking_down=on_tracking_down,
        name=name,
        lock_timeout_s=lock_timeout_s,
    )


if __name__ == "__main__":
    single_task_editing()
