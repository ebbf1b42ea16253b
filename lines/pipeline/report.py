"""Stage ``report`` of the embedded text and vision suites: ``metrics.json`` (DVC metrics),
``report.md`` with tables and plots, ``merge_table.csv``. The tables, plots and metrics sections
are the protocol's (``lines.protocol.report``); this module adds the suite's sanity check
(fine-tuning against the linear probe) and its heads line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lines.protocol import schemas
from lines.protocol.report import (
    edit_table_md,
    merge_metrics,
    merge_table_md,
    pct,
    plots,
    soups_metrics,
    soups_table_md,
    verdict_line,
    write_merge_table,
)
from lines.protocol.results import read_csv, read_json
from lines.protocol.schemas import read_output, write_output
from lines.protocol.scores import mean

# How the report describes a suite's backbone; a suite without an entry gets the plain name.
SUITE_NOTES = {
    "text": "backbone {backbone}",
    "vision": "backbone {backbone}: a CNN on MNIST-family tasks, a proxy for the CLIP experiments, not CLIP",
}


def run_report(
    base_eval: Path,
    heads: Path,
    edit_dir: Path,
    merge_dir: Path,
    soups_dir: Path | None,
    wiseft_dir: Path | None,
    out_dir: Path,
    *,
    suite: str,
    backbone: str,
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = read_output(base_eval, schemas.BaseEval)
    hs = read_json(heads)
    edit = read_output(Path(edit_dir) / "edit.json", schemas.EditResult)
    merge = read_output(Path(merge_dir) / "merge.json", schemas.MergeResult)
    soups = read_output(Path(soups_dir) / "soups.json", schemas.SoupsResult) if soups_dir else None
    wiseft = (
        read_output(Path(wiseft_dir) / "wiseft.json", schemas.WiseftResult) if wiseft_dir else None
    )
    tasks = merge["tasks"]
    note = SUITE_NOTES.get(suite, "backbone {backbone}").format(backbone=backbone)

    sanity = {
        t: {
            "probe_test_acc": base["pretrained"]["test"][t],
            "finetuned_test_acc": base["finetuned"][t]["test"][t],
            "finetune_beats_probe": base["finetuned"][t]["test"][t] > base["pretrained"]["test"][t],
        }
        for t in tasks
    }
    metrics: dict[str, Any] = {
        "suite": suite,
        "backbone": backbone,
        "pretrained_test_avg_acc": mean(base["pretrained"]["test"][t] for t in tasks),
        "finetuned_test_avg_acc": mean(base["finetuned"][t]["test"][t] for t in tasks),
        "finetune_beats_probe_all": all(v["finetune_beats_probe"] for v in sanity.values()),
        "merge": merge_metrics(merge),
        "edit": edit["average_at_best"],
    }
    if soups:
        metrics["soups"] = soups_metrics(soups)
    metrics = write_output(out_dir / "metrics.json", schemas.ReportMetrics, metrics)

    parts = [f"# Results: {suite} suite ({note})", ""]
    parts += [
        "## Sanity: fine-tuning against the linear probe (test accuracy %)",
        "",
        "| task | probe (pretrained + head) | fine-tuned | fine-tuning beats probe |",
        "|---|---|---|---|",
    ]
    for t, v in sanity.items():
        parts.append(
            f"| {t} | {pct(v['probe_test_acc'])} | {pct(v['finetuned_test_acc'])} | {'yes' if v['finetune_beats_probe'] else '**no**'} |"
        )
    if not metrics["finetune_beats_probe_all"]:
        parts += [
            "",
            "**Fine-tuning does not beat the probe on every task: do not trust the merge results below for those tasks.**",
        ]
    parts += ["", "## Multi-task merging", "", merge_table_md(merge, note), ""]
    parts.append(verdict_line(merge))
    parts += ["", "## Single-task editing", "", edit_table_md(edit, base), ""]
    if soups:
        parts += ["## Soups", "", soups_table_md(soups), ""]
    made = plots(
        out_dir,
        merge,
        read_csv(Path(merge_dir) / "merge_sweep.csv"),
        read_csv(Path(edit_dir) / "edit_sweep.csv"),
        wiseft,
    )
    parts += ["## Plots", ""] + [f"![{m}]({m})" for m in made]
    parts += [
        "",
        "Heads (linear probes): "
        + ", ".join(f"{t}: val {pct(v['probe_val_acc'])}" for t, v in hs["tasks"].items()),
    ]
    (out_dir / "report.md").write_text("\n".join(parts) + "\n")
    write_merge_table(out_dir / "merge_table.csv", merge)
    return metrics
