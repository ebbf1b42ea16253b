"""Output planning: where a result goes, and the rules that make writing it safe.

An output is either ``OUT.safetensors`` with its manifest ``OUT.json`` beside it, or a folder
``OUT/`` holding ``model.safetensors``, ``lines_manifest.json`` and the pretrained folder's config
and tokenizer. The rules, in the order they are checked (each refusal is one ``LinesError``, and
nothing is touched):

1. An output may not be, contain, or live inside any input (paths resolved, and files and folders
   compared by device and inode, so symlinks, hard links and bind mounts are seen through). It may
   not be the working directory or one of its parents, nor the file-system root.
2. One writer at a time: an exclusive lock (``.OUT.lines.lock`` beside it, ``flock``) is held from
   planning to publication; a second ``lines`` writing the same output fails at once.
3. What exists at ``OUT`` is classified: nothing; a complete earlier output of ``lines``; an
   incomplete one (an interrupted publication); or anything else. ``--overwrite`` replaces only a
   complete earlier output of ``lines``: a regular ``.safetensors`` file whose header says it was
   produced by ``lines`` (and whose ``.json``, if any, is a ``lines`` manifest), or a real folder
   (not a symlink, not a mount point) holding a ``lines_manifest.json`` and nothing but regular
   files that ``lines`` writes there. Anything else (a foreign file or folder, a symlink, a device,
   a FIFO) is refused, with or without ``--overwrite``. An incomplete output is replaced without
   ``--overwrite``: it is debris of an interrupted run, never a result.
4. Everything is built in a private staging folder beside ``OUT`` (``.OUT.lines-HOST-PID-TAG.tmp``,
   see :mod:`lines.io.tempfiles`) and published only once complete. A folder output is published by
   one rename (an atomic exchange with the old folder when it replaces one). A file output is
   published manifest first, then weights; the weights' header carries the manifest's output id
   (``lines_output_id``), so a reader can tell weights that their manifest does not describe.
   The id is a hash of the inputs (path, size, mtime) and of the recipe, so a rerun writes the
   same bytes.
5. Temporaries of ``OUT`` left by a process that no longer runs are removed by the next run that
   writes ``OUT`` (logged).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lines import __version__
from lines.errors import LinesError
from lines.io.output_rules import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    Inputs,
    check_distinct_inputs,
    check_not_cwd,
    copied_files,
    decide,
    file_state,
    folder_state,
    header_metadata,
    ident,
    manifest_path_of,
    read_manifest,
    target_path,
)
from lines.io.tempfiles import clean_stale, make_tmp_dir, remove_path, tmp_name, umask_mode

PathLike = str | os.PathLike[str]

__all__ = [
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "OutputLock",
    "OutputPlan",
    "check_distinct_inputs",
    "check_output",
    "header_metadata",
    "plan_output",
    "read_manifest",
]

# ----------------------------------------------------------------------------------------------
# One writer at a time


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``.NAME.lines.lock`` beside the output. The lock
    file is removed on release (while still held, and a waiter re-checks the inode it locked,
    so two processes can never both believe they hold it); after a crash the kernel drops the
    lock and the next run reuses the file."""

    def __init__(self, target: Path, shown: Path):
        self.path = target.parent / f".{target.name}.lines.lock"
        self.shown = shown
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise LinesError(
                    f"{self.path.parent}: cannot write in the output folder ({e.strerror})"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LinesError(
                    f"{self.shown}: another lines process is writing this output now "
                    f"(lock {self.path.name}); wait for it or choose another --out"
                ) from None
            st = os.fstat(fd)
            if ident(self.path) == (st.st_dev, st.st_ino):
                self._fd = fd
                return
            os.close(fd)  # removed by its previous holder while we waited: take the new one

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


# ----------------------------------------------------------------------------------------------
# Renames: no-replace, and atomic exchange of two folders


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_LIBC: Any = None


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(2)``; False where the C library or the file system does not support it."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_LIBC, "renameat2", None)
    if fn is None:
        return False
    r = fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags))
    if r == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _rename_noreplace(src: Path, dst: Path, shown: Path) -> None:
    """Rename ``src`` to ``dst``, refusing if something appeared at ``dst`` meanwhile."""
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise LinesError(
            f"{shown}: something was created at {dst} while lines was writing; it was left "
            "untouched and the result discarded"
        ) from None
    if os.path.lexists(dst):
        raise LinesError(
            f"{shown}: something was created at {dst} while lines was writing; it was left "
            "untouched and the result discarded"
        )
    os.rename(src, dst)


