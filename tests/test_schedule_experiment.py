"""The schedule comparison (lines/protocol/schedules.py): equal budgets, the per-block norms of
``measured``, selection on val, Δ against linear with paired intervals — run end to end on tiny
BERT checkpoints with an evaluator whose accuracy is a known function of the weights."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import write_family

from lines.protocol.schedules import (
    block_norms,
    candidates,
    families_of,
    merge_candidates,
    run_schedules,
)
from lines.protocol.schedules_report import answer, schedules_md
from lines.protocol.suite import Workbench
from lines.scaling import lines_lambdas

N_EX = 40


class DistanceEvaluator:
    """Task t's accuracy falls with the distance of θ to fine-tuned model t (a smooth, known
    function); its first ⌊acc·N⌋ examples are the correct ones."""

    def __init__(self, fts: dict[str, dict[str, torch.Tensor]]):
        self.fts = fts
        self.sd: dict[str, torch.Tensor] | None = None

    def _acc(self, sd, task: str, split: str) -> float:
        d = sum(
            float((sd[k].double() - v.double()).square().sum()) for k, v in self.fts[task].items()
        )
        shift = 0.05 if split == "val" else 0.0
        return min(1.0, max(0.0, math.exp(-d / 2.0) + shift))

    def correct(self, sd, split, tasks):
        self.sd = sd if sd is not None else self.sd
        out = {}
        for t in tasks:
            k = int(self._acc(self.sd, t, split) * N_EX)
            out[t] = torch.arange(N_EX) < k
        return out

    def accuracy(self, sd, split, tasks):
        return {t: float(c.float().mean()) for t, c in self.correct(sd, split, tasks).items()}

    def num_examples(self, task, split):
        return N_EX


def test_candidates_keep_the_budget() -> None:
    fams = families_of(["linear", "power:p=0.5", "power:p=2", "power:p=4", "step:k=1", "reversed"])
    assert list(fams) == ["linear", "power", "step", "reversed"]
    c = candidates(fams["linear"], 12, 0.0, 1.5)
    assert len(c) == 12 and c[0][1] == 0.0 and c[-1][1] == 1.5
    c = candidates(fams["power"], 12, 0.0, 1.0)
    assert len(c) == 12 and {s.p for s, _ in c} == {0.5, 2.0, 4.0}
    assert [b for _, b in c[:4]] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    steps = families_of([f"step:k={k}" for k in range(1, 6)])["step"]
    c = candidates(steps, 4, 0.0, 1.0)  # more settings than budget: one point each, mid-range
    assert len(c) == 4 and all(b == 0.5 for _, b in c)


def test_merge_candidates_share_the_budget_with_alpha() -> None:
    lin = families_of(["linear"])["linear"]
    # the rule alone: the β grid of `candidates`
    c = merge_candidates(lin, 6, 1.0)
    assert [m for _, m, _ in c] == [1.0] * 6
    assert [b for _, _, b in c] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # three α multipliers in the same 6 evaluations: 2 β values each
    c = merge_candidates(lin, 6, 1.0, [0.5, 1.0, 2.0])
    assert [(m, b) for _, m, b in c] == [
        (0.5, 0.0), (0.5, 1.0), (1.0, 0.0), (1.0, 1.0), (2.0, 0.0), (2.0, 1.0)
    ]  # fmt: skip
    power = families_of(["power:p=0.5", "power:p=2"])["power"]
    c = merge_candidates(power, 4, 1.0, [0.5, 1.0])  # 2 settings × 2 α × 1 β (mid-range)
    assert len(c) == 4 and {b for _, _, b in c} == {0.5}


def test_block_norms_by_hand() -> None:
    base = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0, 2.0])}
    tau = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([2.0, 0.0])}
    bn = block_norms(base, tau, {"a": 1, "b": 2})
    assert bn.tau == [1.0, 2.0] and bn.base == [5.0, 2.0]


def test_run_schedules_end_to_end(tmp_path) -> None:
    cs = write_family(tmp_path / "c", n=3, layers=4)
    tasks = ["t0", "t1", "t2"]
    fts = {t: p for t, p in zip(tasks, cs.finetuned, strict=True)}
    ev = DistanceEvaluator({t: sd for t, sd in zip(tasks, cs.fts, strict=True)})
    with Workbench(cs.pretrained, ev) as wb:
        base = {"pretrained": {}, "finetuned": {}, "test_correct": {"finetuned": {}}}
        from lines.protocol.intervals import pack

        for split in ("val", "test"):
            base["pretrained"][split] = ev.accuracy(wb.base, split, tasks)
        base["test_correct"]["pretrained"] = {
            t: pack(c) for t, c in ev.correct(wb.base, "test", tasks).items()
        }
        for t in tasks:
            sd = wb.load(fts[t])
            base["finetuned"][t] = {s: ev.accuracy(sd, s, tasks) for s in ("val", "test")}
            base["test_correct"]["finetuned"][t] = {
                o: pack(c) for o, c in ev.correct(sd, "test", tasks).items()
            }
        cfg = {
            "specs": ["linear", "reversed", "power:p=0.5", "power:p=2", "measured"],
            "budget": 6,
            "beta_max": 1.0,
            "methods": ["task_arithmetic"],
            "edit_tasks": ["t1"],
        }
        res = run_schedules(wb, base, tasks, fts, cfg, tmp_path / "out", n_boot=200)
        cfg_a = dict(cfg, specs=["linear"], edit_tasks=[], alpha_mults=[0.5, 1.0, 2.0])
        res_a = run_schedules(wb, base, tasks, fts, cfg_a, tmp_path / "out_a", n_boot=50)
    lin_a = res_a["merging"]["task_arithmetic"]["linear"]
    assert lin_a["alpha_rule"] == pytest.approx(1 / 3) and lin_a["evaluations"] == 6
    assert any(lin_a["alpha"] == pytest.approx(m / 3) for m in (0.5, 1.0, 2.0))
    assert lin_a["lambdas"] == lines_lambdas(wb.L, lin_a["alpha"], lin_a["beta"])
    assert "α searched as the rule's α × 0.5, 1, 2" in schedules_md(res_a)
    rows = res["merging"]["task_arithmetic"]
    assert set(rows) == {"linear", "reversed", "power", "measured"}
    assert all(r["evaluations"] <= 6 for r in rows.values())
    lin = rows["linear"]
    assert lin["alpha"] == pytest.approx(1 / 3)  # task arithmetic: α = 1/N
    assert lin["lambdas"] == lines_lambdas(wb.L, lin["alpha"], lin["beta"])
    for f in ("reversed", "power", "measured"):
        d = rows[f]["delta_vs_linear"]
        assert d["lo"] <= d["value"] <= d["hi"]
        assert rows[f]["verdict"] in ("beats linear", "worse than linear", "no clear difference")
    ed = res["editing"]["t1"]
    assert all(0.0 <= r["gamma"] <= 1.0 for r in ed.values())
    assert "delta_control_vs_linear" in ed["reversed"]
    md = schedules_md(res)
    assert "Is linear optimal here?" in md and "task_arithmetic" in answer(res)
    assert (tmp_path / "out" / "schedules.json").is_file()


def test_answer_names_ties_and_flat_choices() -> None:
    row = {"schedule": "x", "alpha": 0.125, "beta": 0.0, "val_avg_norm": 0.9}
    flat = {"merging": {"ta": {"linear": dict(row), "power": dict(row, schedule="power:p=2.0")}}}
    assert "every schedule chose β = 0 on val (a uniform λ = α = 0.125)" in answer(flat)
    d = {"value": 0.01, "lo": -0.01, "hi": 0.03}
    tie = {
        "merging": {
            "ta": {"linear": dict(row, beta=0.5), "step": dict(row, beta=0.5, delta_vs_linear=d)}
        }
    }
    assert "no schedule beats linear on val" in answer(tie)
    better = dict(
        row, beta=0.5, val_avg_norm=0.95, delta_vs_linear=d, verdict="no clear difference"
    )
    won = {"merging": {"ta": {"linear": dict(row, beta=0.5), "step": better}}}
    assert "`x` is best on val" in answer(won) and "+1.0 points [-1.0, +3.0]" in answer(won)


def test_schedules_metrics_hold_numbers_per_family() -> None:
    from lines.protocol.schedules_report import schedules_metrics

    d = {"value": 0.02, "lo": -0.01, "hi": 0.05}
    res = {
        "merging": {
            "ta": {
                "linear": {"test_avg_norm": 0.9},
                "step": {"test_avg_norm": 0.92, "delta_vs_linear": d},
            }
        }
    }
    assert schedules_metrics(res) == {
        "ta": {
            "linear": {"test_avg_norm": 0.9},
            "step": {"test_avg_norm": 0.92, "delta_vs_linear": 0.02},
        }
    }
    assert schedules_metrics({"merging": {"ta": {}}}) == {}
