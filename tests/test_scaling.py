"""LiNeS scaling rules (lines/scaling.py), pinned with hand-computed values.

λ(ℓ) = α + β(ℓ−1)/(L−1) (Eq. 2); single-task λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1) (Eq. 3);
α = (1/N)·‖τ_sum‖/‖τ_MTL‖ (Sec. 5); norms accumulated in float64.
"""

from __future__ import annotations

import math

import pytest
import torch

from lines.errors import LinesError
from lines.scaling import (
    Scaling,
    auto_alpha,
    finish_norm,
    lines_lambdas,
    scale_tensors,
    single_task_lambdas,
    tensor_norm_contrib,
)

# ---------------------------------------------------------------------------------------------
# lines_lambdas


def test_lines_lambdas_one_block_gets_alpha():
    assert lines_lambdas(1, 0.7, 0.3) == [0.7]
    assert lines_lambdas(1, 0.7, 0.0) == [0.7]


def test_lines_lambdas_two_blocks():
    # ℓ=1: α; ℓ=2: α + β·1/1
    assert lines_lambdas(2, 0.5, 0.25) == [0.5, 0.75]
    assert lines_lambdas(2, 0.0, 1.0) == [0.0, 1.0]


def test_lines_lambdas_four_blocks():
    # α + β·{0, 1/3, 2/3, 1}: 0.5, 0.6, 0.7, 0.8
    assert lines_lambdas(4, 0.5, 0.3) == pytest.approx([0.5, 0.6, 0.7, 0.8], abs=1e-15)
    # dyadic steps are exact: β = 0.75 → steps of 0.25
    assert lines_lambdas(4, 0.25, 0.75) == [0.25, 0.5, 0.75, 1.0]


def test_lines_lambdas_beta_zero_is_uniform():
    assert lines_lambdas(5, 0.3, 0.0) == [0.3] * 5


def test_lines_lambdas_last_block_is_alpha_plus_beta():
    lam = lines_lambdas(12, 0.125, 0.5)
    assert lam[0] == 0.125
    assert lam[-1] == 0.625
    assert all(b > a for a, b in zip(lam, lam[1:], strict=False))


@pytest.mark.parametrize(
    "args",
    [
        (0, 0.5, 0.5),
        (-1, 0.5, 0.5),
        (4, 0.5, -0.1),
        (4, float("nan"), 0.5),
        (4, 0.5, float("nan")),
        (4, float("inf"), 0.5),
        (4, 0.5, float("-inf")),
    ],
)
def test_lines_lambdas_range_errors(args):
    with pytest.raises(LinesError):
        lines_lambdas(*args)


# ---------------------------------------------------------------------------------------------
# single_task_lambdas


def test_single_task_gamma_zero_is_linear_ramp():
    assert single_task_lambdas(4, 0.0) == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0], abs=1e-15)


def test_single_task_gamma_one_is_identity():
    assert single_task_lambdas(4, 1.0) == [1.0, 1.0, 1.0, 1.0]
    assert single_task_lambdas(1, 1.0) == [1.0]


def test_single_task_gamma_half():
    # γ=0.5, L=3: 0.5, 0.5 + 0.5·1/2, 0.5 + 0.5 = 0.5, 0.75, 1.0 — last block always 1
    assert single_task_lambdas(3, 0.5) == [0.5, 0.75, 1.0]
    assert single_task_lambdas(7, 0.3)[-1] == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("gamma", [-0.01, 1.01, 2.0, float("nan"), float("inf")])
def test_single_task_gamma_out_of_range(gamma):
    with pytest.raises(LinesError):
        single_task_lambdas(4, gamma)


# ---------------------------------------------------------------------------------------------
# auto_alpha and norms


def test_auto_alpha_hand_values():
    # (1/2)·12/3 = 2
    assert auto_alpha(12.0, 3.0, 2) == 2.0
    # task arithmetic: ‖τ_MTL‖ = ‖τ_sum‖ → 1/N
    assert auto_alpha(7.5, 7.5, 4) == 0.25
    assert auto_alpha(10.0, 4.0, 5) == 0.5


def test_auto_alpha_errors():
    with pytest.raises(LinesError):
        auto_alpha(1.0, 0.0, 2)
    with pytest.raises(LinesError):
        auto_alpha(1.0, 1.0, 0)


