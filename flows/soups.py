"""Model soups: uniform and greedy soups of one task's fine-tuning seeds, each with and without
LiNeS (γ chosen on val) — stage ``soups``.

    prefect deployment run 'soups/smoke' --param seeds='[1, 2]' --watch
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from flows._core import UNIT_DEPLOYMENT, run_experiment
from tasks.records import soups_record


@flow(name="soups", log_prints=True)
def soups(
    profile: str | None = "smoke",
    task: str | None = None,
    seeds: list[int] | None = None,
    gammas: list[float] | None = None,
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
    """``task``: the task whose seeds are souped; ``seeds``: the extra fine-tuning seeds (the
    first ingredient is ``common.seed``); ``gammas``: LiNeS γ grid. None keeps the profile's."""
    overrides = {
        "soups.task": task,
        "soups.seeds": seeds,
        "soups.gammas": gammas,
        "common.seed": seed,
        **(params or {}),
    }
    return run_experiment(
        "soups",
        workspace=workspace,
        profile=profile,
        overrides=overrides,
        targets=["soups"],
        fan_out_groups=["finetune", "finetune_seed"],
        build_record=lambda ctx: soups_record(ctx.workspace, ctx.params),
        fan_out=fan_out,
        unit_deployment=unit_deployment,
        unit_timeout_s=unit_timeout_s,
        tracking=tracking,
        on_tracking_down=on_tracking_down,
        name=name,
        lock_timeout_s=lock_timeout_s,
    )


if __name__ == "__main__":
    soups()
