"""Tracking: the null tracker, MLflow records read back exactly, and the behaviour when the
tracking server is down (fail clearly, or record locally and say so; never drop numbers)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from orchestration import tracking  # noqa: E402
from orchestration.tracking import (  # noqa: E402
    MlflowTracker,
    NullTracker,
    Point,
    RunRecord,
    TrackingUnavailable,
    make_tracker,
)


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def _record(tmp_path: Path) -> RunRecord:
    art = tmp_path / "table.csv"
    art.write_text("a,b\n1,2\n")
    return RunRecord(
        params={"ties.alpha": 0.4725490196078431, "ties.beta": 0.3, "tasks": ["trec", "sms_spam"]},
        metrics={"ties.lines.test_acc.trec": 0.71875, "nan_is_skipped": float("nan")},
        tags={"dvc.exp_rev": "abc123"},
        points=[
            Point("ties/lines β=0.3", {"beta": 0.3, "method": "ties"}, {"val_avg_norm": 0.9}),
            Point("ties/lines β=1", {"beta": 1.0, "method": "ties"}, {"val_avg_norm": 0.8}),
        ],
        artifacts=[(art, "tables")],
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace, hence one local SQLite store, for the module (creating a store costs
    seconds); every test uses its own experiment name."""
    return tmp_path_factory.mktemp("ws")


def _runs(uri: str, experiment: str):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return c, parents, children


def test_null_tracker_does_nothing(tmp_path: Path) -> None:
    t = make_tracker(False, "x", tmp_path)
    assert isinstance(t, NullTracker)
    t.start("run", {"a": "b"}, {"p": 1})
    t.record(_record(tmp_path))
    t.finish("FINISHED")
    assert t.run_id is None
    assert not (tmp_path / tracking.LOCAL_STORE).exists()


