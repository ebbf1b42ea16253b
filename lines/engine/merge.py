"""The engine's entry points: merge, build a task vector, apply one, edit one model.

With LiNeS's automatic α = (1/N)‖τ_sum‖/‖τ_MTL‖ the norms are only known after the merge, so the
merged task vector is streamed to a scratch file first and θ = θ_0 + λ(ℓ)τ_MTL is produced by a
second, cheap pass (``apply_task_vector``), which is also what a β sweep repeats per β. For task
arithmetic α = 1/N is known up front and θ is written in one pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from lines.engine.inputs import PreMerge, open_inputs, start_merge
from lines.engine.manifest import base_manifest, finish, output_recipe, prehash
from lines.engine.stream import (
    resolve_device,
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
from lines.families import partition_keys
from lines.io import open_checkpoint
from lines.io.outputs import check_distinct_inputs, plan_output
from lines.merging import MergeMethod
from lines.merging.methods.wise_ft import WiseFT
from lines.scaling import (
    NormKind,
    Scaling,
    auto_alpha,
    single_task_lambdas,
)
from lines.schedules import Schedule

PathLike = str | os.PathLike[str]


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
    resident: bool | None = None,
) -> dict[str, Any]:
    """Merge ``finetuned`` into ``pretrained`` with ``method``, scale per block with ``scaling``
    (uniform λ, or LiNeS with given or automatic α), write ``out`` atomically with a manifest,
    and return the manifest. ``pre_lines`` = (α, β) edits each τ_i with LiNeS (or
    ``pre_schedule``) before merging; ``task_weights`` scales each τ_i before merging;
    ``resident``: None (default) reads every input once into GPU memory when the device is CUDA
    and they fit (``lines.readahead.Resident``), else streams them through the read-ahead; True
    also holds them on the CPU, False always streams. Nothing is written if any input is bad
    (see ``lines.io.outputs`` for what may be written where)."""
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
        pre = PreMerge(pre_lines, pre_schedule, task_weights)
        inp = open_inputs(stack, pretrained, finetuned, method, family, block_policy, pre)
        base, fts, part = inp.base, inp.fts, inp.part
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
        stream, manifest = start_merge(stack, "merge", inp, dev, progress, hash_inputs, resident)
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
    resident: bool | None = None,
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
        pre = PreMerge(pre_lines, pre_schedule, task_weights)
        inp = open_inputs(stack, pretrained, finetuned, method, family, block_policy, pre)
        fts, part = inp.fts, inp.part
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
        stream, manifest = start_merge(
            stack, "task_vector", inp, dev, progress, hash_inputs, resident
        )
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
