"""The manifest every output carries (inputs with sha256, method, blocks, scaling), the hashing
that feeds it, and the recipe that goes into the output id (``lines.io.outputs``)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from lines import __version__
from lines.families import Partition
from lines.io import (
    Checkpoint,
    sha256_file,
)
from lines.io.outputs import OutputPlan
from lines.merging import MergeMethod

PathLike = str | os.PathLike[str]


def prehash(cks: Sequence[Checkpoint]) -> Callable[[], None]:
    """Start the inputs' sha256 in a background thread (file reads and hashlib release the GIL,
    so it overlaps the merge); the returned function waits for it. ``Checkpoint.sha256`` caches
    its digest, so the manifest then reads it for free."""
    pool = ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) // 2 - 1)), "lines-hash")
    futs: list[Future[str]] = [pool.submit(ck.sha256) for ck in cks]
    pool.shutdown(wait=False)

    def wait() -> None:
        for f in futs:
            f.result()

    return wait


def inputs_manifest(
    base: Checkpoint, finetuned: Sequence[Checkpoint], hash_inputs: bool
) -> dict[str, Any]:
    def one(ck: Checkpoint) -> dict[str, str]:
        d = {"path": str(ck.path)}
        if hash_inputs:
            d["sha256"] = ck.sha256()
        return d

    return {"pretrained": one(base), "finetuned": [one(c) for c in finetuned]}


def base_manifest(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "lines_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def merge_manifest(
    kind: str,
    base: Checkpoint,
    fts: Sequence[Checkpoint],
    method: MergeMethod,
    part: Partition,
    pre_lines: tuple[float, float] | None,
    pre_l: list[float] | None,
    dev: torch.device,
    hash_inputs: bool,
) -> dict[str, Any]:
    """The manifest fields every merge records: inputs, method, blocks, pre-merge LiNeS, device."""
    manifest = base_manifest(kind)
    manifest.update(
        {
            "inputs": inputs_manifest(base, fts, hash_inputs),
            **method.describe(),
            "family": part.family,
            "num_blocks": part.num_blocks,
            "block_policy": part.policy,
            "pre_merge_lines": None
            if pre_lines is None
            else {"alpha": pre_lines[0], "beta": pre_lines[1], "lambdas": pre_l},
            "device": str(dev),
        }
    )
    return manifest


def finish(
    plan: OutputPlan, manifest: dict[str, Any], hash_output: bool, sha: str | None = None
) -> dict[str, Any]:
    """``sha``: the output's sha256 as computed while writing it (saves reading it back)."""
    if hash_output:
        manifest["output"]["sha256"] = sha or sha256_file(plan.weights)
    plan.publish(manifest)
    return manifest


def output_recipe(kind: str, method: MergeMethod | None, **kw: Any) -> dict[str, Any]:
    """What determines an output besides its inputs: part of the output id (see lines.io.outputs)."""
    return {"kind": kind, "lines": __version__, **(method.describe() if method else {}), **kw}
