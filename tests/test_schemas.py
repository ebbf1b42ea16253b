"""The stage outputs' schemas: versioned, checked on write and read, one-line errors naming the
file and the field, values kept exactly as the stage computed them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lines.errors import LinesError
from lines.protocol.schemas import (
    SCHEMA_VERSION,
    MergeResult,
    SoupsResult,
    WiseftResult,
    load_output,
    read_output,
    write_output,
)


def _merge() -> dict:
    rep = {"test_acc": {"a": 0.5}, "test_norm": {"a": 0.625}, "test_avg_acc": 0.5}
    rep["test_avg_norm"] = 0.625
    return {
        "tasks": ["a"],
        "block_policy": "reference",
        "num_blocks": 3,
        "methods": {
            "ties": {
                "params": {"density": 0.2},
                "input_sha256": ["0" * 64],
                "pretrained_sha256": "1" * 64,
                "baseline": {"lambda": 1, **rep},
                "lines": {"alpha": 0.1, "beta": 0.30000000000000004, "lambdas": [0.1, 0.4], **rep},
                "norms": {"kind": "l1", "task_vector_sum": 2.0},
            }
        },
        "model": "a suite's own header field",
    }


def test_written_with_its_version_and_exact_values(tmp_path: Path) -> None:
    out = write_output(tmp_path / "merge.json", MergeResult, _merge())
    on_disk = json.loads((tmp_path / "merge.json").read_text())
    assert on_disk == out and next(iter(on_disk)) == "schema_version"
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["methods"]["ties"]["baseline"]["lambda"] == 1  # an int stays an int
    assert on_disk["methods"]["ties"]["lines"]["beta"] == 0.30000000000000004
    assert on_disk["model"] == "a suite's own header field"
    typed = load_output(tmp_path / "merge.json", MergeResult)
    assert typed.methods["ties"].baseline.lambda_ == 1.0 and typed.num_blocks == 3
    assert read_output(tmp_path / "merge.json", MergeResult) == on_disk


@pytest.mark.parametrize(
    ("version", "message"),
    [(None, "no schema_version"), (99, "schema_version 99 is not 1")],
)
def test_old_or_unknown_version_is_one_line(tmp_path: Path, version, message: str) -> None:
    obj = _merge() if version is None else {"schema_version": version, **_merge()}
    (tmp_path / "merge.json").write_text(json.dumps(obj))
    with pytest.raises(LinesError, match=message) as e:
        read_output(tmp_path / "merge.json", MergeResult)
    assert "\n" not in str(e.value) and "merge.json" in str(e.value)


def test_a_missing_field_is_named(tmp_path: Path) -> None:
    bad = _merge()
    del bad["methods"]["ties"]["lines"]["alpha"]
    with pytest.raises(
        LinesError, match=r"merge\.json: methods\.ties\.lines\.alpha: Field required"
    ):
        write_output(tmp_path / "merge.json", MergeResult, bad)
    assert not (tmp_path / "merge.json").exists()


def test_a_skipped_stage_needs_only_its_reason(tmp_path: Path) -> None:
    write_output(tmp_path / "s.json", SoupsResult, {"skipped": "no members", "soups": {}})
    with pytest.raises(LinesError, match="task: missing"):
        write_output(tmp_path / "s.json", SoupsResult, {"soups": {}})
    w = {"skipped": "no model", "tasks": [], "gammas": [], "rows": []}
    assert write_output(tmp_path / "w.json", WiseftResult, w)["skipped"] == "no model"
