"""Fan-out across hosts that share no filesystem: the units exchange inputs and outputs through a
DVC remote (S3, GCS, Azure, SSH or a plain folder), using only DVC's own machinery — its run cache.

- The parent reproduces the units' common upstream (``fetch``, ``heads``) and pushes it with its
  run-cache entries: ``dvc push --run-cache --with-deps heads -r lines-exchange``.
- Each unit, on whatever host a worker picked it up, clones the project at the parent's commit
  into a scratch folder, writes the parent's ``params.yaml``, and runs ``dvc repro --pull STAGE``:
  DVC restores the upstream from the remote's run cache (no recomputation: the run-cache key is
  the command, the parameters and the hashes of the dependencies, all equal to the parent's), runs
  the stage and records it; ``dvc push --run-cache STAGE`` sends its outputs and its entry back.
- The parent restores every unit's stage the same way (``repro`` with ``pull``: "Stage … is
  cached - skipping run, checking out outputs") and goes on with ``dvc repro``.

A unit that fails or is killed pushes nothing (DVC records a run only when its command
succeeded), so no half-written output ever reaches the remote or the parent's ``dvc.lock``.
``LINES_UNIT_SCRATCH`` (where clones go; default the system temp folder) and ``LINES_UNIT_CACHE``
(a DVC cache folder the units of one host share, so each pulls an input once) configure a host.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task

from orchestration.proc import dvc_argv, logger, run_command
from tasks.dvc import dvc, log_file, transient

REMOTE = "lines-exchange"  # the remote's name, in each workspace's local (untracked) DVC config


def _dvc(cwd: Path, *args: str, log: Path) -> str:
    """DVC in a unit's clone, logged beside it (``tasks.dvc.dvc`` logs inside a workspace)."""
    return run_command(dvc_argv(*args), cwd, log_file=log)


def head_revision(workspace: Path) -> str:
    """The workspace's git commit; the units clone it. Warns when tracked files other than the
    parameters differ from it (the units would run other code, so their run-cache entries would
    not match the parent's stages and the parent would recompute them)."""
    ws = Path(workspace)
    rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ws,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    changed = [
        ln[3:] for ln in dirty if ln.strip() and not ln.endswith(("params.yaml", "dvc.lock"))
    ]
    if changed:
        logger().warning(
            "units clone commit %s, but the workspace has uncommitted changes (%s): commit them, "
            "or the units run other code than the parent",
            rev[:12],
            ", ".join(changed[:5]),
        )
    return rev


@task(name="dvc-exchange-push", retries=3, retry_delay_seconds=2, retry_condition_fn=transient)
def push_upstream(workspace: Path, remote_url: str, targets: Sequence[str]) -> None:
    """Name the exchange remote in the workspace's local config and push ``targets`` (with their
    upstream) and the run cache to it."""
    dvc(workspace, "remote", "add", "--local", "--force", REMOTE, remote_url, log="exchange")
    dvc(workspace, "push", "--run-cache", "--with-deps", "-r", REMOTE, *targets, log="exchange")


@task(name="dvc-exchange-restore", retries=3, retry_delay_seconds=2, retry_condition_fn=transient)
def restore_from_remote(workspace: Path, stages: Sequence[str]) -> list[str]:
    """Reproduce ``stages`` pulling from the exchange remote: each is restored from the run-cache
    entry a unit pushed (its outputs checked out, its ``dvc.lock`` entry written). Returns the
    stages DVC restored; one that it had to run instead is logged as a warning."""
    ws = Path(workspace)
    code = (
        "import sys\n"
        "from dvc.repo import Repo\n"
        "r = Repo('.', remote=sys.argv[1])\n"
        "r.reproduce(sys.argv[2:], pull=True)\n"
    )
    out = run_command(
        [sys.executable, "-c", code, REMOTE, *stages], ws, log_file=log_file(ws, "exchange")
    )
    ran = [s for s in stages if f"Running stage '{s}'" in out]
    if ran:
        logger().warning("not in the exchange remote's run cache, recomputed here: %s", ran)
    return [s for s in stages if s not in ran]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def run_in_clone(
    name: str,
    repo: str,
    rev: str,
    remote_url: str,
    params: Mapping[str, str],
    stage: str,
) -> dict[str, Any]:
    """One unit on a host of its own: clone ``repo`` at ``rev`` into a scratch folder, write
    ``params`` (path relative to the project → text), ``dvc repro --pull STAGE`` against the
    exchange remote, push the result with its run-cache entry, remove the clone. A failed unit
    keeps its clone (the error names it) and pushes nothing."""
    scratch = Path(os.environ.get("LINES_UNIT_SCRATCH") or tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    clone = Path(tempfile.mkdtemp(prefix=f"lines-unit-{_safe(name)}-", dir=scratch))
    log = clone.parent / f"{clone.name}.log"
    t0 = time.time()
    git = ["git", "-c", "advice.detachedHead=false"]
    run_command(
        [*git, "clone", "--quiet", "--no-checkout", repo, str(clone)], scratch, log_file=log
    )
    run_command([*git, "checkout", "--quiet", rev], clone, log_file=log)
    for rel, text in params.items():
        (clone / rel).write_text(text)
    # Everything upstream comes from the remote's run cache; a committed dvc.lock could name
    # outputs the remote never received.
    for lock in clone.rglob("dvc.lock"):
        lock.unlink()
    _dvc(clone, "remote", "add", "--local", "--default", "--force", REMOTE, remote_url, log=log)
    if os.environ.get("LINES_UNIT_CACHE"):
        _dvc(clone, "cache", "dir", "--local", os.environ["LINES_UNIT_CACHE"], log=log)
    out = _dvc(clone, "repro", "--pull", stage, log=log)
    _dvc(clone, "push", "--run-cache", stage, log=log)
    restored = re.findall(r"Stage '([^']+)' is cached - skipping run", out)
    shutil.rmtree(clone, ignore_errors=True)
    log.unlink(missing_ok=True)
    return {
        "unit": name,
        "host": socket.gethostname(),
        "worker": os.environ.get("PREFECT__WORKER_NAME", "in-process"),
        "pid": os.getpid(),
        "clone": str(clone),
        "restored_upstream": restored,
        "seconds": round(time.time() - t0, 2),
    }