def test_norm_contrib_l1_l2_hand_values():
    t = torch.tensor([[3.0, -4.0], [0.0, -12.0]])
    assert tensor_norm_contrib(t, "l1") == 19.0
    assert tensor_norm_contrib(t, "l2") == 169.0  # 9 + 16 + 144
    assert finish_norm(169.0, "l2") == 13.0
    assert finish_norm(19.0, "l1") == 19.0


def test_norm_contrib_accumulates_over_tensors():
    a = torch.tensor([3.0])
    b = torch.tensor([-4.0])
    acc = tensor_norm_contrib(a, "l2") + tensor_norm_contrib(b, "l2")
    assert finish_norm(acc, "l2") == 5.0
    acc1 = tensor_norm_contrib(a, "l1") + tensor_norm_contrib(b, "l1")
    assert finish_norm(acc1, "l1") == 7.0


def test_norm_contrib_is_float64():
    # 2^24 + 1 is not representable in float32: a float32 accumulation returns 2^24.
    t = torch.tensor([2.0**24, 1.0])
    assert float(t.abs().sum()) == 2.0**24  # the float32 pitfall the float64 path avoids
    assert tensor_norm_contrib(t, "l1") == 2.0**24 + 1
    # squares: 4096² + 1 = 2^24 + 1
    t2 = torch.tensor([4096.0, -1.0])
    assert tensor_norm_contrib(t2, "l2") == 2.0**24 + 1
    assert isinstance(tensor_norm_contrib(t, "l1"), float)


def test_norm_contrib_unknown_kind():
    with pytest.raises(LinesError):
        tensor_norm_contrib(torch.ones(2), "linf")  # type: ignore[arg-type]


def test_norm_contrib_bf16_input_exact():
    t = torch.tensor([1.5, -2.5, 0.25], dtype=torch.bfloat16)
    assert tensor_norm_contrib(t, "l1") == 4.25
    assert tensor_norm_contrib(t, "l2") == 2.25 + 6.25 + 0.0625


# ---------------------------------------------------------------------------------------------
# Scaling


def test_scaling_uniform_lambdas():
    s = Scaling.uniform(0.3)
    assert s.lambdas(3) == [0.3, 0.3, 0.3]
    assert not s.needs_norms
    assert s.describe() == {"scaling": "uniform", "coef": 0.3}


def test_scaling_lines_fixed_alpha():
    s = Scaling.lines(beta=0.5, alpha=0.25)
    assert not s.needs_norms
    assert s.lambdas(3) == [0.25, 0.5, 0.75]
    # a given α ignores the measured one
    assert s.lambdas(3, alpha=9.0) == [0.25, 0.5, 0.75]


def test_scaling_lines_auto_alpha():
    s = Scaling.lines(beta=1.0)
    assert s.needs_norms
    with pytest.raises(LinesError):
        s.lambdas(3)
    assert s.lambdas(3, alpha=0.5) == [0.5, 1.0, 1.5]
    assert s.describe()["alpha"] == "auto"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Scaling.lines(beta=-0.1),
        lambda: Scaling.lines(beta=float("nan")),
        lambda: Scaling.lines(beta=0.5, alpha=float("nan")),
        lambda: Scaling.lines(beta=0.5, norm="linf"),  # type: ignore[arg-type]
        lambda: Scaling.uniform(float("nan")),
        lambda: Scaling.uniform(float("inf")),
    ],
)
def test_scaling_constructor_errors(make):
    with pytest.raises(LinesError):
        make()


def test_scale_tensors_per_block():
    taus = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([4.0]), "c": torch.tensor([8.0])}
    block_of = {"a": 1, "b": 2, "c": 3}
    out = scale_tensors(taus, block_of, [0.5, 0.75, 1.0])
    assert torch.equal(out["a"], torch.tensor([0.5, -1.0]))
    assert torch.equal(out["b"], torch.tensor([3.0]))
    assert torch.equal(out["c"], torch.tensor([8.0]))


def test_auto_alpha_is_one_over_n_for_sum():
    # α = (1/N)·‖Σ τ‖/‖Σ τ‖ whatever the norm
    taus = [torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.25, 3.0, -1.0])]
    s = torch.stack(taus).sum(0)
    for kind in ("l1", "l2"):
        n = finish_norm(tensor_norm_contrib(s, kind), kind)
        assert auto_alpha(n, n, 2) == 0.5
    assert math.isclose(
        finish_norm(tensor_norm_contrib(s, "l2"), "l2"), math.sqrt(1.25**2 + 1 + 0.25)
    )
