"""The vision proxy on CPU (MobileNetV2 on MNIST-family tasks, tiny subsets, 32 px): every stage
runs in one process with the command lines dvc.yaml would build, and the report states that this
is a CNN proxy, not CLIP."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import run_profile  # noqa: E402


def test_unpack_matches_dvc_dict_unpacking() -> None:
    assert run_profile.unpack({"tasks": ["a", "b"], "lr": 0.1, "flag": True, "off": False}) == [
        "--tasks",
        "a",
        "b",
        "--lr",
        "0.1",
        "--flag",
    ]


def test_stage_commands_cover_dvc_yaml() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    names = {n.split("@")[0] for n, _ in run_profile.stage_commands(params)}
    dvc_stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert names == dvc_stages


def test_vision_smoke_end_to_end(tmp_path: Path) -> None:
    profile = yaml.safe_load((ROOT / "profiles" / "vision-smoke.yaml").read_text())
    profile["common"]["tasks"] = ["mnist", "digits"]
    profile["data"].update({"max_train": 48, "max_val": 16, "max_test": 16})
    profile["heads"]["max_probe"] = 64
    profile["merge"]["methods"] = ["task_arithmetic", "ties"]
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(profile))
    times = run_profile.run(p, tmp_path / "ws")
    ws = tmp_path / "ws"
    metrics = json.loads((ws / "out/report/metrics.json").read_text())
    assert metrics["backbone"] == "mobilenet_v2" and metrics["suite"] == "vision"
    assert set(metrics["merge"]) == {"task_arithmetic", "ties"}
    assert "not CLIP" in (ws / "out/report/report.md").read_text()
    merge = json.loads((ws / "out/merge/merge.json").read_text())
    # MobileNetV2's 19 feature blocks, and α = 1/N for task arithmetic.
    assert merge["num_blocks"] == 19
    assert merge["methods"]["task_arithmetic"]["lines"]["alpha"] == pytest.approx(0.5)
    assert sum(times.values()) > 0
