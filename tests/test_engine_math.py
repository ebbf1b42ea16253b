"""Engine-level properties of merge_checkpoints on tiny BERT-style safetensors checkpoints, with
every expected tensor written out by hand.

Layout (family ``bert``, L = 3 blocks):
    embeddings.word_embeddings.weight  block 1 (input side)
    embeddings.position_ids            int64 buffer, passes through from θ_0
    encoder.layer.{0,1,2}.w            blocks 1, 2, 3
    pooler.dense.weight                block 1 under policy ``reference``, block 3 under ``depth``
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lines.engine import apply_task_vector, edit_checkpoint, merge_checkpoints
from lines.io import load_state_dict, save_state_dict
from lines.merging.greedy import greedy_soup
from lines.merging.methods.task_arithmetic import TaskArithmetic
from lines.merging.methods.ties import Ties
from lines.scaling import Scaling

T = torch.tensor
EMB, POS, POOL = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_ids",
    "pooler.dense.weight",
)
L0, L1, L2 = "encoder.layer.0.w", "encoder.layer.1.w", "encoder.layer.2.w"
FLOAT_KEYS = (EMB, L0, L1, L2, POOL)

THETA0 = {
    EMB: T([[1.0, 2.0], [3.0, 4.0]]),
    POS: T([[0, 1, 2]], dtype=torch.int64),
    L0: T([0.5, -0.5]),
    L1: T([1.0, 1.0]),
    L2: T([-1.0, 2.0]),
    POOL: T([0.0, 0.25]),
}
TAU1 = {
    EMB: T([[1.0, 0.0], [-2.0, 0.5]]),
    L0: T([2.0, -1.0]),
    L1: T([0.5, 0.0]),
    L2: T([-4.0, 1.0]),
    POOL: T([1.0, 2.0]),
}
TAU2 = {
    EMB: T([[1.0, 2.0], [0.0, 0.5]]),
    L0: T([-1.0, 3.0]),
    L1: T([0.5, -2.0]),
    L2: T([2.0, 1.0]),
    POOL: T([-1.0, 2.0]),
}

# θ_0 + τ1 + τ2 (Σ τ: emb [[2,2],[-2,1]], l0 [1,2], l1 [1,-2], l2 [-2,2], pool [0,4])
TA_SUM = {
    EMB: T([[3.0, 4.0], [1.0, 5.0]]),
    L0: T([1.5, 1.5]),
    L1: T([2.0, -1.0]),
    L2: T([-3.0, 4.0]),
    POOL: T([0.0, 4.25]),
}
# θ_0 + λ(ℓ)Σ τ with α = β = 0.5 → λ = [0.5, 0.75, 1.0]; pooler in block 1 (reference policy)
TA_LINES = {
    EMB: T([[2.0, 3.0], [2.0, 4.5]]),
    L0: T([1.0, 0.5]),
    L1: T([1.75, -0.5]),
    L2: T([-3.0, 4.0]),
    POOL: T([0.0, 2.25]),
}

QUIET = {"progress": False, "hash_inputs": False}


def _ft(tau: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {k: (THETA0[k] + tau[k]) if k in tau else THETA0[k] for k in THETA0}
    sd[POS] = T([[5, 5, 5]], dtype=torch.int64)  # a fine-tuned buffer that must be ignored
    return sd


@pytest.fixture
def ckpts(tmp_path: Path) -> tuple[Path, list[Path]]:
    base = save_state_dict(tmp_path / "theta0.safetensors", THETA0)
    f1 = save_state_dict(tmp_path / "ft1.safetensors", _ft(TAU1))
    f2 = save_state_dict(tmp_path / "ft2.safetensors", _ft(TAU2))
    return base, [f1, f2]


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_sd(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    for k, v in want.items():
        assert got[k].dtype == v.dtype, k
        assert torch.equal(got[k], v), (k, got[k], v)


def test_task_arithmetic_uniform_one_hand_values(ckpts, tmp_path):
    base, fts = ckpts
    m = merge_checkpoints(
        base, fts, TaskArithmetic(), Scaling.uniform(1.0), tmp_path / "ta.safetensors", **QUIET
    )
    out = load_state_dict(tmp_path / "ta.safetensors")
    assert_sd(out, TA_SUM)
    assert m["num_blocks"] == 3 and m["family"] == "bert"
    assert m["scaling"]["lambdas"] == [1.0, 1.0, 1.0]


def test_lines_alpha1_beta0_is_identity(ckpts, tmp_path):
    """(a) LiNeS with α = 1, β = 0 equals the uniform scale 1 output exactly."""
    base, fts = ckpts
    merge_checkpoints(
        base, fts, TaskArithmetic(), Scaling.uniform(1.0), tmp_path / "u.safetensors", **QUIET
    )
    merge_checkpoints(
        base,
        fts,
        TaskArithmetic(),
        Scaling.lines(beta=0.0, alpha=1.0),
        tmp_path / "l.safetensors",
        **QUIET,
    )
    u, li = load_state_dict(tmp_path / "u.safetensors"), load_state_dict(tmp_path / "l.safetensors")
    assert set(u) == set(li) == set(THETA0)
    for k in u:
        assert torch.equal(u[k], li[k]), k
    assert_sd(li, TA_SUM)


def test_lines_on_task_arithmetic_hand_values(ckpts, tmp_path):
    base, fts = ckpts
    m = merge_checkpoints(
        base,
        fts,
        TaskArithmetic(),
        Scaling.lines(beta=0.5, alpha=0.5),
        tmp_path / "l.safetensors",
        **QUIET,
    )
    assert m["scaling"]["lambdas"] == [0.5, 0.75, 1.0]
    assert_sd(load_state_dict(tmp_path / "l.safetensors"), TA_LINES)


def test_lines_of_sum_equals_sum_of_lines(ckpts, tmp_path):
    """(b) With α fixed, LiNeS(Σ τ_i) = Σ LiNeS(τ_i): pre-merge LiNeS, post-merge LiNeS and a TA
    merge of single-task LiNeS edits (γ = 0.5 ⇔ α = β = 0.5) all give the same weights."""
    base, fts = ckpts
    merge_checkpoints(
        base,
        fts,
        TaskArithmetic(),
        Scaling.uniform(1.0),
        tmp_path / "pre.safetensors",
        pre_lines=(0.5, 0.5),
        **QUIET,
    )
    pre = load_state_dict(tmp_path / "pre.safetensors")
    assert_sd(pre, TA_LINES)

    edited = []
    for i, f in enumerate(fts):
        e = tmp_path / f"edit{i}.safetensors"
        man = edit_checkpoint(base, f, 0.5, e, **QUIET)
        assert man["scaling"]["lambdas"] == [0.5, 0.75, 1.0]
        edited.append(e)
    # an edited single-task model: θ_0 + λτ1
    e1 = load_state_dict(edited[0])
    assert torch.equal(e1[L0], T([1.5, -1.0]))  # 0.5 + 0.5·2, −0.5 + 0.5·(−1)
    assert torch.equal(e1[L1], T([1.375, 1.0]))  # 1 + 0.75·0.5
    assert torch.equal(e1[L2], T([-5.0, 3.0]))  # λ = 1
    assert torch.equal(e1[POS], THETA0[POS])
    merge_checkpoints(
        base,
        edited,
        TaskArithmetic(),
        Scaling.uniform(1.0),
        tmp_path / "sum_of_edits.safetensors",
        **QUIET,
    )
    assert_sd(load_state_dict(tmp_path / "sum_of_edits.safetensors"), TA_LINES)


def test_auto_alpha_task_arithmetic_is_one_over_n(ckpts, tmp_path):
    """(c) α = (1/N)‖Σ τ‖/‖τ_MTL‖ = 1/N for task arithmetic, L1 (and L2) norm."""
    base, fts = ckpts
    for norm in ("l1", "l2"):
        out = tmp_path / f"auto_{norm}.safetensors"
        m = merge_checkpoints(
            base, fts, TaskArithmetic(), Scaling.lines(beta=0.0, norm=norm), out, **QUIET
        )
        assert m["scaling"]["alpha_value"] == 0.5
        # L1 ‖Σ τ‖ = 7 + 3 + 3 + 4 + 4 = 21;  L2² = 13 + 5 + 5 + 8 + 16 = 47
        want = 21.0 if norm == "l1" else 47.0**0.5
        assert m["norms"]["task_vector_sum"] == pytest.approx(want, rel=1e-12)
        assert m["norms"]["merged_task_vector"] == m["norms"]["task_vector_sum"]
        # θ_0 + 0.5·Σ τ everywhere (β = 0)
        got = load_state_dict(out)
        assert torch.equal(got[L2], T([-2.0, 3.0]))
        assert torch.equal(got[POOL], T([0.0, 2.25]))


def test_auto_alpha_ties_hand_values(ckpts, tmp_path):
    """(c) TIES, density 0.5, global top-k over the 12 floating entries (k = 12 − 6 = 6):
    τ1 |·| sorted 0 0 .5 .5 1 1 1 1 2 2 2 4 → thr 1;  τ2 0 .5 .5 1 1 1 1 2 2 2 2 3 → thr 1.
    τ_MTL = emb [[1,2],[-2,0]], l0 [2,3], l1 [0,-2], l2 [-4,1], pool [1,2]  (‖·‖₁ = 20;
    the pooler's first entry is an exact tie 1 + (−1) = 0 resolved by the majority sign +).
    ‖Σ τ‖₁ = 21 → α = (1/2)·21/20 = 0.525."""
    base, fts = ckpts
    tv = tmp_path / "ties_tau.safetensors"
    m = merge_checkpoints(
        base,
        fts,
        Ties(density=0.5),
        Scaling.lines(beta=0.0),
        tmp_path / "ties.safetensors",
        save_task_vector=tv,
        **QUIET,
    )
    assert m["scaling"]["alpha_value"] == pytest.approx(0.525, rel=1e-12)
    assert m["norms"]["task_vector_sum"] == 21.0
    assert m["norms"]["merged_task_vector"] == 20.0
    tau = load_state_dict(tv)
    assert POS not in tau
    assert_sd(
        tau,
        {
            EMB: T([[1.0, 2.0], [-2.0, 0.0]]),
            L0: T([2.0, 3.0]),
            L1: T([0.0, -2.0]),
            L2: T([-4.0, 1.0]),
            POOL: T([1.0, 2.0]),
        },
    )
    out = load_state_dict(tmp_path / "ties.safetensors")
    assert torch.allclose(out[L0], T([0.5 + 0.525 * 2, -0.5 + 0.525 * 3]), atol=1e-6, rtol=0)
    assert torch.equal(out[POS], THETA0[POS])


def test_integer_buffers_pass_through(ckpts, tmp_path):
    """(d) int64 buffers come from θ_0 unchanged, in the direct and the two-phase paths."""
    base, fts = ckpts
    for i, scaling in enumerate([Scaling.uniform(0.3), Scaling.lines(beta=0.5)]):
        out = tmp_path / f"o{i}.safetensors"
        merge_checkpoints(base, fts, Ties(density=0.5), scaling, out, **QUIET)
        got = load_state_dict(out)
        assert got[POS].dtype == torch.int64
        assert torch.equal(got[POS], T([[0, 1, 2]]))


@pytest.mark.parametrize("auto", [False, True])
def test_apply_task_vector_reproduces_merge(ckpts, tmp_path, auto):
    """(e) A saved τ_MTL + apply_task_vector gives the merge's bytes for two different β."""
    base, fts = ckpts
    tv = tmp_path / "tau.safetensors"
    alpha = None if auto else 0.3
    merge_checkpoints(
        base,
        fts,
        Ties(density=0.5),
        Scaling.lines(beta=0.7, alpha=alpha),
        tmp_path / "first.safetensors",
        save_task_vector=tv,
        **QUIET,
    )
    for j, beta in enumerate((0.35, 1.3)):
        direct, applied = tmp_path / f"direct{j}.safetensors", tmp_path / f"applied{j}.safetensors"
        sc = Scaling.lines(beta=beta, alpha=alpha)
        merge_checkpoints(base, fts, Ties(density=0.5), sc, direct, **QUIET)
        apply_task_vector(base, tv, sc, applied, **QUIET)
        a, b = load_state_dict(direct), load_state_dict(applied)
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == b[k].dtype, k
            assert _raw(a[k]) == _raw(b[k]), k
    # the two β give different weights
    assert not torch.equal(
        load_state_dict(tmp_path / "direct0.safetensors")[L2],
        load_state_dict(tmp_path / "direct1.safetensors")[L2],
    )


def test_block_policy_changes_only_outside_tensors(ckpts, tmp_path):
    """(f) reference: pooler in block 1 (λ = 0.5); depth: pooler in block L (λ = 1)."""
    base, fts = ckpts
    sc = Scaling.lines(beta=0.5, alpha=0.5)
    for pol in ("reference", "depth"):
        merge_checkpoints(
            base,
            fts,
            TaskArithmetic(),
            sc,
            tmp_path / f"{pol}.safetensors",
            block_policy=pol,
            **QUIET,
        )
    ref = load_state_dict(tmp_path / "reference.safetensors")
    dep = load_state_dict(tmp_path / "depth.safetensors")
    assert_sd(ref, TA_LINES)
    assert torch.equal(dep[POOL], T([0.0, 4.25]))  # 0.25 + 1.0·4
    assert torch.equal(ref[POOL], T([0.0, 2.25]))  # 0.25 + 0.5·4
    for k in (EMB, POS, L0, L1, L2):
        assert torch.equal(ref[k], dep[k]), k


def test_bf16_output(ckpts, tmp_path):
    """(h) out_dtype bfloat16: floating tensors in bf16 (values exact here), buffers untouched."""
    base, fts = ckpts
    for i, scaling in enumerate([Scaling.lines(beta=0.5, alpha=0.5), Scaling.lines(beta=0.5)]):
        out = tmp_path / f"bf{i}.safetensors"
        merge_checkpoints(base, fts, TaskArithmetic(), scaling, out, out_dtype="bfloat16", **QUIET)
        got = load_state_dict(out)
        for k in FLOAT_KEYS:
            assert got[k].dtype == torch.bfloat16, k
        assert got[POS].dtype == torch.int64 and torch.equal(got[POS], THETA0[POS])
        if i == 0:
            assert_sd(got, {k: v.to(torch.bfloat16) for k, v in TA_LINES.items()})


# ---------------------------------------------------------------------------------------------
# (g) greedy soup


def _soup_ckpts(tmp_path: Path) -> tuple[Path, list[Path]]:
    """θ_0 = 0; model i differs from θ_0 only in encoder.layer.0.w = one-hot(i), so a soup's
    layer-0 tensor says which models are in it (entry i > 0)."""
    zero = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in THETA0.items()}
    zero[L0] = torch.zeros(3)
    base = save_state_dict(tmp_path / "z.safetensors", zero)
    fts = []
    for i in range(3):
        sd = dict(zero)
        sd[L0] = torch.eye(3)[i].clone()
        fts.append(save_state_dict(tmp_path / f"m{i}.safetensors", sd))
    return base, fts