def _replace(src: Path, dst: Path) -> None:
    """Replace ``dst`` by ``src`` (one rename; the old file stays whole until then)."""
    os.replace(src, dst)


def _swap_in(staging: Path, target: Path) -> Path:
    """Put the folder ``staging`` at ``target`` in place of the folder there; return the path
    that now holds the old folder (for removal). Atomic where ``RENAME_EXCHANGE`` is supported;
    elsewhere the old folder is first moved aside."""
    if _renameat2(staging, target, _RENAME_EXCHANGE):
        return staging
    aside = target.parent / tmp_name(target.name)
    os.rename(target, aside)
    os.rename(staging, target)
    return aside


def _fsync_dir(p: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_durable(path: Path, obj: object) -> None:
    """Write JSON to a new file (in a staging folder) and force it to disk."""
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, umask_mode())


# ----------------------------------------------------------------------------------------------
# The plan


@dataclass
class OutputPlan:
    """Where a result goes and how it is published. Write the weights to ``weights`` (with
    ``header_metadata()`` in their header), keep scratch files at ``scratch(name)``, then call
    ``publish(manifest)``; on any failure ``discard()`` (or use the plan as a context manager,
    which also turns OS errors into one-line ``LinesError``)."""

    out: Path  # as the caller named it
    target: Path  # absolute final location
    weights: Path  # staged weights
    manifest: Path  # staged manifest
    staging: Path
    is_folder: bool
    output_id: str
    state: str
    lock: OutputLock
    primary: Path | None = None  # for a companion file (e.g. --save-task-vector)
    companions: list[OutputPlan] = field(default_factory=list)
    _scratch: list[Path] = field(default_factory=list)
    _inputs: Inputs | None = None
    _done: bool = False

    def header_metadata(self) -> dict[str, str]:
        meta = {"producer": f"lines {__version__}", "lines_output_id": self.output_id}
        if self.primary is not None:
            meta["lines_output_of"] = str(self.primary)
        return meta

    def scratch(self, name: str) -> Path:
        """A scratch path inside the staging folder, removed at publication."""
        p = self.staging / f".scratch.{name}"
        self._scratch.append(p)
        return p

    def companion(self, out: PathLike, overwrite: bool = False) -> OutputPlan:
        """A second file output written with this one (e.g. ``--save-task-vector``): publish it
        first, so a reader of this output's manifest always finds it. It carries this output's
        id and path, so a companion whose primary was never published is known as debris."""
        o = Path(out)
        if o.suffix != ".safetensors":
            raise LinesError(f"{o}: must be a .safetensors file")
        t = target_path(o)
        own = (self.target, manifest_path_of(self.target))
        if t in own or manifest_path_of(t) in own:
            raise LinesError(f"{o}: must differ from --out and its manifest")
        if t.is_relative_to(self.target):
            raise LinesError(f"{o}: must not lie inside the output folder {self.out}")
        assert self._inputs is not None
        plan = _plan(o, self._inputs, overwrite, None, self.output_id, primary=self.target)
        self.companions.append(plan)
        return plan

    def publish(self, manifest: dict[str, Any]) -> None:
        """Write ``manifest`` and move everything into place (see the module docstring)."""
        try:
            out = manifest.setdefault("output", {})
            out["id"] = self.output_id
            if self.primary is not None:
                out["of"] = str(self.primary)
            unpublished = [c for c in self.companions if not c._done]
            if unpublished:
                raise RuntimeError(f"publish {unpublished[0].out} before {self.out}")
            for p in self._scratch:
                remove_path(p)
            if self.is_folder:
                out["files"] = sorted({e for e in os.listdir(self.staging)} | {MANIFEST_NAME})
            write_json_durable(self.manifest, manifest)
            if self.is_folder:
                os.chmod(self.staging, umask_mode(folder=True))
                if self.state == "absent":
                    _rename_noreplace(self.staging, self.target, self.out)
                else:
                    old = _swap_in(self.staging, self.target)
                    remove_path(old)
            else:
                man_target = manifest_path_of(self.target)
                if self.state == "absent":
                    _rename_noreplace(self.manifest, man_target, self.out)
                    _rename_noreplace(self.weights, self.target, self.out)
                else:
                    _replace(self.manifest, man_target)
                    _replace(self.weights, self.target)
                remove_path(self.staging)
            _fsync_dir(self.target.parent)
        except BaseException:
            self.discard()
            raise
        self._done = True
        self._release()

    def discard(self) -> None:
        """Remove everything staged; the previous output (if any) stays as it was."""
        for c in self.companions:
            c.discard()
        if not self._done:
            with contextlib.suppress(OSError):
                remove_path(self.staging)
            self._done = True
        self._release()

    def _release(self) -> None:
        self.lock.release()

    def __enter__(self) -> OutputPlan:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            if not self._done:
                self.discard()
            return
        self.discard()
        if isinstance(exc, OSError) and not isinstance(exc, LinesError):
            where = exc.filename if exc.filename else self.out
            raise LinesError(f"{where}: cannot write the output ({exc.strerror or exc})") from None


