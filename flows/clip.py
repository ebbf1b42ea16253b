"""The CLIP benchmark as a Prefect flow: the ``clip/`` DVC pipeline (prepare → heads →
finetuned_eval → merge / edit / wiseft / soups → report, ``lines/clip/stages.py``) run with typed
parameters, saved as a DVC experiment and recorded in MLflow (experiment ``lines-clip``: one run
per flow run, nested runs per evaluation point).

    prefect deployment run 'clip-benchmark/vit-b-32' --param device=cuda --watch
    python -m flows.clip               # the same, as a plain script (temporary Prefect server)

It follows ``flows._core.run_experiment`` step by step, for a pipeline that lives in a folder of
the project: the workspace lock is the project's, the parameters written are
``clip/params.yaml`` (+ ``clip/profiles/<profile>.yaml`` when a profile is named), and DVC runs
from the project root with ``clip/dvc.yaml`` targets (nothing is created inside ``clip/`` that
would make DVC take it for a separate repository).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, runtime
from pydantic import BaseModel, Field

from flows._core import experiment_name
from tasks._proc import logger
from tasks.clip import CLIP_DIR, clip_exp_save, clip_record, dvc_targets, overrides_of, summary
from tasks.dvc import dvc_plots_show, dvc_repro, git_revision
from tasks.tracking import OnDown, flatten, make_tracker
from tasks.workspace import apply_params, workspace_lock

Method = Literal["task_arithmetic", "ties", "consensus", "dare", "magnitude_prune"]
Stage = Literal["prepare", "heads", "finetuned_eval", "merge", "edit", "wiseft", "soups", "report"]


class ClipSources(BaseModel):
    """Checkpoint sources: ``openclip:<model>:<tag>``, ``hf:<owner>/<repo>[@<rev>][/<file>]`` or
    local paths (tall_masks ``.pt`` files, open_clip files, FusionBench / Hugging Face folders).
    None keeps the value in ``clip/params.yaml``."""

    pretrained: str | None = Field(None, description="the pretrained CLIP (θ_0)")
    text: str | None = Field(
        None, description="a whole CLIP for the zero-shot heads ('': the pretrained source)"
    )
    finetuned: dict[str, str] | None = Field(
        None, description="task (or any key) → fine-tuned checkpoint; replaces the whole mapping"
    )


@flow(name="clip-benchmark", log_prints=True)
def clip_benchmark(
    model: str | None = None,
    suite: Literal["8", "14", "20"] | None = None,
    tasks: list[str] | None = None,
    sources: ClipSources | None = None,
    data_root: str | None = None,
    methods: list[Method] | None = None,
    lambdas: list[float] | None = None,
    betas: list[float] | None = None,
    ties_lambdas: list[float] | None = None,
    ties_betas: list[float] | None = None,
    alpha_norm: Literal["l1", "l2"] | None = None,
    edit_gammas: list[float] | None = None,
    wiseft_gammas: list[float] | None = None,
    device: str | None = None,
    block_policy: Literal["reference", "depth"] | None = None,
    params: dict[str, Any] | None = None,
    stages: list[Stage] | None = None,
    profile: str | None = None,
    tracking: bool = True,
    on_tracking_down: Literal["fail", "local"] = "local",
    name: str | None = None,
    workspace: str = ".",
    lock_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Parameters left as None keep ``clip/params.yaml``'s value (or ``clip/profiles/<profile>
    .yaml``'s). ``model``: e.g. ViT-B-32 (checked against the weights); ``suite``: the merged
    tasks ("8", "14", "20"), or ``tasks`` explicitly; ``sources``: checkpoint references;
    ``lambdas``/``betas``: the λ grid of the baselines and the β grid of LiNeS (α from the rule,
    ``alpha_norm``), ``ties_*`` TIES's own grids; ``edit_gammas``/``wiseft_gammas``: γ grids;
    ``device``: cpu, cuda, cuda:N or auto; ``params``: any other clip/params.yaml key, dotted
    (``{"merge.ties_density": 0.1}``); ``stages``: reproduce only these (and what they need)."""
    overrides = overrides_of(
        model=model,
        suite=suite,
        tasks=tasks,
        sources=sources,
        data_root=data_root,
        methods=methods,
        lambdas=lambdas,
        betas=betas,
        ties_lambdas=ties_lambdas,
        ties_betas=ties_betas,
        alpha_norm=alpha_norm,
        edit_gammas=edit_gammas,
        wiseft_gammas=wiseft_gammas,
        device=device,
        block_policy=block_policy,
        params=params,
    )
    return run_clip(
        workspace=workspace,
        profile=profile,
        overrides=overrides,
        stages=list(stages or []),
        tracking=tracking,
        on_tracking_down=on_tracking_down,
        name=name,
        lock_timeout_s=lock_timeout_s,
    )


def run_clip(
    *,
    workspace: str,
    profile: str | None,
    overrides: dict[str, Any],
    stages: list[str],
    tracking: bool,
    on_tracking_down: OnDown,
    name: str | None,
    lock_timeout_s: float | None,
) -> dict[str, Any]:
    ws = Path(workspace).resolve()
    clip_dir = ws / CLIP_DIR
    if not (clip_dir / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{clip_dir / 'dvc.yaml'}: not a project with the CLIP pipeline")
    targets = dvc_targets(stages)
    name = experiment_name("clip", name)
    log = logger()
    tracker = make_tracker(tracking, "lines-clip", ws, on_tracking_down)
    flow_run_id = str(runtime.flow_run.id or "")
    t0 = time.monotonic()
    with workspace_lock(
        ws, owner=f"{name} (flow run {flow_run_id or 'local'})", timeout=lock_timeout_s
    ):
        params = apply_params(clip_dir, profile, overrides)
        tags = {
            "lines.kind": "clip",
            "lines.profile": profile or "(current clip/params.yaml)",
            "dvc.experiment": name,
            "prefect.flow_run_id": flow_run_id,
            "prefect.flow_run_name": str(runtime.flow_run.name or ""),
            "prefect.deployment": str(runtime.deployment.name or ""),
            **git_revision(ws),
        }
        tags = {k: v for k, v in tags.items() if v}
        tracker.start(
            name,
            tags,
            {
                **flatten(params),
                "profile": profile or "(current)",
                "overrides": json.dumps(overrides, sort_keys=True),
                "targets": targets,
            },
        )
        try:
            dvc_repro(ws, targets)
            exp = clip_exp_save(ws, name, targets)
            page = dvc_plots_show(ws, Path(".dvc/tmp/lines-plots") / name)
            rec = clip_record(clip_dir, params)
            rec.tags.update(
                {"dvc.exp_rev": exp["rev"], "dvc.exp_ref": exp["ref"], **git_revision(ws)}
            )
            if page is not None:
                rec.artifacts.append((page.parent, "dvc_plots"))
            tracker.record(rec)
        except BaseException:
            tracker.finish("FAILED")
            raise
        tracker.finish("FINISHED")
    log.info(
        "CLIP benchmark %s done in %.0f s: dvc exp show lists it; %s run %s",
        name,
        time.monotonic() - t0,
        tracker.description,
        tracker.run_id,
    )
    return {
        "experiment": name,
        "dvc_exp_rev": exp["rev"],
        "mlflow_run_id": tracker.run_id,
        "tracking": tracker.description,
        "metrics": summary(clip_dir),
    }


if __name__ == "__main__":
    clip_benchmark()