def test_greedy_soup_selects_expected_subset(tmp_path):
    base, fts = _soup_ckpts(tmp_path)
    soup_scores = {frozenset({0, 1}): 0.85, frozenset({0, 2}): 0.95, frozenset({0, 1, 2}): 0.5}
    seen: list[frozenset[int]] = []

    def evaluate(path: Path) -> float:
        w = load_state_dict(path)[L0]
        members = frozenset(i for i in range(3) if float(w[i]) > 0)
        seen.append(members)
        return soup_scores[members]

    # order by score: 0 (0.9), 1 (0.8), 2 (0.7); {0,1} 0.85 < 0.9 rejected; {0,2} 0.95 accepted
    m = greedy_soup(
        base,
        fts,
        [0.9, 0.8, 0.7],
        evaluate,
        tmp_path / "soup.safetensors",
        progress=False,
        hash_inputs=False,
    )
    assert seen == [frozenset({0, 1}), frozenset({0, 2})]
    g = m["greedy_soup"]
    assert g["order"] == [0, 1, 2]
    assert g["selected"] == [0, 2]
    assert [h["accepted"] for h in g["history"]] == [True, False, True]
    assert g["best_score"] == 0.95
    out = load_state_dict(tmp_path / "soup.safetensors")
    assert torch.equal(out[L0], T([0.5, 0.0, 0.5]))
    assert torch.equal(out[POS], THETA0[POS])
    assert not list(tmp_path.glob(".greedy-soup-*"))  # temporary candidates cleaned up


