"""End to end on real local servers and the REAL smoke pipeline: ``scripts/stack.sh start``
(Prefect server, MLflow server, process pool, ``prefect deploy --all``, a worker) in a copy of
the project, ``prefect deployment run 'merging-benchmark/smoke' --watch``, then the MLflow run
read back through the MLflow API must equal out/merge/merge.json and out/report/metrics.json;
headless Chromium screenshots of the MLflow runs page and the Prefect flow-run page (saved under
``out/screenshots/`` of this checkout, or ``$LINES_TEST_ARTIFACTS``); rewarded soups on the same
fine-tuned models; ``stack.sh stop`` leaves no process behind.

Slow: the real smoke pipeline takes ~15 min of wall time on the shared 2-core CI machine (6–7 min
of CPU). ``LINES_E2E_DVC_CACHE=/some/dir`` shares a DVC cache (and its run cache) between runs, so
a rerun with unchanged code restores the stages instead of recomputing them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("prefect")
pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def copy_project(dst: Path) -> Path:
    """The checkout as it is (tracked and untracked, not ignored files) as a fresh git repo."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for f in filter(None, files):
        src = ROOT / f.decode()
        if src.is_file():
            (dst / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f.decode())
    git = ["git", "-c", "user.email=e2e@lines", "-c", "user.name=e2e"]
    subprocess.run([*git, "init", "-q"], cwd=dst, check=True)
    subprocess.run(["git", "config", "user.email", "e2e@lines"], cwd=dst, check=True)
    subprocess.run(["git", "config", "user.name", "e2e"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "e2e copy"], cwd=dst, check=True)
    return dst


