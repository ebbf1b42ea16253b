"""The CLIP benchmark as a Prefect flow: the ``clip/`` DVC pipeline (prepare → heads →
finetuned_eval → merge / edit / wiseft / soups → report, ``lines/clip/stages.py``) run with typed
parameters, saved as a DVC experiment and recorded in MLflow (experiment ``lines-clip``: one run
per flow run, nested runs per evaluation point).

    prefect deployment run 'clip-benchmark/vit-b-32' --param device=cuda --watch
    python -m flows.clip               # the same, as a plain script (temporary Prefect server)

It is ``flows._core.run_experiment`` for a pipeline that lives in a folder of the project: the
workspace lock, git and DVC are the project's (DVC runs from the root with ``clip/dvc.yaml``
targets; nothing is created inside ``clip/`` that would make DVC take it for a separate
repository), the parameters written are ``clip/params.yaml`` (+ ``clip/profiles/<profile>.yaml``
when a profile is named).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, Field

from flows._core import BlockPolicy, Experiment, Method, RunOptions, run_experiment
from lines.clip.config import validate_clip_params
from orchestration.clip import CLIP_DIR, STAGES, clip_record, dvc_targets, overrides_of, summary

Stage = Literal[STAGES]  # type: ignore[valid-type]


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
    block_policy: BlockPolicy | None = None,
    params: dict[str, Any] | None = None,
    stages: list[Stage] | None = None,
    profile: str | None = None,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
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
    exp = Experiment(
        "clip",
        targets=dvc_targets(list(stages or [])),
        build_record=lambda ctx: clip_record(ctx.pipeline, ctx.params),
        pipeline_dir=CLIP_DIR,
        summary=lambda ctx: summary(ctx.pipeline),
        validate=validate_clip_params,
    )
    return run_experiment(exp, overrides, profile=profile, workspace=workspace, name=name, run=run)


if __name__ == "__main__":
    clip_benchmark()
