"""The engine's writers: θ = θ_0 + λ(ℓ)·τ_MTL merged and written in one pass, τ_MTL streamed to a
file with its norms, and a saved τ applied (LiNeS, Wang et al., ICLR 2025, Eqs. 1-2). Each
scaled add is ``lines.apply.scaled_add``, the one apply of the library."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import lines.engine.stream as streaming
from lines import __version__
from lines.apply import scaled_add
from lines.engine.stream import DTYPE_NAMES, TaskVectorStream, checked
from lines.errors import LinesError
from lines.families import Partition
from lines.io import (
    Checkpoint,
    SafetensorsWriter,
    TensorInfo,
)
from lines.io.outputs import OutputPlan
from lines.merging import MergeMethod
from lines.merging.base import stacked
from lines.readahead import ReadAhead
from lines.scaling import (
    NormKind,
    auto_alpha,
    finish_norm,
    tensor_norm_contrib,
)
from lines.schedules import BlockNorms

PathLike = str | os.PathLike[str]


@dataclass
class MergeReport:
    """What a merge measured, beyond the written files."""

    alpha: float | None = None
    lambdas: list[float] = field(default_factory=list)
    norm_sum: float | None = None
    norm_mtl: float | None = None
    block_norms: BlockNorms | None = None


def sumsq(t: torch.Tensor) -> torch.Tensor:
    """Σ t² in float64, a 0-d tensor on t's device."""
    return torch.linalg.vector_norm(t, 2, dtype=torch.float64).square()


def to_block_norms(part: Partition, tau2: dict[str, Any], base2: dict[str, Any]) -> BlockNorms:
    """Per-key Στ² and Σθ_0² gathered into per-block L2 norms (block ℓ at index ℓ−1)."""
    t = [0.0] * part.num_blocks
    b = [0.0] * part.num_blocks
    for key, v in tau2.items():
        ell = part.block_of(key) - 1
        t[ell] += float(v)
        b[ell] += float(base2[key])
    return BlockNorms(tau=[math.sqrt(x) for x in t], base=[math.sqrt(x) for x in b])


def block_norms_of(base: Checkpoint, tau: Checkpoint, part: Partition) -> BlockNorms:
    """Per-block ‖τ_ℓ‖ and ‖θ_0,ℓ‖ of a saved task vector, one tensor at a time."""
    tau2: dict[str, Any] = {}
    base2: dict[str, Any] = {}
    for key in tau.keys():
        if base.info(key).dtype.is_floating_point:
            tau2[key] = float(sumsq(tau.get(key).float()))
            base2[key] = float(sumsq(base.get(key).float()))
    return to_block_norms(part, tau2, base2)


def norm_part(t: torch.Tensor, kind: NormKind) -> torch.Tensor:
    """One slice's contribution to a whole-vector norm, accumulated in float64, as a 0-d tensor
    on the slice's device (no host synchronisation per slice). ``vector_norm`` with a float64
    dtype does the L1 sum without an |t| temporary, about twice as fast as abs().sum()."""
    if kind == "l1":
        return torch.linalg.vector_norm(t, 1, dtype=torch.float64)
    return torch.as_tensor(tensor_norm_contrib(t, kind), dtype=torch.float64)


def deferred_float(t: torch.Tensor) -> float | torch.Tensor:
    """A 0-d accumulator as a float now on the CPU (a Python float: no small long-lived tensor
    between large temporaries in the C heap), left on the GPU until the end (no synchronisation
    per key); ``float()`` of either gives the value."""
    return t if t.is_cuda else float(t)


def out_info(info: TensorInfo, out_dtype: torch.dtype | None) -> TensorInfo:
    if out_dtype is not None and info.dtype.is_floating_point:
        return TensorInfo(info.shape, out_dtype)
    return info


