"""The streaming engine: task vectors, merge methods and LiNeS, one tensor at a time.

Merging N checkpoints never holds N models. For each tensor the engine reads θ_0 and the N
fine-tuned tensors, forms τ_i = θ_i − θ_0 (floating tensors only; integer buffers pass through
from θ_0), lets the method merge them, scales the result per block and writes it straight into a
streaming safetensors file. Methods that need whole-vector statistics get extra streaming passes
first. Peak memory is about one tensor per input plus the method's working set for that tensor.

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
    OutputPlan,
    SafetensorsWriter,
    TensorInfo,
    open_checkpoint,
    plan_output,
    sha256_file,
    write_json_atomic,
)
from lines.merging import MergeMethod
from lines.merging.methods.wise_ft import WiseFT
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
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        kind = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        raise LinesError(f"{ck.path}: {kind} in tensor '{key}'")
    return t


@dataclass
class TaskVectorStream:
    """Reads θ_0 and the fine-tuned checkpoints tensor by tensor and yields task vectors."""

    base: Checkpoint
    finetuned: list[Checkpoint]
    device: torch.device
    partition: Partition
    pre_lambdas: list[float] | None = None  # LiNeS on each τ_i before merging
    progress: bool = True
    float_keys: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.float_keys = [k for k in self.base.keys() if self.base.info(k).dtype.is_floating_point]

    def total_entries(self) -> int:
        return sum(self.base.info(k).numel for k in self.float_keys)

    def read(self, key: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(θ_0[key] as float32 on the device, [τ_i[key]])."""
        b = _checked(self.base, key, self.base.get(key)).to(self.device).float()
        taus = []
        for ck in self.finetuned:
            t = _checked(ck, key, ck.get(key)).to(self.device).float() - b
            if self.pre_lambdas is not None:
                t = t * self.pre_lambdas[self.partition.block_of(key) - 1]
            taus.append(t)
        return b, taus

    def iterate(self, desc: str) -> Iterator[tuple[str, torch.Tensor, list[torch.Tensor]]]:
        for key in tqdm(
            self.float_keys, desc=desc, unit="tensor", disable=not self.progress, leave=False
        ):
            b, taus = self.read(key)
            yield key, b, taus


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


def _finish(plan: OutputPlan, manifest: dict[str, Any], hash_output: bool) -> dict[str, Any]:
    if hash_output:
        manifest["output"]["sha256"] = sha256_file(plan.weights)
    write_json_atomic(plan.manifest, manifest)
    plan.finalize()
    return manifest


