"""Layer blocks per model family: an ordered, complete partition of a checkpoint's parameters.

LiNeS (Wang et al., ICLR 2025, Sec. 3) scales the task vector of block ℓ = 1..L (input → output)
by λ(ℓ). A family is data, not code: regexes that find each *stack* of blocks, anchored on the
container name (``encoder.layer.3.``, never a bare ``.3.``, which the reference implementation
matches and which is wrong for T5's ``block.3.layer.1.`` or MoE's ``experts.1.``), plus the
patterns that say which parameters outside the stacks sit on the output side.

Parameters outside every stack are placed by a named *block policy*:
- ``reference``: all of them in block 1 (they get α), as the reference implementation does,
  including the final norm and projection;
- ``depth``: input-side parameters (embeddings, stems) in block 1, output-side ones (final norm,
  projection, head) in block L, and a stack's own closing norm (``stack_end``) in that stack's
  last block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from lines.errors import LinesError

BlockPolicy = Literal["reference", "depth"]
BLOCK_POLICIES: tuple[str, ...] = ("reference", "depth")


@dataclass(frozen=True)
class Stack:
    """One sequence of repeated blocks. ``pattern`` captures the block index as group 1.

    A pattern with several groups captures a nested index (timm's ``blocks.{stage}.{block}``):
    the blocks are then numbered in lexicographic order of the captured tuples, and every level
    must run contiguously from 0 under its parent. Every group must take part in every match
    (write alternatives as non-capturing groups).
    """

    name: str
    pattern: str

    def index(self, key: str) -> tuple[int, ...] | None:
        """The (possibly nested) block index of ``key`` in this stack, or None."""
        m = re.search(self.pattern, key)
        return tuple(int(g) for g in m.groups()) if m else None

    def match(self, key: str) -> int | None:
        m = re.search(self.pattern, key)
        return int(m.group(1)) if m else None


def _missing(idxs: Iterable[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Indices absent from a stack: at every level the children of a parent must be 0..n-1."""
    children: dict[tuple[int, ...], set[int]] = {}
    for t in idxs:
        for depth in range(len(t)):
            children.setdefault(t[:depth], set()).add(t[depth])
    gaps = [
        parent + (i,)
        for parent, got in children.items()
        for i in range(max(got) + 1)
        if i not in got
    ]
    return sorted(gaps)


def _fmt(idx: tuple[int, ...]) -> str:
    return ".".join(map(str, idx))


@dataclass(frozen=True)
class Family:
    """A model family's layer layout. Stacks are listed input → output; blocks are numbered
    through them in that order (e.g. T5: encoder blocks 1..Le, then decoder blocks Le+1..Le+Ld)."""

    name: str
    description: str
    stacks: tuple[Stack, ...]
    # Outside the stacks: regexes of output-side parameters (final norm, projection, head).
    # Everything else outside the stacks is input side (embeddings, stems, leftovers).
    output_side: tuple[str, ...] = ()
    # Regexes of parameters that close a stack (e.g. T5's encoder.final_layer_norm), by stack name.
    stack_end: tuple[tuple[str, str], ...] = ()
    # Detection: lower runs first; a family is detected when any key falls in one of its stacks
    # and every regex in ``requires`` matches some key.
    priority: int = 100
    requires: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())

    def detects(self, keys: Sequence[str]) -> bool:
        if not any(s.match(k) is not None for s in self.stacks for k in keys):
            return False
        return all(any(re.search(r, k) for k in keys) for r in self.requires)


@dataclass(frozen=True)
class Partition:
    """The ordered, complete partition of a checkpoint's keys into L blocks."""

    family: str
    policy: str
    num_blocks: int
    groups: tuple[tuple[str, ...], ...]
    block: dict[str, int]  # key → ℓ in 1..L
    placed_by_policy: frozenset[str]  # keys outside every stack

    def block_of(self, key: str) -> int:
        return self.block[key]


def partition(family: Family, keys: Iterable[str], policy: str = "reference") -> Partition:
    """Assign every key to a block 1..L; raise if a stack's indices are not 0..n-1."""
    if policy not in BLOCK_POLICIES:
        raise LinesError(
            f"unknown block policy '{policy}' (choose from {', '.join(BLOCK_POLICIES)})"
        )
    keys = list(keys)
    per_stack: list[dict[str, tuple[int, ...]]] = [{} for _ in family.stacks]
    outside: list[str] = []
    for k in keys:
        for si, stack in enumerate(family.stacks):
            idx = stack.index(k)
            if idx is not None:
                per_stack[si][k] = idx
                break
        else:
            outside.append(k)
    offsets: list[int] = []
    ordinal: list[dict[tuple[int, ...], int]] = []  # per stack: index tuple -> 0-based position
    total = 0
    for si, stack in enumerate(family.stacks):
        idxs = sorted(set(per_stack[si].values()))
        missing = _missing(idxs)
        if missing:
            raise LinesError(
                f"family '{family.name}': stack '{stack.name}' has blocks "
                f"{_fmt(idxs[0])}..{_fmt(idxs[-1])} but is missing block(s) "
                f"{', '.join(_fmt(t) for t in missing[:5])}"
            )
        offsets.append(total)
        ordinal.append({t: i for i, t in enumerate(idxs)})
        total += len(idxs)
    if total == 0:
        raise LinesError(f"family '{family.name}': no parameter matches any of its layer blocks")
    block: dict[str, int] = {}
    for si, assigned in enumerate(per_stack):
        for k, idx in assigned.items():
            block[k] = offsets[si] + ordinal[si][idx] + 1
    # The last block of each stack that is present (an absent stack has no end to close).
    stack_last = {
        s.name: offsets[si] + len(ordinal[si]) for si, s in enumerate(family.stacks) if ordinal[si]
    }
    for k in outside:
        if policy == "reference":
            block[k] = 1
            continue
        ends = [sname for rx, sname in family.stack_end if re.search(rx, k)]
        if ends and ends[0] in stack_last:
            block[k] = stack_last[ends[0]]
        elif any(re.search(rx, k) for rx in family.output_side):
            block[k] = total
        else:
            block[k] = 1
    groups = tuple(tuple(k for k in keys if block[k] == ell) for ell in range(1, total + 1))
    return Partition(family.name, policy, total, groups, block, frozenset(outside))
