"""The CLIP benchmark (the ``clip/`` DVC pipeline) for the orchestration: its parameter overrides
and the MLflow record built from its outputs (pure functions over files, like ``orchestration.records``).

The clip pipeline writes its outputs in the text pipeline's shapes (``out/merge/merge.json``,
``out/edit/edit.json``, …, relative to ``clip/``), so the record reuses ``orchestration.records``: the
merging part keeps the text pipeline's names (``<method>.<baseline|lines>.test_acc.<task>``,
``<method>.alpha``/``.beta``/``.lambda``, nested runs ``<method>/<variant> β=<coef>``), and the
editing, WiSE-FT and soups parts are the same records under the prefixes ``edit/``, ``wiseft/``
and ``soups/`` (their names would otherwise collide: ``gammas``, ``block_policy``). Added for
CLIP:

    params   model, data_root, device, block_policy, tasks (the resolved suite),
             sha256.source.<key> (the file a source resolved to), sha256.canonical.<key> (the
             prepared safetensors; what the merges read), source.<key>.commit (Hub snapshots)
    nested   merge points also carry tasks, sha256.pretrained and sha256.finetuned (list);
             editing and WiSE-FT points the sha256 of the fine-tuned model they edit
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lines.protocol.schemas import MergeResult, read_output
from orchestration.records import add_suite_stages, merging_record, read_json
from orchestration.tracking import Point, RunRecord
from orchestration.workspace import pipeline_targets

CLIP_DIR = "clip"  # the pipeline's folder inside the project (its dvc.yaml and params.yaml)
STAGES = (
    "prepare",
    "heads",
    "finetuned_eval",
    "merge",
    "edit",
    "wiseft",
    "soups",
    "schedules",
    "learned",
    "report",
)


def dvc_targets(stages: list[str] | None) -> list[str]:
    """``clip/dvc.yaml:<stage>`` targets run from the project root (all when empty)."""
    return pipeline_targets(CLIP_DIR, STAGES, stages)


def clip_record(clip_dir: Path, params: Mapping[str, Any]) -> RunRecord:
    """The MLflow record of a CLIP benchmark run, from the outputs under ``clip_dir``."""
    d = Path(clip_dir)
    common = params.get("common", {})
    prep = read_json(d / "ckpt/prepare.json")
    fin = prep["finetuned"]
    sha = {k: e["sha256"] for k, e in fin.items()}

    if (d / "out/merge/merge.json").is_file():
        rec = merging_record(d, params)
        merge = read_output(d / "out/merge/merge.json", MergeResult)
        tasks = merge["tasks"]
        first = next(iter(merge["methods"].values()), None)
        for p in rec.points:
            p.params["tasks"] = tasks
            if first is not None:
                p.params["sha256.pretrained"] = first["pretrained_sha256"]
                p.params["sha256.finetuned"] = first["input_sha256"]
    else:  # only upstream stages were reproduced
        rec, tasks = RunRecord(), []
    rec.params.update(
        {
            "model": common.get("model"),
            "backbone": common.get("model"),
            "suite": str(common.get("suite")),
            "tasks": tasks or common.get("tasks"),
            "data_root": common.get("data_root"),
            "device": common.get("device"),
            "block_policy": common.get("block_policy", "reference"),
            "sha256.canonical.pretrained": prep["pretrained"]["sha256"],
            "sha256.canonical.text": prep["text"]["sha256"],
        }
    )
    for key, e in [("pretrained", prep["pretrained"]), ("text", prep["text"]), *fin.items()]:
        src = e.get("source", {})
        if src.get("sha256"):
            rec.params[f"sha256.source.{key}"] = src["sha256"]
        if src.get("commit"):
            rec.params[f"source.{key}.commit"] = src["commit"]
    rec.params.update({f"sha256.canonical.{k}": h for k, h in sha.items()})

    def task_sha(p: Point) -> str | None:
        t = p.params.get("task")
        for k in fin:
            if k == t or k.lower() == str(t).lower():
                return sha[k]
        return None

    def wiseft_extra(wiseft: Mapping[str, Any]) -> dict[str, Any]:
        m = wiseft["model"]
        return {"model": lambda p: m, "sha256.finetuned": lambda p: sha.get(m)}

    add_suite_stages(
        rec,
        d,
        params,
        common.get("block_policy", "reference"),
        edit_extra={"sha256.finetuned": task_sha},
        wiseft_extra=wiseft_extra,
    )
    rec.artifacts.append((d / "ckpt/prepare.json", "manifests"))
    rec.artifacts += [
        (p, "manifests/finetuned") for p in sorted((d / "ckpt/finetuned").glob("*.json"))
    ]
    # the report's own files (merging_record logs the folder when metrics.json is there)
    return rec


def overrides_of(**kw: Any) -> dict[str, Any]:
    """Flow parameters → dotted ``clip/params.yaml`` keys (None: keep the file's value)."""
    src = kw.pop("sources", None)
    out: dict[str, Any] = {
        "common.model": kw.get("model"),
        "common.suite": None if kw.get("suite") is None else str(kw["suite"]),
        "common.tasks": kw.get("tasks"),
        "common.data_root": kw.get("data_root"),
        "common.device": kw.get("device"),
        "common.block_policy": kw.get("block_policy"),
        "merge.methods": kw.get("methods"),
        "merge.lambdas": kw.get("lambdas"),
        "merge.betas": kw.get("betas"),
        "merge.ties_lambdas": kw.get("ties_lambdas"),
        "merge.ties_betas": kw.get("ties_betas"),
        "merge.alpha_norm": kw.get("alpha_norm"),
        "edit.gammas": kw.get("edit_gammas"),
        "wiseft.gammas": kw.get("wiseft_gammas"),
    }
    if src is not None:
        s = src if isinstance(src, Mapping) else src.model_dump()
        out["sources.pretrained"] = s.get("pretrained")
        out["sources.text"] = s.get("text")
        if s.get("finetuned") is not None:
            out["sources.finetuned"] = dict(s["finetuned"])
    out.update(kw.get("params") or {})
    return {k: v for k, v in out.items() if v is not None}


def summary(clip_dir: Path) -> dict[str, Any]:
    """The headline numbers (for the flow's return value and log)."""
    m = Path(clip_dir) / "out/report/metrics.json"
    return json.loads(m.read_text()) if m.is_file() else {}
