"""The engine's entry points: merge, build a task vector, apply one, edit one model.

With LiNeS's automatic α = (1/N)‖τ_sum‖/‖τ_MTL‖ the norms are only known after the merge, so the
merged task vector is streamed to a scratch file first and θ = θ_0 + λ(ℓ)τ_MTL is produced by a
second, cheap pass (``apply_task_vector``), which is also what a β sweep repeats per β. For task
arithmetic α = 1/N is known up front and θ is written in one pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from lines.engine.manifest import base_manifest, finish, merge_manifest, output_recipe, prehash
from lines.engine.stream import (
    TaskVectorStream,
    check_compatible,
    is_elementwise,
    resolve_device,
    run_statistics,
)
from lines.engine.writers import (
    apply_streaming,
    block_norms_of,
    merge_direct,
    merge_to_task_vector,
    parse_dtype,
    task_vector_norms,
)
from lines.errors import LinesError
from lines.families import Partition, partition_keys
from lines.io import Checkpoint, open_checkpoint
from lines.io.outputs import check_distinct_inputs, plan_output
from lines.merging import MergeMethod
from lines.merging.methods.wise_ft import WiseFT
from lines.scaling import (
    NormKind,
    Scaling,
    auto_alpha,
    lines_lambdas,
    single_task_lambdas,
)
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


def _record_pre_merge(
    manifest: dict[str, Any], pre_schedule: Schedule | None, task_weights: Sequence[float] | None
) -> None:
    if pre_schedule is not None:
        manifest["pre_merge_lines"]["schedule"] = pre_schedule.describe()
    if task_weights is not None:
        manifest["task_weights"] = list(task_weights)


def check_task_weights(weights: Sequence[float] | None, n: int) -> None:
    if weights is None:
        return
    if len(weights) != n:
        raise LinesError(f"{len(weights)} task weights for {n} fine-tuned checkpoints")
    for w in weights:
        if not isinstance(w, int | float) or not math.isfinite(w):
            raise LinesError(f"task weights must be finite numbers, got {w!r}")


def open_inputs(
    stack: ExitStack,
    pretrained: PathLike,
    finetuned: Sequence[PathLike],
    method: MergeMethod,
    family: str | None,
    block_policy: str,
) -> tuple[Checkpoint, list[Checkpoint], Partition]:
    """Open θ_0 and the fine-tuned checkpoints (closed with ``stack``), check them against each
    other and partition θ_0's keys into blocks."""
    base = stack.enter_context(open_checkpoint(pretrained))
    fts = [stack.enter_context(open_checkpoint(f)) for f in finetuned]
    if len(fts) < method.min_models:
        raise LinesError(
            f"method '{method.name}' needs at least {method.min_models} fine-tuned "
            f"checkpoint(s), got {len(fts)}"
        )
    check_compatible(base, fts)
    return base, fts, partition_keys(base.keys(), family, block_policy)


