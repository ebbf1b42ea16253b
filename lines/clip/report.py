"""Stage ``report`` of the CLIP benchmark: ``metrics.json`` (DVC metrics), ``report.md`` with
tables and plots, ``merge_table.csv``. Every number is read from the stage outputs; the tables, plots
and metrics sections are the protocol's (``lines.protocol.report``), shared by every suite."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lines.protocol import report as shared
from lines.protocol import schemas
from lines.protocol.learned_report import learned_md, learned_metrics
from lines.protocol.report import pct
from lines.protocol.results import read_csv, read_json
from lines.protocol.schedules_report import schedules_md, schedules_metrics
from lines.protocol.schemas import read_output, write_output
from lines.protocol.scores import mean


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
            f"| {t} | {pct(base['pretrained']['val'][t])} | {pct(base['pretrained']['test'][t])} | "
            f"{pct(ft['val'][t])} | {pct(ft['test'][t])} | "
            f"{src.get('val', '?')}/{src.get('test', '?')} | {base['examples']['test'][t]} |"
        )
    rows.append(
        f"| **average** | {pct(mean(base['pretrained']['val'][t] for t in tasks))} | "
        f"{pct(mean(base['pretrained']['test'][t] for t in tasks))} | "
        f"{pct(mean(base['finetuned'][t]['val'][t] for t in tasks))} | "
        f"{pct(mean(base['finetuned'][t]['test'][t] for t in tasks))} | | |"
    )
    return "\n".join(rows)


def wiseft_table_md(w: Mapping[str, Any]) -> str:
    task = w["tasks"][0]
    rows = [
        f"WiSE-FT of `{w['model']}` on {task} (test), shifted: {', '.join(w['ood_tasks'])}; "
        f"LiNeS γ = {w['lines_gamma']:g}. Target normalised by the fine-tuned model "
        f"({pct(w['finetuned'][task])}), shifted tasks by the zero-shot model.",
        "",
        "| γ | WiSE-FT target | WiSE-FT shifted | + LiNeS target | + LiNeS shifted |",
        "|---|---|---|---|---|",
    ]
    by = {(r["variant"], r["gamma"]): r for r in w["rows"]}
    for g in w["gammas"]:
        a, b = by[("wiseft", g)], by[("wiseft+lines", g)]
        rows.append(
            f"| {g:g} | {pct(a['target_norm'])} | {pct(a['control_norm'])} | "
            f"{pct(b['target_norm'])} | {pct(b['control_norm'])} |"
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
    schedules: Path | None = None,
    learned: Path | None = None,
) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prep = read_json(Path(ckpt) / "prepare.json")
    hs = read_json(Path(heads) / "heads.json")
    base = read_output(base_eval, schemas.BaseEval)
    mg = read_output(Path(merge) / "merge.json", schemas.MergeResult)
    ed = read_output(Path(edit) / "edit.json", schemas.EditResult)
    ws = read_output(Path(wiseft) / "wiseft.json", schemas.WiseftResult)
    sp = read_output(Path(soups) / "soups.json", schemas.SoupsResult)
    ws = None if ws.get("skipped") else ws
    sp = None if sp.get("skipped") else sp
    tasks = mg["tasks"]
    sch_path = Path(schedules) / "schedules.json" if schedules else None
    sch = (
        read_output(sch_path, schemas.SchedulesResult) if sch_path and sch_path.is_file() else None
    )

    lrn_path = Path(learned) / "learned.json" if learned else None
    lrn = read_output(lrn_path, schemas.LearnedResult) if lrn_path and lrn_path.is_file() else None
    lrn = None if lrn is None or lrn.get("skipped") else lrn

    metrics: dict[str, Any] = {
        "model": model,
        "suite": str(suite),
        "num_tasks": len(tasks),
        "zeroshot_test_avg_acc": mean(base["pretrained"]["test"][t] for t in tasks),
        "finetuned_test_avg_acc": mean(base["finetuned"][t]["test"][t] for t in tasks),
        "merge": shared.merge_metrics(mg),
        "edit": ed["average_at_best"],
    }
    if ws:
        metrics["wiseft"] = shared.wiseft_metrics(ws)
    if sp:
        metrics["soups"] = shared.soups_metrics(sp)
    sch_metrics = schedules_metrics(sch) if sch else {}
    if sch_metrics:  # DVC metrics drop an empty group: so do we
        metrics["schedules"] = sch_metrics
    if lrn:
        metrics["learned"] = learned_metrics(lrn)
    metrics = write_output(out / "metrics.json", schemas.ReportMetrics, metrics)

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
        shared.merge_table_md(mg, note),
        "",
    ]
    parts.append(shared.verdict_line(mg))
    parts += ["", "## Single-task editing", "", shared.edit_table_md(ed, base), ""]
    if ws:
        parts += ["## WiSE-FT", "", wiseft_table_md(ws), ""]
    if sp:
        parts += ["## Soups", "", shared.soups_table_md(sp), ""]
    if sch:
        parts += ["## Is linear layer scaling optimal? (schedules at an equal budget)", ""]
        parts += [schedules_md(sch), ""]
    if lrn:
        parts += ["## Learned baselines and output ensembles, with their cost", ""]
        parts += [learned_md(lrn), ""]
    made = shared.plots(
        out,
        mg,
        read_csv(Path(merge) / "merge_sweep.csv"),
        read_csv(Path(edit) / "edit_sweep.csv"),
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
    shared.write_merge_table(out / "merge_table.csv", mg)
    return metrics
