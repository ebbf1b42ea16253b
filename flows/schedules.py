"""Is linear layer scaling optimal? Every λ(ℓ) schedule of ``schedules.specs`` at an equal budget
of val evaluations, for merging (β, and α when ``alpha_mults`` lists several multipliers of the
rule's α) and for editing (γ), against linear on test with intervals — stage ``schedules``.

    prefect deployment run 'schedules/smoke' --param budget=6 --watch
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._core import Experiment, Method, RunOptions, run_flow
from orchestration.records import schedules_record

SCHEDULES = Experiment(
    "schedules",
    targets=["schedules"],
    fan_out_groups=["finetune"],
    build_record=lambda ctx: schedules_record(ctx.workspace, ctx.params),
    keys={
        "specs": "schedules.specs",
        "budget": "schedules.budget",
        "beta_max": "schedules.beta_max",
        "alpha_mults": "schedules.alpha_mults",
        "methods": "schedules.methods",
        "edit_tasks": "schedules.edit_tasks",
    },
)


@flow(name="schedules", log_prints=True)
def schedules(
    profile: str | None = "smoke",
    specs: list[str] | None = None,
    budget: int | None = None,
    beta_max: float | None = None,
    alpha_mults: list[float] | None = None,
    methods: list[Method] | None = None,
    edit_tasks: list[str] | None = None,
    params: dict[str, Any] | None = None,
    fan_out: bool = False,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """``specs``: schedules as ``NAME[:k=v,...]`` (``lines schedules`` lists them); ``budget``:
    val evaluations per schedule family; ``alpha_mults``: multipliers of the rule's α searched
    within that budget ([1]: the rule). None keeps the profile's value."""
    return run_flow(SCHEDULES, locals())


if __name__ == "__main__":
    schedules()
