"""The streaming engine: task vectors, merge methods and LiNeS, one tensor at a time.

Merging N checkpoints never holds N models. For each tensor the engine reads θ_0 and the N
fine-tuned tensors, forms τ_i = θ_i − θ_0 (floating tensors only; integer buffers pass through
from θ_0), lets the method merge them, scales the result per block and writes it straight into a
streaming safetensors file. Methods that need whole-vector statistics get extra streaming passes
first. Element-wise methods (``is_elementwise``) are fed large tensors in flat slices of at most
``WORKING_SET_BYTES / (N + 1)`` bytes per input, so peak memory is a few times
``WORKING_SET_BYTES`` whatever N or the largest tensor (MiniLM's word embedding is half the
model); the other methods (DARE, per-tensor trims) hold one whole tensor per input.

With LiNeS's automatic α = (1/N)‖τ_sum‖/‖τ_MTL‖ the norms are only known after the merge, so the
merged task vector is streamed to a file first and θ = θ_0 + λ(ℓ)τ_MTL is produced by a second,
cheap pass (``apply_task_vector``), which is also what a β sweep repeats per β.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lines import __version__
from lines.errors import LinesError
from lines.families import Partition, partition_keys
from lines.io import (
    Checkpoint,
    SafetensorsWriter,
    TensorInfo,
    open_checkpoint,
    sha256_file,
)
from lines.merging import MergeMethod
from lines.merging.base import TaskVectors, stacked
from lines.merging.methods.wise_ft import WiseFT
from lines.outputs import OutputPlan, check_distinct_inputs, plan_output
from lines.readahead import ReadAhead, Unit, check_finite
from lines.scaling import (
    NormKind,
    Scaling,
    auto_alpha,
    finish_norm,
    lines_lambdas,
    single_task_lambdas,
    tensor_norm_contrib,
)

PathLike = str | os.PathLike[str]
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# float32 bytes of one slice of every input together (θ_0 and the N fine-tuned checkpoints).
# The methods' temporaries (stacks, masks, trimmed copies) are a small multiple of it.
WORKING_SET_BYTES = 4 << 20
_MIN_SLICE = 1 << 16
# On a GPU the slices live in device memory and host memory holds only the readers' pinned
# staging buffers, so slices are large: fewer, larger reads, copies and kernels (a slice of a few
# hundred kilobytes makes a merge launch- and latency-bound).
GPU_WORKING_SET_BYTES = 256 << 20


def _working_set(device: torch.device) -> int:
    return GPU_WORKING_SET_BYTES if device.type == "cuda" else WORKING_SET_BYTES


# Methods whose merge_tensor/observe treat every entry independently given the statistics of the
# passes (global thresholds), so a tensor may be fed to them in slices. A method can declare this
# itself with an ``elementwise`` attribute; DARE (its masks are drawn per whole tensor) and the
# per-tensor trims (their threshold is per whole tensor) are not element-wise.
_ELEMENTWISE = {"task_arithmetic", "uniform_soup", "wise_ft", "rewarded_soup", "consensus"}
_ELEMENTWISE_IF_GLOBAL = {"ties", "magnitude_prune"}


def is_elementwise(method: MergeMethod) -> bool:
    declared = getattr(method, "elementwise", None)
    if declared is not None:
        return bool(declared)
    if method.name in _ELEMENTWISE:
        return True
    if method.name in _ELEMENTWISE_IF_GLOBAL:
        return getattr(method, "scope", None) == "global" or getattr(method, "density", 0) >= 1
    return False


def _spans(numel: int, size: int | None) -> list[tuple[int, int] | None]:
    """Flat [start, stop) slices of a tensor, or [None] (the whole tensor, in its shape)."""
    if size is None or numel <= size:
        return [None]
    return [(s, min(s + size, numel)) for s in range(0, numel, size)]


def _read(ck: Checkpoint, key: str, span: tuple[int, int] | None) -> torch.Tensor:
    return ck.get(key) if span is None else ck.get_flat(key, *span)


def _sum(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ ts with one accumulator (``torch.stack(ts).sum(0)`` would hold N more copies)."""
    out = ts[0].clone()
    for t in ts[1:]:
        out += t
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LinesError(f"device '{device}' requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise LinesError(f"unknown device '{device}' (choose cpu, cuda or auto)")
    return torch.device(device)


def check_compatible(base: Checkpoint, others: Sequence[Checkpoint]) -> None:
    """Every input must have θ_0's keys, shapes and dtypes; name the first offending key."""
    bkeys = base.keys()
    bset = set(bkeys)
    for o in others:
        okeys = o.keys()
        oset = set(okeys)
        missing = [k for k in bkeys if k not in oset]
        if missing:
            raise LinesError(
                f"{o.path}: missing {len(missing)} key(s) of the pretrained checkpoint, first '{missing[0]}'"
            )
        extra = [k for k in okeys if k not in bset]
        if extra:
            raise LinesError(
                f"{o.path}: {len(extra)} extra key(s) not in the pretrained checkpoint, first '{extra[0]}'"
            )
        for k in bkeys:
            bi, oi = base.info(k), o.info(k)
            if bi.shape != oi.shape:
                raise LinesError(
                    f"{o.path}: shape mismatch at '{k}': {list(oi.shape)} vs pretrained {list(bi.shape)}"
                )
            if bi.dtype != oi.dtype:
                raise LinesError(
                    f"{o.path}: dtype mismatch at '{k}': {oi.dtype} vs pretrained {bi.dtype}"
                )


def _checked(ck: Checkpoint, key: str, t: torch.Tensor) -> torch.Tensor:
    check_finite(ck, key, t)
    return t


def _norm_part(t: torch.Tensor, kind: NormKind) -> torch.Tensor:
    """One slice's contribution to a whole-vector norm, accumulated in float64, as a 0-d tensor
    on the slice's device (no host synchronisation per slice). ``vector_norm`` with a float64
    dtype does the L1 sum without an |t| temporary, about twice as fast as abs().sum()."""
    if kind == "l1":
        return torch.linalg.vector_norm(t, 1, dtype=torch.float64)
    return torch.as_tensor(tensor_norm_contrib(t, kind), dtype=torch.float64)


def _deferred_float(t: torch.Tensor) -> float | torch.Tensor:
    """A 0-d accumulator as a float now on the CPU (a Python float: no small long-lived tensor
    between large temporaries in the C heap), left on the GPU until the end (no synchronisation
    per key); ``float()`` of either gives the value."""
    return t if t.is_cuda else float(t)


def _prehash(cks: Sequence[Checkpoint]) -> Callable[[], None]:
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


@dataclass
class TaskVectorStream:
    """Reads θ_0 and the fine-tuned checkpoints tensor by tensor and yields task vectors."""

    base: Checkpoint
    finetuned: list[Checkpoint]
    device: torch.device
    partition: Partition
    pre_lambdas: list[float] | None = None  # LiNeS on each τ_i before merging
    progress: bool = True
    sliced: bool = False  # feed large tensors in flat slices (element-wise methods only)
    float_keys: list[str] = field(init=False)
    slice_numel: int | None = field(init=False)
    _reader: ReadAhead | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.float_keys = [k for k in self.base.keys() if self.base.info(k).dtype.is_floating_point]
        per_input = _working_set(self.device) // (4 * (len(self.finetuned) + 1))
        self.slice_numel = max(_MIN_SLICE, per_input) if self.sliced else None

    def spans(self, key: str) -> list[tuple[int, int] | None]:
        return _spans(self.base.info(key).numel, self.slice_numel)

    def total_entries(self) -> int:
        return sum(self.base.info(k).numel for k in self.float_keys)

    def units(self) -> list[Unit]:
        """Every (key, span) of one pass, in the order the passes read them."""
        return [(k, s) for k in self.float_keys for s in self.spans(k)]

    def read(
        self, key: str, span: tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(θ_0[key] as float32 on the device, [τ_i[key]]); with ``span`` that flat slice only.

        The inputs come from a read-ahead (the next units are read, checked for NaN/Inf once and
        moved to the device while this one is computed); the τ_i are the rows of one (N, …)
        float32 tensor (``TaskVectors``), each written once by a subtraction."""
        if self._reader is None:
            self._reader = ReadAhead([self.base, *self.finetuned], self.units(), self.device)
        raw = self._reader.get((key, span))
        b = raw[0].float()
        x = torch.empty((len(raw) - 1, *b.shape), dtype=torch.float32, device=b.device)
        for i, t in enumerate(raw[1:]):
            torch.sub(t, b, out=x[i])
        del raw
        if self.pre_lambdas is not None:
            x.mul_(self.pre_lambdas[self.partition.block_of(key) - 1])
        return b, TaskVectors(x)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def sample(self, per_vector: int, window: int = 1024) -> Iterator[tuple[str, TaskVectors]]:
        """About ``per_vector`` entries of every task vector, in evenly spaced windows of every
        floating tensor, each tensor's share proportional to its size: small reads, a tiny
        fraction of one pass. Yields (key, task vectors of the concatenated windows)."""
        rate = min(1.0, per_vector / max(self.total_entries(), 1))
        for key in self.float_keys:
            n = self.base.info(key).numel
            want = round(n * rate)
            if want == 0:
                continue
            nwin = -(-want // window)
            size = -(-want // nwin)
            starts = [round(j * (n - size) / max(nwin - 1, 1)) for j in range(nwin)]
            cks = [self.base, *self.finetuned]
            raw = [torch.cat([ck.get_flat(key, a, a + size) for a in starts]) for ck in cks]
            b = raw[0].to(self.device).float()
            x = torch.empty((len(cks) - 1, b.numel()), dtype=torch.float32, device=b.device)
            for i, t in enumerate(raw[1:]):
                torch.sub(t.to(self.device), b, out=x[i])
            if self.pre_lambdas is not None:
                x.mul_(self.pre_lambdas[self.partition.block_of(key) - 1])
            yield key, TaskVectors(x)

    def iterate(self, desc: str) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        for key in tqdm(
            self.float_keys, desc=desc, unit="tensor", disable=not self.progress, leave=False
        ):
            for span in self.spans(key):
                b, taus = self.read(key, span)
                yield key, b, taus


def _statistics(stream: TaskVectorStream, method: MergeMethod) -> None:
    """The method's statistics passes, after the sample it asks for; a pass the earlier ones
    made unnecessary (``needs_pass``) is skipped."""
    if method.stats_passes and method.stats_sample:
        for key, taus in stream.sample(method.stats_sample):
            method.observe(-1, key, taus)
        method.end_pass(-1)
    for p in range(method.stats_passes):
        if not method.needs_pass(p):
            continue
        for key, _, taus in stream.iterate(f"statistics pass {p + 1}/{method.stats_passes}"):
            method.observe(p, key, taus)
        method.end_pass(p)


def _out_info(info: TensorInfo, out_dtype: torch.dtype | None) -> TensorInfo:
    if out_dtype is not None and info.dtype.is_floating_point:
        return TensorInfo(info.shape, out_dtype)
    return info


def _inputs_manifest(
    base: Checkpoint, finetuned: Sequence[Checkpoint], hash_inputs: bool
) -> dict[str, Any]:
    def one(ck: Checkpoint) -> dict[str, str]:
        d = {"path": str(ck.path)}
        if hash_inputs:
            d["sha256"] = ck.sha256()
        return d

    return {"pretrained": one(base), "finetuned": [one(c) for c in finetuned]}


def _base_manifest(kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "lines_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _merge_manifest(
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
    manifest = _base_manifest(kind)
    manifest.update(
        {
            "inputs": _inputs_manifest(base, fts, hash_inputs),
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


def _finish(
    plan: OutputPlan, manifest: dict[str, Any], hash_output: bool, sha: str | None = None
) -> dict[str, Any]:
    """``sha``: the output's sha256 as computed while writing it (saves reading it back)."""
    if hash_output:
        manifest["output"]["sha256"] = sha or sha256_file(plan.weights)
    plan.publish(manifest)
    return manifest


@dataclass
class MergeReport:
    """What a merge measured, beyond the written files."""

    alpha: float | None = None
    lambdas: list[float] = field(default_factory=list)
    norm_sum: float | None = None
    norm_mtl: float | None = None


def _recipe(kind: str, method: MergeMethod | None, **kw: Any) -> dict[str, Any]:
    """What determines an output besides its inputs: part of the output id (see lines.outputs)."""
    return {"kind": kind, "lines": __version__, **(method.describe() if method else {}), **kw}


def merge_checkpoints(
    pretrained: PathLike,
    finetuned: Sequence[PathLike],
    method: MergeMethod,
    scaling: Scaling,
    out: PathLike,
    *,
    family: str | None = None,
    block_policy: str = "reference",
    pre_lines: tuple[float, float] | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    out_dtype: str | None = None,
    save_task_vector: PathLike | None = None,
    progress: bool = True,
    hash_inputs: bool = True,
    extra_manifest: dict[str, Any] | None = None,
    allow_duplicate_inputs: bool = False,
) -> dict[str, Any]:
    """Merge ``finetuned`` into ``pretrained`` with ``method``, scale per block with ``scaling``
    (uniform λ, or LiNeS with given or automatic α), write ``out`` atomically with a manifest,
    and return the manifest. Nothing is written if any input is bad (see ``lines.outputs`` for
    what may be written where)."""
    dev = resolve_device(device)
    odt = _parse_dtype(out_dtype)
    if not allow_duplicate_inputs:
        check_distinct_inputs(pretrained, finetuned)
    tv_target = Path(save_task_vector) if save_task_vector is not None else None
    if tv_target is not None:
        if tv_target.suffix != ".safetensors":
            raise LinesError(f"{tv_target}: --save-task-vector must be a .safetensors file")
        if tv_target.resolve() == Path(out).resolve():
            raise LinesError(f"{tv_target}: --save-task-vector must differ from --out")
    with ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(pretrained))
        fts = [stack.enter_context(open_checkpoint(f)) for f in finetuned]
        if len(fts) < method.min_models:
            raise LinesError(
                f"method '{method.name}' needs at least {method.min_models} fine-tuned checkpoint(s), got {len(fts)}"
            )
        check_compatible(base, fts)
        part = partition_keys(base.keys(), family, block_policy)
        inputs = [pretrained, *finetuned]
        recipe = _recipe(
            "merge",
            method,
            scaling=scaling.describe(),
            family=part.family,
            policy=part.policy,
            pre_lines=pre_lines,
            dtype=out_dtype,
            extra=extra_manifest,
        )
        plan = stack.enter_context(
            plan_output(out, inputs, overwrite, copy_from=Path(pretrained), recipe=recipe)
        )
        tv_plan = plan.companion(tv_target, overwrite) if tv_target is not None else None
        hashed = _prehash([base, *fts]) if hash_inputs else None
        pre_l = lines_lambdas(part.num_blocks, *pre_lines) if pre_lines is not None else None
        stream = TaskVectorStream(
            base, fts, dev, part, pre_l, progress, sliced=is_elementwise(method)
        )
        stack.callback(stream.close)
        method.begin(len(fts), stream.total_entries(), dev)
        _statistics(stream, method)

        if hashed is not None:
            hashed()
        manifest = _merge_manifest(
            "merge", base, fts, method, part, pre_lines, pre_l, dev, hash_inputs
        )
        manifest.update(
            {
                "output": {"path": str(plan.out), "dtype": out_dtype or "as pretrained"},
                **(extra_manifest or {}),
            }
        )
        # τ_MTL = Σ τ_i (task arithmetic): the automatic α is 1/N before any norm is known,
        # so θ is written in one pass (no τ file); the norms are still measured on the way.
        sum_alpha = (
            1.0 / len(fts)
            if scaling.needs_norms and tv_plan is None and method.merged_is_sum()
            else None
        )
        two_phase = (scaling.needs_norms or tv_plan is not None) and sum_alpha is None
        if not two_phase:
            lambdas = scaling.lambdas(part.num_blocks, sum_alpha)
            norms, sha = _merge_direct(
                stream,
                method,
                part,
                lambdas,
                plan,
                odt,
                progress,
                norm=scaling.norm if sum_alpha is not None else None,
            )
            if norms is None:
                manifest["scaling"] = {**scaling.describe(), "lambdas": lambdas}
            else:
                manifest["scaling"] = {
                    **scaling.describe(),
                    "alpha_value": sum_alpha,
                    "lambdas": lambdas,
                }
                manifest["norms"] = {
                    "kind": scaling.norm,
                    "task_vector_sum": norms.norm_sum,
                    "merged_task_vector": norms.norm_mtl,
                }
            return _finish(plan, manifest, hash_output=True, sha=sha)

        # The τ file is a scratch file in the output's staging folder, or the companion output.
        tau_plan = tv_plan or plan
        tau_path = tv_plan.weights if tv_plan is not None else plan.scratch("tau.safetensors")
        rep = _merge_to_task_vector(
            stream,
            method,
            tau_path,
            scaling.norm,
            manifest,
            progress,
            durable=tv_plan is not None,
            header=tau_plan.header_metadata(),
        )
        stream.close()
        alpha = (
            auto_alpha(rep.norm_sum, rep.norm_mtl, len(fts))
            if scaling.needs_norms
            else scaling.alpha
        )
        lambdas = scaling.lambdas(part.num_blocks, alpha)
        with open_checkpoint(tau_path) as tau_ck:
            sha = _apply(base, tau_ck, part, lambdas, plan, odt, dev, progress)
        manifest["scaling"] = {**scaling.describe(), "alpha_value": alpha, "lambdas": lambdas}
        manifest["norms"] = {
            "kind": scaling.norm,
            "task_vector_sum": rep.norm_sum,
            "merged_task_vector": rep.norm_mtl,
        }
        if tv_plan is not None:
            manifest["task_vector_file"] = str(tv_target)
            # The saved τ_MTL gets the manifest ``build_task_vector`` would give it, published
            # before the merge (see lines.outputs: companions).
            tv_manifest = {k: v for k, v in manifest.items() if k not in ("output", "scaling")}
            tv_manifest.update(
                kind="task_vector",
                output={"path": str(tv_target), "dtype": "float32"},
                num_models=len(fts),
            )
            tv_manifest.pop("task_vector_file")
            _finish(tv_plan, tv_manifest, hash_output=True)
        return _finish(plan, manifest, hash_output=True, sha=sha)


def build_task_vector(
    pretrained: PathLike,
    finetuned: Sequence[PathLike],
    method: MergeMethod,
    out: PathLike,
    *,
    family: str | None = None,
    block_policy: str = "reference",
    pre_lines: tuple[float, float] | None = None,
    norm: NormKind = "l1",
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
    hash_inputs: bool = True,
    allow_duplicate_inputs: bool = False,
) -> dict[str, Any]:
    """Write only the merged task vector τ_MTL (float32, floating keys) with ‖τ_sum‖ and ‖τ_MTL‖
    in its metadata, plus a manifest beside it. ``apply_task_vector`` (or an in-memory equivalent)
    then produces θ for any α, β or λ at the cost of one scaled add per tensor."""
    dev = resolve_device(device)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise LinesError(f"{out}: a task vector is written as a .safetensors file")
    if not allow_duplicate_inputs:
        check_distinct_inputs(pretrained, finetuned)
    with ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(pretrained))
        fts = [stack.enter_context(open_checkpoint(f)) for f in finetuned]
        if len(fts) < method.min_models:
            raise LinesError(
                f"method '{method.name}' needs at least {method.min_models} fine-tuned checkpoint(s), got {len(fts)}"
            )
        check_compatible(base, fts)
        part = partition_keys(base.keys(), family, block_policy)
        recipe = _recipe(
            "task_vector",
            method,
            family=part.family,
            policy=part.policy,
            pre_lines=pre_lines,
            norm=norm,
        )
        plan = stack.enter_context(
            plan_output(out, [pretrained, *finetuned], overwrite, recipe=recipe)
        )
        hashed = _prehash([base, *fts]) if hash_inputs else None
        pre_l = lines_lambdas(part.num_blocks, *pre_lines) if pre_lines is not None else None
        stream = TaskVectorStream(
            base, fts, dev, part, pre_l, progress, sliced=is_elementwise(method)
        )
        stack.callback(stream.close)
        method.begin(len(fts), stream.total_entries(), dev)
        _statistics(stream, method)
        if hashed is not None:
            hashed()
        manifest = _merge_manifest(
            "task_vector", base, fts, method, part, pre_lines, pre_l, dev, hash_inputs
        )
        manifest["output"] = {"path": str(out), "dtype": "float32"}
        rep = _merge_to_task_vector(
            stream, method, plan.weights, norm, manifest, progress, header=plan.header_metadata()
        )
        manifest["norms"] = {
            "kind": norm,
            "task_vector_sum": rep.norm_sum,
            "merged_task_vector": rep.norm_mtl,
        }
        manifest["num_models"] = len(fts)
        return _finish(plan, manifest, hash_output=True)