def start_stream(
    stack: ExitStack,
    base: Checkpoint,
    fts: list[Checkpoint],
    dev: torch.device,
    part: Partition,
    method: MergeMethod,
    pre_l: list[float] | None,
    task_weights: Sequence[float] | None,
    progress: bool,
    hash_inputs: bool,
    resident: bool = False,
) -> TaskVectorStream:
    """The task-vector stream, after the method's statistics passes; the inputs' sha256 are
    computed meanwhile (cached on the checkpoints for the manifest)."""
    hashed = prehash([base, *fts]) if hash_inputs else None
    stream = TaskVectorStream(
        base,
        fts,
        dev,
        part,
        pre_lambdas=pre_l,
        task_weights=task_weights,
        progress=progress,
        sliced=is_elementwise(method),
        resident=resident,
    )
    stack.callback(stream.close)
    method.begin(len(fts), stream.total_entries(), dev)
    run_statistics(stream, method)
    if hashed is not None:
        hashed()
    return stream


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
    pre_schedule: Schedule | None = None,
    task_weights: Sequence[float] | None = None,
    resident: bool = False,
) -> dict[str, Any]:
    """Merge ``finetuned`` into ``pretrained`` with ``method``, scale per block with ``scaling``
    (uniform λ, or LiNeS with given or automatic α), write ``out`` atomically with a manifest,
    and return the manifest. ``pre_lines`` = (α, β) edits each τ_i with LiNeS (or
    ``pre_schedule``) before merging; ``task_weights`` scales each τ_i before merging;
    ``resident`` holds every input on the device when it fits (opt-in: measured no faster than
    the read-ahead with inputs in the page cache, benchmarks/NOTES.md). Nothing is
    written if any input is bad (see ``lines.io.outputs`` for what may be written where)."""
    dev = resolve_device(device)
    odt = parse_dtype(out_dtype)
    if not allow_duplicate_inputs:
        check_distinct_inputs(pretrained, finetuned)
    tv_target = Path(save_task_vector) if save_task_vector is not None else None
    if tv_target is not None:
        if tv_target.suffix != ".safetensors":
            raise LinesError(f"{tv_target}: --save-task-vector must be a .safetensors file")
        if tv_target.resolve() == Path(out).resolve():
            raise LinesError(f"{tv_target}: --save-task-vector must differ from --out")
    with ExitStack() as stack:
        base, fts, part = open_inputs(stack, pretrained, finetuned, method, family, block_policy)
        check_task_weights(task_weights, len(fts))
        pre_l = pre_merge_lambdas(part.num_blocks, pre_lines, pre_schedule)
        inputs = [pretrained, *finetuned]
        recipe = output_recipe(
            "merge",
            method,
            scaling=scaling.describe(),
            family=part.family,
            policy=part.policy,
            pre_lines=pre_lines,
            pre_schedule=pre_schedule.spec() if pre_schedule else None,
            task_weights=task_weights,
            dtype=out_dtype,
            extra=extra_manifest,
        )
        plan = stack.enter_context(
            plan_output(out, inputs, overwrite, copy_from=Path(pretrained), recipe=recipe)
        )
        tv_plan = plan.companion(tv_target, overwrite) if tv_target is not None else None
        stream = start_stream(
            stack,
            base,
            fts,
            dev,
            part,
            method,
            pre_l,
            task_weights,
            progress,
            hash_inputs,
            resident,
        )
        manifest = merge_manifest(
            "merge", base, fts, method, part, pre_lines, pre_l, dev, hash_inputs
        )
        _record_pre_merge(manifest, pre_schedule, task_weights)
        manifest.update(
            {
                "output": {"path": str(plan.out), "dtype": out_dtype or "as pretrained"},
                **(extra_manifest or {}),
            }
        )
        # τ_MTL = Σ τ_i (task arithmetic): the automatic α is 1/N before any norm is known,
        # so θ is written in one pass (no τ file); the norms are still measured on the way.
        # A schedule set from per-block norms (``measured``) needs τ_MTL before θ: two phases.
        sum_alpha = (
            1.0 / len(fts)
            if scaling.needs_norms
            and tv_plan is None
            and method.merged_is_sum()
            and not scaling.needs_block_norms
            else None
        )
        two_phase = (
            scaling.needs_norms or tv_plan is not None or scaling.needs_block_norms
        ) and sum_alpha is None
        if not two_phase:
            lambdas = scaling.lambdas(part.num_blocks, sum_alpha)
            norms, sha = merge_direct(
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
            return finish(plan, manifest, hash_output=True, sha=sha)

        # The τ file is a scratch file in the output's staging folder, or the companion output.
        tau_plan = tv_plan or plan
        tau_path = tv_plan.weights if tv_plan is not None else plan.scratch("tau.safetensors")
        rep = merge_to_task_vector(
            stream,
            method,
            tau_path,
            scaling.norm,
            manifest,
            progress,
            durable=tv_plan is not None,
            header=tau_plan.header_metadata(),
            block_norms=scaling.needs_block_norms,
        )
        stream.close()
        alpha = (
            auto_alpha(rep.norm_sum, rep.norm_mtl, len(fts))
            if scaling.needs_norms
            else scaling.alpha
        )
        lambdas = scaling.lambdas(part.num_blocks, alpha, rep.block_norms)
        with open_checkpoint(tau_path) as tau_ck:
            sha = apply_streaming(base, tau_ck, part, lambdas, plan, odt, dev, progress)
        manifest["scaling"] = {**scaling.describe(), "alpha_value": alpha, "lambdas": lambdas}
        if rep.block_norms is not None:
            manifest["scaling"]["block_norms"] = dataclasses.asdict(rep.block_norms)
        manifest["norms"] = {
            "kind": scaling.norm,
            "task_vector_sum": rep.norm_sum,
            "merged_task_vector": rep.norm_mtl,
        }
        if tv_plan is not None:
            manifest["task_vector_file"] = str(tv_target)
            # The saved τ_MTL gets the manifest ``build_task_vector`` would give it, published
            # before the merge (see lines.io.outputs: companions).
            tv_manifest = {k: v for k, v in manifest.items() if k not in ("output", "scaling")}
            tv_manifest.update(
                kind="task_vector",
                output={"path": str(tv_target), "dtype": "float32"},
                num_models=len(fts),
            )
            tv_manifest.pop("task_vector_file")
            finish(tv_plan, tv_manifest, hash_output=True)
        return finish(plan, manifest, hash_output=True, sha=sha)


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
    pre_schedule: Schedule | None = None,
    task_weights: Sequence[float] | None = None,
    resident: bool = False,
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
        base, fts, part = open_inputs(stack, pretrained, finetuned, method, family, block_policy)
        check_task_weights(task_weights, len(fts))
        pre_l = pre_merge_lambdas(part.num_blocks, pre_lines, pre_schedule)
        recipe = output_recipe(
            "task_vector",
            method,
            family=part.family,
            policy=part.policy,
            pre_lines=pre_lines,
            pre_schedule=pre_schedule.spec() if pre_schedule else None,
            task_weights=task_weights,
            norm=norm,
        )
        plan = stack.enter_context(
            plan_output(out, [pretrained, *finetuned], overwrite, recipe=recipe)
        )
        stream = start_stream(
            stack,
            base,
            fts,
            dev,
            part,
            method,
            pre_l,
            task_weights,
            progress,
            hash_inputs,
            resident,
        )
        manifest = merge_manifest(
            "task_vector", base, fts, method, part, pre_lines, pre_l, dev, hash_inputs
        )
        _record_pre_merge(manifest, pre_schedule, task_weights)
        manifest["output"] = {"path": str(out), "dtype": "float32"}
        rep = merge_to_task_vector(
            stream, method, plan.weights, norm, manifest, progress, header=plan.header_metadata()
        )
        manifest["norms"] = {
            "kind": norm,
            "task_vector_sum": rep.norm_sum,
            "merged_task_vector": rep.norm_mtl,
        }
        manifest["num_models"] = len(fts)
        return finish(plan, manifest, hash_output=True)


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
    odt = parse_dtype(out_dtype)
    with open_checkpoint(pretrained) as base, open_checkpoint(task_vector) as tau:
        extra = [k for k in tau.keys() if k not in base]
        if extra:
            raise LinesError(f"{tau.path}: key '{extra[0]}' is not in the pretrained checkpoint")
        part = partition_keys(base.keys(), family, block_policy)
        recipe = output_recipe(
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
            bnorms = block_norms_of(base, tau, part) if scaling.needs_block_norms else None
            lambdas = scaling.lambdas(part.num_blocks, alpha, bnorms)
            hashed = prehash([base, tau]) if hash_inputs else None
            sha = apply_streaming(base, tau, part, lambdas, plan, odt, dev, progress)
            if hashed is not None:
                hashed()
            manifest = base_manifest("apply")
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
                    "scaling": {
                        **scaling.describe(),
                        "alpha_value": alpha,
                        "lambdas": lambdas,
                        **({"block_norms": dataclasses.asdict(bnorms)} if bnorms else {}),
                    },
                    "norms": norms,
                    "device": str(dev),
                    "output": {"path": str(plan.out), "dtype": out_dtype or "as pretrained"},
                }
            )
            return finish(plan, manifest, hash_output=True, sha=sha)


def edit_checkpoint(
    pretrained: PathLike,
    finetuned: PathLike,
    gamma: float,
    out: PathLike,
    schedule: Schedule | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Single-task LiNeS editing (Sec. 4): θ = θ_0 + λ(ℓ)τ with λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1), or
    γ + (1−γ)·f(ℓ) with another ``schedule``'s shape f."""
    single_task_lambdas(2, gamma)  # validates γ ∈ [0, 1]
    scaling = Scaling.lines(beta=1.0 - gamma, alpha=gamma, schedule=schedule)
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
