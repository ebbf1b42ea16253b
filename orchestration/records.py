"""From the DVC outputs of an experiment to what MLflow records (pure functions over files).

Every number comes from the stage outputs (``out/merge/merge.json``, the sweep CSVs,
``out/report/metrics.json``, …), so the MLflow run and the DVC metrics files hold the same values.
The JSON outputs are read through their schemas (``lines.protocol.schemas``: versioned, checked).
Naming, for a merging run::

    params   <method>.lambda / <method>.alpha / <method>.beta     chosen on val (floats, exact)
             <method>.params.<name>                               the method's own parameters
             sha256.pretrained, sha256.finetuned.<task>, sha256.fetch.<model>.<file>
    metrics  <method>.<baseline|lines>.test_acc.<task>            absolute test accuracy
             <method>.<baseline|lines>.test_norm.<task>           normalised by the fine-tuned model
             <method>.<baseline|lines>.test_avg_acc / test_avg_norm
             report.<key>                                         out/report/metrics.json, flattened
    nested   <method>/<baseline λ|lines β>=<coef>: val accuracy per task (abs, norm) and averages
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lines.protocol import schemas
from lines.protocol.schemas import read_output
from orchestration.tracking import Point, RunRecord, flatten

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _num(v: str) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def numeric(d: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers (bools as 0/1) of a flat mapping."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, int | float) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def fetch_hashes(fetch_json: Path) -> dict[str, str]:
    """sha256 of every pretrained-model file in the fetch summary: ``sha256.fetch.<model>.<file>``."""
    if not Path(fetch_json).is_file():
        return {}
    models = read_json(fetch_json).get("models", {})
    return {
        f"sha256.fetch.{k}": v
        for k, v in flatten(models).items()
        if isinstance(v, str) and _HEX64.match(v)
    }


def _common(ws: Path, params: Mapping[str, Any]) -> RunRecord:
    """Params every kind shares: suite, tasks, seeds, the fetched models' hashes; manifests."""
    c = params.get("common", {})
    rec = RunRecord()
    rec.params.update(
        {
            "suite": c.get("suite"),
            "backbone": c.get("backbone"),
            "tasks": c.get("tasks"),
            "seed": c.get("seed"),
            "seeds": [c.get("seed"), *params.get("soups", {}).get("seeds", [])],
            **fetch_hashes(ws / "data/fetch/fetch.json"),
        }
    )
    for f in ("data/fetch/fetch.json", "out/heads/heads.json", "out/eval/base.json"):
        rec.artifacts.append((ws / f, "manifests"))
    return rec


def _ft_ref(ws: Path, split: str) -> dict[str, float]:
    """Each fine-tuned model's accuracy on its own task (the normaliser), from base_eval."""
    base = read_output(ws / "out/eval/base.json", schemas.BaseEval)
    return {t: r[split][t] for t, r in base["finetuned"].items()}


