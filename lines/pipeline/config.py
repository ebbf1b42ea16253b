"""The embedded pipeline's parameters (``params.yaml`` and ``profiles/*.yaml``) as typed models,
one per concern (``common``, ``data``, ``heads``, ``finetune``, ``edit``, ``merge``, ``soups``,
``wiseft``), validated up front with one-line errors that name the key::

    params.yaml: merge.betas[2]: must be ≥ 0

This module never reads a file: the orchestration (``orchestration.workspace``) and the stage
entry points hand it data. The ``merge`` section's method keys come from the methods'
declarations (``lines.merging.params``), so a new method file adds its keys here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from lines.errors import LinesError

BlockPolicy = Literal["reference", "depth"]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _device(v: str) -> str:
    if v not in ("cpu", "cuda", "auto") and not (v.startswith("cuda:") and v[5:].isdigit()):
        raise ValueError("must be cpu, cuda, cuda:N or auto")
    return v


Device = Annotated[str, AfterValidator(_device)]


def each_checked(values: list[Any], check: Callable[[Any], object]) -> list[Any]:
    """``values`` if ``check`` accepts each; else the first LinesError as ``[i]: message`` (a
    validator's error, which :func:`error_line` puts after the key)."""
    for i, v in enumerate(values):
        try:
            check(v)
        except LinesError as e:
            raise ValueError(f"[{i}]: {e}") from None
    return values


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Common(_Section):
    suite: str = "text"
    backbone: str = "minilm"
    tasks: list[str] = Field(min_length=1)
    seed: int = 0
    max_len: PositiveInt = 64
    image_size: PositiveInt = 64
    device: Device = "cpu"


class Data(_Section):
    # 0: every example of the split (the GPU profile)
    max_train: NonNegativeInt = 1000
    max_val: NonNegativeInt = 200
    max_test: NonNegativeInt = 500


class Heads(_Section):
    kind: Literal["zeroshot", "probe"] = "probe"
    logit_scale: Annotated[float, Field(gt=0.0)] = 100.0
    C: Annotated[float, Field(gt=0.0)] = 1.0
    max_probe: PositiveInt = 1000


class Finetune(_Section):
    steps: NonNegativeInt = 0  # optimiser steps; 0: `epochs` passes
    epochs: PositiveInt = 2
    lr: Annotated[float, Field(gt=0.0)] = 5e-5
    batch_size: PositiveInt = 32
    weight_decay: NonNegativeFloat = 0.01
    warmup_frac: Fraction = 0.1


class Edit(_Section):
    gammas: list[NonNegativeFloat] = Field(min_length=1)
    block_policy: BlockPolicy = "reference"


class Merge(BaseModel):
    """The grids and rules of the merge stage, plus the methods' own keys (``<method>_lambdas``,
    ``<method>_betas`` and each parameter's pipeline key): any other key is refused."""

    model_config = ConfigDict(extra="allow")

    methods: list[str] = Field(min_length=1)
    lambdas: list[NonNegativeFloat] = Field(min_length=1)
    betas: list[NonNegativeFloat] = Field(min_length=1)
    block_policy: BlockPolicy = "reference"
    alpha_norm: Literal["l1", "l2"] = "l1"

    @field_validator("methods")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        from lines.merging import all_methods

        known = all_methods()
        for i, m in enumerate(v):
            if m not in known:
                raise ValueError(f"[{i}]: unknown method '{m}' (known: {', '.join(known)})")
        return v

    @model_validator(mode="after")
    def _method_keys(self) -> Merge:
        from lines.merging import all_methods
        from lines.merging.params import pipeline_options

        grids = {f"{m}_{g}" for m in all_methods() for g in ("lambdas", "betas")}
        options = pipeline_options()
        for key, value in (self.model_extra or {}).items():
            if key in grids:
                if not isinstance(value, list) or not value:
                    raise ValueError(f"{key}: must be a non-empty list")
                for i, x in enumerate(value):
                    if not isinstance(x, int | float) or isinstance(x, bool) or x < 0:
                        raise ValueError(f"{key}[{i}]: must be ≥ 0")
            elif key not in options:
                raise ValueError(f"{key}: not a key of any merge method")
        return self


class Soups(_Section):
    task: str
    seeds: list[int] = Field(min_length=1)
    gammas: list[NonNegativeFloat] = Field(min_length=1)
    block_policy: BlockPolicy = "reference"


class Wiseft(_Section):
    wiseft_tasks: list[str] = Field(min_length=1)
    gammas: list[NonNegativeFloat] = Field(min_length=1)
    lines_gamma: NonNegativeFloat = 0.5
    block_policy: BlockPolicy = "reference"


class Fig1(_Section):
    fig1_tasks: list[str] = Field(min_length=1)
    gammas: list[Fraction] = Field(min_length=1)
    block_policy: BlockPolicy = "reference"


class Schedules(_Section):
    """The schedule comparison (``lines.protocol.schedules``): is linear layer scaling optimal?"""

    specs: list[str] = Field(min_length=1)
    budget: PositiveInt = 10
    beta_max: Annotated[float, Field(gt=0.0)] = 1.0
    # merging: α = the rule's α × each multiplier, searched within the same budget ([1]: the rule)
    alpha_mults: list[Annotated[float, Field(gt=0.0)]] = Field(default_factory=lambda: [1.0])
    methods: list[str] = Field(default_factory=list)
    edit_tasks: list[str] = Field(default_factory=list)
    block_policy: BlockPolicy = "reference"

    @field_validator("specs")
    @classmethod
    def _specs(cls, v: list[str]) -> list[str]:
        from lines.schedules import parse_schedule

        return each_checked(v, parse_schedule)

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from lines.merging import all_methods

        for i, m in enumerate(v):
            if m not in all_methods():
                raise ValueError(f"[{i}]: unknown method '{m}'")
        return v


class Learned(_Section):
    """The learned baselines against TA + LiNeS (``lines.protocol.baselines``)."""

    methods: list[
        Literal["lines", "fisher", "adamerging_task", "adamerging_layer", "atlas", "ensemble"]
    ] = Field(default_factory=list)  # []: the stage writes "skipped"
    betas: list[NonNegativeFloat] = Field(min_length=1)
    fisher_examples: PositiveInt = 64
    fisher_labels: Literal["sampled", "true"] = "sampled"
    fisher_floor: NonNegativeFloat = 1e-6
    steps: PositiveInt = 100
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    batch_size: PositiveInt = 16
    init: float = 0.3
    adamerging_inputs: Literal["test", "val"] = "test"
    ensemble_combine: Literal["logits", "probs"] = "logits"
    block_policy: BlockPolicy = "reference"
    bootstrap: PositiveInt = 1000
    bootstrap_seed: int = 0


class Report(_Section):
    bootstrap: PositiveInt = 1000
    bootstrap_seed: int = 0


class Runs(_Section):
    """Repeats of the whole pipeline (``scripts/run_profile.py``): seeds, and a sweep of
    ``finetune`` overrides (the fine-tuning budget)."""

    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    sweep: list[dict[str, float | int]] = Field(default_factory=list)


class PipelineParams(_Section):
    """The whole ``params.yaml`` of the embedded pipeline (``dvc.yaml`` interpolates it)."""

    common: Common
    data: Data
    heads: Heads
    finetune: Finetune
    edit: Edit
    merge: Merge
    soups: Soups
    wiseft: Wiseft
    fig1: Fig1 | None = None
    schedules: Schedules | None = None
    learned: Learned | None = None
    report: Report = Field(default_factory=Report)
    runs: Runs | None = None

    @model_validator(mode="after")
    def _tasks(self) -> PipelineParams:
        tasks = self.common.tasks
        for name, ts in (("soups.task", [self.soups.task]), ("wiseft.wiseft_tasks", None)):
            for i, t in enumerate(ts if ts is not None else self.wiseft.wiseft_tasks):
                if t not in tasks:
                    at = name if ts is not None else f"{name}[{i}]"
                    raise ValueError(f"{at}: '{t}' is not one of common.tasks")
        return self


_MESSAGES = {
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "extra_forbidden": "unknown key",
    "missing": "missing",
    "too_short": "must not be empty",
}


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def error_line(e: ValidationError) -> str:
    """The first error as ``section.key[i]: what is wrong``."""
    err = e.errors()[0]
    where = _loc(err["loc"])
    template = _MESSAGES.get(err["type"])
    if template is not None:
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in err.get("ctx", {}).items()}
        msg = template.format(**ctx)
    else:
        # A validator's own message may start with the key below ``where`` ("[2]: …",
        # "ties_betas[1]: …"); pydantic prefixes it with "Value error, ".
        msg = str(err["msg"]).removeprefix("Value error, ")
        head = msg.split(": ", 1)[0]
        if msg.startswith("["):
            return f"{where}{msg}"
        if ": " in msg and " " not in head:
            return f"{where}.{msg}" if where else msg
    return f"{where}: {msg}" if where else msg


def merge_section(args: Mapping[str, Any]) -> dict[str, Any]:
    """The ``merge`` section out of a merge stage's parsed options (the keys it declares and
    the methods' keys that were given), validated: what ``lines.protocol.merge`` reads."""
    from lines.merging import all_methods
    from lines.merging.params import pipeline_options

    keys = set(Merge.model_fields) | set(pipeline_options())
    keys |= {f"{m}_{g}" for m in all_methods() for g in ("lambdas", "betas")}
    section = {k: v for k, v in args.items() if k in keys and v is not None}
    try:
        Merge.model_validate(section)
    except ValidationError as e:
        raise LinesError(f"merge stage: merge.{error_line(e)}") from None
    return section


def validate_params(data: Mapping[str, Any], source: str = "params.yaml") -> PipelineParams:
    """``data`` (a parsed params.yaml or profile) as :class:`PipelineParams`; a LinesError of
    one line naming ``source`` and the key otherwise."""
    try:
        return PipelineParams.model_validate(dict(data))
    except ValidationError as e:
        raise LinesError(f"{source}: {error_line(e)}") from None
