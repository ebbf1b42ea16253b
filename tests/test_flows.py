"""Flow logic against a temporary Prefect server (``prefect_test_harness``), on a copy of the
project whose DVC stages are fast fakes (``tests/fake_pipeline.py``: the real dvc.yaml, params
and report code; no torch). The real smoke pipeline runs in tests/test_stack_e2e.py.

Default run: the merging flow end to end (DVC experiment + MLflow record checked against the DVC
outputs) and the parameter checks. Slow (``-m slow``): resume after a crash, two flow runs queued
on one workspace, two workers sharing one process work pool.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prefect")
pytest.importorskip("mlflow")

from fake_pipeline import make_fake_project  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def project(tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    return make_fake_project(tmp_path / "proj")


def dvc_exps(ws: Path) -> dict[str, dict[str, Any]]:
    """``dvc exp show --json``: experiment name -> {params, metrics} of params.yaml/metrics.json."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exps = {}
    for base in json.loads(out):
        for e in base.get("experiments") or []:
            for rev in e.get("revs", []):
                d = rev.get("data", {})
                if rev.get("name"):
                    exps[rev["name"]] = {
                        "params": d.get("params", {}).get("params.yaml", {}).get("data", {}),
                        "metrics": d.get("metrics", {})
                        .get("out/report/metrics.json", {})
                        .get("data", {}),
                    }
    return exps


def mlflow_run(uri: str, experiment: str, name: str) -> tuple[Any, list[Any]]:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"{len(runs)} runs named {name}"
    children = c.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{runs[0].info.run_id}'"
    )
    return runs[0], children


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_merging_flow_is_a_dvc_experiment_and_an_mlflow_run(
    prefect_api: str, project: Path, mlflow_uri: str
) -> None:
    from flows.merging import merging_benchmark

    res = merging_benchmark(
        workspace=str(project),
        profile="smoke",
        betas=[0.4, 1.0],
        methods=["task_arithmetic", "ties"],
        name="t-merge",
    )
    assert res["experiment"] == "t-merge"

    # params.yaml = the profile + the flow's parameters, comments kept
    text = (project / "params.yaml").read_text()
    assert text.startswith("# Smoke profile") and "betas: [0.4, 1.0]" in text

    # a DVC experiment with those params and the report's metrics
    exp = dvc_exps(project)["t-merge"]
    assert exp["params"]["merge"]["betas"] == [0.4, 1.0]
    metrics = json.loads((project / "out/report/metrics.json").read_text())
    assert exp["metrics"] == metrics

    # one MLflow run: α, β, λ and per-task metrics equal merge.json; report.* = metrics.json
    merge = json.loads((project / "out/merge/merge.json").read_text())
    run, children = mlflow_run(mlflow_uri, "lines-merging", "t-merge")
    p, m, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert set(merge["methods"]) == {"task_arithmetic", "ties"}
    for name, r in merge["methods"].items():
        assert float(p[f"{name}.alpha"]) == r["lines"]["alpha"]
        assert float(p[f"{name}.beta"]) == r["lines"]["beta"]
        assert float(p[f"{name}.lambda"]) == r["baseline"]["lambda"]
        for t in merge["tasks"]:
            assert m[f"{name}.lines.test_acc.{t}"] == r["lines"]["test_acc"][t]
            assert m[f"{name}.baseline.test_norm.{t}"] == r["baseline"]["test_norm"][t]
        assert m[f"{name}.lines.test_avg_norm"] == r["lines"]["test_avg_norm"]
    assert float(p["ties.params.density"]) == merge["methods"]["ties"]["params"]["density"]
    for k, v in flat(metrics).items():
        if isinstance(v, int | float):
            assert m[f"report.{k}"] == float(v), k
    sha = hashlib.sha256((project / "out/finetune/trec/model.safetensors").read_bytes()).hexdigest()
    assert p["sha256.finetuned.trec"] == sha and len(p["sha256.pretrained"]) == 64
    assert p["merge.betas"] == "[0.4, 1.0]" and p["common.suite"] == "text"
    assert p["block_policy"] == "reference" and "alpha_rule" in p
    assert tags["dvc.experiment"] == "t-merge" and tags["lines.kind"] == "merging"
    assert len(tags["prefect.flow_run_id"]) == 36 and len(tags["git.commit"]) == 40
    ref = subprocess.run(
        ["git", "rev-parse", tags["dvc.exp_ref"]], cwd=project, capture_output=True, text=True
    ).stdout.strip()
    assert ref == tags["dvc.exp_rev"]

    # one nested run per evaluation point of the sweep, with its coefficient and per-task numbers
    with open(project / "out/merge/merge_sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(children) == len(rows) == 2 * 2 * 2
    betas = sorted(
        (c.data.params["method"], float(c.data.params["beta"]))
        for c in children
        if "beta" in c.data.params
    )  # task arithmetic: the flow's β grid; TIES keeps its own (merge.ties_betas)
    assert betas == [
        ("task_arithmetic", 0.4),
        ("task_arithmetic", 1.0),
        ("ties", 0.5),
        ("ties", 1.5),
    ]
    one = next(
        c for c in children if c.data.params.get("method") == "ties" and "beta" in c.data.params
    )
    assert float(one.data.params["alpha"]) == merge["methods"]["ties"]["lines"]["alpha"]
    assert {f"val_acc_{t}" for t in merge["tasks"]} <= set(one.data.metrics)
    assert {f"val_norm_{t}" for t in merge["tasks"]} <= set(one.data.metrics)

    # artifacts: tables, plots (the offline DVC page too), manifests
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_uri)
    paths = {
        a.path
        for d in ("report", "merge", "manifests", "dvc_plots")
        for a in c.list_artifacts(run.info.run_id, d)
    }
    assert {
        "report/metrics.json",
        "report/accuracy_vs_beta.png",
        "merge/merge_sweep.csv",
        "manifests/params.yaml",
        "manifests/dvc.lock",
        "manifests/fetch.json",
        "dvc_plots/index.html",
    } <= paths
    page = Path(c.download_artifacts(run.info.run_id, "dvc_plots/index.html", str(project / "dl")))
    html = page.read_text()
    assert "cdn.jsdelivr" not in html and "vegaEmbed" in html and "val_avg_norm" in html


