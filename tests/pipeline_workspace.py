"""A git + DVC project in a temp folder holding copies of the real pipeline files the test names
(a suite's ``dvc.yaml`` / ``params.yaml`` and the ``lines/`` sources its stages depend on): what
the flow tests of the suites that live in a folder of the project (``clip/``, ``llm/``) run in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(ws: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=ws, check=True, capture_output=True)


def make_pipeline_workspace(ws: Path, paths: Sequence[str], message: str) -> Path:
    """Copy ``paths`` (files or folders, relative to the project root) into a new folder ``ws``,
    make it a git + DVC repository and commit them; returns ``ws``."""
    ws.mkdir(parents=True)
    for rel in paths:
        src, dst = ROOT / rel, ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (ws / ".gitignore").write_text("__pycache__/\n")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    git(ws, "init", "-q")
    git(ws, "config", "user.email", "tests@lines")
    git(ws, "config", "user.name", "tests")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "-q"], cwd=ws, check=True, env=env)
    subprocess.run([*dvc, "config", "core.analytics", "false"], cwd=ws, check=True, env=env)
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", message)
    return ws
