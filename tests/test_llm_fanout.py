"""The LLM suite's fan-out, piece by piece and fast: which phases a stage selection needs
(``orchestration.llm.fan_out_phases``), how an experiment orders its phases, gathering per-method
merge parts into one ``merge.json``, a stage's working directory as ``dvc_stage_specs`` resolves
it, and a unit's command run in that directory (``run_stage_command``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lines.errors import LinesError
from lines.protocol.merge import gather_merge
from lines.protocol.schemas import SCHEMA_VERSION, MergeResult, write_output
from orchestration.llm import fan_out_phases

T = "llm/dvc.yaml:"


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        (
            None,
            [
                ([T + "finetune", T + "soup_finetune"], [T + "fetch"]),
                ([T + "merge_method"], [T + "base_eval"]),
                ([T + "rl"], [T + "sft"]),
            ],
        ),
        (["finetune"], [([T + "finetune"], [T + "fetch"])]),
        (
            ["merge"],
            [([T + "finetune"], [T + "fetch"]), ([T + "merge_method"], [T + "base_eval"])],
        ),
        (["rsoups"], [([T + "rl"], [T + "sft"])]),
        (["soups"], [([T + "finetune", T + "soup_finetune"], [T + "fetch"])]),
        (["edit"], [([T + "finetune"], [T + "fetch"])]),
    ],
)
def test_fan_out_phases(stages: list[str] | None, expected: list[Any]) -> None:
    assert fan_out_phases(stages) == expected


def test_experiment_phases_groups_first() -> None:
    pytest.importorskip("prefect")
    from flows._core import Experiment, FanOut
    from orchestration.tracking import RunRecord

    later = FanOut(groups=["merge_method"], upstream=["base_eval"])
    exp = Experiment(
        kind="t",
        targets=["dvc.yaml"],
        build_record=lambda ctx: RunRecord(),
        fan_out_groups=["finetune"],
        fan_out_phases=[later],
    )
    assert exp.phases() == [FanOut(groups=["finetune"], upstream=["heads"]), later]
    only = Experiment(
        kind="t", targets=[], build_record=lambda ctx: RunRecord(), fan_out_phases=[later]
    )
    assert only.phases() == [later]
    assert Experiment(kind="t", targets=[], build_record=lambda ctx: RunRecord()).phases() == []


def method_result(seed: float) -> dict[str, Any]:
    """A valid ``merge.json`` entry of one method (values distinct per ``seed``)."""
    report = {
        "test_acc": {"a": seed, "b": seed + 0.25},
        "test_norm": {"a": seed / 2, "b": seed / 4},
        "test_avg_acc": seed + 0.125,
        "test_avg_norm": seed / 3,
    }
    return {
        "params": {"k": seed},
        "input_sha256": ["aa", "bb"],
        "pretrained_sha256": "cc",
        "grids": {"lambda": [0.5, 1.0], "beta": [0.0, 0.5]},
        "baseline": {"lambda": 0.5, **report},
        "lines": {"alpha": 0.3, "beta": 0.5, "lambdas": [0.3, 0.8], **report},
        "norms": {"kind": "l1", "task_vector_sum": 2.0, "merged_task_vector": 1.5},
    }


def write_part(d: Path, method: str, seed: float, tasks: list[str] | None = None) -> Path:
    """One per-method output folder of ``run_merge``: merge.json, merge_sweep.csv, sweeps/."""
    res = {
        "model": "tiny",
        "tasks": tasks or ["a", "b"],
        "block_policy": "reference",
        "num_blocks": 2,
        "alpha_norm": "l1",
        "methods": {method: method_result(seed)},
        "examples": {"a": {"val": 4, "test": 4}, "b": {"val": 4, "test": 4}},
        "device": "cpu",
    }
    write_output(d / "merge.json", MergeResult, res)
    (d / "merge_sweep.csv").write_text(
        f"method,variant,coef,val_avg_norm\n{method},baseline,0.5,{seed!r}\n"
    )
    (d / "sweeps").mkdir()
    (d / "sweeps" / f"{method}-baseline.csv").write_text(f"coef,val_avg_norm\n0.5,{seed!r}\n")
    return d


def test_gather_merge(tmp_path: Path) -> None:
    a = write_part(tmp_path / "a", "task_arithmetic", 0.1)
    b = write_part(tmp_path / "b", "ties", 0.7)
    out = tmp_path / "out"
    res = gather_merge([a, b], out)
    on_disk = json.loads((out / "merge.json").read_text())
    assert on_disk == res
    assert list(on_disk["methods"]) == ["task_arithmetic", "ties"]
    assert on_disk["methods"]["task_arithmetic"] == method_result(0.1)
    assert on_disk["methods"]["ties"] == method_result(0.7)
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert {k: on_disk[k] for k in ("model", "tasks", "block_policy", "num_blocks")} == {
        "model": "tiny",
        "tasks": ["a", "b"],
        "block_policy": "reference",
        "num_blocks": 2,
    }
    assert on_disk["alpha_norm"] == "l1"
    assert on_disk["examples"] == {"a": {"val": 4, "test": 4}, "b": {"val": 4, "test": 4}}
    assert on_disk["device"] == "cpu"
    assert (out / "merge_sweep.csv").read_text().splitlines() == [
        "method,variant,coef,val_avg_norm",
        "task_arithmetic,baseline,0.5,0.1",
        "ties,baseline,0.5,0.7",
    ]
    assert sorted(p.name for p in (out / "sweeps").iterdir()) == [
        "task_arithmetic-baseline.csv",
        "ties-baseline.csv",
    ]
    assert (out / "sweeps" / "ties-baseline.csv").read_text() == "coef,val_avg_norm\n0.5,0.7\n"
    assert (out / "sweeps" / "task_arithmetic-baseline.csv").read_text() == (
        "coef,val_avg_norm\n0.5,0.1\n"
    )


def test_gather_merge_refuses_disagreeing_parts(tmp_path: Path) -> None:
    a = write_part(tmp_path / "a", "task_arithmetic", 0.1)
    c = write_part(tmp_path / "c", "ties", 0.7, tasks=["a", "c"])
    with pytest.raises(LinesError) as e:
        gather_merge([a, c], tmp_path / "out1")
    assert str(e.value) == f"{c}/merge.json: tasks differ from {a}/merge.json"
    assert not (tmp_path / "out1" / "merge.json").exists()
    twin = write_part(tmp_path / "twin", "task_arithmetic", 0.2)
    with pytest.raises(LinesError) as e:
        gather_merge([a, twin], tmp_path / "out2")
    assert str(e.value) == f"{twin}/merge.json: method(s) task_arithmetic in two parts"
    with pytest.raises(LinesError, match="no parts given"):
        gather_merge([], tmp_path / "out3")


def test_dvc_stage_specs_wdir_relative_to_root(tmp_path: Path) -> None:
    pytest.importorskip("prefect")
    pytest.importorskip("dvc")
    from tasks.dvc import dvc_stage_specs

    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "dvc.yaml").write_text(
        'stages:\n  s:\n    cmd: "echo hi > o.txt"\n    outs: [o.txt]\n'
    )
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True, env=env)
    specs = dvc_stage_specs.fn(ws, ["sub/dvc.yaml:s"])
    assert specs == {"sub/dvc.yaml:s": {"cmd": "echo hi > o.txt", "wdir": "sub", "outs": ["o.txt"]}}


def test_run_stage_command_in_wdir_replaces_stale_output(tmp_path: Path) -> None:
    pytest.importorskip("prefect")
    from flows.units import run_stage_command

    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "o.txt").write_text("stale\n")
    (ws / "o.txt").write_text("root\n")  # a file of the same name outside wdir is not touched
    outs = run_stage_command.fn(ws, "u", ["echo hi > o.txt"], ["o.txt"], wdir="sub")
    assert outs == ["o.txt"]
    assert (ws / "sub" / "o.txt").read_text() == "hi\n"
    assert (ws / "o.txt").read_text() == "root\n"
    log = ws / ".dvc/tmp/lines-logs/unit-u.log"
    assert log.read_text().startswith("$ echo hi > o.txt\n")
    # Appending commands show that the old outputs were removed first (as `dvc repro` does).
    (ws / "sub" / "o.txt").write_text("stale\n")
    (ws / "sub" / "d").mkdir()
    (ws / "sub" / "d" / "p.txt").write_text("stale\n")
    cmds = ["echo hi >> o.txt", "echo there >> d/p.txt"]
    run_stage_command.fn(ws, "u", cmds, ["o.txt", "d/p.txt"], wdir="sub")
    assert (ws / "sub" / "o.txt").read_text() == "hi\n"
    assert (ws / "sub" / "d" / "p.txt").read_text() == "there\n"


@pytest.mark.slow
def test_llm_flow_fans_out_over_two_unit_workers(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU runner's layout on CPU: the project's deployments, two unit workers on queue
    ``units`` (``--limit 1``, worker i with ``CUDA_VISIBLE_DEVICES=i``, as ``scripts/stack.sh
    gpu-workers 2`` starts them); the LLM flow with ``fan_out`` sends the fine-tuning and then the
    merge sweep's methods to them, records both phases, and DVC ends up to date."""
    import signal
    import time

    from pipeline_workspace import ROOT, make_pipeline_workspace
    from prefect.client.orchestration import get_client

    from flows.llm import llm_benchmark

    ws = make_pipeline_workspace(
        tmp_path / "ws", ("llm/dvc.yaml", "llm/params.yaml", "llm/profiles", "lines"), "llm"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": uri,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    py = [sys.executable, "-m", "prefect"]
    subprocess.run([*py, "work-pool", "create", "lines", "--type", "process"], env=env, cwd=ROOT)
    dep = subprocess.run(
        [*py, "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert dep.returncode == 0, dep.stdout[-2000:] + dep.stderr[-2000:]
    workers = [
        subprocess.Popen(
            [*py, "worker", "start", "--pool", "lines", "--work-queue", "units", "--limit", "1"]
            + ["--name", f"lines-gpu-{i}", "--type", "process"],
            env={**env, "CUDA_VISIBLE_DEVICES": str(i)},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for i in range(2)
    ]
    try:
        with get_client(sync_client=True) as client:
            t0 = time.time()
            while time.time() - t0 < 120:
                names = {w.name for w in client.read_workers_for_work_pool("lines")}
                if {"lines-gpu-0", "lines-gpu-1"} <= names:
                    break
                time.sleep(1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        res = llm_benchmark(
            workspace=str(ws),
            profile="smoke",
            fan_out=True,
            stages=["finetune", "merge"],
            name="t-llm-fan-out",
        )
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGINT)
        for w in workers:
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(w.pid, signal.SIGKILL)
    units = {u["unit"]: u for u in res["units"]}
    assert set(units) == {
        "llm/dvc.yaml:finetune@rotten_tomatoes",
        "llm/dvc.yaml:finetune@sms_spam",
        "llm/dvc.yaml:merge_method@task_arithmetic",
        "llm/dvc.yaml:merge_method@ties",
        "llm/dvc.yaml:merge_method@consensus",
    }
    assert {u["cuda_visible_devices"] for u in units.values()} == {"0", "1"}
    assert [p["units"] for p in res["fan_out"]] == [2, 3]
    merge = json.loads((ws / "llm/out/merge/merge.json").read_text())
    assert list(merge["methods"]) == ["task_arithmetic", "ties", "consensus"]
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "llm/dvc.yaml:merge"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "up to date" in status
