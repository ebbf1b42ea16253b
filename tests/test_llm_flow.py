"""The LLM suite through its Prefect flow, offline: the real ``llm/dvc.yaml`` and the smoke profile
(a tiny random LLaMA on CPU) in a temporary git + DVC workspace, run by ``llm-benchmark`` under
``prefect_test_harness`` with MLflow tracking into a temporary SQLite store. Checked: every stage
ran through DVC (``dvc.lock``, ``dvc exp show``), the MLflow run holds the JSON's numbers for
merging and for rewarded soups (one nested run per point), and a bad parameter is refused in one
line before anything runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")
pytest.importorskip("dvc")

from pipeline_workspace import make_pipeline_workspace  # noqa: E402


def make_workspace(ws: Path) -> Path:
    """A git + DVC project holding the real llm/ pipeline and the lines/ sources it depends on."""
    return make_pipeline_workspace(
        ws, ("llm/dvc.yaml", "llm/params.yaml", "llm/profiles", "lines"), "llm project"
    )


def test_llm_benchmark_flow_end_to_end(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from flows.llm import llm_benchmark
    from lines.errors import LinesError

    ws = make_workspace(tmp_path / "ws")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    with pytest.raises(
        LinesError,
        match=r"profiles/smoke.yaml \+ the flow's parameters: "
        r"rsoups.lambdas out of \[0, 1\]",
    ):
        llm_benchmark(workspace=str(ws), profile="smoke", rsoups_lambdas=[0.0, 2.0])

    res = llm_benchmark(
        workspace=str(ws), profile="smoke", name="t-llm", rl_steps=2, params={"rl.group": 2}
    )
    out = ws / "llm" / "out"
    lock = (ws / "llm" / "dvc.lock").read_text()
    for stage in (
        "fetch",
        "finetune@rotten_tomatoes",
        "base_eval",
        "merge",
        "sft",
        "rl@brevity",
        "rsoups",
        "report",
    ):
        assert f"  {stage}:" in lock
    assert "--steps 2" in lock and "--group 2" in lock  # the flow's values reached the stages
    merge = json.loads((out / "merge/merge.json").read_text())
    rs = json.loads((out / "rsoups/rsoups.json").read_text())
    assert res["metrics"]["rsoups"]["verdict"] == rs["verdict"]

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("lines-llm")
    runs = c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 't-llm'")
    assert len(runs) == 1
    run = runs[0]
    p, m = run.data.params, run.data.metrics
    assert p["model"] == "tiny random LLaMA (2 layers, hidden 32)" and p["suite"] == "llm"
    assert "sha256.base.model.safetensors" in p and len(p["sha256.sft"]) == 64
    assert len(p["sha256.rl.brevity"]) == 64 and len(p["sha256.rl.sentiment"]) == 64
    ta = merge["methods"]["task_arithmetic"]
    assert m["task_arithmetic.lines.beta"] == ta["lines"]["beta"]
    hv = rs["hypervolume"]
    assert m["rsoups/hypervolume.lines"] == pytest.approx(hv["lines"])
    assert m["rsoups/hv_difference.lo"] == pytest.approx(hv["difference"]["lo"])
    children = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        max_results=1000,
    )
    soups = {ch.info.run_name: ch for ch in children if ch.info.run_name.startswith("rsoups/")}
    assert len(soups) == len(rs["points"]) == 1 + 3 * 3
    pt = next(x for x in rs["points"] if x["variant"] == "lines" and x["lambda"] == 0.5)
    ch = soups["rsoups/lines λ=0.5"]
    assert ch.data.params["lines_alpha"] == "1.0"
    assert ch.data.metrics["reward.sentiment"] == pytest.approx(pt["rewards"]["sentiment"]["value"])
    names = [x.info.run_name for x in children]
    for prefix in ("task_arithmetic/", "edit/", "wiseft/", "soups/"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert any(k.startswith("schedules/") for k in m)  # the schedules part: metrics only
    wiseft = json.loads((out / "wiseft/wiseft.json").read_text())
    assert wiseft["ood_tasks"] == ["vader_movies"] and len(wiseft["rows"]) == 2 * 3
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "t-llm" in shown

    # A merging-only report (no edit stage, `--edit none`): the same merge intervals as the full
    # report, and an editing section that says it did not run.
    from lines.llm import stages

    full = json.loads((out / "report/metrics.json").read_text())
    only = tmp_path / "report-merge-only"
    stages.run(
        stages.build_parser().parse_args(
            [
                "report",
                "--base",
                str(ws / "llm/ckpt/base"),
                "--base_eval",
                str(out / "eval/base.json"),
                "--edit",
                "none",
                "--merge",
                str(out / "merge"),
                "--bootstrap",
                "200",
                "--out",
                str(only),
            ]
        )
    )
    mo = json.loads((only / "metrics.json").read_text())
    assert mo["edit"] == {} and "edit_intervals" not in mo
    assert mo["merge_intervals"] == full["merge_intervals"]
    assert "(Not run: this run had no edit stage.)" in (only / "report.md").read_text()
    assert not (only / "fig2_target_control.png").exists()