class Stack:
    def __init__(self, root: Path):
        self.root = root
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.env = {
            **os.environ,
            "LINES_PYTHON": sys.executable,
            "LINES_PREFECT_PORT": str(self.prefect_port),
            "LINES_MLFLOW_PORT": str(self.mlflow_port),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.env.pop("PREFECT_API_URL", None)
        self.timings: dict[str, float] = {}

    def sh(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        t0 = time.time()
        r = subprocess.run(
            ["bash", "scripts/stack.sh", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.timings[f"stack.sh {args[0]}"] = time.time() - t0
        return r

    @property
    def client_env(self) -> dict[str, str]:
        env = dict(self.env)
        for line in self.sh("env").stdout.splitlines():
            for kv in line.removeprefix("export ").split():
                k, _, v = kv.partition("=")
                env[k] = v
        return env

    def deployment_run(self, name: str, *params: str, timeout: float = 3600) -> tuple[str, str]:
        t0 = time.time()
        r = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", name, *params, "--watch"],
            cwd=self.root,
            env=self.client_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.timings[f"deployment run {name}"] = time.time() - t0
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:] + self.logs()
        m = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert m, out[-3000:]
        return m.group(1), out

    def logs(self) -> str:
        return "".join(
            f"\n--- {p.name} ---\n" + p.read_text(errors="replace")[-4000:]
            for p in sorted((self.root / ".stack/logs").glob("*.log"))
        )


def artifacts_dir() -> Path:
    d = Path(os.environ.get("LINES_TEST_ARTIFACTS", ROOT / "out" / "screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = copy_project(tmp_path_factory.mktemp("e2e") / "proj")
    cache = os.environ.get("LINES_E2E_DVC_CACHE")
    if cache:
        subprocess.run(
            [sys.executable, "-m", "dvc", "cache", "dir", "--local", cache], cwd=root, check=True
        )
    st = Stack(root)
    r = st.sh("start")
    assert r.returncode == 0, r.stdout + r.stderr + st.logs()
    yield st
    st.sh("stop")  # idempotent; test_stop_leaves_no_process checks it properly
    print("e2e timings (s):", json.dumps({k: round(v, 1) for k, v in st.timings.items()}))


def mlflow_client(st: Stack) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"http://127.0.0.1:{st.mlflow_port}")


def run_for_flow_run(st: Stack, experiment: str, flow_run_id: str) -> tuple[Any, list[Any]]:
    c = mlflow_client(st)
    exp = c.get_experiment_by_name(experiment)
    (run,) = c.search_runs(
        [exp.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    )
    children = c.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    return run, children


@pytest.fixture(scope="module")
def merging_run(stack: Stack) -> dict[str, Any]:
    flow_run_id, out = stack.deployment_run("merging-benchmark/smoke")
    assert "Flow run finished successfully" in out
    return {"flow_run_id": flow_run_id}


def test_merging_benchmark_deployment_run_is_recorded_in_mlflow(
    stack: Stack, merging_run: dict[str, Any]
) -> None:
    ws = stack.root
    merge = json.loads((ws / "out/merge/merge.json").read_text())
    metrics = json.loads((ws / "out/report/metrics.json").read_text())
    run, children = run_for_flow_run(stack, "lines-merging", merging_run["flow_run_id"])
    merging_run["run"] = run
    p, m = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert run.data.tags["prefect.deployment"] == "smoke"
    for name, r in merge["methods"].items():
        # α, β (and λ) chosen by the pipeline
        assert (
            float(p[f"{name}.alpha"])
            == r["lines"]["alpha"]
            == metrics["merge"][name]["lines_alpha"]
        )
        assert (
            float(p[f"{name}.beta"]) == r["lines"]["beta"] == metrics["merge"][name]["lines_beta"]
        )
        assert (
            float(p[f"{name}.lambda"])
            == r["baseline"]["lambda"]
            == metrics["merge"][name]["lambda"]
        )
        for t in merge["tasks"]:  # per-task metrics, absolute and normalised
            for variant in ("baseline", "lines"):
                assert m[f"{name}.{variant}.test_acc.{t}"] == r[variant]["test_acc"][t]
                assert m[f"{name}.{variant}.test_norm.{t}"] == r[variant]["test_norm"][t]
        assert m[f"{name}.lines.test_avg_norm"] == r["lines"]["test_avg_norm"]
        assert (
            m[f"report.merge.{name}.lines_test_avg_norm"]
            == metrics["merge"][name]["lines_test_avg_norm"]
        )
    assert p["sha256.pretrained"] == next(iter(merge["methods"].values()))["pretrained_sha256"]
    rows = (ws / "out/merge/merge_sweep.csv").read_text().strip().splitlines()
    assert len(children) == len(rows) - 1  # one nested run per evaluation point
    # the fine-tuning fanned out as stage-unit runs (the deployment sets fan_out: true) unless
    # the run cache (LINES_E2E_DVC_CACHE) already held it; either way dvc.lock records it
    lock = (ws / "dvc.lock").read_text()
    assert all(f"finetune@{t}:" in lock for t in merge["tasks"])
    c = mlflow_client(stack)
    if c.list_artifacts(run.info.run_id, "units"):
        units = json.loads(
            Path(c.download_artifacts(run.info.run_id, "units", str(ws / "dl")))
            .joinpath(f"{run.info.run_name}.json")
            .read_text()
        )
        assert {u["unit"] for u in units} >= {f"finetune@{t}" for t in merge["tasks"]}
        assert {u["worker"] for u in units} == {"lines-worker-1"}
    elif not os.environ.get("LINES_E2E_DVC_CACHE"):
        pytest.fail("cold cache but no fan-out units recorded")
    # and the run is a DVC experiment
    show = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--csv"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert run.info.run_name in show


def _chromium(url: str, png: Path, profile: Path) -> str:
    common = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000"]
    subprocess.run(
        [CHROMIUM, *common, f"--screenshot={png}", url], capture_output=True, timeout=120
    )
    dom = subprocess.run(
        [CHROMIUM, *common, "--dump-dom", url], capture_output=True, text=True, timeout=120
    )
    return dom.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package 'chromium' not installed")
def test_screenshots_of_the_mlflow_and_prefect_pages(
    stack: Stack, merging_run: dict[str, Any]
) -> None:
    run = (
        merging_run.get("run")
        or run_for_flow_run(stack, "lines-merging", merging_run["flow_run_id"])[0]
    )
    name = run.info.run_name
    out = artifacts_dir()
    with tempfile.TemporaryDirectory() as prof:
        mlflow_url = (
            f"http://127.0.0.1:{stack.mlflow_port}/#/experiments/{run.info.experiment_id}/runs"
        )
        dom = _chromium(mlflow_url, out / "mlflow_runs.png", Path(prof) / "a")
        (out / "mlflow_runs.html").write_text(dom)
        assert name in dom, f"run {name} not on the MLflow runs page"
        flow_run_name = run.data.tags["prefect.flow_run_name"]
        prefect_url = (
            f"http://127.0.0.1:{stack.prefect_port}/runs/flow-run/{merging_run['flow_run_id']}"
        )
        dom = _chromium(prefect_url, out / "prefect_flow_run.png", Path(prof) / "b")
        (out / "prefect_flow_run.html").write_text(dom)
        assert flow_run_name in dom, f"flow run {flow_run_name} not on the Prefect page"
    for png in ("mlflow_runs.png", "prefect_flow_run.png"):
        assert (out / png).stat().st_size > 10_000


def test_rewarded_soups_deployment_run(stack: Stack, merging_run: dict[str, Any]) -> None:
    flow_run_id, _ = stack.deployment_run(
        "rewarded-soups/smoke", "--param", "weights=[0.0, 0.5, 1.0]"
    )
    run, children = run_for_flow_run(stack, "lines-rewarded-soups", flow_run_id)
    assert run.info.status == "FINISHED" and len(children) == 3
    pair = json.loads(run.data.params["pair"])
    base = json.loads((stack.root / "out/eval/base.json").read_text())
    by_w = {float(c.data.params["w0"]): c.data.metrics for c in children}
    # w = 1 is the first fine-tuned model itself (up to float rounding of θ_0 + (θ_1 − θ_0)):
    # its accuracy is base_eval's, give or take one borderline example of the 32
    assert by_w[1.0][f"test_acc_{pair[0]}"] == pytest.approx(
        base["finetuned"][pair[0]]["test"][pair[0]], abs=0.04
    )
    assert by_w[0.0][f"test_acc_{pair[1]}"] == pytest.approx(
        base["finetuned"][pair[1]]["test"][pair[1]], abs=0.04
    )


def test_stop_leaves_no_process(stack: Stack) -> None:
    r = stack.sh("stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no stack process left" in r.stderr
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    left = [
        line
        for line in ps.splitlines()
        if str(stack.root) in line
        or f":{stack.mlflow_port}" in line
        or f"--port {stack.prefect_port}" in line
        or f"--port {stack.mlflow_port}" in line
    ]
    assert not left, left
    mark = f"LINES_STACK={stack.root}".encode()  # every stack process and flow run carries it
    marked = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                marked.append(pid)
        except OSError:
            pass
    assert not marked, marked
    for port in (stack.prefect_port, stack.mlflow_port):  # nothing listens there any more
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
        s.bind(("127.0.0.1", port))
        s.close()
