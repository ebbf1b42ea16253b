"""The embedded default pipeline, end to end through DVC on the smoke profile (real MiniLM, real
datasets, small subsets, one epoch): every stage runs, the report holds real numbers, a no-op
``dvc repro`` reruns nothing, and changing a merge parameter reruns only merge and report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _dvc(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "true",
        "PYTHONPATH": str(ws),
    }
    res = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=ws, env=env, capture_output=True, text=True
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        )
    return res


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh DVC workspace with this repo's pipeline and the smoke profile as params.yaml."""
    ws = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "dvc.yaml", ws / "dvc.yaml")
    shutil.copy(ROOT / "profiles" / "smoke.yaml", ws / "params.yaml")
    # The stage deps name the code (lines/...): give the workspace the same tree.
    shutil.copytree(ROOT / "lines", ws / "lines", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    _dvc(ws, "init", "-q")
    _dvc(ws, "config", "core.analytics", "false")
    _dvc(ws, "repro")
    return ws


def test_smoke_pipeline_produces_report(workspace: Path) -> None:
    metrics = json.loads((workspace / "out/report/metrics.json").read_text())
    assert metrics["suite"] == "text" and metrics["backbone"] == "minilm"
    assert set(metrics["merge"]) == {"task_arithmetic", "ties", "consensus"}
    merge = json.loads((workspace / "out/merge/merge.json").read_text())
    for name, r in merge["methods"].items():
        # Coefficients come from the smoke grids, chosen on val.
        grid = [0.5, 1.5] if name == "ties" else [0.3, 1.0]
        assert r["baseline"]["lambda"] in grid and r["lines"]["beta"] in grid
        # α is the rule's value: 1/N for task arithmetic with the L1 norm.
        if name == "task_arithmetic":
            assert r["lines"]["alpha"] == pytest.approx(0.25, rel=1e-9)
        assert 0.0 <= r["lines"]["test_avg_acc"] <= 1.0
        assert metrics["merge"][name]["lines_test_avg_acc"] == r["lines"]["test_avg_acc"]
        assert len(r["input_sha256"]) == 4
    base = json.loads((workspace / "out/eval/base.json").read_text())
    # Real models on real data: the pretrained model with probe heads is far above chance.
    assert base["pretrained"]["test"]["sms_spam"] > 0.7
    report = (workspace / "out/report/report.md").read_text()
    assert "Multi-task merging" in report and "LiNeS" in report
    for png in ("target_vs_control.png", "accuracy_vs_beta.png", "per_task_bars.png", "wiseft.png"):
        assert (workspace / "out/report" / png).stat().st_size > 5000


def test_noop_repro_reruns_nothing(workspace: Path) -> None:
    res = _dvc(workspace, "repro")
    assert "Running stage" not in res.stdout, res.stdout


def test_param_change_reruns_only_downstream(workspace: Path) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["merge"]["betas"] = [0.3, 0.7]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    res = _dvc(workspace, "repro")
    ran = {
        line.split("'")[1] for line in res.stdout.splitlines() if line.startswith("Running stage")
    }
    assert ran == {"merge", "report"}, res.stdout


TINY_METHOD = '''"""A merge method dropped in by tests/test_pipeline_smoke.py: scale × mean of the task vectors."""
import dataclasses
from typing import ClassVar

from lines.merging.base import MergeMethod, stacked


@dataclasses.dataclass
class Tiny(MergeMethod):
    name: ClassVar[str] = "tiny"
    summary: ClassVar[str] = "scale × mean of the task vectors"
    reference: ClassVar[str] = "tests/test_pipeline_smoke.py"
    elementwise: ClassVar[bool] = True

    scale: float = dataclasses.field(default=1.0, metadata={"help": "multiplies the mean"})

    def merge_tensor(self, key, taus):
        return self.scale * stacked(taus).mean(0)


METHOD = Tiny
'''


def test_a_new_method_is_one_file(workspace: Path) -> None:
    """One file in lines/merging/methods/ and its keys in params.yaml: the merge stage takes its
    parameter and its own β grid, merges with and without LiNeS, and the report shows it."""
    (workspace / "lines/merging/methods/tiny.py").write_text(TINY_METHOD)
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["merge"]["methods"].append("tiny")
    params["merge"]["tiny_scale"] = 0.5  # <method>_<field>: the method's parameter
    params["merge"]["tiny_betas"] = [0.2, 0.6]  # <method>_betas: its own β grid
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    res = _dvc(workspace, "repro")
    assert "Running stage 'merge'" in res.stdout, res.stdout
    merge = json.loads((workspace / "out/merge/merge.json").read_text())
    r = merge["methods"]["tiny"]
    assert r["params"] == {"scale": 0.5}
    assert r["grids"] == {"lambda": params["merge"]["lambdas"], "beta": [0.2, 0.6]}
    assert (
        r["lines"]["beta"] in (0.2, 0.6) and r["baseline"]["lambda"] in params["merge"]["lambdas"]
    )
    # τ_MTL = 0.5 · (1/4) Σ τ_i, so the rule α = (1/N)·‖τ_sum‖₁/‖τ_MTL‖₁ = (1/4) · 8 = 2.
    assert r["lines"]["alpha"] == pytest.approx(2.0, rel=1e-6)
    assert set(merge["methods"]) == {"task_arithmetic", "ties", "consensus", "tiny"}
    metrics = json.loads((workspace / "out/report/metrics.json").read_text())
    assert metrics["merge"]["tiny"]["lines_beta"] == r["lines"]["beta"]
    assert "| tiny |" in (workspace / "out/report/report.md").read_text()