def test_unknown_parameter_is_refused_before_anything_runs(prefect_api: str, project: Path) -> None:
    from flows.merging import merging_benchmark

    before = (project / "params.yaml").read_text()
    with pytest.raises(KeyError, match="merge.not_a_key"):
        merging_benchmark(workspace=str(project), params={"merge.not_a_key": 1}, name="t-bad")
    assert (project / "params.yaml").read_text() == before
    assert not (project / "dvc.lock").exists()


def _trace(path: Path) -> list[tuple[str, str, float, int]]:
    if not path.exists():
        return []
    return [
        (w, s, float(t), int(p))
        for w, s, t, p in (line.split() for line in path.read_text().splitlines())
    ]


@pytest.mark.slow
def test_rerun_after_a_crash_resumes_from_finished_stages(
    prefect_api: str, project: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.editing import single_task_editing

    trace = project.parent / "trace.txt"
    monkeypatch.setenv("FAKE_STAGE_TRACE", str(trace))
    monkeypatch.setenv("FAKE_STAGE_FAIL", "rotten_tomatoes")  # the third fine-tuning stage dies
    with pytest.raises(Exception, match="rotten_tomatoes"):
        single_task_editing(workspace=str(project), name="t-crash")
    run, _ = mlflow_run(mlflow_uri, "lines-editing", "t-crash")
    assert run.info.status == "FAILED"
    done_before = {s for w, s, _, _ in _trace(trace) if w == "end"}
    monkeypatch.delenv("FAKE_STAGE_FAIL")
    single_task_editing(workspace=str(project), name="t-crash")  # same parameters: resume
    starts = [s for w, s, _, _ in _trace(trace) if w == "start"]
    assert starts.count("fetch") == 1 and starts.count("heads") == 1  # not redone
    assert starts.count("finetune:trec") == 1 and starts.count("finetune:bbc_news") == 1
    # the failing stage: once in the crash (a stage failing by itself is not retried), once in
    # the rerun; the one after it only in the rerun
    assert starts.count("finetune:rotten_tomatoes") == 2 and starts.count("finetune:sms_spam") == 1
    assert "fetch" in done_before and "edit" in starts
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("lines-editing")
    runs = c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 't-crash'")
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert "t-crash" in dvc_exps(project)


@pytest.mark.slow
def test_two_queued_runs_on_one_workspace_are_serialised(
    prefect_api: str, project: Path, mlflow_uri: str
) -> None:
    """Two flow runs (two processes, as two workers would run them) on one workspace: the second
    waits for the workspace lock; both end as intact DVC experiments and MLflow runs."""
    trace = project.parent / "trace.txt"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "FAKE_STAGE_TRACE": str(trace),
        "FAKE_STAGE_SLEEP": "1",
        "PYTHONPATH": str(project),
    }
    code = (
        "import sys; from flows.editing import single_task_editing\n"
        "single_task_editing(workspace=sys.argv[1], name=sys.argv[2], gammas=[float(g) for g in sys.argv[3:]])\n"
    )
    grids = {"t-queue-a": ["0.0", "1.0"], "t-queue-b": ["0.5", "1.0"]}
    procs = {
        n: subprocess.Popen(
            [sys.executable, "-c", code, str(project), n, *g],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n, g in grids.items()
    }
    outs = {n: p.communicate(timeout=600)[0] for n, p in procs.items()}
    for n, p in procs.items():
        assert p.returncode == 0, outs[n][-3000:]
    assert any("is busy" in o for o in outs.values()), "the second run should have waited"

    # the second run's stages start only after the first run finished: its edit stage (the one
    # both runs execute, since only edit.gammas differs) begins after the other one ended
    edits = sorted((t, w) for w, s_, t, _ in _trace(trace) if s_ == "edit")
    assert [w for _, w in edits] == ["start", "end", "start", "end"], edits

    exps = dvc_exps(project)
    for n, g in grids.items():
        assert exps[n]["params"]["edit"]["gammas"] == [float(x) for x in g]
        run, children = mlflow_run(mlflow_uri, "lines-editing", n)
        assert run.info.status == "FINISHED"
        assert {float(c.data.params["gamma"]) for c in children} == {float(x) for x in g}


@pytest.mark.slow
def test_two_workers_share_one_process_pool(
    prefect_api: str, project: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fan-out: the fine-tuning units are deployment runs; two workers polling the same process
    pool (one unit at a time each) both pick some up; the parent records them in DVC."""
    from flows.merging import merging_benchmark

    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "FAKE_STAGE_SLEEP": "3",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    hosts = {"w1": project.parent / "w1", "w2": project.parent / "w2"}  # scratch: unused here
    workers = _start_workers(project, env, hosts)
    try:
        monkeypatch.setenv("FAKE_STAGE_SLEEP", "3")
        res = merging_benchmark(
            workspace=str(project), fan_out=True, name="t-fan-out", methods=["task_arithmetic"]
        )
    finally:
        _stop_workers(workers)
    units = {u["unit"]: u["worker"] for u in res["units"]}
    assert set(units) == {
        "finetune@trec",
        "finetune@bbc_news",
        "finetune@rotten_tomatoes",
        "finetune@sms_spam",
        "finetune_seed@1",
    }
    assert set(units.values()) == {"w1", "w2"}, units
    lock = (project / "dvc.lock").read_text()
    assert "finetune@sms_spam" in lock and "finetune_seed@1" in lock  # recorded by dvc commit
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "up to date" in status
    run, _ = mlflow_run(mlflow_uri, "lines-merging", "t-fan-out")
    assert run.info.status == "FINISHED"


def _start_workers(project: Path, env: dict[str, str], hosts: dict[str, Path]) -> list[Any]:
    """A process work pool, the deployments, and one worker per host name (``--limit 1``), each
    with its own scratch folder (``LINES_UNIT_SCRATCH``); returns once all are online."""
    from prefect.client.orchestration import get_client

    py = [sys.executable, "-m", "prefect"]
    subprocess.run(
        [*py, "work-pool", "create", "lines", "--type", "process"],
        cwd=project,
        env=env,
        capture_output=True,
    )
    dep = subprocess.run(
        [*py, "--no-prompt", "deploy", "--all"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert dep.returncode == 0, dep.stdout[-3000:] + dep.stderr[-3000:]
    workers = [
        subprocess.Popen(
            [*py, "worker", "start", "--pool", "lines", "--name", name, "--limit", "1"],
            cwd=project,
            env={**env, "LINES_UNIT_SCRATCH": str(scratch)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for name, scratch in hosts.items()
    ]
    with get_client(sync_client=True) as client:
        t0 = time.time()
        names: set[str] = set()
        while time.time() - t0 < 120:
            names = {w.name for w in client.read_workers_for_work_pool("lines")}
            if set(hosts) <= names:
                break
            time.sleep(1)
    assert set(hosts) <= names, names
    return workers


def _stop_workers(workers: list[Any]) -> None:
    for w in workers:
        os.killpg(w.pid, signal.SIGINT)
    for w in workers:
        try:
            w.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(w.pid, signal.SIGKILL)


def test_two_hosts_without_a_shared_folder_exchange_through_a_dvc_remote(
    prefect_api: str,
    project: Path,
    mlflow_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15's multi-host path on one machine: two workers, each with its own scratch folder
    (its "host"), run the fine-tuning units in clones of their own; inputs and outputs travel only
    through a folder DVC remote (standing in for S3/GCS); the parent restores the units' stages
    from the remote's run cache and finishes; the units' reports come back as Prefect artifacts.
    The first unit's fine-tuning is killed mid-write once: Prefect retries it and no
    half-written output reaches the remote or the parent."""
    from flows._core import RunOptions
    from flows.merging import merging_benchmark

    remote = tmp_path / "remote"
    hosts = {"hostA": tmp_path / "hostA", "hostB": tmp_path / "hostB"}
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "FAKE_STAGE_SLEEP": "2",
        "FAKE_STAGE_KILL_ONCE": str(tmp_path / "killed-once"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    workers = _start_workers(project, env, hosts)
    try:
        res = merging_benchmark(
            workspace=str(project),
            fan_out=True,
            name="t-two-hosts",
            methods=["task_arithmetic"],
            run=RunOptions(exchange_remote=str(remote)),
        )
    finally:
        _stop_workers(workers)
    stages = {
        "finetune@trec",
        "finetune@bbc_news",
        "finetune@rotten_tomatoes",
        "finetune@sms_spam",
        "finetune_seed@1",
    }
    units = {u["unit"]: u for u in res["units"]}
    assert set(units) == stages
    assert {u["worker"] for u in units.values()} == set(hosts), units
    for u in units.values():  # each ran in a clone under its worker's scratch folder
        assert Path(u["clone"]).parent == hosts[u["worker"]]
        assert u["restored_upstream"] == ["fetch", "heads"]
    assert (tmp_path / "killed-once").is_file()  # one unit was killed, retried and completed
    files = [p.read_bytes() for p in remote.rglob("*") if p.is_file()]
    assert not any(b"half-written" in b for b in files)
    for s in stages - {"finetune_seed@1"}:
        t = s.split("@")[1]
        got = (project / "out/finetune" / t / "model.safetensors").read_bytes()
        assert got == f"{t} 0 0.0003".encode()
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=project, capture_output=True, text=True
    ).stdout
    assert "up to date" in status
    run, _ = mlflow_run(mlflow_uri, "lines-merging", "t-two-hosts")
    assert run.info.status == "FINISHED"
    assert "t-two-hosts" in dvc_exps(project)


def test_profile_and_overrides_keep_comments(tmp_path: Path) -> None:
    from flows.profile import main as profile_main
    from orchestration.workspace import read_params

    (tmp_path / "profiles").mkdir()
    src = (ROOT / "profiles/smoke.yaml").read_text()
    (tmp_path / "profiles/smoke.yaml").write_text(src)
    assert profile_main(["smoke", "--workspace", str(tmp_path)]) == 0
    assert (tmp_path / "params.yaml").read_text() == src  # byte for byte without overrides
    rc = profile_main(
        [
            "smoke",
            "--workspace",
            str(tmp_path),
            "--set",
            "merge.betas=[0.1, 0.9]",
            "--set",
            "common.seed=3",
        ]
    )
    assert rc == 0
    text = (tmp_path / "params.yaml").read_text()
    p = read_params(tmp_path)
    assert p["merge"]["betas"] == [0.1, 0.9] and p["common"]["seed"] == 3
    assert text.splitlines()[0] == src.splitlines()[0]  # comments kept
    assert "betas: [0.1, 0.9]" in text
    assert profile_main(["smoke", "--workspace", str(tmp_path), "--set", "merge.nope=1"]) == 2
    assert profile_main(["nope", "--workspace", str(tmp_path)]) == 2


def test_workspace_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    import threading

    from orchestration.workspace import WorkspaceBusy, workspace_lock

    with workspace_lock(tmp_path, owner="first"):
        holder = (tmp_path / ".dvc/tmp/lines-workspace.lock").read_text()
        assert '"owner": "first"' in holder
        with pytest.raises(WorkspaceBusy):
            with workspace_lock(tmp_path, owner="second", timeout=0.3, poll=0.1):
                pass
        got = threading.Event()

        def second() -> None:
            with workspace_lock(tmp_path, owner="second", poll=0.05):
                got.set()

        th = threading.Thread(target=second)
        th.start()
        time.sleep(0.3)
        assert not got.is_set()  # still waiting while "first" holds it
    th.join(timeout=10)
    assert got.is_set()


@pytest.mark.slow
def test_soups_wiseft_and_editing_flows_record_their_points(
    prefect_api: str, project: Path, mlflow_uri: str
) -> None:
    from flows.editing import single_task_editing
    from flows.soups import soups
    from flows.wiseft import wise_ft

    soups(workspace=str(project), name="t-soups", seeds=[1, 2])
    run, children = mlflow_run(mlflow_uri, "lines-soups", "t-soups")
    s = json.loads((project / "out/soups/soups.json").read_text())
    assert s["num_models"] == 3 and run.data.params["soups.seeds"] == "[1, 2]"
    assert len(children) == 2 * 2 + 3  # (uniform, greedy) × (plain, LiNeS) + 3 seed models
    assert (
        run.data.metrics["greedy.lines.test_target_norm"]
        == s["soups"]["greedy"]["lines"]["test_target_norm"]
    )

    wise_ft(workspace=str(project), name="t-wiseft", gammas=[0.25, 0.5, 1.0], lines_gamma=0.3)
    run, children = mlflow_run(mlflow_uri, "lines-wiseft", "t-wiseft")
    w = json.loads((project / "out/wiseft/wiseft.json").read_text())
    assert len(children) == len(w["rows"]) == 3 * 2 and float(run.data.params["lines_gamma"]) == 0.3

    single_task_editing(workspace=str(project), name="t-edit", gammas=[0.0, 1.0])
    run, children = mlflow_run(mlflow_uri, "lines-editing", "t-edit")
    e = json.loads((project / "out/edit/edit.json").read_text())
    assert len(children) == 4 * 2
    avg = e["average_at_best"]["test_target_norm"]
    assert run.data.metrics["average_at_best.test_target_norm"] == avg
    from flows.schedules import schedules

    schedules(workspace=str(project), name="t-sched", budget=4, alpha_mults=[0.5, 1.0])
    run, _ = mlflow_run(mlflow_uri, "lines-schedules", "t-sched")
    assert run.data.params["schedules.alpha_mults"] == "[0.5, 1.0]"
    assert "merging.task_arithmetic.linear.test_avg_norm" in run.data.metrics
    assert {"t-soups", "t-wiseft", "t-edit", "t-sched"} <= set(dvc_exps(project))
