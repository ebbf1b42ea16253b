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
        "merge": {
            "task_arithmetic": {
                "test_avg_norm": 0.9,
                "lines_test_avg_norm": 0.9 + delta,
                "lines_delta_norm": delta,
            }
        },
        "edit": {"test_control_norm": 0.95, "test_target_norm": 0.99},
        "schedules": {
            "task_arithmetic": {
                "linear": {"test_avg_norm": 0.9},
                "reversed": {"test_avg_norm": 0.9 + 2 * delta, "delta_vs_linear": 2 * delta},
            }
        },
        "learned": {
            "lines": {"test_avg_norm": 0.9 + delta, "cost_wall_s": 10.0},
            "atlas": {"test_avg_norm": 0.95, "delta_vs_lines": 0.05 - delta, "cost_wall_s": 30.0},
        },
    }


def test_mean_and_sample_sd():
    s = summarise([_metrics(0.9, 0.01), _metrics(1.0, 0.03)])
    assert s["retention"]["mean"] == pytest.approx(0.95)
    assert s["retention"]["sd"] == pytest.approx(0.0707106781, rel=1e-6)  # sqrt(0.005)
    assert s["lines_delta_norm"]["task_arithmetic"]["mean"] == pytest.approx(0.02)
    assert summarise([_metrics(0.9, 0.01)])["retention"]["sd"] == 0.0
    # editing's control gain: edited control (0.95) − the fine-tuned models' (0.9, 1.0)
    assert s["edit_control_gain"]["mean"] == pytest.approx(0.0)
    assert s["edit_control_gain"]["sd"] == pytest.approx(0.0707106781, rel=1e-6)


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
    assert "| steps300 | 80.0 ± 0.0 (n=2) | 90.0 ± 0.0 (n=2) | 95.0 ± 0.0 (n=2) | 99.0" in md
    assert (tmp_path / "agg" / "budget_sweep.png").stat().st_size > 5000
    # per budget: each method with and without LiNeS, the schedules' Δ, the learned baselines
    assert "| task_arithmetic | 90.0 ± 0.0 (n=2) | 90.5 ± 0.7 (n=2) | +0.5 ± 0.7 |" in md
    assert "| task_arithmetic | 90.0 ± 0.0 (n=2) | +1.0 ± 1.4 |" in md  # reversed: 2Δ = 0, 2
    assert "| atlas | 95.0 ± 0.0 (n=2) | +4.5 ± 0.7 | 30 ± 0 |" in md
    assert res["steps60"]["learned"]["lines"]["test_avg_norm"]["mean"] == pytest.approx(0.905)


def test_run_profile_units_of_a_runs_block(tmp_path):
    """Each (budget, seed) of a profile's runs block is a unit of its own (one process per GPU)."""
    import importlib.util
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(
        "run_profile", root / "scripts" / "run_profile.py"
    )
    rp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rp)
    p = yaml.safe_load((root / "profiles" / "smoke.yaml").read_text())
    p["runs"] = {"seeds": [0, 2], "sweep": [{"steps": 5}, {"steps": 10, "lr": 3e-4}]}
    prof = tmp_path / "p.yaml"
    prof.write_text(yaml.safe_dump(p, sort_keys=False))
    assert rp.units(prof) == [
        "steps5/seed0",
        "steps5/seed2",
        "steps10-lr0.0003/seed0",
        "steps10-lr0.0003/seed2",
    ]
    with pytest.raises(SystemExit, match="unknown unit 'steps7/seed0'"):
        rp.run_unit(prof, tmp_path / "w", "steps7/seed0")
    # a unit of seed 2 fine-tunes the soups' extra ingredients with seeds 2 + s, never 2 again
    cmds = dict(rp.stage_commands(p, finetune_seed=2))
    argv = cmds[f"finetune_seed@{p['soups']['seeds'][0]}"]
    assert argv[argv.index("--seed") + 1] == str(2 + p["soups"]["seeds"][0])
