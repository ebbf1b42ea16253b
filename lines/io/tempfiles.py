"""Temporary files and folders that say who made them, so a later run can clean up after a crash.

Every temporary ``lines`` creates beside an output is named ``.NAME.lines-HOST-PID-TAG.tmp``
(NAME: the output it belongs to; HOST: a short hash of the host name; PID: the writing process).
After ``kill -9``, a full disk or a power cut such names are left behind; the next run that writes
NAME removes those whose process is gone (same host, PID no longer running) and says so. Nothing
else is ever removed: a temporary of a live process, of another host, or of any other name stays.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

log = logging.getLogger("lines")

HOST_TAG = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TMP_RE = re.compile(
    r"^\.(?P<name>.+)\.lines-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<tag>[0-9a-z]+)\.tmp$"
)


def tmp_name(name: str) -> str:
    """A fresh temporary name for the output ``name``, marked with this host and process."""
    return f".{name}.lines-{HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def umask_mode(folder: bool = False) -> int:
    """The mode a plain ``open``/``mkdir`` would give (temporaries are created 0600/0700, which
    would otherwise leave every output readable by its owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def make_tmp_file(target: Path) -> Path:
    """Create (exclusively) an empty temporary file beside ``target``, for ``target``."""
    target = Path(target)
    while True:
        p = target.parent / tmp_name(target.name)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        os.close(fd)
        return p


def make_tmp_dir(target: Path) -> Path:
    """Create a private temporary folder beside ``target``, for ``target``."""
    target = Path(target)
    while True:
        p = target.parent / tmp_name(target.name)
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            continue
        return p


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def stale_temporaries(target: Path) -> list[Path]:
    """Temporaries of ``target`` left by processes of this host that are no longer running."""
    target = Path(target)
    found: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return found
    for e in entries:
        m = _TMP_RE.match(e.name)
        if (
            m
            and m["name"] == target.name
            and m["host"] == HOST_TAG
            and not pid_alive(int(m["pid"]))
        ):
            found.append(Path(e.path))
    return sorted(found)


def remove_path(p: Path) -> None:
    """Remove a file, a symlink or a whole folder tree (never following a symlink)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def clean_stale(target: Path) -> list[Path]:
    """Remove the stale temporaries of ``target`` (see the module docstring); log each one."""
    removed = []
    for p in stale_temporaries(target):
        try:
            remove_path(p)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warning("could not remove stale temporary %s (%s)", p, e.strerror)
            continue
        log.info("removed stale temporary %s (left by an interrupted run)", p)
        removed.append(p)
    return removed
