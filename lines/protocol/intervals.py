"""Confidence intervals from a paired bootstrap over test examples, and the verdicts they give.

Every model of a comparison is evaluated on the same test examples, so the examples are
resampled once per task and every model is scored on the same resample (a *paired* bootstrap:
the noise shared by two models cancels in their difference). Tasks are resampled independently
(stratified by task), as each task's test set is its own sample. A statistic is any arithmetic
function of per-task accuracies — an average, a normalised average, a difference of two, a mean
control accuracy normalised by the zero-shot model's — evaluated once on the real accuracies
(the point estimate) and once per resample (its distribution); the interval is the percentile
interval of that distribution.

A verdict follows the interval, not a threshold: "helps" when the whole interval of Δ is above
0, "hurts" when it is below, "no clear difference" otherwise.

Per-example correctness travels in the stage outputs as strings of '0'/'1' (:func:`pack`), one
per task and model, in the evaluator's example order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lines.errors import LinesError

Correct = Mapping[str, np.ndarray]  # task -> bool per test example
Models = Mapping[str, Correct]  # model name -> its correctness on every task


def pack(correct: Any) -> str:
    """Per-example correctness (bools, a tensor or an array) as a string of '0'/'1'."""
    arr = np.asarray(correct.cpu() if hasattr(correct, "cpu") else correct).astype(bool).ravel()
    return arr.astype(np.uint8).tobytes().translate(bytes.maketrans(b"\x00\x01", b"01")).decode()


def unpack(bits: str) -> np.ndarray:
    """The bool array of a :func:`pack`\\ ed string."""
    if bits.strip("01"):
        raise LinesError("per-example correctness must be a string of 0 and 1")
    return np.frombuffer(bits.encode(), dtype=np.uint8) == ord("1")


def unpack_all(bits: Mapping[str, str]) -> dict[str, np.ndarray]:
    return {t: unpack(b) for t, b in bits.items()}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its two-sided interval at ``level``."""

    value: float
    lo: float
    hi: float
    level: float = 0.95

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "level": self.level}

    def pct(self, signed: bool = False) -> str:
        """ "71.3 [69.0, 73.5]" in percent (one decimal); signed for differences."""
        f = "{:+.1f}" if signed else "{:.1f}"
        return (
            f"{f.format(100 * self.value)} [{f.format(100 * self.lo)}, {f.format(100 * self.hi)}]"
        )


def verdict(ci: Interval, positive: str = "helps", negative: str = "hurts") -> str:
    """From the interval of a difference: ``positive`` if it lies above 0, ``negative`` if below,
    else "no clear difference"."""
    if ci.lo > 0:
        return positive
    if ci.hi < 0:
        return negative
    return "no clear difference"


class Bootstrap:
    """One set of resampled test examples per task (``n_boot`` resamples, seeded), shared by
    every statistic computed from it, so all intervals of a report are paired with each other."""

    def __init__(
        self, sizes: Mapping[str, int], n_boot: int = 1000, seed: int = 0, level: float = 0.95
    ):
        if n_boot < 1 or not 0 < level < 1:
            raise LinesError(f"bootstrap: n_boot {n_boot} must be ≥ 1 and level {level} in (0, 1)")
        self.sizes, self.n_boot, self.level = dict(sizes), int(n_boot), float(level)
        rng = np.random.default_rng(seed)
        self.index = {
            t: rng.integers(0, n, size=(self.n_boot, n))
            if n > 0
            else np.zeros((self.n_boot, 0), int)
            for t, n in self.sizes.items()
        }

    def _accs(self, correct: Correct, resampled: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for t, c in correct.items():
            c = np.asarray(c, dtype=np.float64)
            if t not in self.index or c.shape[0] != self.sizes[t]:
                raise LinesError(
                    f"bootstrap: task '{t}' has {c.shape[0]} examples, expected {self.sizes.get(t)}"
                )
            if c.shape[0] == 0:
                out[t] = np.full(self.n_boot, np.nan) if resampled else np.float64("nan")
            else:
                out[t] = c[self.index[t]].mean(axis=1) if resampled else np.float64(c.mean())
        return out

    def ci(
        self, stat: Callable[[Mapping[str, Mapping[str, Any]]], Any], models: Models
    ) -> Interval:
        """The interval of ``stat``: a function of {model: {task: accuracy}} written with numpy
        arithmetic (it is called once with floats and once with arrays of ``n_boot`` values)."""
        # A resample where a reference accuracy is 0 gives inf/NaN: dropped below, not warned.
        with np.errstate(divide="ignore", invalid="ignore"):
            point = float(np.float64(stat({m: self._accs(c, False) for m, c in models.items()})))
            samples = np.asarray(stat({m: self._accs(c, True) for m, c in models.items()}), float)
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            nan = float("nan")
            return Interval(point, nan, nan, self.level)
        a = (1 - self.level) / 2
        lo, hi = np.quantile(samples, [a, 1 - a])
        return Interval(point, float(lo), float(hi), self.level)

    # The statistics the protocol reports ---------------------------------------------------

    def mean_acc(self, correct: Correct, tasks: Sequence[str] | None = None) -> Interval:
        """Average accuracy over ``tasks`` (all of ``correct``'s by default)."""
        ts = list(tasks or correct)
        return self.ci(lambda A: sum(A["m"][t] for t in ts) / len(ts), {"m": correct})

    def mean_norm(
        self, correct: Correct, ref: Correct, tasks: Sequence[str] | None = None
    ) -> Interval:
        """Average over tasks of accuracy / the reference model's accuracy (both resampled)."""
        ts = list(tasks or correct)
        return self.ci(
            lambda A: sum(A["m"][t] / A["r"][t] for t in ts) / len(ts), {"m": correct, "r": ref}
        )

    def delta_acc(self, a: Correct, b: Correct, tasks: Sequence[str] | None = None) -> Interval:
        """Average accuracy of ``a`` minus that of ``b`` (paired)."""
        ts = list(tasks or a)
        return self.ci(lambda A: sum(A["a"][t] - A["b"][t] for t in ts) / len(ts), {"a": a, "b": b})

    def delta_norm(
        self, a: Correct, b: Correct, ref: Correct, tasks: Sequence[str] | None = None
    ) -> Interval:
        """Average normalised accuracy of ``a`` minus that of ``b``, both normalised by ``ref``."""
        ts = list(tasks or a)
        return self.ci(
            lambda A: sum((A["a"][t] - A["b"][t]) / A["r"][t] for t in ts) / len(ts),
            {"a": a, "b": b, "r": ref},
        )


def from_examples(
    correct_sets: Sequence[Correct], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Bootstrap:
    """A :class:`Bootstrap` over the tasks (and their sizes) seen in ``correct_sets``; a task's
    size must agree across them."""
    sizes: dict[str, int] = {}
    for cs in correct_sets:
        for t, c in cs.items():
            n = int(np.asarray(c).shape[0])
            if sizes.setdefault(t, n) != n:
                raise LinesError(f"bootstrap: task '{t}' has {n} and {sizes[t]} examples")
    return Bootstrap(sizes, n_boot, seed, level)
