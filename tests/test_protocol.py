"""The shared experiment protocol (lines.protocol) with hand-computed values: selection on val
(NaN, ties), normalisation, target/control, the editing score, θ_0 + λ(ℓ)τ, the method-parameter
mapping; and a merge method dropped into a temporary package, usable by the stages unchanged."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lines.apply import apply_lambdas
from lines.errors import LinesError
from lines.merging.params import method_params, param_keys
from lines.protocol.scores import (
    best_index,
    edit_score,
    mean,
    normalise,
    select,
    target_control,
)

NAN = float("nan")


# ---------------------------------------------------------------------------------- selection
def test_best_index_plain_maximum() -> None:
    assert best_index([0.2, 0.9, 0.5]) == 1


def test_best_index_nan_never_wins_even_first() -> None:
    assert best_index([NAN, 0.1, 0.3]) == 2
    assert best_index([0.1, NAN, 0.05]) == 0
    assert best_index([NAN, -math.inf, -1.0]) == 2


def test_best_index_ties_go_to_the_first_in_grid_order() -> None:
    assert best_index([0.5, 0.7, 0.7, 0.1]) == 1
    assert best_index([0.3, 0.3]) == 0


def test_best_index_all_nan_and_empty() -> None:
    assert best_index([NAN, NAN]) == 0
    with pytest.raises(LinesError, match="empty"):
        best_index([])


def test_select_returns_the_row() -> None:
    rows = [{"coef": 0.2, "s": NAN}, {"coef": 0.4, "s": 0.8}, {"coef": 0.6, "s": 0.8}]
    assert select(rows, lambda r: r["s"])["coef"] == 0.4


# ------------------------------------------------------------------------------ normalisation
def test_normalise_divides_per_task_and_guards_zero_and_missing() -> None:
    out = normalise({"a": 0.45, "b": 0.3, "c": 0.5}, {"a": 0.9, "b": 0.0})
    assert out["a"] == pytest.approx(0.5)
    assert math.isnan(out["b"]) and math.isnan(out["c"])


def test_mean_of_nothing_is_nan() -> None:
    assert mean([0.25, 0.75]) == 0.5
    assert math.isnan(mean([]))


# ----------------------------------------------------------------------------- target/control
def test_target_control_hand_computed() -> None:
    acc = {"t": 0.8, "u": 0.6, "v": 0.3}
    zs = {"u": 0.5, "v": 0.6}
    tc = target_control(acc, "t", ["u", "v"], 0.9, zs)
    assert tc["target_acc"] == 0.8
    assert tc["target_norm"] == pytest.approx(0.8 / 0.9)
    assert tc["control_acc"] == pytest.approx(0.45)
    # (0.6/0.5 + 0.3/0.6) / 2 = (1.2 + 0.5) / 2
    assert tc["control_norm"] == pytest.approx(0.85)


def test_target_control_without_controls_and_zero_references() -> None:
    tc = target_control({"t": 0.5, "u": 0.4}, "t", ["u"], 0.0, {"u": 0.0})
    assert math.isnan(tc["target_norm"]) and math.isnan(tc["control_norm"])
    tc = target_control({"t": 0.5}, "t", [], 1.0, {})
    assert tc["target_norm"] == 0.5 and math.isnan(tc["control_acc"])


def test_edit_score_is_two_target_plus_control_nan_control_counts_zero() -> None:
    assert edit_score(0.9, 0.8) == pytest.approx(2.6)
    assert edit_score(0.9, NAN) == pytest.approx(1.8)


# ------------------------------------------------------------------------------------- apply
def test_apply_lambdas_per_block_and_dtype() -> None:
    base = {
        "a": torch.tensor([1.0, 2.0]),
        "b": torch.tensor([1.0], dtype=torch.float16),
        "n": torch.tensor([3]),
        "c": torch.tensor([5.0]),
    }
    tau = {"a": torch.tensor([1.0, -1.0]), "b": torch.tensor([2.0]), "n": torch.tensor([1])}
    out = apply_lambdas(base, tau, {"a": 1, "b": 2, "n": 1, "c": 2}, [0.5, 0.25])
    assert out["a"].tolist() == [1.5, 1.5]
    assert out["b"].dtype == torch.float16 and out["b"].tolist() == [1.5]
    assert out["n"] is base["n"] and out["c"] is base["c"]  # integer / absent: θ_0's own


# ------------------------------------------------------------------------ method parameters
def test_method_parameter_mapping_keeps_the_pipeline_keys() -> None:
    cfg = {
        "ties_density": 0.3,
        "ties_scope": "per_tensor",
        "consensus_k": 3,
        "tall_lambda": 0.5,
        "dare_drop_rate": 0.7,
        "seed": 4,
        "task_arithmetic_mode": None,
    }
    assert method_params("ties", cfg) == {"density": 0.3, "scope": "per_tensor"}
    assert method_params("consensus", cfg) == {"k": 3, "tall_lambda": 0.5}
    assert method_params("dare", cfg) == {"drop_rate": 0.7, "seed": 4}
    assert method_params("magnitude_prune", cfg) == {"density": 0.3}
    assert method_params("task_arithmetic", cfg) == {}  # None: the method's default
    assert method_params("ties", {}) == {}
    from lines.merging import all_methods

    assert param_keys(all_methods()["consensus"]) == {
        "k": "consensus_k",
        "tall_lambda": "tall_lambda",
    }


def test_methods_declare_elementwise() -> None:
    from lines.merging import make_method

    assert make_method("task_arithmetic").elementwise is True
    assert make_method("consensus").elementwise is True
    assert make_method("ties").elementwise is True  # global trim: a scalar threshold
    assert make_method("ties", scope="per_tensor").elementwise is False
    assert make_method("ties", scope="per_tensor", density=1.0).elementwise is True
    assert make_method("dare").elementwise is False


# ----------------------------------------------------------------- a method in one new file
HALF_SUM = '''
import dataclasses
from typing import ClassVar

from lines.merging.base import MergeMethod, stacked


@dataclasses.dataclass
class HalfSum(MergeMethod):
    """Test-only: scale · Σ τ_i."""

    name: ClassVar[str] = "half_sum"
    summary: ClassVar[str] = "scaled sum"
    reference: ClassVar[str] = "tests"
    elementwise: ClassVar[bool] = True
    scale: float = dataclasses.field(default=0.5, metadata={"help": "factor"})

    def merge_tensor(self, key, taus):
        return self.scale * stacked(taus).sum(0)


METHOD = HalfSum
'''


class _Acc:
    """An evaluator whose 'accuracy' is a deterministic function of the weights."""

    tasks = ["a", "b"]

    def accuracy(self, sd, split, tasks):
        s = float(sum(v.float().abs().sum() for v in sd.values())) if sd else 0.0
        return {t: 0.5 + 0.4 * math.cos(s + i + (split == "val")) for i, t in enumerate(tasks)}

    def num_examples(self, task, split):
        return 10


@pytest.fixture
def dropped_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import lines.merging as merging
    import lines.merging.methods as methods_pkg

    pkg = tmp_path / "extra_methods"
    pkg.mkdir()
    (pkg / "half_sum.py").write_text(textwrap.dedent(HALF_SUM))
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(pkg)])
    merging.all_methods.cache_clear()
    yield
    sys.modules.pop("lines.merging.methods.half_sum", None)
    merging.all_methods.cache_clear()


def test_a_dropped_in_method_runs_through_the_stages(dropped_method, bert_ckpts, tmp_path) -> None:
    from lines.clip.stages import build_parser as clip_parser
    from lines.pipeline.stages import build_parser
    from lines.protocol.merge import run_merge
    from lines.protocol.results import read_json
    from lines.protocol.suite import Workbench

    argv = ["merge", "--tasks", "a", "b", "--out", "o", "--methods", "half_sum"]
    argv += ["--lambdas", "1", "--betas", "1", "--half_sum_scale", "0.25"]
    argv += ["--half_sum_lambdas", "0.5", "1.0"]
    a = build_parser().parse_args(argv)
    assert method_params("half_sum", vars(a)) == {"scale": 0.25}
    c = clip_parser().parse_args([*argv, "--half_sum_betas", "0.3"])
    assert c.half_sum_scale == 0.25 and c.half_sum_betas == [0.3]

    base = {
        "finetuned": {t: {s: {t: 0.9} for s in ("val", "test")} for t in ("a", "b")},
        "pretrained": {s: {"a": 0.5, "b": 0.5} for s in ("val", "test")},
    }
    with Workbench(bert_ckpts.pretrained, _Acc()) as wb:
        res = run_merge(wb, base, ["a", "b"], bert_ckpts.finetuned[:2], vars(a), tmp_path / "m")
    m = res["methods"]["half_sum"]
    assert m["params"] == {"scale": 0.25}
    assert m["baseline"]["lambda"] in (0.5, 1.0) and m["lines"]["beta"] == 1.0
    # α = (1/N)·‖τ_sum‖₁/‖τ_MTL‖₁ = (1/2)·(1/0.25) = 2 for τ_MTL = 0.25·τ_sum
    assert m["lines"]["alpha"] == pytest.approx(2.0, rel=1e-6)
    assert (
        read_json(tmp_path / "m" / "merge.json")["methods"]["half_sum"]["params"]["scale"] == 0.25
    )
    assert (tmp_path / "m" / "sweeps" / "half_sum-lines.csv").is_file()


def test_grid_edge_notes_flag_choices_at_the_grid_edge():
    from lines.protocol.report import grid_edge_notes

    def method(lam: float, beta: float) -> dict:
        return {
            "baseline": {"lambda": lam},
            "lines": {"beta": beta},
            "grids": {"lambda": [0.2, 0.4, 0.6], "beta": [0.0, 0.5, 1.0]},
        }

    merge = {
        "methods": {"ta": method(0.2, 0.5), "ties": method(0.4, 1.0), "cons": method(0.4, 0.0)}
    }
    notes = grid_edge_notes(merge)
    assert "- ta: λ = 0.2 is the smallest value of its grid" in notes
    assert "- ties: β = 1 is the largest value of its grid" in notes
    assert not any("cons" in n for n in notes)  # β = 0 is a real bound, not a clipped optimum
    assert grid_edge_notes({"methods": {"x": method(0.4, 0.5)}}) == []


def test_an_accelerated_method_merges_on_the_suites_gpu(bert_ckpts, monkeypatch) -> None:
    # WUDI (an optimiser per matrix) declares `accelerated`: with a suite evaluating on CUDA the
    # engine merges it there; every other method keeps the suite's engine device (the CPU here).
    import lines.engine as engine
    from lines.merging import make_method
    from lines.protocol.suite import Workbench

    seen = []
    real = engine.build_task_vector

    def spy(*args, device="cpu", **kw):
        seen.append(device)
        return real(*args, device="cpu", **kw)  # CI has no GPU: run it on the CPU anyway

    monkeypatch.setattr(engine, "build_task_vector", spy)
    with Workbench(bert_ckpts.pretrained, _Acc(), accelerator=torch.device("cuda", 0)) as wb:
        wb.task_vector("w", bert_ckpts.finetuned[:2], make_method("wudi", iterations=1))
        wb.task_vector("t", bert_ckpts.finetuned[:2], make_method("task_arithmetic"))
    with Workbench(bert_ckpts.pretrained, _Acc(), accelerator="cpu") as wb:  # no GPU: stays
        wb.task_vector("w", bert_ckpts.finetuned[:2], make_method("wudi", iterations=1))
    assert seen == ["cuda:0", "cpu", "cpu"]
    assert make_method("wudi").accelerated and not make_method("ties").accelerated