def _output_id(inputs: Inputs, target: Path, recipe: Mapping[str, Any] | None) -> str:
    blob = json.dumps(
        {"inputs": inputs.stats, "out": str(target), "recipe": recipe or {}},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _plan(
    o: Path,
    inputs: Inputs,
    overwrite: bool,
    copy_from: Path | None,
    output_id: str | None,
    recipe: Mapping[str, Any] | None = None,
    primary: Path | None = None,
) -> OutputPlan:
    is_file = o.suffix == ".safetensors"
    target = target_path(o)
    man_target = manifest_path_of(target)
    if not o.parent.exists():
        raise LinesError(f"{o.parent}: output folder does not exist")
    if not target.parent.is_dir():
        raise LinesError(f"{o.parent}: not a folder")
    check_not_cwd(o, target)
    inputs.check(o, target, man_target)
    copied = copied_files(copy_from) if not is_file else []
    lock = OutputLock(target, o)
    lock.acquire()
    try:
        clean_stale(target)
        state = file_state(target) if is_file else folder_state(target, {f.name for f in copied})
        decide(o, state, overwrite)
        try:
            staging = make_tmp_dir(target)
        except OSError as e:
            raise LinesError(
                f"{o.parent}: cannot write in the output folder ({e.strerror})"
            ) from None
        try:
            for f in copied:
                shutil.copy2(f, staging / f.name)
        except OSError as e:
            remove_path(staging)
            raise LinesError(f"{o}: cannot copy {f.name} into the output ({e.strerror})") from None
    except BaseException:
        lock.release()
        raise
    return OutputPlan(
        out=o,
        target=target,
        weights=staging / (target.name if is_file else WEIGHTS_NAME),
        manifest=staging / (man_target.name if is_file else MANIFEST_NAME),
        staging=staging,
        is_folder=not is_file,
        output_id=output_id or _output_id(inputs, target, recipe),
        state=state.kind,
        lock=lock,
        primary=primary,
        _inputs=inputs,
    )


def plan_output(
    out: PathLike,
    inputs: Iterable[PathLike],
    overwrite: bool = False,
    copy_from: Path | None = None,
    recipe: Mapping[str, Any] | None = None,
) -> OutputPlan:
    """Check an output path against the rules of this module, lock it, and stage its write.

    ``OUT.safetensors`` is a file with ``OUT.json`` beside it; any other name is a folder with
    ``model.safetensors``, ``lines_manifest.json`` and, when ``copy_from`` is a model folder,
    its non-weight files (config, tokenizer) so the result loads with ``from_pretrained``.
    ``recipe`` (the method, its parameters, …) goes into the output id with the inputs' stats.
    """
    return _plan(Path(out), Inputs.of(inputs), overwrite, copy_from, None, recipe)


def check_output(
    out: PathLike,
    inputs: Iterable[PathLike],
    overwrite: bool = False,
    copy_from: Path | None = None,
) -> None:
    """Run every check of :func:`plan_output` now, without keeping the lock or staging anything
    (for callers that do long work, e.g. greedy soup's evaluations, before writing)."""
    plan_output(out, inputs, overwrite, copy_from).discard()