@dataclass
class MergeReport:
    """What a merge measured, beyond the written files."""

    alpha: float | None = None
    lambdas: list[float] = field(default_factory=list)
    norm_sum: float | None = None
    norm_mtl: float | None = None


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
) -> dict[str, Any]:
    """Merge ``finetuned`` into ``pretrained`` with ``method``, scale per block with ``scaling``
    (uniform λ, or LiNeS with given or automatic α), write ``out`` atomically with a manifest,
    and return the manifest. Nothing is written if any input is bad."""
    dev = resolve_device(device)
    odt = _parse_dtype(out_dtype)
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
        plan = plan_output(out, inputs, overwrite, copy_from=Path(pretrained))
        tv_target = Path(save_task_vector) if save_task_vector is not None else None
        if tv_target is not None:
            plan_output(tv_target, inputs, overwrite)  # validation only (a .safetensors file)
            if tv_target.suffix != ".safetensors":
                raise LinesError(f"{tv_target}: --save-task-vector must be a .safetensors file")
        try:
            pre_l = lines_lambdas(part.num_blocks, *pre_lines) if pre_lines is not None else None
            stream = TaskVectorStream(base, fts, dev, part, pre_l, progress)
            method.begin(len(fts), stream.total_entries(), dev)
            for p in range(method.stats_passes):
                for key, _, taus in stream.iterate(
                    f"statistics pass {p + 1}/{method.stats_passes}"
                ):
                    method.observe(p, key, taus)
                method.end_pass(p)

            manifest = _base_manifest("merge")
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
                    "output": {"path": str(plan.out), "dtype": out_dtype or "as pretrained"},
                    **(extra_manifest or {}),
                }
            )
            two_phase = scaling.needs_norms or tv_target is not None
            if not two_phase:
                lambdas = scaling.lambdas(part.num_blocks)
                _merge_direct(stream, method, part, lambdas, plan, odt, progress)
                manifest["scaling"] = {**scaling.describe(), "lambdas": lambdas}
                return _finish(plan, manifest, hash_output=True)

            tau_path = tv_target or plan.weights.with_name(
                f".{plan.weights.name}.tau.tmp.safetensors"
            )
            rep = _merge_to_task_vector(stream, method, tau_path, scaling.norm, manifest, progress)
            alpha = (
                auto_alpha(rep.norm_sum, rep.norm_mtl, len(fts))
                if scaling.needs_norms
                else scaling.alpha
            )
            lambdas = scaling.lambdas(part.num_blocks, alpha)
            try:
                with open_checkpoint(tau_path) as tau_ck:
                    _apply(base, tau_ck, part, lambdas, plan, odt, dev, progress)
            finally:
                if tv_target is None:
                    tau_path.unlink(missing_ok=True)
            manifest["scaling"] = {**scaling.describe(), "alpha_value": alpha, "lambdas": lambdas}
            manifest["norms"] = {
                "kind": scaling.norm,
                "task_vector_sum": rep.norm_sum,
                "merged_task_vector": rep.norm_mtl,
            }
            if tv_target is not None:
                manifest["task_vector_file"] = str(tv_target)
            return _finish(plan, manifest, hash_output=True)
        except BaseException:
            plan.discard()
            raise


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
) -> dict[str, Any]:
    """Write only the merged task vector τ_MTL (float32, floating keys) with ‖τ_sum‖ and ‖τ_MTL‖
    in its metadata, plus a manifest beside it. ``apply_task_vector`` (or an in-memory equivalent)
    then produces θ for any α, β or λ at the cost of one scaled add per tensor."""
    dev = resolve_device(device)
    out = Path(out)
    if out.suffix != ".safetensors":
        raise LinesError(f"{out}: a task vector is written as a .safetensors file")
    with ExitStack() as stack:
        base = stack.enter_context(open_checkpoint(pretrained))
        fts = [stack.enter_context(open_checkpoint(f)) for f in finetuned]
        if len(fts) < method.min_models:
            raise LinesError(
                f"method '{method.name}' needs at least {method.min_models} fine-tuned checkpoint(s), got {len(fts)}"
            )
        check_compatible(base, fts)
        part = partition_keys(base.keys(), family, block_policy)
        plan = plan_output(out, [pretrained, *finetuned], overwrite)
        pre_l = lines_lambdas(part.num_blocks, *pre_lines) if pre_lines is not None else None
        stream = TaskVectorStream(base, fts, dev, part, pre_l, progress)
        method.begin(len(fts), stream.total_entries(), dev)
        for p in range(method.stats_passes):
            for key, _, taus in stream.iterate(f"statistics pass {p + 1}/{method.stats_passes}"):
                method.observe(p, key, taus)
            method.end_pass(p)
        manifest = _base_manifest("task_vector")
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
                "output": {"path": str(out), "dtype": "float32"},
            }
        )
        rep = _merge_to_task_vector(stream, method, plan.weights, norm, manifest, progress)
        manifest["norms"] = {"kind": norm, "task_vector_sum": rep.norm_sum, "merged_task_vector": rep.norm_mtl}
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
) -> None:
    base = stream.base
    specs = [(k, _out_info(base.info(k), odt)) for k in base.keys()]
    with SafetensorsWriter(
        plan.weights, specs, {"format": "pt", "producer": f"lines {__version__}"}
    ) as w:
        float_set = set(stream.float_keys)
        for key in tqdm(
            base.keys(), desc="merge", unit="tensor", disable=not progress, leave=False
        ):
            w.write(
                key,
                _theta(stream, method, part, lambdas, key, odt)
                if key in float_set
                else base.get(key),
            )
        for key in method.fixup_keys():
            w.rewrite(key, _theta(stream, method, part, lambdas, key, odt))
        w.commit()