def _merge_direct(
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
    specs = [(k, _out_info(base.info(k), odt)) for k in base.keys()]
    contrib: dict[str, Any] | None = {} if norm is not None else None
    with SafetensorsWriter(plan.weights, specs, {"format": "pt", **plan.header_metadata()}) as w:
        float_set = set(stream.float_keys)
        for key in tqdm(
            base.keys(), desc="merge", unit="tensor", disable=not progress, leave=False
        ):
            if key in float_set:
                w.write_parts(
                    key, _theta(stream, method, part, lambdas, key, odt, contrib, norm or "l1")
                )
            else:
                w.write(key, base.get(key))
        for key in dict.fromkeys(method.fixup_keys()):
            w.rewrite_parts(
                key, _theta(stream, method, part, lambdas, key, odt, contrib, norm or "l1")
            )
        rep = None
        if norm is not None and contrib is not None:
            total = finish_norm(sum(float(c) for c in contrib.values()), norm)
            rep = MergeReport(norm_sum=total, norm_mtl=total)
            auto_alpha(total, total, len(stream.finetuned))  # refuses τ_MTL = 0
        w.commit()
    return rep, w.sha256()


def _theta(
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
            acc += _norm_part(tau, norm)
        yield (b + lam * tau).to(dtype).cpu()
    if contrib is not None:
        contrib[key] = _deferred_float(acc)


def _merge_to_task_vector(
    stream: TaskVectorStream,
    method: MergeMethod,
    tau_path: Path,
    norm: NormKind,
    manifest: dict[str, Any],
    progress: bool,
    durable: bool = True,
    header: dict[str, str] | None = None,
) -> MergeReport:
    """Stream τ_MTL (float32, floating keys) into ``tau_path`` and measure ‖τ_sum‖ and ‖τ_MTL‖.
    ``durable=False`` for a scratch τ file (read back at once, then deleted): no fsync."""
    base = stream.base
    specs = [(k, TensorInfo(base.info(k).shape, torch.float32)) for k in stream.float_keys]
    contrib_sum: dict[str, Any] = {}
    contrib_mtl: dict[str, Any] = {}
    is_sum = method.merged_is_sum()

    def one(key: str) -> Iterator[torch.Tensor]:
        # Norm contributions are set per key once all its slices are merged, so a fix-up merge
        # of a key replaces (does not add to) its first contribution.
        c_sum = torch.zeros((), dtype=torch.float64, device=stream.device)
        c_mtl = torch.zeros((), dtype=torch.float64, device=stream.device)
        for span in stream.spans(key):
            _, taus = stream.read(key, span)
            merged = method.merge_tensor(key, taus)
            part_mtl = _norm_part(merged, norm)
            c_mtl += part_mtl
            c_sum += part_mtl if is_sum else _norm_part(stacked(taus).sum(0), norm)
            del taus
            yield merged.float().cpu()
        contrib_sum[key] = _deferred_float(c_sum)
        contrib_mtl[key] = _deferred_float(c_mtl)

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
        )
        w.set_metadata(
            "lines_norms",
            json.dumps(
                {"kind": norm, "task_vector_sum": rep.norm_sum, "merged_task_vector": rep.norm_mtl}
            ),
        )
        w.commit(durable=durable)
    return rep


def _apply(
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
    specs = [(k, _out_info(base.info(k), odt)) for k in base.keys()]
    tau_keys = set(tau.keys())
    slice_numel = max(_MIN_SLICE, _working_set(dev) // 8)
    scaled_keys = [k for k in base.keys() if k in tau_keys and base.info(k).dtype.is_floating_point]
    order = [(k, s) for k in scaled_keys for s in _spans(base.info(k).numel, slice_numel)]

    def scaled(key: str) -> Iterator[torch.Tensor]:
        lam = lambdas[part.block_of(key) - 1]
        dtype = odt or base.info(key).dtype
        for span in _spans(base.info(key).numel, slice_numel):
            b, t = reader.get((key, span))  # read ahead, checked for NaN/Inf, on the device
            yield (b.float() + lam * t.float()).to(dtype).cpu()

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
                w.write(key, _checked(base, key, base.get(key)))
        w.commit()
    return w.sha256()


def _parse_dtype(name: str | None) -> torch.dtype | None:
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


def apply_task_vector(
    pretrained: PathLike,
    task_vector: PathLike,
    scaling: Scaling,
    out: PathLike,
    *,
    num_models: int | None = None,
    family: str | None = None,
    block_policy: str = "reference",
    overwrite: bool = False,
    device: str = "cpu",
    out_dtype: str | None = None,
    progress: bool = True,
    hash_inputs: bool = True,
) -> dict[str, Any]:
    """θ = θ_0 + λ(ℓ)·τ for a saved merged task vector: what a β sweep runs once per β.
    With automatic α the norms stored in the task vector's metadata are used."""
    dev = resolve_device(device)
    odt = _parse_dtype(out_dtype)
    with open_checkpoint(pretrained) as base, open_checkpoint(task_vector) as tau:
        extra = [k for k in tau.keys() if k not in base]
        if extra:
            raise LinesError(f"{tau.path}: key '{extra[0]}' is not in the pretrained checkpoint")
        part = partition_keys(base.keys(), family, block_policy)
        recipe = _recipe(
            "apply",
            None,
            scaling=scaling.describe(),
            family=part.family,
            policy=part.policy,
            dtype=out_dtype,
            num_models=num_models,
        )
        with plan_output(
            out, [pretrained, task_vector], overwrite, copy_from=Path(pretrained), recipe=recipe
        ) as plan:
            alpha = scaling.alpha
            norms = None
            if scaling.needs_norms:
                norms = task_vector_norms(tau)
                if norms["kind"] != scaling.norm:
                    raise LinesError(
                        f"{tau.path}: norms were measured with {norms['kind']}, not {scaling.norm}"
                    )
                info = json.loads(tau.metadata.get("lines_task_vector", "{}"))  # type: ignore[attr-defined]
                n = num_models or info.get("num_models")
                if not n:
                    raise LinesError(
                        f"{tau.path}: unknown number of merged models; pass num_models"
                    )
                alpha = auto_alpha(norms["task_vector_sum"], norms["merged_task_vector"], int(n))
            lambdas = scaling.lambdas(part.num_blocks, alpha)
            hashed = _prehash([base, tau]) if hash_inputs else None
            sha = _apply(base, tau, part, lambdas, plan, odt, dev, progress)
            if hashed is not None:
                hashed()
            manifest = _base_manifest("apply")
            manifest.update(
                {
                    "inputs": {
                        "pretrained": {
                            "path": str(base.path),
                            **({"sha256": base.sha256()} if hash_inputs else {}),
                        },
                        "task_vector": {
                            "path": str(tau.path),
                            **({"sha256": tau.sha256()} if hash_inputs else {}),
                        },
                    },
                    "family": part.family,
                    "num_blocks": part.num_blocks,
                    "block_policy": part.policy,
                    "scaling": {**scaling.describe(), "alpha_value": alpha, "lambdas": lambdas},
                    "norms": norms,
                    "device": str(dev),
                    "output": {"path": str(plan.out), "dtype": out_dtype or "as pretrained"},
                }
            )
            return _finish(plan, manifest, hash_output=True, sha=sha)


def edit_checkpoint(
    pretrained: PathLike,
    finetuned: PathLike,
    gamma: float,
    out: PathLike,
    **kwargs: Any,
) -> dict[str, Any]:
    """Single-task LiNeS editing (Sec. 4): θ = θ_0 + λ(ℓ)τ with λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1)."""
    single_task_lambdas(2, gamma)  # validates γ ∈ [0, 1]
    scaling = Scaling.lines(beta=1.0 - gamma, alpha=gamma)
    manifest = merge_checkpoints(
        pretrained,
        [finetuned],
        WiseFT(gamma=1.0),
        scaling,
        out,
        extra_manifest={"edit": {"gamma": gamma}},
        **kwargs,
    )
    return manifest


def make_evaluate_command(template: str) -> Callable[[Path], float]:
    """An evaluate callback that runs a shell command (``{model}`` replaced by the checkpoint path)
    and reads a float from the last line it prints: lets the CLI's greedy soup call any evaluator."""
    import shlex
    import subprocess

    if "{model}" not in template:
        raise LinesError(
            "--eval-cmd must contain '{model}', replaced by the candidate checkpoint's path"
        )

    def evaluate(model: Path) -> float:
        cmd = template.replace("{model}", shlex.quote(str(model)))
        res = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        if res.returncode != 0:
            raise LinesError(
                f"--eval-cmd failed with exit {res.returncode}: {res.stderr.strip()[-200:]}"
            )
        lines = [ln for ln in res.stdout.strip().splitlines() if ln.strip()]
        try:
            return float(lines[-1].split()[-1])
        except (IndexError, ValueError):
            raise LinesError(
                f"--eval-cmd printed no number on its last line: {res.stdout[-200:]!r}"
            ) from None

    return evaluate
