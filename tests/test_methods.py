"""Every merge method's formula on tiny hand-made task vectors, and the TIES threshold against the
reference definition ``M.abs().kthvalue(d - int(d*K))`` with mask ``|M| >= kth``.

Expected tensors are written out by hand; the random tests compare the streaming code with a
direct port of the reference's whole-vector computation (a different code path).
"""

from __future__ import annotations

import pytest
import torch

from lines.errors import LinesError
from lines.merging import make_method
from lines.merging.base import (
    MergeMethod,
    RadixSelect,
    disjoint_mean,
    elect_sign,
    global_k,
    kth_threshold,
    trim,
)
from lines.merging.methods.consensus import Consensus, tall_masks
from lines.merging.methods.dare import Dare
from lines.merging.methods.magnitude_prune import MagnitudePrune
from lines.merging.methods.rewarded_soup import RewardedSoup
from lines.merging.methods.task_arithmetic import TaskArithmetic
from lines.merging.methods.ties import Ties
from lines.merging.methods.uniform_soup import UniformSoup
from lines.merging.methods.wise_ft import WiseFT

T = torch.tensor


def run_stream(method: MergeMethod, taus: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Drive a method the way the engine does: begin, statistics passes, merge pass, fix-ups."""
    n = len(next(iter(taus.values())))
    total = sum(v[0].numel() for v in taus.values())
    method.begin(n, total)
    for p in range(method.stats_passes):
        for key, ts in taus.items():
            method.observe(p, key, ts)
        method.end_pass(p)
    out = {key: method.merge_tensor(key, ts) for key, ts in taus.items()}
    for key in method.fixup_keys():
        out[key] = method.merge_tensor(key, taus[key])
    return out


def assert_same(got: torch.Tensor, want: list | torch.Tensor) -> None:
    want_t = want if isinstance(want, torch.Tensor) else T(want, dtype=got.dtype)
    assert got.shape == want_t.shape, (got, want_t)
    assert torch.equal(got, want_t), (got, want_t)


# Two task vectors over two tensors (8 entries each), used by TIES and magnitude pruning.
#   τ1: a = [4, -3, 2, 1],    b = [0.5, 0.25, -8, 0.125]
#   τ2: a = [-1, 2, 3, -0.5], b = [6, -5, 1.5, 0.75]
# Global density 0.5: k = 8 − 4 = 4 → 4th smallest |τ|.
#   τ1 sorted |·|: 0.125 0.25 0.5 1 2 3 4 8      → threshold 1
#   τ2 sorted |·|: 0.5 0.75 1 1.5 2 3 5 6        → threshold 1.5
# Per-tensor density 0.5: k = 4 − 2 = 2 → 2nd smallest within each tensor.
#   τ1.a: 1 2 3 4 → 2;  τ1.b: 0.125 0.25 0.5 8 → 0.25
#   τ2.a: 0.5 1 2 3 → 1;  τ2.b: 0.75 1.5 5 6 → 1.5
TWO = {
    "a": [T([4.0, -3.0, 2.0, 1.0]), T([-1.0, 2.0, 3.0, -0.5])],
    "b": [T([0.5, 0.25, -8.0, 0.125]), T([6.0, -5.0, 1.5, 0.75])],
}


# ---------------------------------------------------------------------------------------------
# task arithmetic, soups, WiSE-FT, rewarded soups


def test_task_arithmetic_sum_and_mean():
    taus = {"w": [T([1.0, -2.0, 0.5]), T([3.0, 4.0, -0.5]), T([0.0, 1.0, 1.0])]}
    assert_same(run_stream(TaskArithmetic(), taus)["w"], [4.0, 3.0, 1.0])
    assert_same(run_stream(TaskArithmetic(mode="mean"), taus)["w"], [4 / 3, 1.0, 1 / 3])
    with pytest.raises(LinesError):
        TaskArithmetic(mode="median")  # type: ignore[arg-type]


def test_uniform_soup_is_mean():
    taus = {"w": [T([[1.0, 2.0], [3.0, 4.0]]), T([[3.0, -2.0], [0.0, 1.0]])]}
    assert_same(run_stream(UniformSoup(), taus)["w"], [[2.0, 0.0], [1.5, 2.5]])


def test_wise_ft_gamma_times_tau():
    out = run_stream(WiseFT(gamma=0.25), {"w": [T([4.0, -8.0, 1.0])]})
    assert_same(out["w"], [1.0, -2.0, 0.25])
    assert_same(run_stream(WiseFT(gamma=0.0), {"w": [T([4.0])]})["w"], [0.0])
    with pytest.raises(LinesError):
        WiseFT(gamma=1.5)
    with pytest.raises(LinesError):
        WiseFT(gamma=0.5).begin(2, 4)  # one fine-tuned model only


def test_rewarded_soup_weights():
    taus = {"w": [T([4.0, 0.0, -2.0]), T([0.0, 8.0, 2.0])]}
    assert_same(run_stream(RewardedSoup(weights=(0.25, 0.75)), taus)["w"], [1.0, 6.0, 1.0])
    assert_same(run_stream(RewardedSoup(weights=(1.0, 0.0)), taus)["w"], [4.0, 0.0, -2.0])


@pytest.mark.parametrize(
    "weights", [(0.5, 0.6), (-0.5, 1.5), (), (0.3, 0.3), (float("nan"), 1.0), (2.0,)]
)
def test_rewarded_soup_off_simplex_raises(weights):
    with pytest.raises(LinesError):
        RewardedSoup(weights=weights)


def test_rewarded_soup_weight_count_must_match():
    m = RewardedSoup(weights=(0.5, 0.5))
    with pytest.raises(LinesError):
        m.begin(3, 6)


def test_min_models_enforced():
    with pytest.raises(LinesError):
        TaskArithmetic().begin(1, 4)


# ---------------------------------------------------------------------------------------------
# TIES


def test_ties_density_one_sign_election_and_disjoint_mean():
    # density 1: no trim. a: sums [3, -1, 5, 0.5] → signs [+, -, +, +]
    #   e0: +: {4} → 4;  e1: −: {-3} → -3;  e2: +: {2, 3} → 2.5;  e3: +: {1} → 1
    m = Ties(density=1.0)
    assert m.stats_passes == 0
    out = run_stream(m, {"a": TWO["a"]})
    assert_same(out["a"], [4.0, -3.0, 2.5, 1.0])


def test_ties_global_density_half_hand_values():
    m = Ties(density=0.5, scope="global")
    assert m.stats_passes == 2
    out = run_stream(m, TWO)
    assert m.thresholds() == [1.0, 1.5]
    # trimmed τ1: a [4,-3,2,1], b [0,0,-8,0];  τ2: a [0,2,3,0], b [6,-5,1.5,0]
    # a: sums [4,-1,5,1] → [+,-,+,+] → [4, -3, 2.5, 1]
    # b: sums [6,-5,-6.5,0] → [+,-,-,0] → [6, -5, -8, 0]
    assert_same(out["a"], [4.0, -3.0, 2.5, 1.0])
    assert_same(out["b"], [6.0, -5.0, -8.0, 0.0])


def test_ties_per_tensor_density_half_hand_values():
    m = Ties(density=0.5, scope="per_tensor")
    assert m.stats_passes == 0
    out = run_stream(m, TWO)
    # trimmed τ1: a [4,-3,2,0], b [0.5,0.25,-8,0];  τ2: a [-1,2,3,0], b [6,-5,1.5,0]
    # a: sums [3,-1,5,0] → [4, -3, 2.5, 0]
    # b: sums [6.5,-4.75,-6.5,0] → e0 mean(0.5, 6) = 3.25 → [3.25, -5, -8, 0]
    assert_same(out["a"], [4.0, -3.0, 2.5, 0.0])
    assert_same(out["b"], [3.25, -5.0, -8.0, 0.0])


def test_ties_scopes_differ():
    g = run_stream(Ties(density=0.5, scope="global"), TWO)
    p = run_stream(Ties(density=0.5, scope="per_tensor"), TWO)
    assert not torch.equal(g["a"], p["a"])
    assert not torch.equal(g["b"], p["b"])


def test_ties_exact_tie_negative_majority_via_fixup():
    # x: τ1 [1,-2,3], τ2 [-1,-1,-1] → sums [0,-3,2] → signs [0,-,+]  (e0 is an exact tie)
    # y: τ1 [-1,-1],  τ2 [-1,-1]    → signs [-,-]
    # Σ signs = 0 - 1 + 1 - 1 - 1 = -2 → majority −1 → e0 keeps the negative entry: -1
    taus = {"x": [T([1.0, -2.0, 3.0]), T([-1.0, -1.0, -1.0])], "y": [T([-1.0, -1.0])] * 2}
    m = Ties(density=1.0)
    m.begin(2, 5)
    provisional = m.merge_tensor("x", taus["x"])
    assert_same(provisional, [1.0, -1.5, 3.0])  # +1 until the majority is known
    assert_same(m.merge_tensor("y", taus["y"]), [-1.0, -1.0])
    assert m.fixup_keys() == ["x"]
    assert_same(m.merge_tensor("x", taus["x"]), [-1.0, -1.5, 3.0])
    assert_same(run_stream(Ties(density=1.0), taus)["x"], [-1.0, -1.5, 3.0])


def test_ties_exact_tie_positive_majority_needs_no_fixup():
    # x: same tie at e0; y: signs [+,+] → Σ signs = 0 - 1 + 1 + 1 + 1 = 2 → majority +1 → e0 = 1
    taus = {"x": [T([1.0, -2.0, 3.0]), T([-1.0, -1.0, -1.0])], "y": [T([1.0, 2.0])] * 2}
    m = Ties(density=1.0)
    out = run_stream(m, taus)
    assert m.fixup_keys() == []
    assert_same(out["x"], [1.0, -1.5, 3.0])
    assert_same(out["y"], [1.0, 2.0])


def test_ties_exact_tie_zero_majority_selects_negatives():
    # τ1 [1,3,-2], τ2 [-1,-1,1] → sums [0,2,-1] → signs [0,+,-] → Σ = 0 → majority 0:
    # the reference's where(s>0, t>0, t<0) then keeps the negative entry at e0.
    taus = {"x": [T([1.0, 3.0, -2.0]), T([-1.0, -1.0, 1.0])]}
    assert_same(run_stream(Ties(density=1.0), taus)["x"], [-1.0, 3.0, -2.0])


def test_ties_trimmed_sum_zero_after_trim():
    # Trim creates the tie: density 0.5 over 4 entries → k = 2 → 2nd smallest |τ|.
    # τ1 = [2, 0.5, -2, 1]   → |·| 0.5 1 2 2 → thr 1 → [2, 0, -2, 1]
    # τ2 = [-2, 0.25, 4, -3] → |·| 0.25 2 3 4 → thr 2 → [-2, 0, 4, -3]
    # sums [0, 0, 2, -2] → signs [0, 0, +, −]; Σ signs = 0 → majority 0 → e0 picks −2
    taus = {"w": [T([2.0, 0.5, -2.0, 1.0]), T([-2.0, 0.25, 4.0, -3.0])]}
    m = Ties(density=0.5)
    out = run_stream(m, taus)
    assert m.thresholds() == [1.0, 2.0]
    assert_same(out["w"], [-2.0, 0.0, 4.0, -3.0])


def test_ties_validation():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(LinesError):
            Ties(density=bad)
    with pytest.raises(LinesError):
        Ties(scope="layer")  # type: ignore[arg-type]
    with pytest.raises(LinesError):
        make_method("ties", densty=0.2)


# ---------------------------------------------------------------------------------------------
# magnitude pruning


def test_magnitude_prune_global_hand_values():
    out = run_stream(MagnitudePrune(density=0.5, scope="global"), TWO)
    # trimmed sums: a [4,-3,2,1]+[0,2,3,0]; b [0,0,-8,0]+[6,-5,1.5,0]
    assert_same(out["a"], [4.0, -1.0, 5.0, 1.0])
    assert_same(out["b"], [6.0, -5.0, -6.5, 0.0])


def test_magnitude_prune_per_tensor_hand_values():
    out = run_stream(MagnitudePrune(density=0.5, scope="per_tensor"), TWO)
    # a [4,-3,2,0]+[-1,2,3,0];  b [0.5,0.25,-8,0]+[6,-5,1.5,0]
    assert_same(out["a"], [3.0, -1.0, 5.0, 0.0])
    assert_same(out["b"], [6.5, -4.75, -6.5, 0.0])


def test_magnitude_prune_density_one_is_task_arithmetic():
    out = run_stream(MagnitudePrune(density=1.0), TWO)
    assert_same(out["a"], [3.0, -1.0, 5.0, 0.5])
    assert_same(out["b"], [6.5, -4.75, -6.5, 0.875])


# ---------------------------------------------------------------------------------------------
# DARE


def test_dare_drop_zero_is_task_arithmetic():
    taus = {"w": [T([1.0, -2.0, 0.5, 8.0]), T([3.0, 4.0, -0.5, 0.25])]}
    assert_same(run_stream(Dare(drop_rate=0.0), taus)["w"], [4.0, 2.0, 0.0, 8.25])
    assert_same(run_stream(Dare(drop_rate=0.0, mode="mean"), taus)["w"], [2.0, 1.0, 0.0, 4.125])


def test_dare_seeded_reproducible_and_rescaled():
    tau = torch.arange(1.0, 65.0)  # 1..64, all non-zero
    taus = {"w": [tau, torch.zeros(64)]}
    a = run_stream(Dare(drop_rate=0.5, seed=3), taus)["w"]
    b = run_stream(Dare(drop_rate=0.5, seed=3), taus)["w"]
    assert torch.equal(a, b)
    kept = a != 0
    # every survivor is τ/(1−p) = 2τ exactly; every dropped entry is 0
    assert torch.equal(a[kept], 2 * tau[kept])
    assert 0 < int(kept.sum()) < 64
    c = run_stream(Dare(drop_rate=0.5, seed=4), taus)["w"]
    assert not torch.equal(a, c)
    # p = 0.75 → survivors are 4τ
    d = run_stream(Dare(drop_rate=0.75, seed=3), taus)["w"]
    assert torch.equal(d[d != 0], 4 * tau[d != 0])


def test_dare_mask_independent_of_tensor_order():
    taus = {"u": [torch.ones(16), torch.ones(16)], "v": [torch.ones(8) * 2, torch.ones(8)]}
    m1, m2 = Dare(drop_rate=0.5, seed=1), Dare(drop_rate=0.5, seed=1)
    m1.begin(2, 24)
    m2.begin(2, 24)
    u1, v1 = m1.merge_tensor("u", taus["u"]), m1.merge_tensor("v", taus["v"])
    v2, u2 = m2.merge_tensor("v", taus["v"]), m2.merge_tensor("u", taus["u"])
    assert torch.equal(u1, u2) and torch.equal(v1, v2)


def test_dare_validation():
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(LinesError):
            Dare(drop_rate=bad)


# ---------------------------------------------------------------------------------------------
# Consensus / TALL masks


# τ1 = [1, 2, 0, -4], τ2 = [1, -1, 3, 1], τ3 = [-1.5, 0.75, 0, 1];  Σ = [0.5, 1.75, 3, -2]
CONS = [T([1.0, 2.0, 0.0, -4.0]), T([1.0, -1.0, 3.0, 1.0]), T([-1.5, 0.75, 0.0, 1.0])]


def test_tall_masks_hand_values():
    # λ = 0.5:  m_t = |τ_t| ≥ 0.5·|Σ − τ_t|
    # t1: Σ−τ1 = [-0.5, -0.25, 3, 2] → rhs [0.25, 0.125, 1.5, 1]; |τ1| [1,2,0,4] → T T F T
    # t2: Σ−τ2 = [-0.5, 2.75, 0, -3] → rhs [0.25, 1.375, 0, 1.5]; |τ2| [1,1,3,1] → T F T F
    # t3: Σ−τ3 = [2, 1, 3, -3]       → rhs [1, 0.5, 1.5, 1.5];  |τ3| [1.5,.75,0,1] → T T F F
    masks = tall_masks(CONS, 0.5)
    want = T([[1, 1, 0, 1], [1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(masks, want)


def test_tall_masks_per_task_lambda():
    # λ = (0.5, 0.5, 2): t3 rhs = [4, 2, 6, 6] → F F F F
    masks = tall_masks(CONS, [0.5, 0.5, 2.0])
    assert torch.equal(masks[2], torch.zeros(4, dtype=torch.bool))
    assert torch.equal(masks[0], T([True, True, False, True]))


def test_tall_mask_equality_is_kept():
    # The paper's (and REFERENCE.md's) m_t = |τ_t| ≥ λ|τ_MTL − τ_t|: equality counts as agreeing.
    # τ1 = 1, τ2 = 2, λ = 0.5: |τ1| = 1 = 0.5·|3 − 1|
    masks = tall_masks([T([1.0]), T([2.0])], 0.5)
    assert torch.equal(masks[:, 0], T([True, True]))


def test_consensus_k2_hand_values():
    # agreeing counts [3, 2, 1, 1]; k = 2 keeps entries 0, 1 of Σ
    out = run_stream(Consensus(k=2, tall_lambda=0.5), {"w": CONS})
    assert_same(out["w"], [0.5, 1.75, 0.0, 0.0])


def test_consensus_k1_k3():
    assert_same(run_stream(Consensus(k=1, tall_lambda=0.5), {"w": CONS})["w"], [0.5, 1.75, 3, -2])
    assert_same(run_stream(Consensus(k=3, tall_lambda=0.5), {"w": CONS})["w"], [0.5, 0, 0, 0])
    # k = 0 is task arithmetic
    assert_same(run_stream(Consensus(k=0, tall_lambda=0.5), {"w": CONS})["w"], [0.5, 1.75, 3, -2])


def test_consensus_validation():
    with pytest.raises(LinesError):
        Consensus(k=-1)
    with pytest.raises(LinesError):
        Consensus(tall_lambda=0.0)
    with pytest.raises(LinesError):
        Consensus(k=4).begin(3, 12)


# ---------------------------------------------------------------------------------------------
# Primitives


def test_primitives_hand_values():
    t = T([3.0, -1.0, 0.5, -2.0])
    assert kth_threshold(t.abs(), 0.5) == 1.0  # d=4, k=2 → 2nd smallest of 0.5 1 2 3
    assert kth_threshold(t.abs(), 0.25) == 2.0  # k = 4 − 1 = 3
    assert kth_threshold(t.abs(), 1.0) == float("-inf")
    assert_same(trim(t, 1.0), [3.0, -1.0, 0.0, -2.0])
    assert_same(trim(t, float("-inf")), [3.0, -1.0, 0.5, -2.0])
    tr = [T([1.0, -2.0, 0.0]), T([3.0, 1.0, 0.0])]
    assert_same(elect_sign(tr), [1.0, -1.0, 0.0])
    assert_same(disjoint_mean(tr, T([1.0, -1.0, 0.0])), [2.0, -2.0, 0.0])
    assert global_k(10, 0.2) == 8
    assert global_k(10, 0.7) == 3  # int(10·0.7) = int(7.000000000000001) = 7
    assert global_k(100, 0.29) == 72  # int(28.999999999999996) = 28, as the reference computes


# ---------------------------------------------------------------------------------------------
# Reference semantics of the TIES threshold, with ties, zeros and subnormals


def _tricky_values(g: torch.Generator, n: int) -> torch.Tensor:
    pool = T(
        [0.0, -0.0, 1e-45, -1e-45, 1e-40, 3e-39, 1e-3, -1e-3, 0.5, -0.5, 0.5, 1.0, 2.0, -2.0, 7.25]
    )
    v = pool[torch.randint(0, len(pool), (n,), generator=g)]
    # a few continuous values too
    noise = torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.2)
    return torch.where(noise != 0, noise, v)


def _reference_kth(concat: torch.Tensor, density: float) -> float:
    d = concat.numel()
    k = d - int(d * density)
    return float(concat.abs().kthvalue(k).values)


@pytest.mark.parametrize("density", [0.01, 0.1, 0.2, 0.37, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_radix_select_equals_global_kthvalue(density, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [1, 7, 300, 64, 1000, 3]
    tensors = [_tricky_values(g, s) for s in sizes]
    concat = torch.cat(tensors)
    total = concat.numel()
    sel = RadixSelect(total, global_k(total, density))
    for p in range(2):
        for t in tensors:
            sel.observe(p, t.abs())
        sel.end_pass(p)
    want = _reference_kth(concat, density)
    assert sel.value == want
    # the streaming mask equals the whole-vector mask exactly
    ref_mask = concat.abs() >= concat.abs().kthvalue(total - int(total * density)).values
    got_mask = torch.cat([t.abs() >= sel.value for t in tensors])
    assert torch.equal(got_mask, ref_mask)
    # single-tensor primitive agrees too
    assert kth_threshold(concat.abs(), density) == want


def test_radix_select_all_equal_and_all_zero():
    for fill in (0.0, -0.0, 1e-45, 3.5):
        tensors = [torch.full((5,), fill), torch.full((3,), fill)]
        sel = RadixSelect(8, global_k(8, 0.2))
        for p in range(2):
            for t in tensors:
                sel.observe(p, t.abs())
            sel.end_pass(p)
        assert sel.value == float(torch.tensor(fill).abs())


def test_radix_select_trivial_density_one():
    sel = RadixSelect(10, global_k(10, 1.0))
    assert sel.trivial and sel.value == float("-inf")


def _reference_ties(flat_taus: torch.Tensor, density: float) -> torch.Tensor:
    """A direct port of the reference TIES on the (N, d) stacked flattened task vectors."""
    n, d = flat_taus.shape
    k = d - int(d * density)
    kth = flat_taus.abs().kthvalue(k, dim=1, keepdim=True).values
    trimmed = flat_taus * (flat_taus.abs() >= kth)
    sign = torch.sign(trimmed.sum(0))
    majority = torch.sign(sign.sum())
    sign[sign == 0] = majority
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    sel = trimmed * keep
    return sel.sum(0) / (sel != 0).sum(0).float().clamp(min=1)


@pytest.mark.parametrize("density", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_ties_equals_reference_port(density, seed):
    g = torch.Generator().manual_seed(seed)
    # small integers: plenty of ties in |τ| and exact zero sums
    shapes = {"a": (5, 4), "b": (17,), "c": (3, 3), "d": (1,)}
    taus = {
        k: [torch.randint(-3, 4, s, generator=g).float() for _ in range(3)]
        for k, s in shapes.items()
    }
    out = run_stream(Ties(density=density), taus)
    flat = torch.stack([torch.cat([taus[k][i].reshape(-1) for k in shapes]) for i in range(3)])
    want = _reference_ties(flat, density)
    got = torch.cat([out[k].reshape(-1) for k in shapes])
    assert torch.equal(got, want)


def test_make_method_registry():
    assert isinstance(make_method("ties", density=0.5), Ties)
    with pytest.raises(LinesError):
        make_method("nope")


@pytest.mark.parametrize("density", [0.05, 0.3, 0.75])
def test_streaming_magnitude_prune_mask_equals_global_kthvalue(density):
    g = torch.Generator().manual_seed(7)
    sizes = {"p": 40, "q": 513, "r": 2, "s": 129}
    taus = {k: [_tricky_values(g, n) for _ in range(2)] for k, n in sizes.items()}
    out = run_stream(MagnitudePrune(density=density), taus)
    want = torch.zeros(sum(sizes.values()))
    for i in range(2):
        flat = torch.cat([taus[k][i] for k in sizes])
        d = flat.numel()
        kth = flat.abs().kthvalue(d - int(d * density)).values
        want += flat * (flat.abs() >= kth)
    assert torch.equal(torch.cat([out[k] for k in sizes]), want)


@pytest.mark.slow
def test_ties_majority_sign_exact_beyond_float32_integers():
    """The majority Σ sign is an exact integer count: a float32 sum of 2^25 ±1 signs rounds
    (2^24 + 1 − 2^24 gives 0), which would flip the tie-break to the negative side."""
    n = 2**24
    tau = torch.cat([torch.ones(n + 1), -torch.ones(n), T([1.0])])
    other = torch.cat([torch.zeros(2 * n + 1), T([-1.0])])  # last entry: 1 + (−1) = 0, a tie
    m = Ties(density=1.0)
    out = run_stream(m, {"x": [tau, other]})
    assert m._majority == 1  # Σ signs = (n + 1) − n + 0 = 1
    assert float(out["x"][-1]) == 1.0


@pytest.mark.parametrize("name", ["ties", "magnitude_prune"])
def test_per_tensor_trim_in_chunks_gives_the_whole_tensor_bits(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Per-tensor scope hands the method a whole tensor; it trims, elects and merges it in chunks of
    # the flattened entries (memory: issue 13). Thresholds are the whole row's, every later step is
    # per entry, so any chunking — here 7 entries, splitting rows mid-way — gives the same bits,
    # and the trim is the reference one: x · (|x| ≥ the (d − ⌊d·density⌋)-th smallest |x|).
    import lines.merging.sparsify as sp
    from lines.merging import make_method
    from lines.merging.base import TaskVectors, kth_threshold

    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 9, generator=g)
    x[:, 0, 0] = torch.tensor([1.0, -1.0, 0.0])  # an exact zero sum of kept entries (a tie)

    def run() -> torch.Tensor:
        m = make_method(name, density=0.4, scope="per_tensor")
        m.begin(3, x[0].numel(), "cpu")
        return m.merge_tensor("k", TaskVectors(x.clone()))

    whole = run()
    monkeypatch.setattr(sp, "CHUNK", 7)
    assert torch.equal(run(), whole)
    trimmed = torch.stack([t * (t.abs() >= kth_threshold(t.abs(), 0.4)) for t in x])
    if name == "magnitude_prune":
        assert torch.equal(whole, trimmed.sum(0))
