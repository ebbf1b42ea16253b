"""Model families, discovered from this package: each module defines ``FAMILY`` (or ``FAMILIES``).

Adding a family is one new module here plus its test; nothing registers itself by side effect.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from functools import cache

from lines.errors import LinesError
from lines.families.base import BLOCK_POLICIES, Family, Partition, Stack, partition

__all__ = [
    "BLOCK_POLICIES",
    "Family",
    "Partition",
    "Stack",
    "all_families",
    "detect_family",
    "get_family",
    "partition",
    "partition_keys",
]


@cache
def all_families() -> dict[str, Family]:
    """Every family defined in this package, by name, in detection order."""
    found: list[Family] = []
    for mod in pkgutil.iter_modules(__path__):
        if mod.name == "base":
            continue
        m = importlib.import_module(f"{__name__}.{mod.name}")
        found.extend(getattr(m, "FAMILIES", ()))
        if hasattr(m, "FAMILY"):
            found.append(m.FAMILY)
    found.sort(key=lambda f: (f.priority, f.name))
    return {f.name: f for f in found}


def get_family(name: str) -> Family:
    fams = all_families()
    if name in fams:
        return fams[name]
    for f in fams.values():
        if name in f.aliases:
            return f
    raise LinesError(f"unknown model family '{name}' (known: {', '.join(fams)})")


def detect_family(keys: Sequence[str]) -> Family:
    """The first family (by priority) whose stacks match the keys."""
    for f in all_families().values():
        if f.detects(keys):
            return f
    sample = ", ".join(list(keys)[:3])
    raise LinesError(
        f"cannot detect the model family from the keys (first: {sample}); "
        f"pass --family (known: {', '.join(all_families())})"
    )


def partition_keys(
    keys: Sequence[str], family: str | None = None, policy: str = "reference"
) -> Partition:
    """Partition ``keys`` for ``family`` (detected when None) under a block policy."""
    fam = get_family(family) if family else detect_family(keys)
    return partition(fam, keys, policy)
