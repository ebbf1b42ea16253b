"""params.yaml and the profiles: typed, validated up front with one line naming the key, and the
committed params.yaml is the default profile (regenerate: ``python -m flows.profile default``)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from lines.errors import LinesError
from lines.pipeline.config import merge_section, validate_params

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "profiles").glob("*.yaml"))


def _committed(rel: str) -> str:
    """The file as committed (a flow run rewrites params.yaml in a working checkout)."""
    r = subprocess.run(
        ["git", "show", f"HEAD:{rel}"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return r.stdout if r.returncode == 0 else (ROOT / rel).read_text()


def test_params_yaml_is_the_default_profile() -> None:
    assert _committed("params.yaml") == _committed("profiles/default.yaml"), (
        "params.yaml differs from profiles/default.yaml: edit the profile, then run "
        "`python -m flows.profile default`"
    )


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.stem)
def test_every_profile_is_valid(profile: Path) -> None:
    p = validate_params(yaml.safe_load(profile.read_text()), profile.name)
    assert p.merge.methods and p.common.tasks


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("merge", "betas", [0.2, 0.4, -1.0], "params.yaml: merge.betas[2]: must be ≥ 0"),
        ("merge", "ties_betas", [0.5, -2], "params.yaml: merge.ties_betas[1]: must be ≥ 0"),
        ("merge", "methods", ["ties", "nope"], "params.yaml: merge.methods[1]: unknown method"),
        ("merge", "tie_density", 0.1, "params.yaml: merge.tie_density: not a key of any"),
        ("edit", "gammas", [0.5, -0.5], "params.yaml: edit.gammas[1]: must be ≥ 0"),
        ("finetune", "warmup_frac", 1.5, "params.yaml: finetune.warmup_frac: must be ≤ 1"),
        ("soups", "task", "imdb", "params.yaml: soups.task: 'imdb' is not one of common.tasks"),
        ("common", "device", "gpu", "params.yaml: common.device: must be cpu, cuda"),
        ("data", "max_vall", 3, "params.yaml: data.max_vall: unknown key"),
    ],
)
def test_a_wrong_value_is_one_line_naming_the_key(section, key, value, message) -> None:
    p = copy.deepcopy(yaml.safe_load((ROOT / "profiles/default.yaml").read_text()))
    p[section][key] = value
    with pytest.raises(LinesError) as e:
        validate_params(p)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_merge_stage_options_are_checked_by_the_same_model() -> None:
    args = {"methods": ["ties"], "lambdas": [0.5], "betas": [1.0], "ties_density": 0.2}
    args |= {"fetch": "data/fetch", "consensus_k": None}  # other options, unset keys: dropped
    assert merge_section(args) == {
        "methods": ["ties"],
        "lambdas": [0.5],
        "betas": [1.0],
        "ties_density": 0.2,
    }
    with pytest.raises(LinesError, match=r"merge stage: merge\.betas\[0\]: must be ≥ 0"):
        merge_section({**args, "betas": [-1.0]})


def test_profile_check_command(tmp_path: Path) -> None:
    from flows.profile import main

    (tmp_path / "profiles").mkdir()
    good = (ROOT / "profiles/smoke.yaml").read_text()
    (tmp_path / "profiles/smoke.yaml").write_text(good)
    assert main(["smoke", "--workspace", str(tmp_path)]) == 0
    assert main(["--check", "--workspace", str(tmp_path)]) == 0
    assert main(["smoke", "--workspace", str(tmp_path), "--set", "merge.betas=[-1]"]) == 2
    assert (tmp_path / "params.yaml").read_text() == good  # nothing written


# -- clip/params.yaml: its own typed model (lines.clip.config), the same one-line errors ---------
CLIP = yaml.safe_load((ROOT / "clip" / "params.yaml").read_text())


def test_clip_params_yaml_is_valid() -> None:
    from lines.clip.config import validate_clip_params

    p = validate_clip_params(CLIP)
    assert p.common.suite == "8" and p.merge.methods == ["task_arithmetic", "ties", "consensus"]
    assert len(p.sources.finetuned) == 8 and p.merge.model_extra["ties_density"] == 0.2


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("common", "device", "gpu", "common.device: must be cpu, cuda, cuda:N or auto"),
        ("common", "batch_size", 0, "common.batch_size: must be > 0"),
        ("common", "tasks", ["MNIST", "Nope"], "common.tasks[1]: unknown task 'Nope'"),
        ("common", "suite", "9", "common.suite: Input should be '8', '14' or '20'"),
        ("merge", "betas", [0.1, -1.0], "merge.betas[1]: must be ≥ 0"),
        ("merge", "ties_densty", 0.1, "merge.ties_densty: not a key of any merge method"),
        ("merge", "methods", ["task_arithmetic", "nope"], "merge.methods[1]: unknown method"),
        ("edit", "gammas", [], "edit.gammas: must not be empty"),
        ("sources", "pretraind", "x", "sources.pretraind: unknown key"),
    ],
)
def test_clip_params_wrong_value_names_the_key(section, key, value, message) -> None:
    from lines.clip.config import validate_clip_params

    bad = copy.deepcopy(CLIP)
    bad[section][key] = value
    with pytest.raises(LinesError) as e:
        validate_clip_params(bad)
    assert str(e.value).startswith(f"clip/params.yaml: {message}")
    assert "\n" not in str(e.value)
