"""The inputs of a merge: θ_0 and the fine-tuned checkpoints opened and checked, the pre-merge
edit of each τ_i (LiNeS through a schedule, task weights), and the stream of task vectors after
the method's statistics passes, with the manifest fields every merge records."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch

from lines.engine.manifest import merge_manifest, prehash
from lines.engine.stream import TaskVectorStream, check_compatible, is_elementwise, run_statistics
from lines.errors import LinesError
from lines.families import Partition, partition_keys
from lines.io import Checkpoint, open_checkpoint
from lines.merging import MergeMethod
from lines.scaling import lines_lambdas
from lines.schedules import Schedule

PathLike = str | os.PathLike[str]


def pre_merge_lambdas(
    num_blocks: int, pre_lines: tuple[float, float] | None, pre_schedule: Schedule | None
) -> list[float] | None:
    """λ_pre(ℓ) for editing each τ_i before merging (LiNeS Sec. 5, "LiNeS may also edit each τ_i"):
    ``pre_lines`` = (α, β) through ``pre_schedule`` (default linear)."""
    if pre_lines is None:
        if pre_schedule is not None:
            raise LinesError("a pre-merge schedule needs --pre-lines-alpha and --pre-lines-beta")
        return None
    if pre_schedule is None:
        return lines_lambdas(num_blocks, *pre_lines)
    if pre_schedule.needs_block_norms:
        raise LinesError(
            f"schedule '{pre_schedule.name}' cannot edit each τ_i before merging "
            "(it is set from the merged task vector's block norms)"
        )
    return pre_schedule.lambdas(num_blocks, *pre_lines)


def check_task_weights(weights: Sequence[float] | None, n: int) -> None:
    if weights is None:
        return
    if len(weights) != n:
        raise LinesError(f"{len(weights)} task weights for {n} fine-tuned checkpoints")
    for w in weights:
        if not isinstance(w, int | float) or not math.isfinite(w):
            raise LinesError(f"task weights must be finite numbers, got {w!r}")


@dataclasses.dataclass(frozen=True)
class PreMerge:
    """What is applied to each τ_i before merging: LiNeS (α, β) through a schedule, and a weight
    per task."""

    lines: tuple[float, float] | None = None
    schedule: Schedule | None = None
    weights: Sequence[float] | None = None


@dataclasses.dataclass
class MergeInputs:
    """The opened inputs of a merge and what is applied to each τ_i before merging."""

    base: Checkpoint
    fts: list[Checkpoint]
    part: Partition
    method: MergeMethod
    pre_lines: tuple[float, float] | None
    pre_schedule: Schedule | None
    task_weights: Sequence[float] | None
    pre_l: list[float] | None


def open_inputs(
    stack: ExitStack,
    pretrained: PathLike,
    finetuned: Sequence[PathLike],
    method: MergeMethod,
    family: str | None,
    block_policy: str,
    pre: PreMerge,
) -> MergeInputs:
    """Open θ_0 and the fine-tuned checkpoints (closed with ``stack``), check them against each
    other, partition θ_0's keys into blocks and check the pre-merge edit and weights."""
    base = stack.enter_context(open_checkpoint(pretrained))
    fts = [stack.enter_context(open_checkpoint(f)) for f in finetuned]
    if len(fts) < method.min_models:
        raise LinesError(
            f"method '{method.name}' needs at least {method.min_models} fine-tuned "
            f"checkpoint(s), got {len(fts)}"
        )
    check_compatible(base, fts)
    check_task_weights(pre.weights, len(fts))
    part = partition_keys(base.keys(), family, block_policy)
    pre_l = pre_merge_lambdas(part.num_blocks, pre.lines, pre.schedule)
    return MergeInputs(base, fts, part, method, pre.lines, pre.schedule, pre.weights, pre_l)


def start_merge(
    stack: ExitStack,
    kind: str,
    inp: MergeInputs,
    dev: torch.device,
    progress: bool,
    hash_inputs: bool,
    resident: bool | None = None,
) -> tuple[TaskVectorStream, dict[str, Any]]:
    """The task-vector stream, after the method's statistics passes (the inputs' sha256 are
    computed meanwhile), and the manifest's common fields."""
    hashed = prehash([inp.base, *inp.fts]) if hash_inputs else None
    stream = TaskVectorStream(
        inp.base,
        inp.fts,
        dev,
        inp.part,
        pre_lambdas=inp.pre_l,
        task_weights=inp.task_weights,
        progress=progress,
        sliced=is_elementwise(inp.method),
        resident=resident,
    )
    stack.callback(stream.close)
    inp.method.begin(len(inp.fts), stream.total_entries(), dev)
    run_statistics(stream, inp.method)
    if hashed is not None:
        hashed()
    manifest = merge_manifest(
        kind, inp.base, inp.fts, inp.method, inp.part, inp.pre_lines, inp.pre_l, dev, hash_inputs
    )
    if inp.pre_schedule is not None:
        manifest["pre_merge_lines"]["schedule"] = inp.pre_schedule.describe()
    if inp.task_weights is not None:
        manifest["task_weights"] = list(inp.task_weights)
    return stream, manifest
