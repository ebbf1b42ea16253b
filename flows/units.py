"""The unit of scale-out: one stage command run into its own output path.

A parent flow resolves a DVC stage's command (``tasks.dvc.dvc_stage_specs``) and either calls
:func:`stage_unit` in-process or, with ``fan_out=True``, starts it as a run of the ``stage-unit``
deployment (``run_deployment``); every worker polling the work pool may pick one up, so units run
in parallel on as many workers (or machines sharing the workspace folder) as the pool has. The
parent waits for all of them, then records the stages in DVC (``dvc commit``) and continues.
A unit never touches ``params.yaml`` or ``dvc.lock``: the parent holds the workspace lock.

With ``exchange`` (hosts that share no filesystem, ``tasks.exchange``) a unit runs in a clone of its
own and exchanges inputs and outputs through a DVC remote; its report travels back as a Prefect
artifact (key ``lines-unit-report``) of its flow run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from prefect import flow, task

from orchestration.proc import run_command


@task(name="run-stage-command")
def run_stage_command(
    workspace: Path, name: str, cmds: list[str], outs: list[str], wdir: str = "."
) -> list[str]:
    """Remove the stage's outputs (as ``dvc repro`` does), create their parent folders, then run
    its command(s) in ``workspace/wdir`` (the stage's ``dvc.yaml`` folder; ``outs`` are relative
    to it)."""
    cwd = Path(workspace) / wdir
    for o in outs:
        p = cwd / o
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        p.parent.mkdir(parents=True, exist_ok=True)
    for cmd in cmds:
        run_command(
            cmd,
            cwd,
            log_file=Path(workspace) / ".dvc/tmp/lines-logs" / f"unit-{name}.log",
        )
    return outs


REPORT_ARTIFACT = "lines-unit-report"


@flow(name="stage-unit", retries=1, retry_delay_seconds=5, log_prints=True)
def stage_unit(
    workspace: str,
    name: str,
    cmds: list[str],
    outs: list[str],
    report: str | None = None,
    exchange: dict[str, Any] | None = None,
    wdir: str = ".",
) -> dict[str, Any]:
    """Run one unit (a DVC stage's command, or any command list) in ``workspace`` (in its folder
    ``wdir``, where the stage's ``dvc.yaml`` is); write a small JSON report (where it ran, which
    GPUs it saw, how long) to ``report`` if given. With ``exchange`` (``repo``,
    ``rev``, ``remote_url``, ``params``, ``stage``: see :func:`tasks.exchange.run_in_clone`) run the
    stage in a clone of its own instead, through the DVC remote; ``workspace`` is not read."""
    if exchange is not None:
        from prefect.artifacts import create_markdown_artifact

        from tasks.exchange import run_in_clone

        info = run_in_clone(name=name, **exchange)
        create_markdown_artifact(
            markdown=f"```json\n{json.dumps(info, indent=2)}\n```",
            key=REPORT_ARTIFACT,
            description=f"where and how long unit {name} ran",
        )
        return info
    t0 = time.time()
    run_stage_command(Path(workspace), name, cmds, outs, wdir)
    info = {
        "unit": name,
        "outs": outs,
        "worker": os.environ.get("PREFECT__WORKER_NAME", "in-process"),
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "started": round(t0, 3),
        "seconds": round(time.time() - t0, 2),
    }
    if report:
        p = Path(workspace) / report
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(info, indent=2))
    return info
