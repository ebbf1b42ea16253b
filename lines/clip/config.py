"""The CLIP benchmark's parameters (``clip/params.yaml`` and ``clip/profiles/*.yaml``) as typed
models, validated up front with one-line errors that name the key, like the embedded pipeline's
(:mod:`lines.pipeline.config`, whose ``merge`` section — the methods' own keys included — is
shared)::

    clip/params.yaml: merge.ties_density: not a key of any merge method
    clip/params.yaml: common.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'

This module never reads a file: the flow (``flows.clip``) and the tests hand it data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

from lines.errors import LinesError
from lines.pipeline.config import (
    BlockPolicy,
    Device,
    Learned,
    Merge,
    Schedules,
    each_checked,
    error_line,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClipCommon(_Section):
    model: str = "ViT-B-32"
    suite: Literal["8", "14", "20"] = "8"
    tasks: list[str] = Field(default_factory=list)
    data_root: str = "data"
    layout: Literal["auto", "reference", "imagefolder"] = "auto"
    device: Device = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: PositiveInt = 256
    fast_eval: Literal["auto", "true", "false"] = "auto"
    fast_eval_budget_gb: NonNegativeFloat = 0.0
    compile: Literal["auto", "off", "default", "max-autotune-no-cudagraphs"] = "auto"
    num_workers: NonNegativeInt = 4
    heads: NonNegativeInt = 0
    text_heads: NonNegativeInt = 0
    act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    tower: Literal["lines", "open_clip"] = "lines"
    threads: NonNegativeInt = 0
    block_policy: BlockPolicy = "reference"
    cache_dir: str = "cache"
    max_val: NonNegativeInt = 0
    max_test: NonNegativeInt = 0
    seed: int = 0

    @field_validator("fast_eval", mode="before")
    @classmethod
    def _fast_eval(cls, v: object) -> object:
        if isinstance(v, bool):  # DVC would pass `--fast_eval` alone, or nothing for false
            raise ValueError(
                f"write it quoted, '{str(v).lower()}': a YAML boolean reaches the stage as a bare flag"
            )
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        from lines.clip.datasets import get_task

        return each_checked(v, get_task)


class Hub(_Section):
    hub_cache: str = ""
    offline: Literal["auto"] | bool = "auto"
    timeout: Annotated[float, Field(gt=0.0)] = 10.0


class Sources(_Section):
    pretrained: str = Field(min_length=1)
    text: str = ""
    finetuned: dict[str, str] = Field(default_factory=dict)


class FinetunedEval(_Section):
    reference: str = ""


class ClipMerge(Merge):
    """The embedded pipeline's ``merge`` section (methods, grids, the methods' own keys)."""


class ClipEdit(_Section):
    gammas: list[NonNegativeFloat] = Field(min_length=1)
    edit_tasks: list[str] = Field(default_factory=list)


class ClipWiseft(_Section):
    wiseft_model: str = ""
    wiseft_task: str = "ImageNet"
    ood_tasks: list[str] = Field(default_factory=list)
    gammas: list[NonNegativeFloat] = Field(min_length=1)
    lines_gamma: NonNegativeFloat = 0.5


class ClipSoups(_Section):
    soup_members: list[str] = Field(default_factory=list)
    soup_task: str = ""
    control_tasks: list[str] = Field(default_factory=list)
    gammas: list[NonNegativeFloat] = Field(min_length=1)


class ClipSchedules(Schedules):
    """The embedded pipeline's ``schedules`` section, plus the bootstrap of its intervals."""

    bootstrap: PositiveInt = 1000
    bootstrap_seed: int = 0


class ClipParams(_Section):
    """The whole ``clip/params.yaml`` (``clip/dvc.yaml`` unpacks each section as options)."""

    common: ClipCommon
    hub: Hub = Field(default_factory=Hub)
    sources: Sources
    finetuned_eval: FinetunedEval = Field(default_factory=FinetunedEval)
    merge: ClipMerge
    edit: ClipEdit
    wiseft: ClipWiseft
    soups: ClipSoups
    schedules: ClipSchedules | None = None
    learned: Learned | None = None


def validate_clip_params(data: Mapping[str, Any], source: str = "clip/params.yaml") -> ClipParams:
    """``data`` (a parsed clip/params.yaml or profile) as :class:`ClipParams`; a LinesError of
    one line naming ``source`` and the key otherwise."""
    try:
        return ClipParams.model_validate(dict(data))
    except ValidationError as e:
        raise LinesError(f"{source}: {error_line(e)}") from None
