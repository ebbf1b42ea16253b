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
   see :mod:`lines.tempfiles`) and published only once complete. A folder output is published by
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
import logging
import os
import shutil
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lines import __version__
from lines.errors import LinesError
from lines.tempfiles import clean_stale, make_tmp_dir, remove_path, tmp_name, umask_mode

log = logging.getLogger("lines")

WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "lines_manifest.json"
# Weight files never copied from the pretrained folder into a folder output (it gets its own).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_WEIGHT_FILES = (
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------------------
# What a path is


def _ident(p: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _kind(p: Path) -> str:
    try:
        mode = os.lstat(p).st_mode
    except OSError:
        return "missing"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def header_metadata(path: Path) -> dict[str, Any] | None:
    """The ``__metadata__`` of a safetensors file's header, or None if the file is not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 1024 * 1024:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else None


def _written_by_lines(meta: Mapping[str, Any] | None) -> bool:
    return meta is not None and str(meta.get("producer", "")).startswith("lines")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest written by ``lines`` (a JSON object with ``lines_version``), else None."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and "lines_version" in obj else None


def _manifest_id(man: Mapping[str, Any] | None) -> str | None:
    out = (man or {}).get("output")
    return out.get("id") if isinstance(out, dict) else None


def manifest_path_of(target: Path) -> Path:
    """Where the manifest of the output ``target`` lives."""
    target = Path(target)
    return (
        target.with_suffix(".json") if target.suffix == ".safetensors" else target / MANIFEST_NAME
    )


# ----------------------------------------------------------------------------------------------
# Inputs vs output


def _target_path(out: Path) -> Path:
    """``out`` made absolute with its parent's symlinks resolved, but not ``out`` itself (a
    symlink at ``out`` must be seen as one, not followed)."""
    if out.name in ("", ".", ".."):
        return out.resolve()
    return out.parent.resolve() / out.name


@dataclass
class _Inputs:
    """The inputs' identities: every input file (and every file of an input folder), every
    input folder, and a stat of each for the output id."""

    paths: list[Path]
    files: dict[tuple[int, int], Path] = field(default_factory=dict)
    dirs: dict[tuple[int, int], Path] = field(default_factory=dict)
    stats: list[tuple[str, int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, inputs: Iterable[PathLike]) -> _Inputs:
        self = cls([Path(i).resolve() for i in inputs])
        for p in self.paths:
            ident = _ident(p)
            if ident is None:
                continue
            if p.is_dir():
                self.dirs[ident] = p
                with contextlib.suppress(OSError):
                    for e in sorted(os.scandir(p), key=lambda e: e.name):
                        if e.is_file():
                            st = e.stat()
                            self.files[(st.st_dev, st.st_ino)] = p
                            self.stats.append((e.path, st.st_size, st.st_mtime_ns))
            else:
                self.files[ident] = p
                st = p.stat()
                self.stats.append((str(p), st.st_size, st.st_mtime_ns))
        return self

    def check(self, shown: Path, target: Path, *also: Path) -> None:
        """Refuse an output (``target`` and the other paths it writes) that is, contains, or lies
        inside an input."""
        for cand in (target, *also):
            ident = _ident(cand)
            if ident is not None and (ident in self.files or ident in self.dirs):
                raise LinesError(
                    f"{shown}: output path is one of the inputs; refusing to overwrite it"
                )
        tid = _ident(target) if target.is_dir() else None
        for p in self.paths:
            if p.is_relative_to(target) or (
                tid is not None and any(_ident(a) == tid for a in p.parents)
            ):
                raise LinesError(f"{shown}: output contains the input {p}; refusing to write there")
        for a in target.parents:
            inside = self.dirs.get(_ident(a))  # type: ignore[arg-type]
            if inside is not None:
                raise LinesError(
                    f"{shown}: output lies inside the input folder {inside}; refusing to write there"
                )


def _check_not_cwd(shown: Path, target: Path) -> None:
    if target.parent == target:
        raise LinesError(f"{shown}: the file-system root cannot be an output")
    cwd = Path.cwd().resolve()
    tid = _ident(target)
    if (
        target == cwd
        or target in cwd.parents
        or (tid is not None and any(_ident(a) == tid for a in (cwd, *cwd.parents)))
    ):
        raise LinesError(
            f"{shown}: output is the working directory or one of its parents; refusing to write there"
        )


def check_distinct_inputs(pretrained: PathLike, finetuned: Iterable[PathLike]) -> None:
    """Refuse the same checkpoint given twice among the fine-tuned ones, or the pretrained one
    given as fine-tuned (by path and by device+inode): almost always a typo, and a zero task
    vector that would silently weigh the average."""
    seen: dict[object, Path] = {}
    pre = Path(pretrained)
    pre_keys = {pre.resolve(), _ident(pre)} - {None}
    for f in finetuned:
        p = Path(f)
        keys = {p.resolve(), _ident(p)} - {None}
        if keys & pre_keys:
            raise LinesError(
                f"{p}: the pretrained checkpoint is also given as a fine-tuned one "
                "(pass --allow-unusual if this is meant)"
            )
        for k in keys:
            if k in seen:
                raise LinesError(
                    f"{p}: the same fine-tuned checkpoint is given twice ({seen[k]}) "
                    "(pass --allow-unusual if this is meant)"
                )
        for k in keys:
            seen[k] = p


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
            if _ident(self.path) == (st.st_dev, st.st_ino):
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
# What is at the output now


@dataclass(frozen=True)
class _State:
    kind: str  # "absent" | "complete" | "incomplete" | "foreign"
    reason: str = ""


def _file_state(target: Path) -> _State:
    man_path = manifest_path_of(target)
    for p in (target, man_path):
        k = _kind(p)
        if k not in ("missing", "a regular file"):
            what = "output" if p == target else "output manifest"
            return _State("foreign", f"{p}: {what} exists and is {k}")
    has_w, has_m = target.exists(), man_path.exists()
    meta = header_metadata(target) if has_w else None
    if has_w and not _written_by_lines(meta):
        return _State("foreign", f"{target}: output exists and was not written by lines")
    man = read_manifest(man_path) if has_m else None
    if has_m and man is None:
        return _State("foreign", f"{man_path}: output manifest exists and was not written by lines")
    if not has_w and not has_m:
        return _State("absent")
    if not has_w:
        return _State("incomplete", "a manifest without its weights")
    wid = (meta or {}).get("lines_output_id")
    mid = _manifest_id(man)
    if has_m and wid and mid and wid != mid:
        return _State("incomplete", "weights that their manifest does not describe")
    primary = (meta or {}).get("lines_output_of")
    if primary and wid and _manifest_id(read_manifest(manifest_path_of(Path(primary)))) != wid:
        return _State("incomplete", f"written with {primary}, which was never published")
    return _State("complete")


def _folder_state(target: Path, may_write: set[str]) -> _State:
    k = _kind(target)
    if k == "missing":
        return _State("absent")
    if k != "a folder":
        return _State("foreign", f"{target}: output exists and is {k}, not a folder of lines")
    if os.path.ismount(target):
        return _State("foreign", f"{target}: output exists and is a mount point")
    man = read_manifest(target / MANIFEST_NAME) if (target / MANIFEST_NAME).is_file() else None
    if man is None:
        return _State("foreign", f"{target}: output exists and holds no lines manifest")
    recorded = (man.get("output") or {}).get("files") or []
    allowed = {WEIGHTS_NAME, MANIFEST_NAME, *may_write, *map(str, recorded)}
    for e in sorted(os.scandir(target), key=lambda e: e.name):
        if e.is_symlink() or not e.is_file():
            return _State("foreign", f"{target}: output exists and holds {e.name}, not a file")
        if e.name not in allowed:
            return _State(
                "foreign", f"{target}: output exists and holds {e.name}, which lines did not write"
            )
    return _State("complete")


def _copied_files(copy_from: Path | None) -> list[Path]:
    """The non-weight files of a model folder (config, tokenizer) that a folder output copies."""
    if copy_from is None or not copy_from.is_dir():
        return []
    return sorted(
        f
        for f in copy_from.iterdir()
        if f.is_file()
        and f.name not in (WEIGHTS_NAME, MANIFEST_NAME, *_WEIGHT_FILES)
        and not f.name.endswith(_WEIGHT_SUFFIXES)
    )


def _decide(shown: Path, state: _State, overwrite: bool) -> None:
    if state.kind == "foreign":
        raise LinesError(
            f"{state.reason}; refusing to replace it (--overwrite replaces only an earlier "
            "output of lines)"
        )
    if state.kind == "complete" and not overwrite:
        raise LinesError(f"{shown}: output exists (pass --overwrite to replace it)")
    if state.kind == "incomplete":
        log.info(
            "replacing an incomplete output at %s (%s, left by an interrupted run)",
            shown,
            state.reason,
        )


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
    _inputs: _Inputs | None = None
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
        t = _target_path(o)
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


def _output_id(inputs: _Inputs, target: Path, recipe: Mapping[str, Any] | None) -> str:
    blob = json.dumps(
        {"inputs": inputs.stats, "out": str(target), "recipe": recipe or {}},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _plan(
    o: Path,
    inputs: _Inputs,
    overwrite: bool,
    copy_from: Path | None,
    output_id: str | None,
    recipe: Mapping[str, Any] | None = None,
    primary: Path | None = None,
) -> OutputPlan:
    is_file = o.suffix == ".safetensors"
    target = _target_path(o)
    man_target = manifest_path_of(target)
    if not o.parent.exists():
        raise LinesError(f"{o.parent}: output folder does not exist")
    if not target.parent.is_dir():
        raise LinesError(f"{o.parent}: not a folder")
    _check_not_cwd(o, target)
    inputs.check(o, target, man_target)
    copied = _copied_files(copy_from) if not is_file else []
    lock = OutputLock(target, o)
    lock.acquire()
    try:
        clean_stale(target)
        state = _file_state(target) if is_file else _folder_state(target, {f.name for f in copied})
        _decide(o, state, overwrite)
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
    return _plan(Path(out), _Inputs.of(inputs), overwrite, copy_from, None, recipe)


def check_output(
    out: PathLike,
    inputs: Iterable[PathLike],
    overwrite: bool = False,
    copy_from: Path | None = None,
) -> None:
    """Run every check of :func:`plan_output` now, without keeping the lock or staging anything
    (for callers that do long work, e.g. greedy soup's evaluations, before writing)."""
    plan_output(out, inputs, overwrite, copy_from).discard()
