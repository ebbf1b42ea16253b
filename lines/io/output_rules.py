"""The rules behind every output (see :mod:`lines.io.outputs`): what a path is, whether an output
would be, contain or lie inside an input, and what already stands at an output — nothing, a
complete or an incomplete earlier output of ``lines``, or something ``lines`` must never touch."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lines.errors import LinesError

log = logging.getLogger("lines")
PathLike = str | os.PathLike[str]

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


def ident(p: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def path_kind(p: Path) -> str:
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


def written_by_lines(meta: Mapping[str, Any] | None) -> bool:
    return meta is not None and str(meta.get("producer", "")).startswith("lines")


def read_manifest(path: Path) -> dict[str, Any] | None:
    """A manifest written by ``lines`` (a JSON object with ``lines_version``), else None."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and "lines_version" in obj else None


def manifest_id(man: Mapping[str, Any] | None) -> str | None:
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


def target_path(out: Path) -> Path:
    """``out`` made absolute with its parent's symlinks resolved, but not ``out`` itself (a
    symlink at ``out`` must be seen as one, not followed)."""
    if out.name in ("", ".", ".."):
        return out.resolve()
    return out.parent.resolve() / out.name


@dataclass
class Inputs:
    """The inputs' identities: every input file (and every file of an input folder), every
    input folder, and a stat of each for the output id."""

    paths: list[Path]
    files: dict[tuple[int, int], Path] = field(default_factory=dict)
    dirs: dict[tuple[int, int], Path] = field(default_factory=dict)
    stats: list[tuple[str, int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, inputs: Iterable[PathLike]) -> Inputs:
        self = cls([Path(i).resolve() for i in inputs])
        for p in self.paths:
            got = ident(p)
            if got is None:
                continue
            if p.is_dir():
                self.dirs[got] = p
                with contextlib.suppress(OSError):
                    for e in sorted(os.scandir(p), key=lambda e: e.name):
                        if e.is_file():
                            st = e.stat()
                            self.files[(st.st_dev, st.st_ino)] = p
                            self.stats.append((e.path, st.st_size, st.st_mtime_ns))
            else:
                self.files[got] = p
                st = p.stat()
                self.stats.append((str(p), st.st_size, st.st_mtime_ns))
        return self

    def check(self, shown: Path, target: Path, *also: Path) -> None:
        """Refuse an output (``target`` and the other paths it writes) that is, contains, or lies
        inside an input."""
        for cand in (target, *also):
            got = ident(cand)
            if got is not None and (got in self.files or got in self.dirs):
                raise LinesError(
                    f"{shown}: output path is one of the inputs; refusing to overwrite it"
                )
        tid = ident(target) if target.is_dir() else None
        for p in self.paths:
            if p.is_relative_to(target) or (
                tid is not None and any(ident(a) == tid for a in p.parents)
            ):
                raise LinesError(f"{shown}: output contains the input {p}; refusing to write there")
        for a in target.parents:
            inside = self.dirs.get(ident(a))  # type: ignore[arg-type]
            if inside is not None:
                raise LinesError(
                    f"{shown}: output lies inside the input folder {inside}; refusing to write there"
                )


def check_not_cwd(shown: Path, target: Path) -> None:
    if target.parent == target:
        raise LinesError(f"{shown}: the file-system root cannot be an output")
    cwd = Path.cwd().resolve()
    tid = ident(target)
    if (
        target == cwd
        or target in cwd.parents
        or (tid is not None and any(ident(a) == tid for a in (cwd, *cwd.parents)))
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
    pre_keys = {pre.resolve(), ident(pre)} - {None}
    for f in finetuned:
        p = Path(f)
        keys = {p.resolve(), ident(p)} - {None}
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
# What is at the output now


@dataclass(frozen=True)
class State:
    kind: str  # "absent" | "complete" | "incomplete" | "foreign"
    reason: str = ""


def file_state(target: Path) -> State:
    man_path = manifest_path_of(target)
    for p in (target, man_path):
        k = path_kind(p)
        if k not in ("missing", "a regular file"):
            what = "output" if p == target else "output manifest"
            return State("foreign", f"{p}: {what} exists and is {k}")
    has_w, has_m = target.exists(), man_path.exists()
    meta = header_metadata(target) if has_w else None
    if has_w and not written_by_lines(meta):
        return State("foreign", f"{target}: output exists and was not written by lines")
    man = read_manifest(man_path) if has_m else None
    if has_m and man is None:
        return State("foreign", f"{man_path}: output manifest exists and was not written by lines")
    if not has_w and not has_m:
        return State("absent")
    if not has_w:
        return State("incomplete", "a manifest without its weights")
    wid = (meta or {}).get("lines_output_id")
    mid = manifest_id(man)
    if has_m and wid and mid and wid != mid:
        return State("incomplete", "weights that their manifest does not describe")
    primary = (meta or {}).get("lines_output_of")
    if primary and wid and manifest_id(read_manifest(manifest_path_of(Path(primary)))) != wid:
        return State("incomplete", f"written with {primary}, which was never published")
    return State("complete")


def folder_state(target: Path, may_write: set[str]) -> State:
    k = path_kind(target)
    if k == "missing":
        return State("absent")
    if k != "a folder":
        return State("foreign", f"{target}: output exists and is {k}, not a folder of lines")
    if os.path.ismount(target):
        return State("foreign", f"{target}: output exists and is a mount point")
    man = read_manifest(target / MANIFEST_NAME) if (target / MANIFEST_NAME).is_file() else None
    if man is None:
        return State("foreign", f"{target}: output exists and holds no lines manifest")
    recorded = (man.get("output") or {}).get("files") or []
    allowed = {WEIGHTS_NAME, MANIFEST_NAME, *may_write, *map(str, recorded)}
    for e in sorted(os.scandir(target), key=lambda e: e.name):
        if e.is_symlink() or not e.is_file():
            return State("foreign", f"{target}: output exists and holds {e.name}, not a file")
        if e.name not in allowed:
            return State(
                "foreign", f"{target}: output exists and holds {e.name}, which lines did not write"
            )
    return State("complete")


def copied_files(copy_from: Path | None) -> list[Path]:
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


def decide(shown: Path, state: State, overwrite: bool) -> None:
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
