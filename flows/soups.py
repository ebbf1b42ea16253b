"""Model soups: uniform and greedy soups of one task's fine-tuning seeds, each with and without
LiNeS (γ chosen on val) — stage ``soups``.

    prefect deployment run 'soups/smoke' --param seeds='[1, 2]' --watch
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._core import Experiment, RunOptions, run_flow
from orchestration.records import soups_record

SOUPS = Experiment(
    "soups",
    targets=["soups"],
    fan_out_groups=["finetune", "finetune_seed"],
    build_record=lambda ctx: soups_record(ctx.workspace, ctx.params),
    keys={
        "task": "soups.task",
        "seeds": "soups.seeds",
        "gammas": "soups.gammas",
        "seed": "common.seed",
    },
)


@flow(name="soups", log_prints=True)
def soups(
    profile: str | None = "smoke",
    task: str | None = None,
    seeds: list[int] | None = None,
    gammas: list[float] | None = None,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    fan_out: bool = False,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """``task``: the task whose seeds are souped; ``seeds``: the extra fine-tuning seeds (the
    first ingredient is ``common.seed``); ``gammas``: LiNeS γ grid. None keeps the profile's."""
    return run_flow(SOUPS, locals())


if __name__ == "__main__":
    soups()
