"""Stage ``report`` of the CLIP benchmark: ``metrics.json`` (DVC metrics), ``report.md`` with
tables and plots, ``merge_table.csv``. Every number is read from the stage outputs; the tables and
plots of the multi-task part are the text pipeline's (``lines.pipeline.report``), so both
pipelines present merging the same way."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lines.pipeline.report import _plots, edit_table_md, headline, merge_table_md, soups_table_md


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _read(path: Path) -> Any:
    from lines.clip.stages import read_json

    return read_json(path)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not Path(path).is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _mean(xs: Any) -> float:
    from lines.clip.stages import mean

    return mean(xs)


def sources_table_md(prep: Mapping[str, Any], tasks: list[str]) -> str:
    rows = [
        "| checkpoint | source | layout | canonical sha256 |",
        "|---|---|---|---|",
    ]
    entries = [("pretrained", prep["pretrained"]), ("text (heads)", prep["text"])]
    entries += list(prep["finetuned"].items())
    for key, e in entries:
        filled = f" (filled: {', '.join(e['filled'])})" if e.get("filled") else ""
        rows.append(f"| {key} | `{e['ref']}` | {e.get('layout')}{filled} | `{e['sha256'][:16]}…` |")
    spec = prep.get("spec", {})
    head = (
        f"Image tower: width {spec.get('width')}, {spec.get('layers')} blocks, patch "
        f"{spec.get('patch_size')}, {spec.get('image_size')} px, embedding {spec.get('output_dim')}."
    )
    return head + "\n\n" + "\n".join(rows)


def base_table_md(base: Mapping[str, Any]) -> str:
    tasks = base["tasks"]
    rows = [
        "| task | zero-shot val | zero-shot test | fine-tuned val | fine-tuned test | source | test images |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in tasks:
        ft = base["finetuned"][t]
        src = base.get("source", {}).get(t, {})
        rows.append(
            f"| {t} | {_pct(base['pretrained']['val'][t])} | {_pct(base['pretrained']['test'][t])} | "
            f"{_pct(ft['val'][t])} | {_pct(ft['test'][t])} | "
            f"{src.get('val', '?')}/{src.get('test', '?')} | {base['examples']['test'][t]} |"
        )
    rows.append(
        f"| **average** | {_pct(_mean(base['pretrained']['val'][t] for t in tasks))} | "
        f"{_pct(_mean(base['pretrained']['test'][t] for t in tasks))} | "
        f"{_pct(_mean(base['finetuned'][t]['val'][t] for t in tasks))} | "
        f"{_pct(_mean(base['finetuned'][t]['test'][t] for t in tasks))} | | |"
    )
    return "\n".join(rows)


def wiseft_table_md(w: Mapping[str, Any]) -> str:
    task = w["tasks"][0]
    rows = [
        f"WiSE-FT of `{w['model']}` on {task} (test), shifted: {', '.join(w['ood_tasks'])}; "
        f"LiNeS γ = {w['lines_gamma']:g}. Target normalised by the fine-tuned model "
        f"({_pct(w['finetuned'][task])}), shifted tasks by the zero-shot model.",
        "",
        "| γ | WiSE-FT target | WiSE-FT shifted | + LiNeS target | + LiNeS shifted |",
        "|---|---|---|---|---|",
    ]
    by = {(r["variant"], r["gamma"]): r for r in w["rows"]}
    for g in w["gammas"]:
        a, b = by[("wiseft", g)], by[("wiseft+lines", g)]
        rows.append(
            f"| {g:g} | {_pct(a['target_norm'])} | {_pct(a['control_norm'])} | "
            f"{_pct(b['target_norm'])} | {_pct(b['control_norm'])} |"
        )
    return "\n".join(rows)


def _placeholder(path: Path, text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_report(
    out: Path,
    *,
    model: str,
    suite: str,
    ckpt: Path,
    heads: Path,
    base_eval: Path,
    merge: Path,
    edit: Path,
    wiseft: Path,
    soups: Path,
) -> dict[str, Any]:
    from lines.clip.stages import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prep = _read(Path(ckpt) / "prepare.json")
    hs = _read(Path(heads) / "heads.json")
    base = _read(base_eval)
    mg = _read(Path(merge) / "merge.json")
    ed = _read(Path(edit) / "edit.json")
    ws = _read(Path(wiseft) / "wiseft.json")
    sp = _read(Path(soups) / "soups.json")
    ws = None if ws.get("skipped") else ws
    sp = None if sp.get("skipped") else sp
    tasks = mg["tasks"]

    metrics: dict[str, Any] = {
        "model": model,
        "suite": str(suite),
        "num_tasks": len(tasks),
        "zeroshot_test_avg_acc": _mean(base["pretrained"]["test"][t] for t in tasks),
        "finetuned_test_avg_acc": _mean(base["finetuned"][t]["test"][t] for t in tasks),
        "merge": {
            r["method"]: {
                "test_avg_acc": r["abs"],
                "test_avg_norm": r["norm"],
                "lambda": r["lambda"],
                "lines_test_avg_acc": r["lines_abs"],
                "lines_test_avg_norm": r["lines_norm"],
                "lines_alpha": r["alpha"],
                "lines_beta": r["beta"],
                "lines_delta_norm": r["delta_norm"],
            }
            for r in headline(mg)
        },
        "edit": ed["average_at_best"],
    }
    if ws:
        metrics["wiseft"] = {
            v: {
                k: _mean(r[k] for r in ws["rows"] if r["variant"] == v)
                for k in ("target_norm", "control_norm")
            }
            for v in ("wiseft", "wiseft+lines")
        }
    if sp:
        metrics["soups"] = {
            k: {
                "target_norm": e["plain"]["test_target_norm"],
                "lines_target_norm": e["lines"]["test_target_norm"],
                "control_norm": e["plain"]["test_control_norm"],
                "lines_control_norm": e["lines"]["test_control_norm"],
            }
            for k, e in sp["soups"].items()
        }
    write_json(out / "metrics.json", metrics)

    note = f"{model or 'CLIP'} image tower, zero-shot heads"
    parts = [
        f"# CLIP benchmark: {model or 'CLIP'}, {len(tasks)} tasks (suite {suite})",
        "",
        "## Checkpoints",
        "",
        sources_table_md(prep, tasks),
        "",
        "## Zero-shot and fine-tuned accuracy (%)",
        "",
        "Normalised accuracy divides by the fine-tuned column (source: measured here, or the "
        "reference file).",
        "",
        base_table_md(base),
        "",
        "## Multi-task merging",
        "",
        merge_table_md(mg, note),
        "",
    ]
    rows = headline(mg)
    helped = [r["method"] for r in rows if r["delta_norm"] > 0.005]
    not_helped = [r["method"] for r in rows if r["delta_norm"] <= 0.005]
    parts.append(
        f"LiNeS improves the normalised test accuracy of: {', '.join(helped) or 'none'}; "
        f"it does not improve: {', '.join(not_helped) or 'none'} (threshold 0.5 points)."
    )
    parts += ["", "## Single-task editing", "", edit_table_md(ed, base), ""]
    if ws:
        parts += ["## WiSE-FT", "", wiseft_table_md(ws), ""]
    if sp:
        parts += ["## Soups", "", soups_table_md(sp), ""]
    made = _plots(
        out,
        mg,
        _read_csv(Path(merge) / "merge_sweep.csv"),
        _read_csv(Path(edit) / "edit_sweep.csv"),
        ws,
    )
    if ws is None:  # a placeholder, so the stage's outputs are always the same files
        _placeholder(out / "wiseft.png", "WiSE-FT not run (wiseft.wiseft_model is empty)")
    parts += ["## Plots", ""] + [f"![{m}]({m})" for m in made]
    parts += [
        "",
        f"Zero-shot heads: text tower `{hs['model_id'][:16]}…`, "
        + ", ".join(f"{t} ({v['num_classes']} classes)" for t, v in hs["tasks"].items()),
        "",
    ]
    (out / "report.md").write_text("\n".join(parts))
    with open(out / "merge_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return metrics
