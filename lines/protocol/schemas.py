"""Typed, versioned schemas of the stage outputs: ``base.json`` (base_eval / finetuned_eval),
``merge.json``, ``edit.json``, ``soups.json``, ``wiseft.json``, ``fig1.json``, ``schedules.json``
and the report's ``metrics.json``.

Every suite writes these through :func:`write_output` and every reader (reports, MLflow records)
reads them through :func:`read_output`, so a field renamed in one place fails at once, with one
line naming the file and the field, instead of as a ``KeyError`` three modules away. A file
carries ``schema_version``; one written before versioning, or by a newer ``lines``, is refused
with a one-line error that says to rerun the stage. The models name what readers rely on and
allow more (suite headers such as CLIP's ``model``), so writers keep their exact values.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lines.errors import LinesError
from lines.protocol.results import read_json, write_json

SCHEMA_VERSION = 1

Acc = dict[str, float]  # task → accuracy
BySplit = dict[str, Acc]  # split → task → accuracy


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class StageOutput(_Part):
    """A stage output file: a name (for messages) and a version."""

    file: ClassVar[str]
    schema_version: int = SCHEMA_VERSION


class BaseEval(StageOutput):
    """Accuracy of θ_0 and of every fine-tuned model, per split and task: the normalisers."""

    file: ClassVar[str] = "base.json"
    pretrained: BySplit
    finetuned: dict[str, BySplit]  # fine-tuned model (its task) → split → task → accuracy
    examples: dict[str, dict[str, int]] | None = None


class TestReport(_Part):
    test_acc: Acc
    test_norm: Acc
    test_avg_acc: float
    test_avg_norm: float


class Baseline(TestReport):
    lambda_: float = Field(alias="lambda")


class LinesVariant(TestReport):
    alpha: float
    beta: float
    lambdas: list[float]


class MethodResult(_Part):
    params: dict[str, Any]
    input_sha256: list[str]
    pretrained_sha256: str
    baseline: Baseline
    lines: LinesVariant
    norms: dict[str, Any]  # the norms of τ_sum and τ_MTL, and which norm (``kind``)


class MergeResult(StageOutput):
    file: ClassVar[str] = "merge.json"
    tasks: list[str]
    block_policy: str
    num_blocks: int
    methods: dict[str, MethodResult]


class EditTask(_Part):
    best_gamma: float
    best: dict[str, Any]
    finetuned: dict[str, Any] | None = None


class EditResult(StageOutput):
    file: ClassVar[str] = "edit.json"
    gammas: list[float]
    tasks: dict[str, EditTask]
    average_at_best: dict[str, float]


class Skippable(StageOutput):
    """A stage a suite may skip (CLIP without a WiSE-FT model): then only ``skipped`` says why."""

    skipped: str | None = None
    required_unless_skipped: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _complete(self) -> Skippable:
        if self.skipped is None:
            for f in self.required_unless_skipped:
                if getattr(self, f) is None:
                    raise ValueError(f"{f}: missing (and the stage was not skipped)")
        return self


class SoupEntry(_Part):
    members: list[str]
    plain: dict[str, float]
    lines: dict[str, float]


class SoupsResult(Skippable):
    file: ClassVar[str] = "soups.json"
    required_unless_skipped: ClassVar[tuple[str, ...]] = ("task", "num_models")
    task: str | None = None
    num_models: int | None = None
    soups: dict[str, SoupEntry]
    individual: list[dict[str, Any]] = []


class WiseftRow(_Part):
    task: str
    variant: str
    gamma: float
    target_acc: float
    target_norm: float
    control_acc: float
    control_norm: float


class WiseftResult(Skippable):
    file: ClassVar[str] = "wiseft.json"
    required_unless_skipped: ClassVar[tuple[str, ...]] = ("lines_gamma",)
    tasks: list[str]
    gammas: list[float]
    lines_gamma: float | None = None
    rows: list[WiseftRow]


class Fig1Point(_Part):
    task: str
    schedule: str
    gamma: float
    target_norm: float
    control_norm: float


class Fig1Result(StageOutput):
    """The paper's Figure 1 (``lines.protocol.schedules_fig1``): shallow vs deep layers downscaled."""

    file: ClassVar[str] = "fig1.json"
    tasks: list[str]
    fig_tasks: list[str]
    gammas: list[float]
    num_blocks: int
    points: list[Fig1Point]


class ScheduleRow(_Part):
    schedule: str
    evaluations: int
    lambdas: list[float]


class SchedulesResult(StageOutput):
    """The schedule comparison (``lines.protocol.schedules``): per merge and per edited task, each
    family's best schedule on val, reported on test against linear."""

    file: ClassVar[str] = "schedules.json"
    tasks: list[str]
    budget: int
    families: dict[str, list[str]]
    num_blocks: int
    merging: dict[str, dict[str, ScheduleRow]]
    editing: dict[str, dict[str, ScheduleRow]]


class LearnedMethod(TestReport):
    cost: dict[str, Any]


class LearnedResult(Skippable):
    """The learned baselines (``lines.protocol.baselines``): TA + LiNeS against Fisher merging,
    AdaMerging, aTLAS and output ensembles, each with its cost (skipped: ``methods`` empty)."""

    file: ClassVar[str] = "learned.json"
    tasks: list[str]
    adamerging_inputs: str
    methods: dict[str, LearnedMethod]


class ReportMetrics(StageOutput):
    """The report's headline numbers (DVC metrics); their layout is the report's own."""

    file: ClassVar[str] = "metrics.json"


S = TypeVar("S", bound=StageOutput)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def check_output(schema: type[S], obj: Mapping[str, Any], where: str = "") -> S:
    """``obj`` validated as ``schema`` (its version included); one-line LinesError otherwise."""
    where = where or schema.file
    if not isinstance(obj, Mapping):
        raise LinesError(f"{where}: not a {schema.file} (a JSON object expected)")
    version = obj.get("schema_version")
    if version is None:
        raise LinesError(f"{where}: no schema_version (written by an older lines); rerun the stage")
    if version != SCHEMA_VERSION:
        raise LinesError(
            f"{where}: schema_version {version!r} is not {SCHEMA_VERSION}, the one this lines "
            "reads; rerun the stage (or use the lines that wrote it)"
        )
    try:
        return schema.model_validate(dict(obj))
    except ValidationError as e:
        raise LinesError(f"{where}: {_first_error(e)}") from None


def versioned(schema: type[StageOutput], obj: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``obj`` with the current ``schema_version`` first, checked against ``schema``; the other
    values are kept exactly as given (so the JSON holds the numbers the stage computed)."""
    out = {
        "schema_version": SCHEMA_VERSION,
        **{k: v for k, v in obj.items() if k != "schema_version"},
    }
    check_output(schema, out, where)
    return out


def write_output(path: Path, schema: type[StageOutput], obj: Mapping[str, Any]) -> dict[str, Any]:
    """Write a stage output atomically after checking it; returns what was written."""
    out = versioned(schema, obj, str(path))
    write_json(path, out)
    return out


def read_output(path: Path, schema: type[StageOutput]) -> dict[str, Any]:
    """A stage output checked against ``schema``, as the plain data in the file."""
    obj = read_json(path)
    check_output(schema, obj, str(path))
    return obj


def load_output(path: Path, schema: type[S]) -> S:
    """A stage output as its typed model."""
    return check_output(schema, read_json(path), str(path))
