"""The DVC workspace a flow run works in: the exclusive lock, applying a profile plus overrides
to ``params.yaml``, and the git revision it runs at.

Concurrency design: one workspace (a checkout with its ``params.yaml``, ``dvc.lock`` and ``out/``)
holds one experiment at a time, so a flow run takes an exclusive ``flock`` on
``.dvc/tmp/lines-workspace.lock`` before it writes ``params.yaml`` and keeps it until its outputs
are recorded (DVC experiment saved, MLflow run written). A second flow run on the same workspace
waits (it logs who holds the lock) instead of failing on DVC's own repo lock or mixing its
parameters into the first run's outputs. The kernel drops the lock when the holding process dies,
so a crashed run never leaves a stale lock behind. Runs on other machines use their own checkout,
hence their own lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orchestration.proc import logger

LOCK_FILE = ".dvc/tmp/lines-workspace.lock"


class WorkspaceBusy(TimeoutError):
    pass


@contextmanager
def workspace_lock(
    workspace: Path, *, owner: str, timeout: float | None = None, poll: float = 1.0
) -> Iterator[None]:
    """Hold the workspace's exclusive lock; wait up to ``timeout`` seconds (None: forever)."""
    path = Path(workspace) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    t0 = time.monotonic()
    announced = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    holder = Path(path).read_text(errors="replace").strip() or "unknown"
                    logger().info("workspace %s is busy (held by %s); waiting", workspace, holder)
                    announced = True
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise WorkspaceBusy(
                        f"workspace {workspace} still locked after {timeout:.0f} s ({path})"
                    ) from None
                time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            json.dumps({"owner": owner, "pid": os.getpid(), "host": socket.gethostname()}).encode(),
            0,
        )
        if announced:
            logger().info("workspace lock acquired after %.0f s", time.monotonic() - t0)
        yield
    finally:
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _yaml():  # noqa: ANN202 - ruamel's round-trip loader keeps the comments of params.yaml
    from ruamel.yaml import YAML

    y = YAML()
    y.preserve_quotes = True
    y.width = 100
    return y


def _plain(v: Any) -> Any:
    """ruamel's commented containers as plain dicts/lists (for JSON and MLflow)."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _flow_seq(values: list[Any]) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    s = CommentedSeq(values)
    s.fa.set_flow_style()
    return s


def set_key(doc: Any, dotted: str, value: Any) -> None:
    """``doc['merge']['betas'] = value`` for ``dotted = 'merge.betas'``; the key must exist (a
    typo would otherwise run the default experiment under a misleading name)."""
    parts = dotted.split(".")
    node = doc
    for i, p in enumerate(parts[:-1]):
        if not isinstance(node, Mapping) or p not in node:
            raise KeyError(f"params.yaml has no section '{'.'.join(parts[: i + 1])}' ({dotted})")
        node = node[p]
    if not isinstance(node, Mapping) or parts[-1] not in node:
        raise KeyError(f"params.yaml has no key '{dotted}'")
    node[parts[-1]] = _flow_seq(list(value)) if isinstance(value, list | tuple) else value


def get_key(doc: Mapping[str, Any], dotted: str) -> Any:
    node: Any = doc
    for p in dotted.split("."):
        node = node[p]
    return node


def profile_path(workspace: Path, profile: str) -> Path:
    p = Path(workspace) / "profiles" / f"{profile}.yaml"
    if not p.is_file():
        names = sorted(x.stem for x in (Path(workspace) / "profiles").glob("*.yaml"))
        raise FileNotFoundError(f"no profile '{profile}' ({p}); known: {', '.join(names)}")
    return p


def apply_params(
    workspace: Path,
    profile: str | None,
    overrides: Mapping[str, Any] | None = None,
    validate: Callable[[Mapping[str, Any], str], object] | None = None,
) -> dict[str, Any]:
    """Write ``params.yaml`` = ``profiles/<profile>.yaml`` (or the current ``params.yaml`` when
    ``profile`` is None) with ``overrides`` (dotted keys) applied, comments kept. Returns the
    resulting parameters as plain data. With no overrides the profile is copied byte for byte.
    ``validate(params, source)`` checks the result before anything is written (it raises)."""
    workspace = Path(workspace)
    target = workspace / "params.yaml"
    src = profile_path(workspace, profile) if profile else target
    source = str(src.relative_to(workspace)) + (" + the flow's parameters" if overrides else "")
    text = src.read_text()
    if not overrides:
        if validate is not None:
            validate(_plain(_yaml().load(text)), source)
        if src != target:
            target.write_text(text)
        return _plain(_yaml().load(text))
    y = _yaml()
    doc = y.load(text)
    for k, v in overrides.items():
        set_key(doc, k, v)
    if validate is not None:
        validate(_plain(doc), source)
    buf = io.StringIO()
    y.dump(doc, buf)
    tmp = target.with_suffix(".yaml.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(target)
    return _plain(doc)


def read_params(workspace: Path) -> dict[str, Any]:
    return _plain(_yaml().load((Path(workspace) / "params.yaml").read_text()))


def git_revision(workspace: Path) -> dict[str, str]:
    """Tags: the HEAD commit, whether tracked files have uncommitted changes, md5 of dvc.lock."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=workspace, capture_output=True, text=True, check=False)
        return r.stdout.strip() if r.returncode == 0 else ""

    lock = Path(workspace) / "dvc.lock"
    return {
        "git.commit": git("rev-parse", "HEAD") or "none",
        "git.dirty": "true" if git("status", "--porcelain", "--untracked-files=no") else "false",
        "dvc.lock_md5": hashlib.md5(lock.read_bytes()).hexdigest() if lock.is_file() else "none",
    }


def pipeline_targets(folder: str, known: Sequence[str], stages: Sequence[str] | None) -> list[str]:
    """``<folder>/dvc.yaml[:<stage>]`` targets for ``dvc repro``/``dvc exp save`` run from the
    project root: the whole pipeline when ``stages`` is empty; an unknown stage is refused."""
    if not stages:
        return [f"{folder}/dvc.yaml"]
    bad = [s for s in stages if s not in known]
    if bad:
        raise ValueError(f"unknown {folder} stage(s) {bad} (known: {', '.join(known)})")
    return [f"{folder}/dvc.yaml:{s}" for s in stages]