def merge_direct(
    stream: TaskVectorStream,
    method: MergeMethod,
    part: Partition,
    lambdas: list[float],
    plan: OutputPlan,
    odt: torch.dtype | None,
    progress: bool,
    norm: NormKind | None = None,
) -> tuple[MergeReport | None, str | None]:
    """θ = θ_0 + λ(ℓ)·τ_MTL in one pass. With ``norm`` (only for methods whose τ_MTL is Σ τ_i)
    also measure ‖τ_MTL‖ = ‖τ_sum‖; a zero merged task vector is refused before the commit."""
    base = stream.base
    specs = [(k, out_info(base.info(k), odt)) for k in base.keys()]
    contrib: dict[str, Any] | None = {} if norm is not None else None
    with SafetensorsWriter(plan.weights, specs, {"format": "pt", **plan.header_metadata()}) as w:
        float_set = set(stream.float_keys)
        for key in tqdm(
            base.keys(), desc="merge", unit="tensor", disable=not progress, leave=False
        ):
            if key in float_set:
                w.write_parts(
                    key,
                    theta_slices(stream, method, part, lambdas, key, odt, contrib, norm or "l1"),
                )
            else:
                w.write(key, base.get(key))
        for key in dict.fromkeys(method.fixup_keys()):
            w.rewrite_parts(
                key, theta_slices(stream, method, part, lambdas, key, odt, contrib, norm or "l1")
            )
        rep = None
        if norm is not None and contrib is not None:
            total = finish_norm(sum(float(c) for c in contrib.values()), norm)
            rep = MergeReport(norm_sum=total, norm_mtl=total)
            auto_alpha(total, total, len(stream.finetuned))  # refuses τ_MTL = 0
        w.commit()
    return rep, w.sha256()


def theta_slices(
    stream: TaskVectorStream,
    method: MergeMethod,
    part: Partition,
    lambdas: list[float],
    key: str,
    odt: torch.dtype | None,
    contrib: dict[str, Any] | None = None,
    norm: NormKind = "l1",
) -> Iterator[torch.Tensor]:
    """θ_0 + λ(ℓ)·τ_MTL for ``key``, slice by slice; with ``contrib``, record ‖τ_MTL[key]‖'s
    share (set per key, so a fix-up replaces it)."""
    lam = lambdas[part.block_of(key) - 1]
    dtype = odt or stream.base.info(key).dtype
    acc = torch.zeros((), dtype=torch.float64, device=stream.device)
    for span in stream.spans(key):
        b, taus = stream.read(key, span)
        tau = method.merge_tensor(key, taus)
        del taus
        if contrib is not None:
            acc += norm_part(tau, norm)
        yield scaled_add(b, tau, lam, dtype).cpu()
    if contrib is not None:
        contrib[key] = deferred_float(acc)


def merge_to_task_vector(
    stream: TaskVectorStream,
    method: MergeMethod,
    tau_path: Path,
    norm: NormKind,
    manifest: dict[str, Any],
    progress: bool,
    durable: bool = True,
    header: dict[str, str] | None = None,
    block_norms: bool = False,
) -> MergeReport:
    """Stream τ_MTL (float32, floating keys) into ``tau_path`` and measure ‖τ_sum‖ and ‖τ_MTL‖
    (and, with ``block_norms``, each block's ‖τ_MTL,ℓ‖ and ‖θ_0,ℓ‖ for a ``measured`` schedule).
    ``durable=False`` for a scratch τ file (read back at once, then deleted): no fsync."""
    base = stream.base
    specs = [(k, TensorInfo(base.info(k).shape, torch.float32)) for k in stream.float_keys]
    contrib_sum: dict[str, Any] = {}
    contrib_mtl: dict[str, Any] = {}
    tau2: dict[str, Any] = {}
    base2: dict[str, Any] = {}
    is_sum = method.merged_is_sum()

    def one(key: str) -> Iterator[torch.Tensor]:
        # Norm contributions are set per key once all its slices are merged, so a fix-up merge
        # of a key replaces (does not add to) its first contribution.
        c_sum = torch.zeros((), dtype=torch.float64, device=stream.device)
        c_mtl = torch.zeros((), dtype=torch.float64, device=stream.device)
        c_t2 = torch.zeros((), dtype=torch.float64, device=stream.device)
        c_b2 = torch.zeros((), dtype=torch.float64, device=stream.device)
        for span in stream.spans(key):
            b, taus = stream.read(key, span)
            merged = method.merge_tensor(key, taus)
            part_mtl = norm_part(merged, norm)
            c_mtl += part_mtl
            c_sum += part_mtl if is_sum else norm_part(stacked(taus).sum(0), norm)
            if block_norms:
                c_t2 += sumsq(merged)
                c_b2 += sumsq(b)
            del taus, b
            yield merged.float().cpu()
        contrib_sum[key] = deferred_float(c_sum)
        contrib_mtl[key] = deferred_float(c_mtl)
        if block_norms:
            tau2[key], base2[key] = deferred_float(c_t2), deferred_float(c_b2)

    meta = {
        "format": "pt",
        "producer": f"lines {__version__}",
        **(header or {}),
        "lines_task_vector": json.dumps(
            {
                "method": manifest.get("method"),
                "params": manifest.get("params"),
                "num_models": len(stream.finetuned),
                "family": stream.partition.family,
                "block_policy": stream.partition.policy,
            },
            default=str,
        ),
    }
    with SafetensorsWriter(tau_path, specs, meta) as w:
        for key in tqdm(
            stream.float_keys, desc="merge", unit="tensor", disable=not progress, leave=False
        ):
            w.write_parts(key, one(key))
        for key in dict.fromkeys(method.fixup_keys()):
            w.rewrite_parts(key, one(key))
        rep = MergeReport(
            norm_sum=finish_norm(sum(float(c) for c in contrib_sum.values()), norm),
            norm_mtl=finish_norm(sum(float(c) for c in contrib_mtl.values()), norm),
            block_norms=to_block_norms(stream.partition, tau2, base2) if block_norms else None,
        )
        w.set_metadata(
            "lines_norms",
            json.dumps(
                {"kind": norm, "task_vector_sum": rep.norm_sum, "merged_task_vector": rep.norm_mtl}
            ),
        )
        w.commit(durable=durable)
    return rep


