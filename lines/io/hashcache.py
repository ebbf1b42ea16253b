"""A cache of input files' sha256, so a manifest's hashes never cost a second read of an unchanged
input (a β sweep or a rerun hashes each checkpoint once, not once per output).

An entry is keyed by the file's identity and change stamps — device, inode, size, mtime and ctime
in nanoseconds — so any rewrite (ctime moves even when mtime is restored) misses the cache. It
lives in ``$LINES_CACHE_DIR/sha256.json`` (default ``$XDG_CACHE_HOME/lines`` or
``~/.cache/lines``); ``LINES_HASH_CACHE=0`` turns it off. Concurrent writers may lose each other's
entries, never corrupt the file (each write replaces it atomically); an unreadable cache is
ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from lines.io.tempfiles import make_tmp_file

MAX_ENTRIES = 20_000


def cache_dir() -> Path:
    if os.environ.get("LINES_CACHE_DIR"):
        return Path(os.environ["LINES_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lines"


def enabled() -> bool:
    return os.environ.get("LINES_HASH_CACHE", "1") not in ("0", "false", "no", "off")


def stamp(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _load(p: Path) -> dict[str, str]:
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def lookup(path: Path) -> str | None:
    """The cached sha256 of ``path`` if it has not changed since it was hashed."""
    if not enabled():
        return None
    try:
        key = stamp(path)
    except OSError:
        return None
    got = _load(cache_dir() / "sha256.json").get(key)
    return got if isinstance(got, str) and len(got) == 64 else None


def store(path: Path, digest: str, key: str) -> None:
    """Record ``digest`` for ``path`` as it was when ``key`` (its stamp) was taken before hashing:
    if the file changed while being hashed, the stamp no longer matches and the entry is unused."""
    if not enabled():
        return
    d = cache_dir()
    with contextlib.suppress(OSError):
        d.mkdir(parents=True, exist_ok=True)
        f = d / "sha256.json"
        entries = _load(f)
        entries[key] = digest
        if len(entries) > MAX_ENTRIES:  # keep the newest
            entries = dict(list(entries.items())[-MAX_ENTRIES:])
        tmp = make_tmp_file(f)
        try:
            tmp.write_text(json.dumps(entries))
            os.replace(tmp, f)
        except OSError:
            tmp.unlink(missing_ok=True)
