"""What every experiment flow does, in order (the flows in this package only say which stages,
which parameters and how to read the results):

1. take the workspace lock (``orchestration.workspace``: one experiment at a time per checkout);
2. write the pipeline's ``params.yaml`` = profile + the flow's parameters, open the MLflow run
   with them;
3. with ``fan_out``, for each of the experiment's fan-out phases in order (fine-tuning per task
   and seed; in the LLM suite then the merge sweep, one stage per method): reproduce the phase's
   upstream (``dvc repro heads``), start every stale stage of its foreach groups as a
   ``stage-unit`` deployment run (any worker of the pool picks it up: one worker per GPU spreads
   them over the GPUs), wait, ``dvc commit`` them; then ``dvc repro TARGETS`` for the rest
   (finished stages are skipped, so a rerun after a crash resumes);
4. run the flow's extra units (rewarded soups: one per weight point);
5. ``dvc exp save`` (the run is a DVC experiment named like the MLflow run), ``dvc plots show``;
6. build the record from the DVC outputs (``orchestration.records``) and log it; close the run.

A flow declares an :class:`Experiment` (its stages, how to read its results) and passes its
parameters as dotted ``params.yaml`` overrides plus one :class:`RunOptions` (how the run is executed
and recorded). The pipeline may live in a folder of the project (``clip/``): the workspace lock,
git and DVC stay the project's, the parameters are that folder's.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prefect import runtime
from pydantic import BaseModel, ConfigDict, Field

from flows.units import stage_unit
from lines.merging import all_methods
from lines.pipeline.config import validate_params
from orchestration.proc import logger
from orchestration.tracking import RunRecord, flatten, make_tracker
from orchestration.workspace import apply_params, git_revision, workspace_lock
from tasks.dvc import (
    dvc_commit,
    dvc_exp_save,
    dvc_plots_show,
    dvc_repro,
    dvc_run_cached,
    dvc_stage_specs,
    dvc_stale_stages,
)
from tasks.exchange import head_revision, push_upstream, restore_from_remote

UNIT_DEPLOYMENT = "stage-unit/stage-unit"
UNITS_UPSTREAM = ["heads"]  # what the text suite's units read besides the fetched data

# The merge methods a flow accepts: every registered method (``lines/merging/methods/``), so a new
# method file is a valid flow parameter with no edit here.
Method = Literal[tuple(all_methods())]  # type: ignore[valid-type]
BlockPolicy = Literal["reference", "depth"]


class RunOptions(BaseModel):
    """How a flow run is executed and recorded (not what it computes); the same for every flow.
    Where it runs (``workspace``), under which name and whether fine-tuning fans out are flow
    parameters of their own, since nearly every call names them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking: bool = Field(True, description="log to MLflow (false: the null tracker)")
    on_tracking_down: Literal["fail", "local"] = Field(
        "local", description="tracking server down: record into .mlflow-local/, or fail"
    )
    unit_deployment: str = Field(UNIT_DEPLOYMENT, description="deployment of fan-out units")
    unit_timeout_s: float = Field(6 * 3600, gt=0, description="wait at most this for the units")
    lock_timeout_s: float | None = Field(
        None, ge=0, description="wait at most this for the workspace lock (None: forever)"
    )
    exchange_remote: str | None = Field(
        None,
        description="a DVC remote URL (s3://…, gs://…, a folder) through which fan-out units on "
        "hosts that share no filesystem exchange inputs and outputs (tasks/exchange.py); "
        "None: the units share the workspace folder",
    )
    exchange_repo: str | None = Field(
        None,
        description="the git URL the units clone (default: the workspace's path); the "
        "workspace's commit must be reachable there",
    )


@dataclass
class Unit:
    name: str
    cmds: list[str]
    outs: list[str]
    wdir: str = "."  # where the commands run, relative to the workspace (the stage's dvc.yaml)


@dataclass(frozen=True)
class FanOut:
    """One fan-out phase: the stale stages of the foreach ``groups`` run as units on the pool once
    their common ``upstream`` stages are reproduced (and, with an exchange remote, pushed)."""

    groups: list[str]
    upstream: list[str] = field(default_factory=lambda: list(UNITS_UPSTREAM))


@dataclass
class Context:
    """What the record builders and extra steps get: the workspace, the applied parameters, the
    experiment name and what the units reported."""

    workspace: Path
    params: dict[str, Any]
    name: str
    units: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    pipeline_dir: str = "."

    @property
    def pipeline(self) -> Path:
        """The folder of the pipeline's ``dvc.yaml`` and ``params.yaml``."""
        return self.workspace / self.pipeline_dir


