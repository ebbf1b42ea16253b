"""The paper's Figure 1 as an experiment: which layers does fine-tuning need?

For each task's task vector τ_t, two schedules over γ ∈ [0, 1] (Wang et al., ICLR 2025, Fig. 1):
- *shallow downscaled* (LiNeS): λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1): the first block keeps γ·τ, the
  last block the whole τ;
- *deep downscaled* (the mirror): λ(ℓ) = γ + (1−γ)(L−ℓ)/(L−1): the first block keeps τ, the last
  γ·τ.
The paper's claim: downscaling the shallow layers keeps target accuracy near the fine-tuned
model's while control accuracy returns towards zero-shot; downscaling the deep layers loses
target accuracy. Both are measured on test, target normalised by the fine-tuned model and control
by the zero-shot model. Nothing is selected here (no coefficient is chosen), so reporting on test
is the measurement itself, not a choice made on test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lines.errors import LinesError
from lines.merging.methods.wise_ft import WiseFT
from lines.protocol import schemas
from lines.protocol.results import write_csv
from lines.protocol.schemas import write_output
from lines.protocol.scores import target_control
from lines.protocol.suite import Workbench
from lines.scaling import single_task_lambdas
from lines.schedules import make_schedule

SCHEDULES = ("shallow", "deep")


def deep_lambdas(num_blocks: int, gamma: float) -> list[float]:
    """The mirror of LiNeS's single-task schedule, λ(ℓ) = γ + (1−γ)(L−ℓ)/(L−1): the ``reversed``
    schedule of ``lines.schedules``."""
    single_task_lambdas(num_blocks, gamma)  # validates γ ∈ [0, 1]
    return make_schedule("reversed").lambdas(num_blocks, gamma, 1.0 - gamma)


def schedule(kind: str, num_blocks: int, gamma: float) -> list[float]:
    if kind == "shallow":
        return single_task_lambdas(num_blocks, gamma)
    if kind == "deep":
        return deep_lambdas(num_blocks, gamma)
    raise LinesError(f"unknown Figure 1 schedule '{kind}' (shallow or deep)")


def run_fig1(
    bench: Workbench,
    base: Mapping[str, Any],
    tasks: Sequence[str],
    fig_tasks: Sequence[str],
    finetuned: Mapping[str, Path],
    gammas: Sequence[float],
    out_dir: Path,
    *,
    header: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Both schedules over ``gammas`` for each of ``fig_tasks`` (controls: the other ``tasks``);
    writes ``fig1.json`` (with per-example test correctness where the evaluator gives it) and
    ``fig1_sweep.csv``. γ = 1 is the fine-tuned model for both schedules (from ``base``)."""
    zs = base["pretrained"]["test"]
    bits_ft = (base.get("test_correct") or {}).get("finetuned", {})
    rows: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    for t in tqdm(fig_tasks, desc="fig1", unit="task"):
        tau, _ = bench.task_vector(f"fig1-{t}", [finetuned[t]], WiseFT(gamma=1.0))
        controls = [o for o in tasks if o != t]
        ft_ref = base["finetuned"][t]["test"][t]
        for kind in SCHEDULES:
            for g in gammas:
                if float(g) == 1.0:
                    acc, bits = dict(base["finetuned"][t]["test"]), bits_ft.get(t)
                else:
                    sd = bench.theta(tau, schedule(kind, bench.L, float(g)))
                    acc, bits = bench.scored(sd, "test", tasks)
                row = {
                    "task": t,
                    "schedule": kind,
                    "gamma": float(g),
                    **target_control(acc, t, controls, ft_ref, zs),
                }
                rows.append(row)
                points.append({**row, "test_correct": bits})
        del tau
    res = {
        **(header or {}),
        "tasks": list(tasks),
        "fig_tasks": list(fig_tasks),
        "gammas": [float(g) for g in gammas],
        "num_blocks": bench.L,
        "zeroshot": {o: zs[o] for o in tasks},
        "finetuned_ref": {t: base["finetuned"][t]["test"][t] for t in fig_tasks},
        "points": points,
    }
    write_csv(Path(out_dir) / "fig1_sweep.csv", rows)
    return write_output(Path(out_dir) / "fig1.json", schemas.Fig1Result, res)