def apply_streaming(
    base: Checkpoint,
    tau: Checkpoint,
    part: Partition,
    lambdas: list[float],
    plan: OutputPlan,
    odt: torch.dtype | None,
    dev: torch.device,
    progress: bool,
) -> str | None:
    """θ = θ_0 + λ(ℓ)·τ, one scaled add per slice; keys absent from τ pass through from θ_0.
    Returns the output's sha256 (computed while writing)."""
    specs = [(k, out_info(base.info(k), odt)) for k in base.keys()]
    tau_keys = set(tau.keys())
    slice_numel = max(streaming.MIN_SLICE, streaming.working_set(dev) // 8)
    scaled_keys = [k for k in base.keys() if k in tau_keys and base.info(k).dtype.is_floating_point]
    order = [(k, s) for k in scaled_keys for s in streaming.spans(base.info(k).numel, slice_numel)]

    def scaled(key: str) -> Iterator[torch.Tensor]:
        lam = lambdas[part.block_of(key) - 1]
        dtype = odt or base.info(key).dtype
        for span in streaming.spans(base.info(key).numel, slice_numel):
            b, t = reader.get((key, span))  # read ahead, checked for NaN/Inf, on the device
            yield scaled_add(b, t, lam, dtype).cpu()

    with (
        ReadAhead([base, tau], order, dev) as reader,
        SafetensorsWriter(plan.weights, specs, {"format": "pt", **plan.header_metadata()}) as w,
    ):
        for key in tqdm(
            base.keys(), desc="apply", unit="tensor", disable=not progress, leave=False
        ):
            if key in tau_keys and base.info(key).dtype.is_floating_point:
                if tau.info(key).shape != base.info(key).shape:
                    raise LinesError(
                        f"{tau.path}: shape mismatch at '{key}' with the pretrained checkpoint"
                    )
                w.write_parts(key, scaled(key))
            else:
                w.write(key, checked(base, key, base.get(key)))
        w.commit()
    return w.sha256()


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPE_NAMES:
        raise LinesError(f"unknown output dtype '{name}' (choose {', '.join(DTYPE_NAMES)})")
    return DTYPE_NAMES[name]


def task_vector_norms(tau: Checkpoint) -> dict[str, Any]:
    meta = getattr(tau, "metadata", {}) or {}
    if "lines_norms" not in meta:
        raise LinesError(
            f"{tau.path}: not a task vector written by 'lines merge --save-task-vector'"
        )
    return json.loads(meta["lines_norms"])