@dataclass(frozen=True)
class Experiment:
    """What a flow runs: its DVC ``targets`` (relative to the project root), the foreach groups
    that may fan out, how to build the MLflow record and, optionally, extra units and the
    metrics the flow returns (default: the record's)."""

    kind: str
    targets: list[str]
    build_record: Callable[[Context], RunRecord]
    fan_out_groups: list[str] = field(default_factory=list)  # one phase after UNITS_UPSTREAM
    fan_out_phases: list[FanOut] = field(default_factory=list)  # or phases of their own
    extra_units: Callable[[Context], list[Unit]] | None = None
    pipeline_dir: str = "."
    summary: Callable[[Context], dict[str, Any]] | None = None
    # Flow parameter → the params.yaml key it sets (see ``run_flow``).
    keys: Mapping[str, str] = field(default_factory=dict)
    # Checks the parameters before params.yaml is written (one-line error naming the key).
    validate: Callable[[Mapping[str, Any], str], object] | None = validate_params

    def phases(self) -> list[FanOut]:
        """The fan-out phases, in order."""
        if self.fan_out_groups:
            return [FanOut(list(self.fan_out_groups)), *self.fan_out_phases]
        return list(self.fan_out_phases)


def experiment_name(kind: str, requested: str | None) -> str:
    """``KIND-<flow-run name>`` (a valid git ref, since DVC stores experiments as refs)."""
    base = requested or f"{kind}-{runtime.flow_run.name or time.strftime('%Y%m%d-%H%M%S')}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.")


def run_units(
    ctx: Context,
    units: Sequence[Unit],
    *,
    fan_out: bool,
    deployment: str,
    timeout_s: float,
    exchange: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run ``units`` in-process one after the other, or as deployment runs that the pool's workers
    execute in parallel; return their reports. Raises if any unit did not complete.
    ``exchange`` (``repo``, ``rev``, ``remote_url``, ``params``): each unit is the DVC stage of its
    name, run in a clone of its own through the DVC remote (``tasks.exchange``)."""
    if not units:
        return []
    rid = runtime.flow_run.id or "local"
    report_dir = f".dvc/tmp/lines-units/{rid}"
    params = [
        {
            "workspace": str(ctx.workspace),
            "name": u.name,
            "cmds": u.cmds,
            "outs": u.outs,
            "report": f"{report_dir}/{u.name}.json",
            "wdir": u.wdir,
        }
        | ({"exchange": {**exchange, "stage": u.name}} if exchange else {})
        for u in units
    ]
    if not fan_out:
        return [stage_unit(**p) for p in params]

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    log = logger()
    started = []
    for p in params:
        fr = run_deployment(
            deployment,
            parameters=p,
            timeout=0,  # start them all, then wait below
            flow_run_name=f"{ctx.name}:{p['name']}",
            tags=["lines-unit", ctx.name],
        )
        started.append((p, fr.id))
        log.info("unit %s -> flow run %s (deployment %s)", p["name"], fr.id, deployment)
    t0 = time.monotonic()
    final: dict[Any, Any] = {}
    warned = False
    with get_client(sync_client=True) as client:
        while len(final) < len(started):
            waiting = 0
            for p, fid in started:
                if fid in final:
                    continue
                fr = client.read_flow_run(fid)
                if fr.state is not None and fr.state.is_final():
                    final[fid] = fr
                    log.info("unit %s: %s", p["name"], fr.state.name)
                elif fr.state is None or fr.state.is_scheduled():
                    waiting += 1
            if not warned and waiting == len(started) and time.monotonic() - t0 > 60:
                log.warning(
                    "no unit picked up after 60 s: is a worker polling the pool of '%s'?",
                    deployment,
                )
                warned = True
            if len(final) < len(started):
                if time.monotonic() - t0 > timeout_s:
                    raise TimeoutError(
                        f"{len(started) - len(final)} unit(s) not finished after {timeout_s:.0f} s; "
                        f"is a worker polling the pool of '{deployment}'?"
                    )
                time.sleep(2)
    failed = [
        f"{p['name']} ({final[fid].state.name}: {final[fid].state.message or ''})"
        for p, fid in started
        if not final[fid].state.is_completed()
    ]
    if failed:
        raise RuntimeError("fan-out units failed: " + "; ".join(failed))
    if exchange:  # no shared folder: the reports are the units' Prefect artifacts
        return [unit_artifact(fid) or {"unit": p["name"]} for p, fid in started]
    reports = []
    for p in params:
        f = ctx.workspace / p["report"]
        reports.append(json.loads(f.read_text()) if f.is_file() else {"unit": p["name"]})
    return reports


def unit_artifact(flow_run_id: Any) -> dict[str, Any] | None:
    """The report a unit published as its flow run's ``lines-unit-report`` artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    from flows.units import REPORT_ARTIFACT

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                key=ArtifactFilterKey(any_=[REPORT_ARTIFACT]),
            )
        )
    for a in arts:
        text = str(a.data or "")
        start, end = text.find("{"), text.rfind("}")
        if start >= 0:
            return json.loads(text[start : end + 1])
    return None


