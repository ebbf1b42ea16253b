"""Running the project's command-line tools (DVC, the stage entry points, ``lines``) from a
Prefect worker.

Why a helper: a worker started outside the virtual environment has a PATH without the venv, so
``dvc`` or the ``python`` in a ``dvc.yaml`` command would be the wrong one (or missing). Every
command here runs with the interpreter's own ``bin`` folder first on PATH, and DVC is called as
``sys.executable -m dvc``. Output is streamed line by line into the Prefect run log (progress
bars collapsed to their last state) and kept in full in a log file; a failure raises
:class:`CommandError` with the exact command, its exit code and the tail of its output.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

# Telemetry of every tool stays off, whatever the caller's environment says.
OFFLINE_ENV = {
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


class CommandError(RuntimeError):
    """A command exited non-zero. ``str()`` says which command, where, and how it ended."""

    def __init__(self, cmd: str, cwd: Path, returncode: int, tail: Sequence[str], log: Path | None):
        self.cmd, self.cwd, self.returncode, self.tail, self.log = cmd, cwd, returncode, tail, log
        where = f"; full log: {log}" if log else ""
        super().__init__(
            f"command failed with exit code {returncode} (in {cwd}{where}):\n  {cmd}\n"
            + "--- last lines of its output ---\n"
            + "\n".join(tail)
        )


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run, else this module's logger."""
    try:
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            pass
    except ImportError:  # pragma: no cover - prefect is a pipeline extra
        pass
    return logging.getLogger("lines.orchestration")


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child command: ours, the venv first on PATH, telemetry off."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bindir:
        env["PATH"] = bindir + (os.pathsep + path if path else "")
    env.update(OFFLINE_ENV)
    if extra:
        env.update(extra)
    return env


def dvc_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def run_command(
    argv: Sequence[str] | str,
    cwd: Path,
    *,
    log_file: Path | None = None,
    timeout: float | None = None,
    quiet: bool = False,
) -> str:
    """Run ``argv`` (a list, or a shell string as written in ``dvc.yaml``) in ``cwd``; return its
    combined stdout/stderr. Raises :class:`CommandError` on a non-zero exit."""
    shell = isinstance(argv, str)
    text = argv if shell else shlex.join(argv)  # type: ignore[arg-type]
    log = logger()
    if not quiet:
        log.info("$ %s", text)
    out_lines: list[str] = []
    tail: deque[str] = deque(maxlen=40)
    fh = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_file, "a", encoding="utf-8")
        fh.write(f"$ {text}\n")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        shell=shell,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if fh:
                fh.write(raw)
            line = raw.rstrip("\n").split("\r")[-1].rstrip()  # a progress bar: its last state
            out_lines.append(raw)
            if line:
                tail.append(line)
                if not quiet:
                    log.info("%s", line)
            if timeout is not None and time.monotonic() - t0 > timeout:
                proc.kill()
                raise CommandError(
                    text, cwd, -9, [*tail, f"(killed after {timeout:.0f} s)"], log_file
                )
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if fh:
            fh.close()
    if rc != 0:
        raise CommandError(text, cwd, rc, list(tail), log_file)
    return "".join(out_lines)