def merging_record(ws: Path, params: Mapping[str, Any]) -> RunRecord:
    ws = Path(ws)
    merge = read_output(ws / "out/merge/merge.json", schemas.MergeResult)
    rec = _common(ws, params)
    tasks = merge["tasks"]
    rec.params.update(
        {
            "block_policy": merge["block_policy"],
            "num_blocks": merge["num_blocks"],
            "alpha_rule": f"auto: (1/N)·‖τ_sum‖/‖τ_MTL‖, norm {params['merge'].get('alpha_norm', 'l1')}",
            "methods": list(merge["methods"]),
        }
    )
    first = True
    for m, r in merge["methods"].items():
        rec.params[f"{m}.lambda"] = r["baseline"]["lambda"]
        rec.params[f"{m}.alpha"] = r["lines"]["alpha"]
        rec.params[f"{m}.beta"] = r["lines"]["beta"]
        rec.params.update({f"{m}.params.{k}": v for k, v in r["params"].items()})
        if first:  # the same checkpoints feed every method
            rec.params["sha256.pretrained"] = r["pretrained_sha256"]
            rec.params.update(
                {f"sha256.finetuned.{t}": h for t, h in zip(tasks, r["input_sha256"], strict=True)}
            )
            first = False
        for variant in ("baseline", "lines"):
            v = r[variant]
            for t in tasks:
                rec.metrics[f"{m}.{variant}.test_acc.{t}"] = v["test_acc"][t]
                rec.metrics[f"{m}.{variant}.test_norm.{t}"] = v["test_norm"][t]
            rec.metrics[f"{m}.{variant}.test_avg_acc"] = v["test_avg_acc"]
            rec.metrics[f"{m}.{variant}.test_avg_norm"] = v["test_avg_norm"]
        rec.metrics[f"{m}.lines.alpha"] = r["lines"]["alpha"]
        rec.metrics[f"{m}.lines.beta"] = r["lines"]["beta"]
        rec.metrics[f"{m}.baseline.lambda"] = r["baseline"]["lambda"]
    report = ws / "out/report/metrics.json"
    if report.is_file():
        rec.metrics.update(
            {
                f"report.{k}": v
                for k, v in numeric(flatten(read_output(report, schemas.ReportMetrics))).items()
            }
        )
        rec.artifacts.append((ws / "out/report", "report"))
    ft_val = _ft_ref(ws, "val")
    for row in read_csv(ws / "out/merge/merge_sweep.csv"):
        m, variant, coef = row["method"], row["variant"], row["coef"]
        coef_name = "lambda" if variant == "baseline" else "beta"
        p: dict[str, Any] = {
            "method": m,
            "variant": variant,
            coef_name: coef,
            "block_policy": merge["block_policy"],
            **{f"params.{k}": v for k, v in merge["methods"][m]["params"].items()},
        }
        if variant == "lines":
            p["alpha"] = merge["methods"][m]["lines"]["alpha"]
        mets = {k: v for k, v in numeric(row).items() if k != "coef"}
        for t in tasks:
            if f"val_acc_{t}" in row and ft_val.get(t):
                mets[f"val_norm_{t}"] = row[f"val_acc_{t}"] / ft_val[t]
        sym = "λ" if variant == "baseline" else "β"
        rec.points.append(Point(f"{m}/{variant} {sym}={coef:g}", p, mets))
    rec.artifacts += [
        (ws / "out/merge/merge.json", "merge"),
        (ws / "out/merge/merge_sweep.csv", "merge"),
    ]
    return rec


def editing_record(ws: Path, params: Mapping[str, Any]) -> RunRecord:
    ws = Path(ws)
    edit = read_output(ws / "out/edit/edit.json", schemas.EditResult)
    rec = _common(ws, params)
    rec.params["block_policy"] = params["edit"].get("block_policy")
    rec.params["gammas"] = edit["gammas"]
    for t, r in edit["tasks"].items():
        rec.params[f"{t}.best_gamma"] = r["best_gamma"]
        rec.metrics.update(
            {f"{t}.best.{k}": v for k, v in numeric(r["best"]).items() if k != "gamma"}
        )
        if r.get("finetuned"):
            rec.metrics.update(
                {
                    f"{t}.finetuned.{k}": v
                    for k, v in numeric(r["finetuned"]).items()
                    if k != "gamma"
                }
            )
    rec.metrics.update(
        {f"average_at_best.{k}": v for k, v in numeric(edit["average_at_best"]).items()}
    )
    for row in read_csv(ws / "out/edit/edit_sweep.csv"):
        rec.points.append(
            Point(
                f"{row['task']} γ={row['gamma']:g}",
                {
                    "task": row["task"],
                    "gamma": row["gamma"],
                    "block_policy": rec.params["block_policy"],
                },
                {k: v for k, v in numeric(row).items() if k != "gamma"},
            )
        )
    rec.artifacts += [(ws / "out/edit", "edit")]
    return rec


def soups_record(ws: Path, params: Mapping[str, Any]) -> RunRecord:
    ws = Path(ws)
    soups = read_output(ws / "out/soups/soups.json", schemas.SoupsResult)
    rec = _common(ws, params)
    rec.params.update(
        {
            "soup_task": soups["task"],
            "num_models": soups["num_models"],
            "gammas": params["soups"].get("gammas"),
            "block_policy": params["soups"].get("block_policy", "reference"),
        }
    )
    for kind, e in soups["soups"].items():
        rec.params[f"{kind}.members"] = len(e["members"])
        rec.params[f"{kind}.lines_gamma"] = e["lines"]["gamma"]
        rec.metrics.update({f"{kind}.plain.{k}": v for k, v in numeric(e["plain"]).items()})
        rec.metrics.update(
            {f"{kind}.lines.{k}": v for k, v in numeric(e["lines"]).items() if k != "gamma"}
        )
        rec.points.append(
            Point(f"{kind} soup", {"soup": kind, "variant": "plain"}, numeric(e["plain"]))
        )
        rec.points.append(
            Point(
                f"{kind} soup + LiNeS γ={e['lines']['gamma']:g}",
                {"soup": kind, "variant": "lines", "gamma": e["lines"]["gamma"]},
                {k: v for k, v in numeric(e["lines"]).items() if k != "gamma"},
            )
        )
    for i, ind in enumerate(soups.get("individual", [])):
        rec.points.append(
            Point(
                f"seed model {i}",
                {"model": ind.get("model"), "variant": "individual"},
                numeric(ind),
            )
        )
    rec.artifacts += [(ws / "out/soups", "soups")]
    return rec


