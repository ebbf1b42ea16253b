"""WiSE-FT: θ_0 + γτ over a γ grid, with and without LiNeS (λ(ℓ) from ``lines_gamma``), target
against the other tasks as the distribution shift — stage ``wiseft``.

    prefect deployment run 'wise-ft/smoke' --param gammas='[0.5, 1.0]' --watch
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._core import Experiment, RunOptions, run_flow
from orchestration.records import wiseft_record

WISEFT = Experiment(
    "wiseft",
    targets=["wiseft"],
    fan_out_groups=["finetune"],
    build_record=lambda ctx: wiseft_record(ctx.workspace, ctx.params),
    keys={
        "wiseft_tasks": "wiseft.wiseft_tasks",
        "gammas": "wiseft.gammas",
        "lines_gamma": "wiseft.lines_gamma",
        "seed": "common.seed",
    },
)


@flow(name="wise-ft", log_prints=True)
def wise_ft(
    profile: str | None = "smoke",
    wiseft_tasks: list[str] | None = None,
    gammas: list[float] | None = None,
    lines_gamma: float | None = None,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    fan_out: bool = False,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """``gammas``: WiSE-FT γ grid; ``lines_gamma``: the LiNeS γ of the edited variant. None keeps
    the profile's value."""
    return run_flow(WISEFT, locals())


if __name__ == "__main__":
    wise_ft()