def fan_out_stale_stages(ctx: Context, phase: FanOut, run: RunOptions) -> list[dict[str, Any]]:
    """Run the stale stages of the phase's foreach groups (fine-tuning per task / per seed, a
    sweep's methods) as units on the pool, then record them in DVC; the phase's upstream must be
    up to date (``dvc repro phase.upstream``). Stages the run cache holds are left to
    ``dvc repro``. With ``run.exchange_remote`` the units run on hosts of their own
    and come back through the DVC remote (``tasks.exchange``)."""
    ws, log, groups = ctx.workspace, logger(), phase.groups
    stale = dvc_stale_stages(ws, groups)  # (the caller reproduced phase.upstream first)
    cached = dvc_run_cached(ws, stale) if stale else []
    if cached:
        log.info("in the run cache, left to dvc repro: %s", cached)
    stale = [s for s in stale if s not in cached]
    if not stale:
        log.info("%s: nothing to fan out", groups)
        return []
    specs = dvc_stage_specs(ws, stale)
    units = [Unit(s, [specs[s]["cmd"]], specs[s]["outs"], specs[s]["wdir"]) for s in stale]
    exchange = None
    if run.exchange_remote:
        push_upstream(ws, run.exchange_remote, phase.upstream)
        exchange = {
            "repo": run.exchange_repo or str(ws),
            "rev": head_revision(ws),
            "remote_url": run.exchange_remote,
            "params": {
                str(Path(ctx.pipeline_dir) / "params.yaml"): (
                    ctx.pipeline / "params.yaml"
                ).read_text()
            },
        }
    reports = run_units(
        ctx,
        units,
        fan_out=True,
        deployment=run.unit_deployment,
        timeout_s=run.unit_timeout_s,
        exchange=exchange,
    )
    if exchange:
        restore_from_remote(ws, stale)
    else:
        dvc_commit(ws, stale)
    return reports


def add_run_context(rec: RunRecord, ctx: Context, exp: Mapping[str, str]) -> None:
    """What every record carries besides the kind's own numbers: the DVC experiment and
    revisions, params.yaml and dvc.lock, the offline DVC plots page, the units' report."""
    ws = ctx.workspace
    rec.tags.update({"dvc.exp_rev": exp["rev"], "dvc.exp_ref": exp["ref"], **git_revision(ws)})
    rec.artifacts += [(ctx.pipeline / f, "manifests") for f in ("params.yaml", "dvc.lock")]
    page = dvc_plots_show(ws, Path(".dvc/tmp/lines-plots") / ctx.name)
    if page is not None:
        rec.artifacts.append((page.parent, "dvc_plots"))
    for i, ph in enumerate(ctx.extra.get("fan_out", [])):
        # each fan-out phase's wall time and size, to compare pools of different sizes
        rec.metrics[f"fan_out.phase{i}.wall_s"] = ph["wall_s"]
        rec.metrics[f"fan_out.phase{i}.upstream_s"] = ph["upstream_s"]
        rec.metrics[f"fan_out.phase{i}.units"] = ph["units"]
        rec.params[f"fan_out.phase{i}.groups"] = ph["groups"]
    if ctx.units:
        units_file = ws / ".dvc/tmp/lines-units" / f"{ctx.name}.json"
        units_file.parent.mkdir(parents=True, exist_ok=True)
        units_file.write_text(json.dumps(ctx.units, indent=2))
        rec.artifacts.append((units_file, "units"))