def wiseft_record(ws: Path, params: Mapping[str, Any]) -> RunRecord:
    ws = Path(ws)
    w = read_output(ws / "out/wiseft/wiseft.json", schemas.WiseftResult)
    rec = _common(ws, params)
    rec.params.update(
        {"wiseft_tasks": w["tasks"], "gammas": w["gammas"], "lines_gamma": w["lines_gamma"]}
    )
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in w["rows"]:
        by.setdefault((r["task"], r["variant"]), []).append(r)
        rec.points.append(
            Point(
                f"{r['task']} {r['variant']} γ={r['gamma']:g}",
                {"task": r["task"], "variant": r["variant"], "gamma": r["gamma"]},
                {k: v for k, v in numeric(r).items() if k != "gamma"},
            )
        )
    for (t, variant), rows in by.items():  # averages over the γ path, one number per curve
        for k in ("target_norm", "control_norm", "target_acc", "control_acc"):
            rec.metrics[f"{t}.{variant}.mean_over_gamma.{k}"] = sum(r[k] for r in rows) / len(rows)
    rec.artifacts += [(ws / "out/wiseft", "wiseft")]
    return rec


def schedules_record(ws: Path, params: Mapping[str, Any]) -> RunRecord:
    """The schedule comparison: each family's choice on val (params) and its test accuracy and Δ
    against linear with the interval (metrics), per merge and per edited task."""
    ws = Path(ws)
    res = read_output(ws / "out/schedules/schedules.json", schemas.SchedulesResult)
    rec = _common(ws, params)
    cfg = params.get("schedules", {})
    rec.params.update(
        {
            "schedules.specs": cfg.get("specs"),
            "schedules.budget": res["budget"],
            "schedules.beta_max": cfg.get("beta_max"),
            "schedules.alpha_mults": res.get("alpha_mults", [1.0]),
            "schedules.num_blocks": res["num_blocks"],
        }
    )
    for kind, by in (("merging", res["merging"]), ("editing", res["editing"])):
        for what, rows in by.items():
            for fam, r in rows.items():
                key = f"{kind}.{what}.{fam}"
                rec.params[f"{key}.schedule"] = r["schedule"]
                for coef in ("alpha", "beta", "gamma"):
                    if coef in r:
                        rec.params[f"{key}.{coef}"] = r[coef]
                for m in ("test_avg_norm", "target_norm", "control_norm", "evaluations"):
                    if isinstance(r.get(m), int | float):
                        rec.metrics[f"{key}.{m}"] = float(r[m])
                for d in ("delta_vs_linear", "delta_target_vs_linear", "delta_control_vs_linear"):
                    for part, v in (r.get(d) or {}).items():
                        if part in ("value", "lo", "hi"):
                            rec.metrics[f"{key}.{d}.{part}"] = float(v)
    rec.artifacts += [(ws / "out/schedules", "schedules")]
    return rec


