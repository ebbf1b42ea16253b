"""Experiment tracking: one MLflow run per flow run, one nested run per evaluation point.

Flows talk to a :class:`Tracker` and never ask whether tracking is on: ``NullTracker`` is the
"off" switch. ``MlflowTracker`` writes through ``MlflowClient`` (explicit run ids, no global active
run), and never drops numbers silently:

- when the tracking server does not answer, it either fails at once with a message that says how
  to start it (``on_down="fail"``), or records into a local SQLite store inside the project
  (``on_down="local"``, the default) and says so: a WARNING in the flow-run log, the tag
  ``lines.tracking_fallback`` and, in a flow run, a Prefect artifact with the store's URI;
- when the server goes away in the middle of a run, the whole record is written again to the
  local store (records are plain data, built from the DVC outputs before anything is logged).

The numbers logged are the ones in the DVC metrics/output files (see ``orchestration.records``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from orchestration.proc import logger

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one link, ours, per run

LOCAL_STORE = ".mlflow-local"  # under the workspace; holds its own .gitignore
OnDown = Literal["fail", "local"]


class TrackingUnavailable(RuntimeError):
    pass


@dataclass
class Point:
    """One evaluation point of a sweep (a β, λ or γ value of one method/task): a nested run."""

    name: str
    params: dict[str, Any]
    metrics: dict[str, float]


@dataclass
class RunRecord:
    """Everything a flow run logs at its end; plain data, so it can be written anywhere."""

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)  # (file or folder, subdir)


class Tracker(Protocol):
    description: str
    run_id: str | None

    def start(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> None: ...

    def record(self, rec: RunRecord) -> None: ...

    def finish(self, status: Literal["FINISHED", "FAILED"]) -> None: ...


class NullTracker:
    """Tracking off: every call does nothing (the DVC outputs still hold every number)."""

    description = "tracking off"
    run_id: str | None = None
    uri: str | None = None

    def start(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> None:
        logger().info("MLflow tracking is off for this run; the numbers are in the DVC outputs")

    def record(self, rec: RunRecord) -> None:
        pass

    def finish(self, status: Literal["FINISHED", "FAILED"]) -> None:
        pass


def server_alive(uri: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def local_store_uri(workspace: Path) -> str:
    d = (Path(workspace) / LOCAL_STORE).resolve()
    d.mkdir(parents=True, exist_ok=True)
    gi = d / ".gitignore"
    if not gi.exists():
        gi.write_text("*\n")
    return f"sqlite:///{d / 'mlflow.db'}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_value(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)  # repr round-trips exactly: float(param) == the JSON value
    if isinstance(v, list | tuple):  # JSON-readable: numbers exact, strings quoted
        return (
            "["
            + ", ".join(json.dumps(x) if isinstance(x, str) else _param_value(x) for x in v)
            + "]"
        )
    return str(v)


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")


def mlflow_key(k: str) -> str:
    """MLflow allows alphanumerics and ``_-. :/`` in names: ``wiseft+lines`` → ``wiseft_lines``."""
    return _BAD_KEY.sub("_", k)


def _chunks(xs: list[Any], n: int) -> Iterable[list[Any]]:
    for i in range(0, len(xs), n):
        yield xs[i : i + n]


class MlflowTracker:
    """MLflow through ``MlflowClient``; see the module docstring for the failure behaviour."""

    def __init__(
        self,
        experiment: str,
        *,
        workspace: Path,
        uri: str | None = None,
        on_down: OnDown = "local",
    ):
        self.experiment = experiment
        self.workspace = Path(workspace).resolve()
        self.on_down = on_down
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri(workspace)
        self.fallback_reason: str | None = None
        self.run_id: str | None = None
        self._name = ""
        self._start_tags: dict[str, str] = {}
        self._start_params: dict[str, Any] = {}
        self._client: Any = None
        self._experiment_id: str | None = None
        self.description = f"MLflow at {self.uri}"

    # -- connection ----------------------------------------------------------------------
    def _is_remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    def _ensure_reachable(self) -> None:
        if not self._is_remote() or server_alive(self.uri):
            return
        msg = (
            f"MLflow tracking server {self.uri} does not answer ({self.uri}/health). Start it with "
            "'scripts/stack.sh start', point MLFLOW_TRACKING_URI at a running server, or run the "
            "flow with on_tracking_down='local' to record into the project's local store."
        )
        if self.on_down == "fail":
            raise TrackingUnavailable(msg)
        self._switch_to_local(f"server {self.uri} unreachable at run start")

    def _switch_to_local(self, reason: str) -> None:
        self.fallback_reason = reason
        old, self.uri = self.uri, local_store_uri(self.workspace)
        self._client, self._experiment_id = None, None
        self.description = f"MLflow local store {self.uri} (fallback: {reason})"
        logger().warning(
            "MLflow: %s; recording this run in the LOCAL store %s instead of %s. Browse it with "
            "'mlflow ui --backend-store-uri %s'.",
            reason,
            self.uri,
            old,
            self.uri,
        )
        try:
            from prefect.artifacts import create_markdown_artifact
            from prefect.context import FlowRunContext

            if FlowRunContext.get() is None:  # outside a flow run there is nowhere to show it
                return
            create_markdown_artifact(
                key="tracking-fallback",
                markdown=f"**MLflow fallback**: {reason}. This run is recorded in the local "
                f"store `{self.uri}` (not in {old}).",
                description="where this run's metrics went",
            )
        except Exception:  # noqa: BLE001 - outside a flow run there is no artifact to create
            pass

    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
            exp = self._client.get_experiment_by_name(self.experiment)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                loc = None
                if self.uri.startswith("sqlite:"):
                    loc = (Path(self.uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
                self._experiment_id = self._client.create_experiment(
                    self.experiment,
                    artifact_location=loc,
                    # the UI opens on the runs table (not the GenAI traces overview)
                    tags={"mlflow.experimentKind": "custom_model_development"},
                )
        return self._client

    # -- the Tracker protocol -------------------------------------------------------------
    def start(self, name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> None:
        self._ensure_reachable()
        self._name, self._start_tags, self._start_params = name, dict(tags), dict(params)
        self._create_run()
        logger().info("MLflow run %s: %s", name, self.run_url or f"{self.run_id} in {self.uri}")

    @property
    def run_url(self) -> str | None:
        if self.run_id is None or not self._is_remote():
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{self._experiment_id}/runs/{self.run_id}"

    def _create_run(self) -> None:
        c = self.client()
        tags = {"mlflow.runName": self._name, **self._start_tags}
        if self.fallback_reason:
            tags["lines.tracking_fallback"] = self.fallback_reason
        run = c.create_run(self._experiment_id, tags=tags, run_name=self._name)
        self.run_id = run.info.run_id
        self._log_batch(self.run_id, params=self._start_params)

    def _log_batch(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        c = self.client()
        now = int(time.time() * 1000)
        ps = [Param(mlflow_key(k), _param_value(v)[:6000]) for k, v in (params or {}).items()]
        ms = [
            Metric(mlflow_key(k), float(v), now, 0)
            for k, v in (metrics or {}).items()
            if v is not None and not (isinstance(v, float) and math.isnan(v))
        ]
        ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for chunk in _chunks(ps, 100):
            c.log_batch(run_id, params=chunk)
        for chunk in _chunks(ms, 1000):
            c.log_batch(run_id, metrics=chunk)
        for chunk in _chunks(ts, 100):
            c.log_batch(run_id, tags=chunk)

    def record(self, rec: RunRecord) -> None:
        try:
            if self._is_remote() and not server_alive(self.uri):
                raise TrackingUnavailable(f"server {self.uri} stopped answering during the run")
            self._record(rec)
        except Exception as e:  # noqa: BLE001 - any failure: keep the numbers locally
            if not self._is_remote():
                raise
            if self.on_down == "fail":
                raise TrackingUnavailable(
                    f"MLflow server {self.uri} failed while logging ({e}); the numbers are in the "
                    "DVC outputs of this experiment"
                ) from e
            self._switch_to_local(f"logging to the server failed mid-run ({type(e).__name__}: {e})")
            self._create_run()
            self._record(rec)

    def _record(self, rec: RunRecord) -> None:
        assert self.run_id is not None, "start() first"
        c = self.client()
        self._log_batch(self.run_id, params=rec.params, metrics=rec.metrics, tags=rec.tags)
        for p in rec.points:
            child = c.create_run(
                self._experiment_id,
                tags={
                    "mlflow.parentRunId": self.run_id,
                    "mlflow.runName": p.name,
                    **{k: v for k, v in self._start_tags.items() if k.startswith("lines.")},
                },
                run_name=p.name,
            )
            self._log_batch(child.info.run_id, params=p.params, metrics=p.metrics)
            c.set_terminated(child.info.run_id, "FINISHED")
        for path, sub in rec.artifacts:
            path = Path(path)
            if path.is_dir():
                c.log_artifacts(self.run_id, str(path), sub or None)
            elif path.is_file():
                c.log_artifact(self.run_id, str(path), sub or None)

    def finish(self, status: Literal["FINISHED", "FAILED"]) -> None:
        if self.run_id is None:
            return
        try:
            self.client().set_terminated(self.run_id, status)
        except Exception as e:  # noqa: BLE001
            logger().warning("MLflow: could not mark run %s %s: %s", self.run_id, status, e)
        if self.run_url:
            try:
                from prefect.artifacts import create_link_artifact
                from prefect.context import FlowRunContext

                if FlowRunContext.get() is not None:
                    create_link_artifact(
                        self.run_url, link_text=f"MLflow run {self._name}", key="mlflow-run"
                    )
            except Exception as e:  # noqa: BLE001 - a missing link must not fail the run
                logger().warning("could not attach the MLflow link to the flow run: %s", e)


def make_tracker(
    enabled: bool, experiment: str, workspace: Path, on_down: OnDown = "local"
) -> MlflowTracker | NullTracker:
    return (
        MlflowTracker(experiment, workspace=workspace, on_down=on_down)
        if enabled
        else NullTracker()
    )
