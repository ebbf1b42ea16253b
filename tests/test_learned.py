"""The learned baselines (lines/protocol/learned.py): Fisher merging, the diagonal Fisher,
coefficients learned by entropy (AdaMerging) or cross-entropy (aTLAS), and output ensembles —
hand-computed on a linear softmax model whose weights are swapped in by functional_call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lines.protocol.learned import (
    Cost,
    Differentiable,
    coefficient_groups,
    combine,
    ensemble_correct,
    fisher_diagonal,
    fisher_merge,
    learn_coefficients,
    logits_with,
)


class LinearSuite:
    """Two tasks sharing one linear softmax model ``lin`` (weight 2×2, no bias); task t's inputs
    are X[t], its labels Y[t] (val and test identical)."""

    def __init__(self, X: dict[str, torch.Tensor], Y: dict[str, torch.Tensor]):
        self._model = nn.Sequential()
        self._model.add_module("lin", nn.Linear(2, 2, bias=False))
        self.X, self.Y = X, Y

    @property
    def model(self) -> nn.Module:
        return self._model

    def logits(self, task, split, index):
        return self._model(self.X[task][list(index)])

    def labels(self, task, split):
        return self.Y[task]

    def num_examples(self, task, split):
        return len(self.Y[task])


def _suite() -> LinearSuite:
    X = {"a": torch.tensor([[1.0, 0.0], [2.0, 0.0]]), "b": torch.tensor([[0.0, 1.0], [0.0, 3.0]])}
    Y = {"a": torch.tensor([0, 0]), "b": torch.tensor([1, 1])}
    return LinearSuite(X, Y)


def test_suite_protocol_and_functional_call_leave_the_module_alone() -> None:
    s = _suite()
    assert isinstance(s, Differentiable)
    before = s.model.lin.weight.detach().clone()
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    z = logits_with(s, {"lin.weight": W}, "a", "test", [1])
    assert torch.equal(z, torch.tensor([[2.0, 6.0]]))  # W @ [2, 0]
    assert torch.equal(s.model.lin.weight, before)


def test_fisher_merge_is_the_fisher_weighted_average() -> None:
    m1 = {"w": torch.tensor([1.0, 10.0, 4.0]), "step": torch.tensor([7])}
    m2 = {"w": torch.tensor([3.0, 20.0, 8.0]), "step": torch.tensor([9])}
    f1 = {"w": torch.tensor([1.0, 0.0, 0.0])}
    f2 = {"w": torch.tensor([3.0, 1.0, 0.0])}
    out = fisher_merge([lambda: m1, lambda: m2], [lambda: f1, lambda: f2], floor=0.0 + 1e-12)
    # (1·1 + 3·3)/4 = 2.5; (0·10 + 1·20)/1 = 20; no Fisher anywhere → the plain mean 6
    assert out["w"].tolist() == pytest.approx([2.5, 20.0, 6.0])
    assert out["step"].tolist() == [7]  # integer tensors: the first model's


def test_fisher_diagonal_by_hand() -> None:
    """log p(y|x) of softmax(Wx): ∇_W = (e_y − p) xᵀ; the Fisher is its square averaged."""
    s = _suite()
    W = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    cost = Cost()
    F = fisher_diagonal(s, {"lin.weight": W}, "a", "val", 2, labels="true", cost=cost)
    want = torch.zeros(2, 2)
    for x, y in zip(s.X["a"], s.Y["a"], strict=True):
        p = torch.softmax(W @ x, 0)
        g = torch.outer(torch.nn.functional.one_hot(y, 2).float() - p, x)
        want += g.square()
    assert F["lin.weight"] == pytest.approx(want / 2, rel=1e-5)
    assert cost.forward == 2 and cost.backward == 2


def test_combine_by_hand() -> None:
    base = {"w": torch.tensor([1.0, 1.0]), "v": torch.tensor([0.0])}
    taus = [
        {"w": torch.tensor([2.0, 0.0]), "v": torch.tensor([1.0])},
        {"w": torch.tensor([0.0, 4.0]), "v": torch.tensor([1.0])},
    ]
    group, n = coefficient_groups(["w", "v"], "tensor")
    assert n == 2 and group == {"w": 0, "v": 1}
    coefs = torch.tensor([[0.5, 1.0], [0.25, 2.0]])  # task × tensor
    out = combine(base, taus, coefs, group)
    assert out["w"].tolist() == [2.0, 2.0] and out["v"].tolist() == [3.0]
    g, n = coefficient_groups(["w", "v"], "task")
    assert n == 1 and set(g.values()) == {0}


def test_learned_coefficients_lower_their_loss() -> None:
    """θ_0 = 0; τ_a classifies task a, τ_b task b: cross-entropy (aTLAS) and entropy (AdaMerging)
    both raise the coefficients from a small start and lower the loss."""
    s = _suite()
    base = {"lin.weight": torch.zeros(2, 2)}
    taus = [
        {"lin.weight": torch.tensor([[1.0, 0.0], [-1.0, 0.0]])},
        {"lin.weight": torch.tensor([[0.0, -1.0], [0.0, 1.0]])},
    ]
    for loss in ("ce", "entropy"):
        cost = Cost()
        coefs, _, hist = learn_coefficients(
            s, base, taus, ["a", "b"], loss=loss, split="val", granularity="task", steps=30,
            lr=0.1, batch_size=2, init=0.1, clamp=None, cost=cost,
        )  # fmt: skip
        assert hist[-1] < hist[0] and (coefs > 0.1).all(), (loss, coefs, hist)
        assert cost.forward == cost.backward == 30 * 2 * 2  # steps × tasks × batch


def test_output_ensemble_averages_logits_or_probabilities() -> None:
    s = _suite()
    # member 1 says class 0 strongly for x = [2, 0], member 2 class 1 weakly: logits average → 0
    m1 = {"lin.weight": torch.tensor([[3.0, 0.0], [0.0, 0.0]])}
    m2 = {"lin.weight": torch.tensor([[0.0, 0.0], [1.0, 0.0]])}
    c = ensemble_correct(s, [m1, m2], ["a"], "test", combine_by="logits")
    assert c["a"].tolist() == [True, True]
    # only member 2: class 1 wins on both inputs of task a (label 0)
    assert ensemble_correct(s, [m2], ["a"], "test")["a"].tolist() == [False, False]


def test_learned_table_reports_delta_and_cost_against_lines() -> None:
    from lines.protocol.learned_report import learned_md, learned_metrics

    def row(norm: float, wall: float, **kw: object) -> dict:
        cost = {"wall_s": wall, "forward": 10, "backward": 0, "held_bytes": 3 * 2**20}
        return {"test_avg_norm": norm, "cost": cost, **kw}

    d = {"value": 0.02, "lo": -0.01, "hi": 0.05}
    res = {
        "tasks": ["a", "b"],
        "device": "cpu",
        "adamerging_inputs": "test",
        "methods": {
            "lines": row(0.9, 2.0),
            "atlas": row(0.92, 10.0, delta_vs_lines=d, verdict="no clear difference"),
        },
    }
    md = learned_md(res)
    assert (
        "| atlas | 92.0 | +2.0 [-1.0, +5.0] | no clear difference | 10.0 | 5.0 | 10 | 0 | 3 |" in md
    )
    assert "unlabelled **test** inputs" in md and "Best learned/ensemble: **atlas**" in md
    m = learned_metrics(res)
    assert m["atlas"]["delta_vs_lines"] == 0.02 and m["lines"]["cost_wall_s"] == 2.0


def test_finetune_and_heads_load_the_backbone_on_the_configured_device(monkeypatch, tmp_path):
    """Regression: both stages ignored ``device`` (fine-tuning on a GPU runner ran on its CPU)."""
    from lines.pipeline import training

    seen = []

    class Stop(Exception):
        pass

    def fake_load_backbone(name, models_dir, **kw):
        seen.append(kw.get("device"))
        raise Stop

    monkeypatch.setattr(training, "load_backbone", fake_load_backbone)
    with pytest.raises(Stop):
        training.finetune(
            tmp_path, tmp_path, tmp_path, "minilm", "trec", max_train=1, max_val=1, device="cuda:1"
        )
    with pytest.raises(Stop):
        training.run_heads(
            tmp_path, tmp_path, "minilm", ["trec"], max_train=1, max_val=1, device="cuda:1"
        )
    assert seen == ["cuda:1", "cuda:1"]
