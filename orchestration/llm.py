"""The LLM suite (the ``llm/`` DVC pipeline) for the orchestration: its parameter overrides and
the MLflow record built from its outputs (pure functions over files, like ``orchestration.clip``).

The suite writes the text pipeline's shapes (``out/merge/merge.json``, ``out/edit/edit.json``,
``out/schedules/schedules.json``, ``out/wiseft/``, ``out/soups/`` relative to ``llm/``), so the
record reuses ``orchestration.records``: merging keeps its names
(``<method>.<baseline|lines>.test_acc.<task>``, nested runs ``<method>/<variant> β=<coef>``),
editing, schedules, WiSE-FT and soups go under ``edit/``, ``schedules/``, ``wiseft/``,
``soups/``. Added for the LLM:

    params   model (θ_0's name), sha256.base.<file> (the fetched folder), sha256.sft,
             sha256.rl.<reward>, rsoups.rewards, rsoups.lines_alpha/.lines_beta/.uniform_scale
    metrics  rsoups/hypervolume.<baseline|lines|scaled>, rsoups/hv_difference(.lo/.hi),
             rsoups/hv_difference_vs_scaled(.lo/.hi), rsoups/dominated_baseline_points
    nested   rsoups/<variant> λ=<λ>: params variant, lambda, the LiNeS α/β or the uniform scale;
             metrics reward.<name> with .lo/.hi (95% interval over held-out prompts)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lines.io import sha256_file
from orchestration.records import add_prefixed, add_suite_stages, merging_record, read_json
from orchestration.tracking import Point, RunRecord
from orchestration.workspace import pipeline_targets

LLM_DIR = "llm"  # the pipeline's folder inside the project (its dvc.yaml and params.yaml)
STAGES = (
    "fetch",
    "finetune",
    "base_eval",
    "edit",
    "merge_method",
    "merge",
    "schedules",
    "learned",
    "soup_finetune",
    "wiseft",
    "soups",
    "sft",
    "rl",
    "rsoups",
    "report",
)


def dvc_targets(stages: list[str] | None) -> list[str]:
    """``llm/dvc.yaml:<stage>`` targets run from the project root (all when empty)."""
    return pipeline_targets(LLM_DIR, STAGES, stages)


# Fan-out phases (``flows._core.FanOut``): foreach groups whose stages run as parallel units, and
# the stages they read; each phase runs only when a requested stage needs it.
_PHASES: tuple[tuple[tuple[str, ...], tuple[str, ...], frozenset[str]], ...] = (
    (
        ("finetune",),
        ("fetch",),
        frozenset(
            {"finetune", "base_eval", "edit", "merge_method", "merge"}
            | {"schedules", "learned", "wiseft", "soups", "report"}
        ),
    ),
    (("soup_finetune",), ("fetch",), frozenset({"soup_finetune", "soups", "report"})),
    (("merge_method",), ("base_eval",), frozenset({"merge_method", "merge", "report"})),
    (("rl",), ("sft",), frozenset({"rl", "rsoups"})),
)


def fan_out_phases(stages: list[str] | None) -> list[tuple[list[str], list[str]]]:
    """(groups, upstream) of the fan-out phases the requested ``stages`` need (all when empty),
    as ``llm/dvc.yaml:<stage>`` targets: fine-tuning per task and per soup seed (after
    ``fetch``), the merge sweep per method (after ``base_eval``), GRPO per reward (after
    ``sft``)."""
    want = set(stages or STAGES)
    out: list[tuple[list[str], list[str]]] = []
    for groups, upstream, needed_by in _PHASES:
        if want & needed_by:
            g, u = dvc_targets(list(groups)), dvc_targets(list(upstream))
            if out and out[-1][1] == u:  # same upstream: one phase, more units at once
                out[-1][0].extend(g)
            else:
                out.append((g, u))
    return out


def overrides_of(**kw: Any) -> dict[str, Any]:
    """Flow parameters → dotted ``llm/params.yaml`` keys (None: keep the file's value)."""
    out: dict[str, Any] = {
        "common.tasks": kw.get("tasks"),
        "common.device": kw.get("device"),
        "rlhf.device": kw.get("device"),
        "common.block_policy": kw.get("block_policy"),
        "merge.methods": kw.get("methods"),
        "merge.lambdas": kw.get("lambdas"),
        "merge.betas": kw.get("betas"),
        "edit.gammas": kw.get("edit_gammas"),
        "rsoups.rewards": kw.get("rewards"),
        "rsoups.lambdas": kw.get("rsoups_lambdas"),
        "rsoups.lines_alpha": kw.get("rsoups_alpha"),
        "rsoups.lines_beta": kw.get("rsoups_beta"),
        "rl.steps": kw.get("rl_steps"),
    }
    out.update(kw.get("params") or {})
    return {k: v for k, v in out.items() if v is not None}


def rsoups_record(d: Path) -> RunRecord:
    """The rewarded-soups part: hypervolumes (metrics) and one nested run per (variant, λ)."""
    res = read_json(Path(d) / "out/rsoups/rsoups.json")
    rec = RunRecord()
    names = res["rewards"]
    rec.params.update(
        {
            "rewards": names,
            "lambdas": res["lambdas"],
            "lines_alpha": res["lines"]["alpha"],
            "lines_beta": res["lines"]["beta"],
            "uniform_scale": res.get("uniform_scale"),
            "prompts": res["prompts"]["n"],
            "tradeoff": res["regime"].get("tradeoff"),
        }
    )
    hv = res["hypervolume"]
    for k in ("baseline", "lines", "scaled"):
        if k in hv:
            rec.metrics[f"hypervolume.{k}"] = hv[k]
    for k, name in (
        ("difference", "hv_difference"),
        ("difference_vs_scaled", "hv_difference_vs_scaled"),
    ):
        if k in hv:
            rec.metrics[name] = hv[k]["value"]
            rec.metrics[f"{name}.lo"] = hv[k]["lo"]
            rec.metrics[f"{name}.hi"] = hv[k]["hi"]
    rec.metrics["dominated_baseline_points"] = res["baseline_points_dominated_by_lines"]
    for p in res["points"]:
        lam = p["lambda"]
        params: dict[str, Any] = {"variant": p["variant"], "lambda": lam, "rewards": names}
        if p["variant"] == "lines":
            params.update(
                {"lines_alpha": res["lines"]["alpha"], "lines_beta": res["lines"]["beta"]}
            )
        if p["variant"] == "scaled":
            params["uniform_scale"] = res.get("uniform_scale")
        metrics = {}
        for r, ci in p["rewards"].items():
            metrics[f"reward.{r}"] = ci["value"]
            metrics[f"reward.{r}.lo"] = ci["lo"]
            metrics[f"reward.{r}.hi"] = ci["hi"]
        tag = p["variant"] if lam is None else f"{p['variant']} λ={lam:g}"
        rec.points.append(Point(tag, params, metrics))
    rec.artifacts.append((Path(d) / "out/rsoups", "rsoups"))
    return rec


def llm_record(llm_dir: Path, params: Mapping[str, Any]) -> RunRecord:
    """The MLflow record of an LLM-suite run, from the outputs under ``llm_dir``."""
    from lines.llm.fetch import model_name

    d = Path(llm_dir)
    rec = merging_record(d, params) if (d / "out/merge/merge.json").is_file() else RunRecord()
    fetch = d / "ckpt/base/fetch.json"
    rec.params.update(
        {
            "suite": "llm",
            "model": model_name(d / "ckpt/base"),
            "backbone": model_name(d / "ckpt/base"),
            "tasks": params.get("common", {}).get("tasks"),
            "device": params.get("common", {}).get("device"),
            "block_policy": params.get("common", {}).get("block_policy", "reference"),
        }
    )
    if fetch.is_file():
        files = read_json(fetch).get("files", {})
        rec.params.update({f"sha256.base.{k}": v for k, v in files.items() if isinstance(v, str)})
        rec.artifacts.append((fetch, "manifests"))
    add_suite_stages(rec, d, params, rec.params["block_policy"])
    if (d / "out/rsoups/rsoups.json").is_file():
        sft = d / "ckpt/sft/model.safetensors"
        if sft.is_file():
            rec.params["sha256.sft"] = sha256_file(sft)
        for r in params.get("rsoups", {}).get("rewards", []):
            f = d / "ckpt/rl" / r / "model.safetensors"
            if f.is_file():
                rec.params[f"sha256.rl.{r}"] = sha256_file(f)
        add_prefixed(rsoups_record(d), "rsoups", rec, {})
    return rec


def summary(llm_dir: Path) -> dict[str, Any]:
    """The headline numbers (the report's metrics and the rewarded soups' hypervolumes)."""
    d = Path(llm_dir)
    m = d / "out/report/metrics.json"
    out = json.loads(m.read_text()) if m.is_file() else {}
    r = d / "out/rsoups/rsoups.json"
    if r.is_file():
        res = json.loads(r.read_text())
        out["rsoups"] = {"hypervolume": res["hypervolume"], "verdict": res["verdict"]}
    return out