def test_greedy_soup_equal_score_is_accepted_and_single_model(tmp_path):
    base, fts = _soup_ckpts(tmp_path)
    # order 1 (0.9), 2 (0.8), 0 (0.7): {1,2} ties 0.9 → accepted (≥); {0,1,2} 0.89 → rejected
    scores = {frozenset({1, 2}): 0.9, frozenset({0, 1, 2}): 0.89}

    def evaluate(path: Path) -> float:
        w = load_state_dict(path)[L0]
        return scores[frozenset(i for i in range(3) if float(w[i]) > 0)]

    m = greedy_soup(
        base,
        fts,
        [0.7, 0.9, 0.8],
        evaluate,
        tmp_path / "s.safetensors",
        progress=False,
        hash_inputs=False,
    )
    assert m["greedy_soup"]["order"] == [1, 2, 0]
    assert m["greedy_soup"]["selected"] == [1, 2]
    assert torch.equal(load_state_dict(tmp_path / "s.safetensors")[L0], T([0.0, 0.5, 0.5]))

    # nothing improves: the soup is the best single model itself
    m = greedy_soup(
        base,
        fts,
        [0.7, 0.9, 0.8],
        lambda p: 0.0,
        tmp_path / "one.safetensors",
        progress=False,
        hash_inputs=False,
    )
    assert m["greedy_soup"]["selected"] == [1]
    assert torch.equal(load_state_dict(tmp_path / "one.safetensors")[L0], T([0.0, 1.0, 0.0]))


