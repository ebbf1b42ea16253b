"""Iso-C, Iso-CTS and TSV-M on hand-checkable matrices (diagonal task vectors, whose singular
triplets are known), their rule for non-matrix tensors, and a run through the command with
LiNeS on top. The cross-check against FusionBench's own code is
``benchmarks/peers/crosscheck_fusionbench.py``."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import write_family
from test_cli import merge_args

from lines.errors import LinesError
from lines.merging import make_method
from lines.merging.base import TaskVectors


def merge(name: str, *taus: torch.Tensor, **params) -> torch.Tensor:
    m = make_method(name, **params)
    m.begin(len(taus), sum(t.numel() for t in taus), "cpu")
    return m.merge_tensor("k", TaskVectors(torch.stack(taus)))


def diag(*v: float) -> torch.Tensor:
    return torch.diag(torch.tensor(v, dtype=torch.float32))


def test_iso_c_flattens_the_spectrum_of_the_sum() -> None:
    # Σ τ = diag(4, 2): singular values 4 and 2 → both 3
    assert torch.allclose(merge("iso_c", diag(3, 1), diag(1, 1)), 3 * torch.eye(2), atol=1e-6)
    # a rotated case: Σ τ = R diag(4, 2) Rᵀ → 3·R Rᵀ = 3·I
    c, s = 0.6, 0.8
    rot = torch.tensor([[c, -s], [s, c]])
    got = merge("iso_c", rot @ diag(3, 1) @ rot.T, rot @ diag(1, 1) @ rot.T)
    assert torch.allclose(got, 3 * torch.eye(2), atol=1e-5)


def test_tsv_m_keeps_each_tasks_top_singular_triplets() -> None:
    # N = 2, rank 2: each task keeps 1 triplet: 5·e1e1ᵀ from τ1 and 4·e2e2ᵀ from τ2
    got = merge("tsv_m", diag(5, 1), torch.tensor([[0.0, 0.0], [0.0, 4.0]]))
    assert torch.allclose(got, diag(5, 4), atol=1e-6)


def test_iso_cts_common_and_task_specific_subspaces() -> None:
    # Σ τ = diag(8, 6, 1, 1): common space e1, e2 (fraction 0.5 of rank 4); the task-specific
    # leftovers are e3 (τ1) and e4 (τ2); four orthonormal directions, isotropic σ = mean(1,1,8,6)
    t1, t2 = diag(4, 3, 1, 0), diag(4, 3, 0, 1)
    got = merge("iso_cts", t1, t2, common_space_fraction=0.5)
    assert torch.allclose(got, 4 * torch.eye(4), atol=1e-5)
    # all of the rank in the common space: Iso-C
    assert torch.allclose(
        merge("iso_cts", t1, t2, common_space_fraction=1.0), merge("iso_c", t1, t2), atol=1e-5
    )


@pytest.mark.parametrize("name", ["iso_c", "iso_cts", "tsv_m"])
def test_non_matrix_tensors_are_averaged(name) -> None:
    a, b, c = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([5.0, 9.0])
    assert torch.allclose(merge(name, a, b, c), torch.tensor([3.0, 5.0]))


def test_iso_cts_fraction_is_validated() -> None:
    with pytest.raises(LinesError, match="common_space_fraction out of range"):
        make_method("iso_cts", common_space_fraction=0.0)


@pytest.mark.parametrize(
    "name", ["iso_c", "iso_cts", "tsv_m", "breadcrumbs", "della", "cart", "wudi"]
)
def test_through_the_command_with_lines(tmp_path, run_cli, name) -> None:
    cs = write_family(tmp_path / "c", n=3)
    out = tmp_path / "m.safetensors"
    r = run_cli(merge_args(cs, out, name, "--lines-beta", "0.5"))
    assert r.code == 0, r.err
    man = json.loads(out.with_suffix(".json").read_text())
    assert man["method"] == name
    assert man["scaling"]["alpha_value"] > 0
    assert (run_cli(["methods"]).out.count(name)) >= 1


# ----------------------------------------------------------------------------------------------
# Breadcrumbs and DELLA (mergekit's semantics; cross-check: benchmarks/peers/crosscheck_mergekit.py)


def test_breadcrumbs_drops_outliers_and_small_entries() -> None:
    from lines.merging.methods.breadcrumbs import outlier_mask

    t = torch.arange(1.0, 11.0)  # |t| = 1..10; keep 5: drop the top 1 (10) and the bottom 4
    assert outlier_mask(t, 0.5, 0.1).tolist() == [False] * 4 + [True] * 5 + [False]
    # too small for one outlier: keep the largest entries (mergekit would zero the tensor)
    assert outlier_mask(torch.tensor([1.0, -2.0, 3.0]), 2 / 3, 0.01).tolist() == [False, True, True]
    got = merge("breadcrumbs", t, torch.zeros(10), density=0.5, gamma=0.1)
    assert got.tolist() == [0, 0, 0, 0, 5, 6, 7, 8, 9, 0]


def test_della_probabilities_rescale_and_consensus() -> None:
    from lines.merging.methods.della import della_probs

    p = della_probs(torch.tensor([1.0, -2.0, 3.0, 4.0, 5.0]), 0.5, 0.1)
    assert torch.allclose(p, torch.tensor([0.4, 0.45, 0.5, 0.55, 0.6]))
    # density 1 keeps everything: sign election by the sum, mean of the agreeing entries
    a, b = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([3.0, 1.0, -1.0])
    assert merge("della", a, b, density=1.0).tolist() == [2.0, -2.0, 3.0]
    m = make_method("della", density=0.5, epsilon=0.2, seed=3)
    t = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    s = m._sparse("w", 0, t)
    assert torch.allclose(s.abs().sum(), t.abs().sum())  # L1 kept
    assert 0.35 < (s != 0).float().mean() < 0.65
    assert torch.equal(s, make_method("della", density=0.5, epsilon=0.2, seed=3)._sparse("w", 0, t))
    assert not torch.equal(
        s, make_method("della", density=0.5, epsilon=0.2, seed=4)._sparse("w", 0, t)
    )


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("breadcrumbs", {"density": 0.95, "gamma": 0.1}, "gamma + density must be ≤ 1"),
        ("breadcrumbs", {"gamma": 1.0}, "gamma out of range"),
        ("della", {"density": 0.9, "epsilon": 0.15}, "density ± epsilon must lie in (0, 1)"),
    ],
)
def test_sparsifier_parameters_are_validated(name, params, words) -> None:
    with pytest.raises(LinesError, match=re.escape(words)):
        make_method(name, **params)


def test_cart_adds_low_rank_centred_parts_to_the_average() -> None:
    # mean diag(3, 2); centred diag(6,-2), diag(-3,4), diag(-3,-2) keep 6·e1, 4·e2, −3·e1 at k = 1
    t = (diag(9, 0), diag(0, 6), diag(0, 0))
    assert torch.allclose(merge("cart", *t, rank=0.5), diag(6, 6), atol=1e-5)
    assert torch.allclose(merge("cart", *t, rank=0.5, low_rank_scale=0.0), diag(3, 2), atol=1e-6)
    # full rank: the centred parts sum to zero, so CART is the average
    assert torch.allclose(merge("cart", *t, rank=1.0), diag(3, 2), atol=1e-5)


def _wudi_loss(m: torch.Tensor, tvs: torch.Tensor) -> float:
    l2 = tvs.reshape(len(tvs), -1).norm(dim=-1).square()
    return float(((m - tvs) @ tvs.transpose(1, 2)).square().sum((1, 2)).div(l2).sum())


def test_wudi_starts_at_the_sum_and_lowers_its_loss() -> None:
    g = torch.Generator().manual_seed(0)
    tvs = torch.randn(3, 6, 5, generator=g)
    assert torch.equal(merge("wudi", *tvs, iterations=0), tvs.sum(0))
    assert torch.allclose(merge("wudi", *tvs[:, 0, :], iterations=5), tvs[:, 0, :].mean(0))
    after = merge("wudi", *tvs, iterations=200, lr=1e-2)
    assert _wudi_loss(after, tvs) < 0.5 * _wudi_loss(tvs.sum(0), tvs)


def test_wudi_with_an_unchanged_matrix_stays_finite() -> None:
    g = torch.Generator().manual_seed(1)
    tvs = torch.randn(2, 4, 3, generator=g)
    got = merge("wudi", tvs[0], tvs[1], torch.zeros(4, 3), iterations=20, lr=1e-2)
    assert torch.isfinite(got).all()
    # the zero task adds nothing to the objective: same as merging without it, from Σ τ_i
    assert torch.allclose(got, merge("wudi", tvs[0], tvs[1], iterations=20, lr=1e-2), atol=1e-6)


def test_wudi_quadratic_form_of_a_tall_matrix_gives_its_loss() -> None:
    # tr(τ_m G τ_mᵀ) − 2 tr(τ_m Bᵀ) + Σ_i ‖τ_iτ_iᵀ‖²/‖τ_i‖² is the loss, with (cols × cols) G only:
    # BERT's word embeddings (30,522 × 384) would otherwise need a 30,522² product per task
    from lines.merging.methods.wudi import interference, quadratic_form

    g = torch.Generator().manual_seed(2)
    tvs = torch.randn(3, 40, 6, dtype=torch.float64, generator=g)
    l2 = tvs.reshape(3, -1).norm(dim=-1).square()
    m = tvs.sum(0)
    direct = interference(m, tvs, l2)
    assert torch.isclose(direct, torch.tensor(_wudi_loss(m, tvs), dtype=torch.float64))
    gram, b = quadratic_form(tvs, l2)
    assert gram.shape == (6, 6) and b.shape == (40, 6)
    const = sum((t @ t.T).square().sum() / n for t, n in zip(tvs, l2, strict=True))
    quad = torch.trace(m @ gram @ m.T) - 2 * torch.trace(m @ b.T) + const
    assert torch.allclose(quad, direct, rtol=1e-10)


def test_wudi_analytic_gradient_is_the_autograd_gradient_of_its_loss() -> None:
    # the quadratic form's 2(τ_m·G − B) against autograd through interference(), wide and tall
    from lines.merging.methods.wudi import interference, quadratic_form

    g = torch.Generator().manual_seed(3)
    for shape in ((3, 5, 9), (3, 9, 5)):
        tvs = torch.randn(*shape, dtype=torch.float64, generator=g)
        l2 = tvs.reshape(3, -1).norm(dim=-1).square()
        m = torch.randn(*shape[1:], dtype=torch.float64, generator=g).requires_grad_(True)
        interference(m, tvs, l2).backward()
        gram, b = quadratic_form(tvs, l2)
        assert torch.allclose(2.0 * (m.detach() @ gram - b), m.grad, rtol=1e-10, atol=1e-12)


def test_wudi_steps_equal_an_autograd_adam_loop() -> None:
    # the merge is the same Adam trajectory as optimising the loss with autograd (FusionBench's
    # loop), up to rounding
    from lines.merging.methods.wudi import interference

    g = torch.Generator().manual_seed(4)
    tvs = torch.randn(3, 7, 6, dtype=torch.float64, generator=g)
    l2 = tvs.reshape(3, -1).norm(dim=-1).square()
    m = torch.nn.Parameter(tvs.sum(0).clone())
    opt = torch.optim.Adam([m], lr=1e-2)
    for _ in range(50):
        opt.zero_grad()
        interference(m, tvs, l2).backward()
        opt.step()
    got = merge("wudi", *tvs, iterations=50, lr=1e-2)
    assert torch.allclose(got, m.detach(), atol=1e-9)
