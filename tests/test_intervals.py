"""Paired bootstrap intervals and verdicts (lines.protocol.intervals) on hand-computable cases."""

from __future__ import annotations

import numpy as np
import pytest

from lines.errors import LinesError
from lines.protocol.intervals import Bootstrap, Interval, from_examples, pack, unpack, verdict


def test_pack_unpack_roundtrip():
    c = np.array([True, False, True, True])
    assert pack(c) == "1011"
    assert unpack("1011").tolist() == c.tolist()
    with pytest.raises(LinesError):
        unpack("10x1")


def test_identical_models_give_a_zero_interval_and_no_verdict():
    a = {"t": np.array([1, 0, 1, 1, 0], bool)}
    ci = Bootstrap({"t": 5}, n_boot=200).delta_acc(a, a)
    assert (ci.value, ci.lo, ci.hi) == (0.0, 0.0, 0.0)
    assert verdict(ci) == "no clear difference"


def test_always_right_against_always_wrong_is_exactly_one():
    ones, zeros = {"t": np.ones(7, bool)}, {"t": np.zeros(7, bool)}
    bs = Bootstrap({"t": 7}, n_boot=100)
    ci = bs.delta_acc(ones, zeros)
    assert (ci.value, ci.lo, ci.hi) == (1.0, 1.0, 1.0) and verdict(ci) == "helps"
    assert verdict(bs.delta_acc(zeros, ones)) == "hurts"


def test_two_examples_half_right_spans_zero_to_one():
    # Resampling [1, 0] gives accuracy 0, 0.5, 1 with probability 1/4, 1/2, 1/4:
    # the 2.5% and 97.5% quantiles are 0 and 1.
    ci = Bootstrap({"t": 2}, n_boot=4000, seed=1).mean_acc({"t": np.array([True, False])})
    assert ci.value == 0.5 and ci.lo == 0.0 and ci.hi == 1.0


def test_one_example_of_a_hundred_is_not_a_verdict():
    # a and b differ on one example of 100 (a right, b wrong): Δ = +1 point, but a resample
    # misses that example with probability 0.99^100 ≈ 0.37 > 2.5%, so the interval starts at 0.
    b = np.zeros(100, bool)
    a = b.copy()
    a[0] = True
    ci = Bootstrap({"t": 100}, n_boot=2000).delta_acc({"t": a}, {"t": b})
    assert ci.value == pytest.approx(0.01) and ci.lo == 0.0 and ci.hi > 0.01
    assert verdict(ci) == "no clear difference"


def test_normalised_statistics_use_the_paired_reference():
    m = {"t": np.array([1, 1, 0, 0], bool), "u": np.ones(3, bool)}
    bs = from_examples([m])
    same = bs.mean_norm(m, m, ["u"])
    assert (same.value, same.lo, same.hi) == (1.0, 1.0, 1.0)
    # Reference always right: normalised = plain accuracy.
    ref = {"t": np.ones(4, bool), "u": np.ones(3, bool)}
    assert bs.mean_norm(m, ref).value == pytest.approx((0.5 + 1.0) / 2)
    d = bs.delta_norm(m, m, ref)
    assert (d.lo, d.hi) == (0.0, 0.0)


def test_sizes_must_agree_and_interval_formats():
    with pytest.raises(LinesError):
        from_examples([{"t": np.ones(3, bool)}, {"t": np.ones(4, bool)}])
    with pytest.raises(LinesError):
        Bootstrap({"t": 3}).mean_acc({"t": np.ones(4, bool)})
    assert Interval(0.713, 0.69, 0.735).pct() == "71.3 [69.0, 73.5]"
    assert Interval(-0.01, -0.02, 0.001).pct(signed=True) == "-1.0 [-2.0, +0.1]"
