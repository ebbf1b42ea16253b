"""Stage ``report`` of the embedded text and vision suites: ``metrics.json`` (DVC metrics),
``report.md`` with tables and plots, ``merge_table.csv``. The tables, plots and metrics sections
are the protocol's (``lines.protocol.report``); this module adds the suite's sanity check
(fine-tuning against the linear probe) and its heads line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lines.protocol import schemas
from lines.protocol.learned_report import learned_md, learned_metrics
from lines.protocol.plots_ci import accuracy_vs_beta, delta_ci, fig1_pair, fig2
from lines.protocol.regime import regime_check, regime_md
from lines.protocol.report import (
    edit_ci_md,
    edit_intervals,
    edit_table_md,
    fig1_summary,
    merge_ci_md,
    merge_intervals,
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
from lines.protocol.schedules_report import schedules_md, schedules_metrics
from lines.protocol.schemas import read_output, write_output
from lines.protocol.scores import mean

# How the report describes a suite's backbone; a suite without an entry gets the plain name.
SUITE_NOTES = {
    "text": "backbone {backbone}",
    "vision": "backbone {backbone}: a CNN on MNIST-family tasks, a proxy for the CLIP experiments, not CLIP",
    "llm": "decoder LLM {backbone}, rank classification over label verbalisers",
}


def run_report(
    base_eval: Path,
    heads: Path | None,
    edit_dir: Path | None,
    merge_dir: Path,
    soups_dir: Path | None,
    wiseft_dir: Path | None,
    out_dir: Path,
    *,
    suite: str,
    backbone: str,
    fig1_dir: Path | None = None,
    schedules_dir: Path | None = None,
    learned_dir: Path | None = None,
    n_boot: int = 1000,
    boot_seed: int = 0,
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = read_output(base_eval, schemas.BaseEval)
    # No heads file (the LLM suite): zero-shot is the model itself (rank classification).
    hs = read_json(heads) if heads else {"kind": "zeroshot", "tasks": {}}
    # No edit stage (a merging-only run, e.g. a GPU sweep): the editing section says so.
    edit = read_output(Path(edit_dir) / "edit.json", schemas.EditResult) if edit_dir else None
    merge = read_output(Path(merge_dir) / "merge.json", schemas.MergeResult)
    soups = read_output(Path(soups_dir) / "soups.json", schemas.SoupsResult) if soups_dir else None
    wiseft = (
        read_output(Path(wiseft_dir) / "wiseft.json", schemas.WiseftResult) if wiseft_dir else None
    )
    tasks = merge["tasks"]
    note = SUITE_NOTES.get(suite, "backbone {backbone}").format(backbone=backbone)
    fig1_path = Path(fig1_dir) / "fig1.json" if fig1_dir else None
    fig1 = read_output(fig1_path, schemas.Fig1Result) if fig1_path and fig1_path.is_file() else None
    sch_path = Path(schedules_dir) / "schedules.json" if schedules_dir else None
    sch = (
        read_output(sch_path, schemas.SchedulesResult) if sch_path and sch_path.is_file() else None
    )
    lrn_path = Path(learned_dir) / "learned.json" if learned_dir else None
    lrn = read_output(lrn_path, schemas.LearnedResult) if lrn_path and lrn_path.is_file() else None
    lrn = None if lrn is None or lrn.get("skipped") else lrn
    head_kind = hs.get("kind", "probe")
    if heads is None and suite == "llm":  # no heads: zero-shot is the instruct model itself
        model = f"{backbone} (zero-shot: the instruct model, rank classification)"
    else:
        kind = "zero-shot heads" if head_kind == "zeroshot" else "linear-probe heads"
        model = f"{backbone} ({kind})"
    regime = regime_check(base, tasks, merge, n_boot=n_boot, seed=boot_seed)
    merge_cis = merge_intervals(merge, base, n_boot, boot_seed)
    edit_cis = edit_intervals(edit, base, n_boot, boot_seed) if edit else {}

    sanity = {
        t: {
            "probe_test_acc": base["pretrained"]["test"][t],  # zero-shot with zero-shot heads
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
        "edit": edit["average_at_best"] if edit else {},
        "heads_kind": head_kind,
        "regime": {
            k: regime[k]
            for k in (
                "retention",
                "task_arithmetic_norm",
                "forgetting",
                "interference",
                "in_forgetting_regime",
                "finetuning_learnt_every_task",
            )
        },
        "merge_intervals": {
            m: {
                "delta_norm": c["delta_norm"].as_dict(),
                "lines_norm": c["lines_norm"].as_dict(),
                "baseline_norm": c["baseline_norm"].as_dict(),
                "verdict": c["verdict"],
            }
            for m, c in merge_cis.items()
        },
        "edit_intervals": {
            t: {
                "gamma": c["gamma"],
                "delta_target": c["delta_target"].as_dict(),
                "delta_control_norm": c["delta_control_norm"].as_dict()
                if c["delta_control_norm"]
                else None,
                "control_verdict": c["control_verdict"],
                "target_verdict": c["target_verdict"],
            }
            for t, c in edit_cis.items()
        },
    }
    # Empty sections are left out (DVC's metrics drop empty objects); a missing interval bound
    # (no per-example outputs) is left out, not NaN or null.
    for key in ("merge_intervals", "edit_intervals"):
        if not metrics[key]:
            del metrics[key]
    for key in ("regime", "merge_intervals", "edit_intervals"):
        if key in metrics:
            metrics[key] = _finite_or_none(metrics[key])
    if soups:
        metrics["soups"] = soups_metrics(soups)
    sch_metrics = schedules_metrics(sch) if sch else {}
    if sch_metrics:  # DVC metrics drop an empty group: so do we
        metrics["schedules"] = sch_metrics
    if lrn:
        metrics["learned"] = learned_metrics(lrn)
    metrics = write_output(out_dir / "metrics.json", schemas.ReportMetrics, metrics)

    parts = [f"# Results: {suite} suite ({note})", ""]
    parts += ["## Regime check", "", regime_md(regime, suite=suite, model=model), ""]
    if head_kind != "zeroshot":
        parts += [
            "Heads are linear probes fitted on pretrained features (the vision CNN proxy has no "
            "text tower): the 'zero-shot' column is the probe's accuracy, not a zero-shot one.",
            "",
        ]
    parts += [
        "## Sanity: fine-tuning against the pretrained model with its heads (test accuracy %)",
        "",
        "| task | pretrained + head | fine-tuned | fine-tuning beats it |",
        "|---|---|---|---|",
    ]
    for t, v in sanity.items():
        parts.append(
            f"| {t} | {pct(v['probe_test_acc'])} | {pct(v['finetuned_test_acc'])} | {'yes' if v['finetune_beats_probe'] else '**no**'} |"
        )
    if not metrics["finetune_beats_probe_all"]:
        parts += [
            "",
            "**Fine-tuning does not beat the pretrained model with its heads on every task: do not trust the merge results below for those tasks.**",
        ]
    parts += ["", "## Multi-task merging", "", merge_ci_md(merge_cis), ""]
    parts += [merge_table_md(merge, note, {m: c["verdict"] for m, c in merge_cis.items()}), ""]
    if not merge_cis:
        parts.append(verdict_line(merge))
    parts += ["", "## Single-task editing", ""]
    if edit is None:
        parts += ["(Not run: this run had no edit stage.)", ""]
    elif not regime["in_forgetting_regime"]:
        parts += ["(Not in the forgetting regime: see the regime check; no conclusion drawn.)", ""]
    if edit is not None:
        parts += [edit_ci_md(edit_cis), "", edit_table_md(edit, base), ""]
    f1 = fig1_summary(fig1, n_boot, boot_seed) if fig1 else []
    if fig1:
        parts += [
            "## Figure 1: shallow vs deep layers downscaled (test)",
            "",
            f"Mean over {', '.join(fig1['fig_tasks'])}; target / fine-tuned, control / zero-shot "
            "(%; interval: mean of per-task 95% bootstrap bounds).",
            "",
            "| schedule | γ | target | control |",
            "|---|---|---|---|",
        ]
        for r in f1:

            def cell(k: str, r: dict = r) -> str:
                if f"{k}_lo" in r:
                    return f"{pct(r[f'{k}_norm'])} [{pct(r[f'{k}_lo'])}, {pct(r[f'{k}_hi'])}]"
                return pct(r[f"{k}_norm"])

            parts.append(
                f"| {r['schedule']} | {r['gamma']:g} | {cell('target')} | {cell('control')} |"
            )
        parts.append("")
    if sch:
        parts += ["## Is linear layer scaling optimal? (schedules at an equal budget)", ""]
        parts += [schedules_md(sch), ""]
    if lrn:
        parts += ["## Learned baselines and output ensembles, with their cost", ""]
        parts += [learned_md(lrn), ""]
    if soups:
        parts += ["## Soups", "", soups_table_md(soups), ""]
    made = plots(
        out_dir,
        merge,
        read_csv(Path(merge_dir) / "merge_sweep.csv"),
        read_csv(Path(edit_dir) / "edit_sweep.csv") if edit_dir else [],
        wiseft,
    )
    ft_val = {t: base["finetuned"][t]["val"][t] for t in tasks}
    if edit is not None:
        made.append(fig2(out_dir, base, edit, suite=suite, model=model, tasks=tasks))
    d = delta_ci(out_dir, merge_cis, edit_cis, suite=suite, model=model, tasks=tasks)
    if d:
        made.append(d)
    made.append(
        accuracy_vs_beta(
            out_dir,
            merge,
            read_csv(Path(merge_dir) / "merge_sweep.csv"),
            ft_val,
            suite=suite,
            model=model,
        )
    )
    if fig1:
        made.append(fig1_pair(out_dir, f1, fig1, suite=suite, model=model))
    parts += ["## Plots", ""] + [f"![{m}]({m})" for m in made]
    acc_key = "zeroshot_val_acc" if head_kind == "zeroshot" else "probe_val_acc"
    if hs["tasks"]:
        parts += [
            "",
            f"Heads ({'zero-shot, class-name prompts' if head_kind == 'zeroshot' else 'linear probes'}): "
            + ", ".join(f"{t}: val {pct(v.get(acc_key))}" for t, v in hs["tasks"].items()),
        ]
    (out_dir / "report.md").write_text("\n".join(parts) + "\n")
    write_merge_table(out_dir / "merge_table.csv", merge)
    return metrics


def _finite_or_none(x: Any) -> Any:
    """``x`` without its non-finite floats and None values (left out, not written as NaN/null:
    DVC drops nulls and trackers reject NaN)."""
    if isinstance(x, dict):
        return {
            k: _finite_or_none(v)
            for k, v in x.items()
            if v is not None and not (isinstance(v, float) and not math.isfinite(v))
        }
    return x