def test_ties_exact_tie_fixup_through_engine(tmp_path):
    """The global majority sign is known only after the merge pass: an exact tie in an early
    tensor must be rewritten, in the direct path and in the two-phase (auto α) path with its norm.
    θ_0 = 0, density 1; encoder.layer.0.w: τ = [2, -1], [1, -1], [-3, -1] → entry 0 sums to 0;
    every other entry of every τ is −1 → majority −1 → entry 0 keeps −3 (not mean(2, 1) = 1.5).
    ‖τ_MTL‖₁ = 3 + 11·1 = 14, ‖Σ τ‖₁ = 0 + 3 + 10·3 = 33 → α = (1/3)·33/14 = 11/14."""
    zero = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in THETA0.items()}
    base = save_state_dict(tmp_path / "z.safetensors", zero)
    fts = []
    for i, first in enumerate((2.0, 1.0, -3.0)):
        sd = {k: -torch.ones_like(v) if v.is_floating_point() else v for k, v in zero.items()}
        sd[L0] = T([first, -1.0])
        fts.append(save_state_dict(tmp_path / f"t{i}.safetensors", sd))
    merge_checkpoints(
        base, fts, Ties(density=1.0), Scaling.uniform(1.0), tmp_path / "d.safetensors", **QUIET
    )
    d = load_state_dict(tmp_path / "d.safetensors")
    assert torch.equal(d[L0], T([-3.0, -1.0]))
    assert torch.equal(d[POOL], T([-1.0, -1.0]))
    tv = tmp_path / "tau.safetensors"
    m = merge_checkpoints(
        base,
        fts,
        Ties(density=1.0),
        Scaling.lines(beta=0.0),
        tmp_path / "a.safetensors",
        save_task_vector=tv,
        **QUIET,
    )
    assert m["norms"]["merged_task_vector"] == 14.0
    assert m["norms"]["task_vector_sum"] == 33.0
    assert m["scaling"]["alpha_value"] == pytest.approx(11 / 14, rel=1e-12)
    assert torch.equal(load_state_dict(tv)[L0], T([-3.0, -1.0]))
    a = load_state_dict(tmp_path / "a.safetensors")
    assert torch.allclose(a[L0], T([-33 / 14, -11 / 14]), atol=1e-6, rtol=0)
