"""Seeds and budget sweeps: mean ± sd over runs (lines.protocol.runs), hand-computed."""

from __future__ import annotations

import json

import pytest

from lines.protocol.runs import aggregate, summarise


def _metrics(ret: float, delta: float) -> dict:
    return {
        "regime": {"retention": {"value": ret}, "task_arithmetic_norm": {"value": 0.9}},
        "finetuned_test_avg_acc": 0.8,
        "pretrained_test_avg_acc": 0.6,
        "merge": {"task_arithmetic": {"lines_delta_norm": delta}},
        "edit": {"test_control_norm": 0.95, "test_target_norm": 0.99},
    }


def test_mean_and_sample_sd():
    s = summarise([_metrics(0.9, 0.01), _metrics(1.0, 0.03)])
    assert s["retention"]["mean"] == pytest.approx(0.95)
    assert s["retention"]["sd"] == pytest.approx(0.0707106781, rel=1e-6)  # sqrt(0.005)
    assert s["lines_delta_norm"]["task_arithmetic"]["mean"] == pytest.approx(0.02)
    assert summarise([_metrics(0.9, 0.01)])["retention"]["sd"] == 0.0


def test_aggregate_writes_table_and_plot(tmp_path):
    dirs = {}
    for label, ret in (("steps60", 0.99), ("steps300", 0.9)):
        dirs[label] = []
        for seed in (0, 1):
            d = tmp_path / f"{label}-{seed}"
            d.mkdir()
            (d / "metrics.json").write_text(json.dumps(_metrics(ret, 0.01 * seed)))
            dirs[label].append(d)
    res = aggregate(dirs, tmp_path / "agg")
    assert res["steps300"]["retention"]["mean"] == pytest.approx(0.9)
    md = (tmp_path / "agg" / "runs.md").read_text()
    assert "| steps300 |" in md and "90.0 ± 0.0 (n=2)" in md
    assert (tmp_path / "agg" / "budget_sweep.png").stat().st_size > 5000
