"""Stage ``report``: metrics JSON (DVC metrics), Markdown/CSV tables and the plots a researcher
expects — target vs control (the paper's Fig. 2), accuracy against β and γ, per-task bars per
method. Every number comes from the stage outputs; the text states plainly where LiNeS does not
help."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lines.pipeline.common import mean, read_json, write_json


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def headline(merge: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method: test average absolute and normalised accuracy, without and with LiNeS."""
    rows = []
    for name, r in merge["methods"].items():
        b, li = r["baseline"], r["lines"]
        rows.append(
            {
                "method": name,
                "lambda": b["lambda"],
                "abs": b["test_avg_acc"],
                "norm": b["test_avg_norm"],
                "alpha": li["alpha"],
                "beta": li["beta"],
                "lines_abs": li["test_avg_acc"],
                "lines_norm": li["test_avg_norm"],
                "delta_norm": li["test_avg_norm"] - b["test_avg_norm"],
            }
        )
    return rows


def _verdict(delta: float, tol: float = 0.005) -> str:
    if delta > tol:
        return "LiNeS helps"
    if delta < -tol:
        return "LiNeS hurts"
    return "no clear difference"


def merge_table_md(merge: Mapping[str, Any], suite_note: str) -> str:
    tasks = merge["tasks"]
    lines = [
        f"Multi-task merging, {len(tasks)} tasks ({', '.join(tasks)}); {suite_note}. "
        "Test accuracy (%), absolute / normalised by each fine-tuned model; λ or β chosen on val.",
        "",
        "| method | λ | abs | norm | LiNeS α | LiNeS β | abs | norm | Δ norm | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in headline(merge):
        lines.append(
            f"| {r['method']} | {r['lambda']:g} | {_pct(r['abs'])} | {_pct(r['norm'])} | {r['alpha']:.3g} | "
            f"{r['beta']:g} | {_pct(r['lines_abs'])} | {_pct(r['lines_norm'])} | {100 * r['delta_norm']:+.1f} | "
            f"{_verdict(r['delta_norm'])} |"
        )
    lines += ["", "Per task (test accuracy %, baseline → LiNeS):", ""]
    lines.append("| method | " + " | ".join(tasks) + " |")
    lines.append("|---|" + "---|" * len(tasks))
    for name, r in merge["methods"].items():
        cells = [
            f"{_pct(r['baseline']['test_acc'][t])} → {_pct(r['lines']['test_acc'][t])}"
            for t in tasks
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def edit_table_md(edit: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    lines = [
        "Single-task editing with LiNeS (γ chosen on val by 2·target + control). Test accuracy %: "
        "target = own task (normalised by the fine-tuned model), control = the other tasks "
        "(normalised by the pretrained model with heads).",
        "",
        "| task | fine-tuned target | fine-tuned control | best γ | LiNeS target | LiNeS control |",
        "|---|---|---|---|---|---|",
    ]
    for t, r in edit["tasks"].items():
        ft = r.get("finetuned") or {}
        b = r["best"]
        lines.append(
            f"| {t} | {_pct(ft.get('test_target_norm', float('nan')))} | {_pct(ft.get('test_control_norm', float('nan')))} | "
            f"{b['gamma']:g} | {_pct(b['test_target_norm'])} | {_pct(b['test_control_norm'])} |"
        )
    return "\n".join(lines)


def soups_table_md(soups: Mapping[str, Any]) -> str:
    t = soups["task"]
    lines = [
        f"Soups of {soups['num_models']} fine-tuning seeds of {t} (test; target = {t}, control = other tasks, normalised).",
        "",
        "| soup | target | control | LiNeS γ | LiNeS target | LiNeS control |",
        "|---|---|---|---|---|---|",
    ]
    for kind, e in soups["soups"].items():
        p, li = e["plain"], e["lines"]
        lines.append(
            f"| {kind} ({len(e['members'])} models) | {_pct(p['test_target_norm'])} | {_pct(p['test_control_norm'])} | "
            f"{li['gamma']:g} | {_pct(li['test_target_norm'])} | {_pct(li['test_control_norm'])} |"
        )
    return "\n".join(lines)


def _plots(
    out_dir: Path,
    merge: Mapping[str, Any],
    merge_rows: list[dict[str, str]],
    edit_rows: list[dict[str, str]],
    wiseft: Mapping[str, Any] | None,
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    # Target vs control (Fig. 2 style): LiNeS editing over γ, per task.
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for task in sorted({r["task"] for r in edit_rows}):
        pts = sorted(
            (float(r["gamma"]), float(r["test_control_norm"]), float(r["test_target_norm"]))
            for r in edit_rows
            if r["task"] == task
        )
        ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", label=task)
        ax.annotate("fine-tuned", (pts[-1][1], pts[-1][2]), fontsize=7)
    ax.set_xlabel("control accuracy (normalised by pretrained)")
    ax.set_ylabel("target accuracy (normalised by fine-tuned)")
    ax.set_title("Single-task LiNeS editing over γ")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "target_vs_control.png", dpi=120)
    plt.close(fig)
    made.append("target_vs_control.png")

    # Accuracy against β (LiNeS) and λ (baseline), per method, on val.
    methods = list(merge["methods"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.5), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        for variant, style in (("baseline", "s--"), ("lines", "o-")):
            pts = sorted(
                (float(r["coef"]), float(r["val_avg_norm"]))
                for r in merge_rows
                if r["method"] == m and r["variant"] == variant
            )
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                label="λ (no LiNeS)" if variant == "baseline" else "β (LiNeS)",
            )
        ax.set_title(m)
        ax.set_xlabel("coefficient")
        ax.set_ylabel("val avg normalised acc")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_beta.png", dpi=120)
    plt.close(fig)
    made.append("accuracy_vs_beta.png")

    # Per-task bars per method (test accuracy), baseline vs LiNeS.
    tasks = merge["tasks"]
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) * max(1, len(methods)) / 2 + 3, 4))
    width = 0.8 / (2 * len(methods))
    for i, m in enumerate(methods):
        for j, variant in enumerate(("baseline", "lines")):
            vals = [merge["methods"][m][variant]["test_acc"][t] for t in tasks]
            xs = [k + (2 * i + j) * width - 0.4 + width / 2 for k in range(len(tasks))]
            ax.bar(
                xs,
                vals,
                width,
                label=f"{m}{' + LiNeS' if variant == 'lines' else ''}",
                alpha=0.6 if variant == "baseline" else 1.0,
            )
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy")
    ax.set_title("Merged model, per task")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "per_task_bars.png", dpi=120)
    plt.close(fig)
    made.append("per_task_bars.png")

    if wiseft:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for task in wiseft["tasks"]:
            for variant, style in (("wiseft", "s--"), ("wiseft+lines", "o-")):
                pts = sorted(
                    (r["gamma"], r["control_norm"], r["target_norm"])
                    for r in wiseft["rows"]
                    if r["task"] == task and r["variant"] == variant
                )
                ax.plot([p[1] for p in pts], [p[2] for p in pts], style, label=f"{task} {variant}")
        ax.set_xlabel("accuracy on other tasks (normalised by pretrained)")
        ax.set_ylabel("target accuracy (normalised by fine-tuned)")
        ax.set_title(f"WiSE-FT over γ, with and without LiNeS (γ_LiNeS = {wiseft['lines_gamma']})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "wiseft.png", dpi=120)
        plt.close(fig)
        made.append("wiseft.png")
    return made


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


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
    base = read_json(base_eval)
    hs = read_json(heads)
    edit = read_json(Path(edit_dir) / "edit.json")
    merge = read_json(Path(merge_dir) / "merge.json")
    soups = read_json(Path(soups_dir) / "soups.json") if soups_dir else None
    wiseft = read_json(Path(wiseft_dir) / "wiseft.json") if wiseft_dir else None
    tasks = merge["tasks"]
    note = (
        f"backbone {backbone}"
        if suite == "text"
        else f"backbone {backbone}: a CNN on MNIST-family tasks, a proxy for the CLIP experiments, not CLIP"
    )

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
            for r in headline(merge)
        },
        "edit": edit["average_at_best"],
    }
    if soups:
        metrics["soups"] = {
            k: {
                "target_norm": e["plain"]["test_target_norm"],
                "lines_target_norm": e["lines"]["test_target_norm"],
                "control_norm": e["plain"]["test_control_norm"],
                "lines_control_norm": e["lines"]["test_control_norm"],
            }
            for k, e in soups["soups"].items()
        }
    write_json(out_dir / "metrics.json", metrics)

    parts = [f"# Results: {suite} suite ({note})", ""]
    parts += [
        "## Sanity: fine-tuning against the linear probe (test accuracy %)",
        "",
        "| task | probe (pretrained + head) | fine-tuned | fine-tuning beats probe |",
        "|---|---|---|---|",
    ]
    for t, v in sanity.items():
        parts.append(
            f"| {t} | {_pct(v['probe_test_acc'])} | {_pct(v['finetuned_test_acc'])} | {'yes' if v['finetune_beats_probe'] else '**no**'} |"
        )
    if not metrics["finetune_beats_probe_all"]:
        parts += [
            "",
            "**Fine-tuning does not beat the probe on every task: do not trust the merge results below for those tasks.**",
        ]
    parts += ["", "## Multi-task merging", "", merge_table_md(merge, note), ""]
    helped = [r["method"] for r in headline(merge) if r["delta_norm"] > 0.005]
    not_helped = [r["method"] for r in headline(merge) if r["delta_norm"] <= 0.005]
    parts.append(
        f"LiNeS improves the normalised test accuracy of: {', '.join(helped) or 'none'}; "
        f"it does not improve: {', '.join(not_helped) or 'none'} (threshold 0.5 points)."
    )
    parts += ["", "## Single-task editing", "", edit_table_md(edit, base), ""]
    if soups:
        parts += ["## Soups", "", soups_table_md(soups), ""]
    made = _plots(
        out_dir,
        merge,
        _read_csv(Path(merge_dir) / "merge_sweep.csv"),
        _read_csv(Path(edit_dir) / "edit_sweep.csv"),
        wiseft,
    )
    parts += ["## Plots", ""] + [f"![{m}]({m})" for m in made]
    parts += [
        "",
        "Heads (linear probes): "
        + ", ".join(f"{t}: val {_pct(v['probe_val_acc'])}" for t, v in hs["tasks"].items()),
    ]
    (out_dir / "report.md").write_text("\n".join(parts) + "\n")
    rows = headline(merge)
    with open(out_dir / "merge_table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return metrics