def test_local_store_round_trip(ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = MlflowTracker("lines-test", workspace=ws)
    assert t.uri.startswith("sqlite:///") and str(ws) in t.uri  # absolute, in the project
    t.start(
        "merging-x",
        {"lines.kind": "merging", "prefect.flow_run_id": "f1"},
        {"merge.betas": [0.3, 1.0]},
    )
    t.record(_record(tmp_path))
    t.finish("FINISHED")
    c, (run,), children = _runs(t.uri, "lines-test")
    assert run.info.run_name == "merging-x" and run.info.status == "FINISHED"
    # floats as params round-trip exactly; lists keep their values
    assert float(run.data.params["ties.alpha"]) == 0.4725490196078431
    assert run.data.params["merge.betas"] == "[0.3, 1.0]"
    assert run.data.metrics == {"ties.lines.test_acc.trec": 0.71875}  # NaN not logged
    assert run.data.tags["prefect.flow_run_id"] == "f1" and run.data.tags["dvc.exp_rev"] == "abc123"
    assert sorted(r.info.run_name for r in children) == ["ties/lines β=0.3", "ties/lines β=1"]
    assert all(r.data.tags["mlflow.parentRunId"] == run.info.run_id for r in children)
    assert all(r.data.tags["lines.kind"] == "merging" for r in children)
    assert {float(r.data.params["beta"]) for r in children} == {0.3, 1.0}
    assert [a.path for a in c.list_artifacts(run.info.run_id, "tables")] == ["tables/table.csv"]
    # the local store ignores itself in git
    assert (ws / tracking.LOCAL_STORE / ".gitignore").read_text() == "*\n"


def test_server_down_fails_clearly(tmp_path: Path) -> None:
    t = MlflowTracker(
        "lines-test", workspace=tmp_path, uri=f"http://127.0.0.1:{_dead_port()}", on_down="fail"
    )
    with pytest.raises(TrackingUnavailable, match="does not answer.*stack.sh start"):
        t.start("r", {}, {})


def test_server_down_records_locally_and_says_so(
    ws: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"http://127.0.0.1:{_dead_port()}"
    t = MlflowTracker("lines-test-down", workspace=ws, uri=uri, on_down="local")
    with caplog.at_level(logging.WARNING):
        t.start("r", {"lines.kind": "merging"}, {"p": 1})
    assert any("LOCAL store" in r.getMessage() and uri in r.getMessage() for r in caplog.records)
    t.record(_record(tmp_path))
    t.finish("FINISHED")
    assert t.uri.startswith("sqlite:///") and "fallback" in t.description
    _, (run,), children = _runs(t.uri, "lines-test-down")
    assert "unreachable" in run.data.tags["lines.tracking_fallback"]
    assert run.data.metrics["ties.lines.test_acc.trec"] == 0.71875 and len(children) == 2


def test_server_lost_mid_run_rewrites_the_record_locally(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run opened on the server; the server dies before the results are logged: the complete
    record (params, metrics, nested runs) lands in the local store."""

    class ServerClient:  # stands in for the remote MlflowClient until the server "dies"
        def create_run(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            return type("R", (), {"info": type("I", (), {"run_id": "remote-1"})})()

        def log_batch(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            return None

    t = MlflowTracker("lines-test-lost", workspace=ws, uri="http://127.0.0.1:1", on_down="local")
    monkeypatch.setattr(tracking, "server_alive", lambda uri, timeout=3.0: True)
    t._client, t._experiment_id = ServerClient(), "0"
    t.start("r", {}, {"p": 1})
    assert t.run_id == "remote-1"
    monkeypatch.setattr(tracking, "server_alive", lambda uri, timeout=3.0: False)
    t.record(_record(tmp_path))
    t.finish("FINISHED")
    _, (run,), children = _runs(t.uri, "lines-test-lost")
    assert "stopped answering" in run.data.tags["lines.tracking_fallback"]
    assert run.data.params["p"] == "1" and len(children) == 2
    assert run.data.metrics["ties.lines.test_acc.trec"] == 0.71875


def test_param_values_are_exact() -> None:
    assert tracking._param_value(0.1 + 0.2) == repr(0.1 + 0.2)
    assert float(tracking._param_value(1 / 3)) == 1 / 3
    assert tracking._param_value([0.5, 1]) == "[0.5, 1]"
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}
    assert tracking.mlflow_key("trec.wiseft+lines.gamma=0.5") == "trec.wiseft_lines.gamma_0.5"


def test_schedules_record_reads_the_stage_output(tmp_path: Path) -> None:
    """The schedules flow's MLflow record: each family's choice as params, its test accuracy and
    Δ against linear (with the interval) as metrics, exactly the numbers of schedules.json."""
    from lines.protocol import schemas
    from lines.protocol.schemas import write_output
    from orchestration.records import schedules_record

    row = {"schedule": "linear", "evaluations": 4, "lambdas": [0.1, 0.2], "alpha": 0.125}
    res = {
        "tasks": ["a", "b"],
        "budget": 4,
        "families": {"linear": ["linear"], "power": ["power:p=2.0"]},
        "num_blocks": 2,
        "alpha_mults": [0.5, 1.0],
        "merging": {
            "task_arithmetic": {
                "linear": {**row, "beta": 0.5, "test_avg_norm": 0.9},
                "power": {
                    **row,
                    "schedule": "power:p=2.0",
                    "beta": 1.0,
                    "test_avg_norm": 0.93,
                    "delta_vs_linear": {"value": 0.03, "lo": 0.01, "hi": 0.05},
                },
            }
        },
        "editing": {"a": {"linear": {**row, "gamma": 0.25, "target_norm": 0.99}}},
    }
    write_output(tmp_path / "out/schedules/schedules.json", schemas.SchedulesResult, res)
    params = {"common": {"tasks": ["a", "b"]}, "schedules": {"specs": ["linear", "power:p=2"]}}
    rec = schedules_record(tmp_path, params)
    assert rec.params["schedules.alpha_mults"] == [0.5, 1.0]
    assert rec.params["merging.task_arithmetic.power.schedule"] == "power:p=2.0"
    assert rec.params["merging.task_arithmetic.power.beta"] == 1.0
    assert rec.metrics["merging.task_arithmetic.power.test_avg_norm"] == 0.93
    assert rec.metrics["merging.task_arithmetic.power.delta_vs_linear.lo"] == 0.01
    assert rec.params["editing.a.linear.gamma"] == 0.25
    assert rec.metrics["editing.a.linear.target_norm"] == 0.99