def rewarded_soups_record(
    ws: Path, params: Mapping[str, Any], grid: list[dict[str, Any]], out_dir: Path
) -> RunRecord:
    """``grid``: one dict per weight point with ``weights`` and the evaluation JSON's path."""
    ws = Path(ws)
    rec = _common(ws, params)
    ft_test = _ft_ref(ws, "test")
    rows = []
    for g in grid:
        acc = read_json(ws / g["eval"])["test"]
        w = g["weights"]
        row: dict[str, Any] = {"w0": w[0], "w1": w[1]}
        for t, a in acc.items():
            row[f"test_acc_{t}"] = a
            row[f"test_norm_{t}"] = a / ft_test[t] if ft_test.get(t) else float("nan")
        rows.append(row)
        rec.points.append(
            Point(
                f"weights=({w[0]:g}, {w[1]:g})",
                {"w0": w[0], "w1": w[1], "lines_beta": g.get("lines_beta")},
                {k: v for k, v in numeric(row).items() if k not in ("w0", "w1")},
            )
        )
    # The front: points no other point beats on both rewards (normalised accuracies).
    tasks = [k[len("test_norm_") :] for k in rows[0] if k.startswith("test_norm_")] if rows else []
    front = [
        r
        for r in rows
        if not any(
            all(o[f"test_norm_{t}"] >= r[f"test_norm_{t}"] for t in tasks)
            and any(o[f"test_norm_{t}"] > r[f"test_norm_{t}"] for t in tasks)
            for o in rows
        )
    ]
    rec.metrics["pareto_points"] = float(len(front))
    for t in tasks:
        rec.metrics[f"max_test_norm.{t}"] = max(r[f"test_norm_{t}"] for r in rows)
    out_dir = ws / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "rewarded_soups.csv"
    with open(table, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]) + ["on_front"])
        wr.writeheader()
        for r in rows:
            wr.writerow({**r, "on_front": r in front})
    rec.artifacts.append((table, "rewarded_soups"))
    if len(tasks) == 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 4.5))
        xs = [r[f"test_norm_{tasks[0]}"] for r in rows]
        ys = [r[f"test_norm_{tasks[1]}"] for r in rows]
        ax.plot(xs, ys, "o-")
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(f"{r['w0']:g}", (x, y), fontsize=7)
        ax.set_xlabel(f"{tasks[0]} test accuracy (normalised)")
        ax.set_ylabel(f"{tasks[1]} test accuracy (normalised)")
        ax.set_title("Rewarded soup: weight on the first model")
        fig.tight_layout()
        fig.savefig(out_dir / "rewarded_soups.png", dpi=120)
        plt.close(fig)
        rec.artifacts.append((out_dir / "rewarded_soups.png", "rewarded_soups"))
    return rec


_COMMON = {"suite", "backbone", "tasks", "seed", "seeds"}


def add_prefixed(sub: RunRecord, prefix: str, into: RunRecord, extra: Mapping[str, Any]) -> None:
    """Merge ``sub`` into ``into`` under ``prefix/`` (params, metrics, nested points), leaving
    out the params every part shares; ``extra`` adds params to each point (None: skipped)."""
    for k, v in sub.params.items():
        if k in _COMMON or k.startswith("sha256.fetch."):
            continue  # the same for every part: logged once by the merging part
        into.params[f"{prefix}/{k}"] = v
    into.metrics.update({f"{prefix}/{k}": v for k, v in sub.metrics.items()})
    for p in sub.points:
        params = {"stage": prefix, **p.params}
        for key, fn in extra.items():
            v = fn(p)
            if v is not None:
                params[key] = v
        into.points.append(Point(f"{prefix}/{p.name}", params, p.metrics))
    into.artifacts += [a for a in sub.artifacts if a not in into.artifacts]


def add_suite_stages(
    rec: RunRecord,
    d: Path,
    params: Mapping[str, Any],
    block_policy: str,
    *,
    edit_extra: Mapping[str, Any] | None = None,
    wiseft_extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> None:
    """Add to ``rec`` the editing, WiSE-FT, soups and schedules parts of a suite whose pipeline
    keeps one block policy in ``common`` (``clip/``, ``llm/``), each under its prefix and only
    when its output exists and was not skipped. ``edit_extra``: per-point params of the editing
    part (``add_prefixed``); ``wiseft_extra(wiseft_result)``: those of the WiSE-FT part."""
    # the editing and soups records read the block policy from their own section
    with_policy = json.loads(json.dumps(dict(params)))
    for section in ("edit", "soups"):
        with_policy.setdefault(section, {})["block_policy"] = block_policy
    if (d / "out/edit/edit.json").is_file():
        add_prefixed(editing_record(d, with_policy), "edit", rec, edit_extra or {})
    w = d / "out/wiseft/wiseft.json"
    wiseft = read_output(w, schemas.WiseftResult) if w.is_file() else {"skipped": "not run"}
    if not wiseft.get("skipped"):
        extra = wiseft_extra(wiseft) if wiseft_extra is not None else {}
        add_prefixed(wiseft_record(d, with_policy), "wiseft", rec, extra)
    s = d / "out/soups/soups.json"
    if s.is_file() and not read_output(s, schemas.SoupsResult).get("skipped"):
        add_prefixed(soups_record(d, with_policy), "soups", rec, {})
    if (d / "out/schedules/schedules.json").is_file():
        add_prefixed(schedules_record(d, params), "schedules", rec, {})
