"""Scores of the protocol: averages, normalised accuracy, target/control, and the choice of a
coefficient on val (Wang et al., ICLR 2025, Sec. 4: "normalised accuracy" divides by the
fine-tuned model's accuracy; single-task editing picks γ by 2·target_norm + control_norm).

Selection rule, the same for every stage and suite: the candidate with the highest score wins;
a NaN score never wins (it ranks below every number, even −inf); among equal scores the first in
grid order wins, so the choice does not depend on float noise in the comparison of ties.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from lines.errors import LinesError

T = TypeVar("T")


def mean(xs: Iterable[Any]) -> float:
    """Arithmetic mean as a float; NaN for no values (an empty control set, not an error)."""
    vals = [float(x) for x in xs]
    return float(sum(vals) / len(vals)) if vals else float("nan")


def finite_or(x: Any, default: float = float("-inf")) -> float:
    """``x`` when it is a finite number, else ``default`` (NaN and ±inf become ``default``)."""
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else default


def normalise(acc: Mapping[str, float], ref: Mapping[str, float]) -> dict[str, float]:
    """acc[t] / ref[t] per task of ``acc``; NaN where the reference is missing or not positive
    (a reference accuracy of 0 gives NaN rather than a division error)."""
    out = {}
    for t, a in acc.items():
        r = ref.get(t)
        out[t] = a / r if r is not None and r > 0 else float("nan")
    return out


def target_control(
    acc: Mapping[str, float],
    target: str,
    controls: Sequence[str],
    ft_ref: float,
    zs_ref: Mapping[str, float],
) -> dict[str, float]:
    """Target accuracy (normalised by the fine-tuned model's ``ft_ref``) and mean control
    accuracy (each control task normalised by the zero-shot model's, then averaged), as the
    paper's Fig. 2. Control tasks with a zero reference are left out of the normalised mean."""
    return {
        "target_acc": acc[target],
        "target_norm": acc[target] / ft_ref if ft_ref and ft_ref > 0 else float("nan"),
        "control_acc": mean(acc[o] for o in controls),
        "control_norm": mean(acc[o] / zs_ref[o] for o in controls if zs_ref.get(o)),
    }


def edit_score(target_norm: float, control_norm: float) -> float:
    """The reference's γ criterion for single-task editing: 2·target_norm + control_norm. With no
    control task (control NaN) the control term counts 0, so the target alone decides."""
    return 2 * target_norm + finite_or(control_norm, 0.0)


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score: NaN never wins, ties go to the lowest index. Raises on an
    empty sequence; if every score is NaN the first candidate is returned."""
    if not scores:
        raise LinesError("empty coefficient grid")
    best = 0
    for i, s in enumerate(scores):
        if finite_or(s) > finite_or(scores[best]):
            best = i
    return best


def select(rows: Sequence[T], score: Callable[[T], float]) -> T:
    """The row with the best ``score`` under the rule of :func:`best_index`."""
    return rows[best_index([score(r) for r in rows])]