def run_experiment(
    exp: Experiment,
    overrides: Mapping[str, Any],
    *,
    profile: str | None,
    workspace: str,
    name: str | None,
    fan_out: bool = False,
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """Run ``exp`` in ``workspace`` with ``profile`` + ``overrides`` (dotted keys; None values
    keep the profile's) as the DVC experiment and MLflow run ``name``; return the headline."""
    run = run or RunOptions()
    ws = Path(workspace).resolve()
    params_file = str(Path(exp.pipeline_dir) / "params.yaml")
    if not (ws / exp.pipeline_dir / "dvc.yaml").is_file():
        raise FileNotFoundError(
            f"{ws / exp.pipeline_dir / 'dvc.yaml'}: not this pipeline's project"
        )
    name = experiment_name(exp.kind, name)
    log = logger()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    tracker = make_tracker(run.tracking, f"lines-{exp.kind}", ws, run.on_tracking_down)
    flow_run_id = str(runtime.flow_run.id or "")
    owner = f"{name} (flow run {flow_run_id or 'local'})"
    with workspace_lock(ws, owner=owner, timeout=run.lock_timeout_s):
        params = apply_params(ws / exp.pipeline_dir, profile, overrides, exp.validate)
        ctx = Context(ws, params, name, pipeline_dir=exp.pipeline_dir)
        tags = {
            "lines.kind": exp.kind,
            "lines.profile": profile or f"(current {params_file})",
            "dvc.experiment": name,
            "prefect.flow_run_id": flow_run_id,
            "prefect.flow_run_name": str(runtime.flow_run.name or ""),
            "prefect.deployment": str(runtime.deployment.name or ""),
            **git_revision(ws),
        }
        tags = {k: v for k, v in tags.items() if v}
        start_params = {
            **flatten(params),
            "profile": profile or "(current)",
            "overrides": json.dumps(overrides, sort_keys=True),
            "targets": exp.targets,
            "fan_out": fan_out,
        }
        tracker.start(name, tags, start_params)
        try:
            for phase in exp.phases() if fan_out else []:
                t0 = time.perf_counter()
                dvc_repro(ws, phase.upstream)  # the units' common inputs first (serial)
                t1 = time.perf_counter()
                reports = fan_out_stale_stages(ctx, phase, run)
                ctx.units += reports
                if reports:  # what the pool's size buys (issue 15): units started → recorded
                    ctx.extra.setdefault("fan_out", []).append(
                        {
                            "groups": phase.groups,
                            "units": len(reports),
                            "upstream_s": round(t1 - t0, 2),
                            "wall_s": round(time.perf_counter() - t1, 2),
                        }
                    )
            dvc_repro(ws, exp.targets)
            if exp.extra_units is not None:
                ctx.units += run_units(
                    ctx,
                    exp.extra_units(ctx),
                    # extra units are commands over the workspace's files, not DVC stages: with
                    # an exchange remote (no shared folder) they run here
                    fan_out=fan_out and not run.exchange_remote,
                    deployment=run.unit_deployment,
                    timeout_s=run.unit_timeout_s,
                )
            saved = dvc_exp_save(ws, name, exp.targets, exp.pipeline_dir)
            rec = exp.build_record(ctx)
            add_run_context(rec, ctx, saved)
            tracker.record(rec)
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish("FINISHED")
    log.info(
        "experiment %s done: dvc exp show lists it; %s run %s",
        name,
        tracker.description,
        tracker.run_id,
    )
    return {
        "experiment": name,
        "dvc_exp_rev": saved["rev"],
        "mlflow_run_id": tracker.run_id,
        "tracking": tracker.description,
        "units": ctx.units,
        "fan_out": ctx.extra.get("fan_out", []),
        "metrics": exp.summary(ctx) if exp.summary else rec.metrics,
    }


def run_flow(exp: Experiment, args: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``exp`` from a flow's parameters (``locals()`` at the top of the flow): each flow
    parameter named in ``exp.keys`` sets its params.yaml key (None keeps the profile's value),
    ``params`` any other dotted key; ``profile``, ``workspace``, ``name``, ``fan_out`` and
    ``run`` say how the experiment runs."""
    overrides = {key: args[arg] for arg, key in exp.keys.items()}
    overrides.update(args.get("params") or {})
    return run_experiment(
        exp,
        overrides,
        profile=args["profile"],
        workspace=args["workspace"],
        name=args["name"],
        fan_out=args.get("fan_out", False),
        run=args["run"],
    )