def _theta(
    stream: TaskVectorStream,
    method: MergeMethod,
    part: Partition,
    lambdas: list[float],
    key: str,
    odt: torch.dtype | None,
) -> torch.Tensor:
    b, taus = stream.read(key)
    tau = method.merge_tensor(key, taus)
    theta = b + lambdas[part.block_of(key) - 1] * tau
    return theta.to(odt or stream.base.info(key).dtype).cpu()


def _merge_to_task_vector(
    stream: TaskVectorStream,
    method: MergeMethod,
    tau_path: Path,
    norm: NormKind,
    manifest: dict[str, Any],
    progress: bool,
) -> MergeReport:
    """Stream τ_MTL (float32, floating keys) into ``tau_path`` and measure ‖τ_sum‖ and ‖τ_MTL‖."""
    base = stream.base
    specs = [(k, TensorInfo(base.info(k).shape, torch.float32)) for k in stream.float_keys]
    contrib_sum: dict[str, float] = {}
    contrib_mtl: dict[str, float] = {}

    def one(key: str) -> torch.Tensor:
        _, taus = stream.read(key)
        merged = method.merge_tensor(key, taus)
        contrib_sum[key] = tensor_norm_contrib(torch.stack(taus).sum(0), norm)
        contrib_mtl[key] = tensor_norm_contrib(merged, norm)
        return merged.cpu()

    meta = {
        "format": "pt",
        "producer": f"lines {__version__}",
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
            w.write(key, one(key))
        for key in method.fixup_keys():
            w.rewrite(key, one(key))
        rep = MergeReport(
            norm_sum=finish_norm(sum(contrib_sum.values()), norm),
            norm_mtl=finish_norm(sum(contrib_mtl.values()), norm),
        )
        w.set_metadata(
            "lines_norms",
            json.dumps(
                {"kind": norm, "task_vector_sum": rep.norm_sum, "merged_task_vector": rep.norm_mtl}
            ),
        )
        w.commit()
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
) -> None:
    """θ = θ_0 + λ(ℓ)·τ, one scaled add per tensor; keys absent from τ pass through from θ_0."""
    specs = [(k, _out_info(base.info(k), odt)) for k in base.keys()]
    tau_keys = set(tau.keys())
    with SafetensorsWriter(
        plan.weights, specs, {"format": "pt", "producer": f"lines {__version__}"}
    ) as w:
        for key in tqdm(
            base.keys(), desc="apply", unit="tensor", disable=not progress, leave=False
        ):
            b = _checked(base, key, base.get(key))
            if key in tau_keys and b.is_floating_point():
                t = tau.get(key)
                if tuple(t.shape) != tuple(b.shape):
                    raise LinesError(
                        f"{tau.path}: shape mismatch at '{key}' with the pretrained checkpoint"
                    )
                theta = (
                    b.to(dev).float()
                    + lambdas[part.block_of(key) - 1] * _checked(tau, key, t).to(dev).float()
                )
                b = theta.to(odt or base.info(key).dtype).cpu()
            w.write(key, b)
        w.commit()


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
        plan = plan_output(out, [pretrained, task_vector], overwrite, copy_from=Path(pretrained))
        try:
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
            _apply(base, tau, part, lambdas, plan, odt, dev, progress)
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
            return _finish(plan, manifest, hash_output=True)
        except BaseException:
            plan.discard()
            raise


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
