"""The plots a reader of the LiNeS paper expects, with the noise drawn (issue 11):

- ``fig2_target_control.png``: per task, the zero-shot point, the fine-tuned point and the
  LiNeS-edited point (γ chosen on val), an arrow fine-tuned → LiNeS (the paper's Fig. 2);
- ``delta_ci.png``: Δ with 95% interval bars, per merging method (LiNeS − baseline) and per
  edited task (control and target, edited − fine-tuned);
- ``accuracy_vs_beta_ci.png``: val normalised accuracy against λ / β with a ±1.96·SE band
  (binomial standard error of each task's val accuracy, propagated to the mean);
- ``fig1_schedules.png``: the Figure 1 pair (target and control against γ, shallow vs deep).

No point carries a text label (colours, markers and a legend outside the axes identify them),
so labels cannot overlap; every figure's title names the suite, the model and the tasks.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _title(fig: Any, what: str, suite: str, model: str, tasks: Sequence[str]) -> None:
    sub = textwrap.fill(
        f"suite {suite} · model {model} · {len(tasks)} tasks: {', '.join(tasks)}", 110
    )
    fig.suptitle(f"{what}\n{sub}", fontsize=9)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig2(
    out: Path,
    base: Mapping[str, Any],
    edit: Mapping[str, Any],
    *,
    suite: str,
    model: str,
    tasks: Sequence[str],
) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 5), layout="constrained")
    cmap = plt.get_cmap("tab10")
    zs = base["pretrained"]["test"]
    for i, (t, r) in enumerate(edit["tasks"].items()):
        col = cmap(i % 10)
        ft = r.get("finetuned") or {}
        b = r["best"]
        ftacc = base["finetuned"][t]["test"][t]
        zs_pt = (1.0, zs[t] / ftacc if ftacc else float("nan"))
        ft_pt = (ft.get("test_control_norm", float("nan")), ft.get("test_target_norm", 1.0))
        li_pt = (b["test_control_norm"], b["test_target_norm"])
        ax.plot(*zs_pt, marker="o", ls="", color=col, mfc="none", ms=8)
        ax.plot(*ft_pt, marker="s", ls="", color=col, ms=7)
        ax.plot(*li_pt, marker="*", ls="", color=col, ms=12, label=f"{t} (γ={b['gamma']:g})")
        if all(math.isfinite(v) for v in (*ft_pt, *li_pt)) and ft_pt != li_pt:
            ax.annotate("", xy=li_pt, xytext=ft_pt, arrowprops={"arrowstyle": "->", "color": col})
    for m, lab in (("o", "zero-shot"), ("s", "fine-tuned"), ("*", "LiNeS (γ on val)")):
        ax.plot(
            [], [], marker=m, ls="", color="gray", mfc="none" if m == "o" else "gray", label=lab
        )
    ax.axvline(1.0, color="gray", lw=0.5, ls=":")
    ax.axhline(1.0, color="gray", lw=0.5, ls=":")
    ax.set_xlabel("control accuracy (mean over other tasks, / zero-shot)")
    ax.set_ylabel("target accuracy (/ fine-tuned)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(
        fig,
        "Target vs control, test: zero-shot, fine-tuned → LiNeS (paper Fig. 2)",
        suite,
        model,
        tasks,
    )
    fig.savefig(out / "fig2_target_control.png", dpi=120)
    plt.close(fig)
    return "fig2_target_control.png"


def delta_ci(
    out: Path,
    merge_cis: Mapping[str, Mapping[str, Any]],
    edit_cis: Mapping[str, Mapping[str, Any]],
    *,
    suite: str,
    model: str,
    tasks: Sequence[str],
) -> str | None:
    plt = _plt()
    if not merge_cis and not edit_cis:
        # Still written (a declared pipeline output), saying why it is empty.
        fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-example test outputs: no intervals", ha="center", va="center")
        _title(fig, "Δ with 95% paired-bootstrap intervals over test examples", suite, model, tasks)
        fig.savefig(out / "delta_ci.png", dpi=120)
        plt.close(fig)
        return "delta_ci.png"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    ax = axes[0]
    names = list(merge_cis)
    for i, m in enumerate(names):
        d = merge_cis[m]["delta_norm"]
        ax.errorbar(
            i,
            100 * d.value,
            yerr=[[100 * (d.value - d.lo)], [100 * (d.hi - d.value)]],
            fmt="o",
            capsize=4,
        )
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("Δ normalised acc, points (LiNeS − baseline)")
    ax.set_title("Merging", fontsize=9)
    ax = axes[1]
    ts = list(edit_cis)
    for k, (key, lab, off) in enumerate(
        (
            ("delta_control_norm", "Δ control (/ zero-shot)", -0.12),
            ("delta_target", "Δ target", 0.12),
        )
    ):
        xs, ys, lo, hi = [], [], [], []
        for i, t in enumerate(ts):
            d = edit_cis[t][key]
            if d is None:
                continue
            xs.append(i + off)
            ys.append(100 * d.value)
            lo.append(100 * (d.value - d.lo))
            hi.append(100 * (d.hi - d.value))
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="os"[k], capsize=3, label=lab)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(ts)), ts, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("points (LiNeS-edited − fine-tuned)")
    ax.set_title("Single-task editing", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, "Δ with 95% paired-bootstrap intervals over test examples", suite, model, tasks)
    fig.savefig(out / "delta_ci.png", dpi=120)
    plt.close(fig)
    return "delta_ci.png"


def accuracy_vs_beta(
    out: Path,
    merge: Mapping[str, Any],
    rows: list[dict[str, str]],
    ft_val: Mapping[str, float],
    *,
    suite: str,
    model: str,
) -> str:
    plt = _plt()
    tasks = merge["tasks"]
    n_val = merge.get("examples", {}).get("val", {})
    methods = list(merge["methods"])
    fig, axes = plt.subplots(
        1, len(methods), figsize=(4 * len(methods) + 1.5, 4), squeeze=False, layout="constrained"
    )
    for ax, m in zip(axes[0], methods, strict=True):
        for variant, style, lab in (
            ("baseline", "s--", "λ (no LiNeS)"),
            ("lines", "o-", "β (LiNeS)"),
        ):
            pts = sorted(
                (float(r["coef"]), float(r["val_avg_norm"]), r)
                for r in rows
                if r["method"] == m and r["variant"] == variant
            )
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            band = []
            for _, _, r in pts:
                var = 0.0
                for t in tasks:
                    p, n, f = float(r.get(f"val_acc_{t}", "nan")), n_val.get(t, 0), ft_val.get(t, 0)
                    if n and f:
                        var += p * (1 - p) / n / f**2
                band.append(1.96 * math.sqrt(var) / len(tasks))
            (line,) = ax.plot(xs, ys, style, label=lab)
            ax.fill_between(
                xs,
                [y - b for y, b in zip(ys, band, strict=True)],
                [y + b for y, b in zip(ys, band, strict=True)],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("coefficient")
        ax.set_ylabel("val avg normalised acc")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, "Val accuracy against λ and β (band: ±1.96·SE, binomial)", suite, model, tasks)
    fig.savefig(out / "accuracy_vs_beta_ci.png", dpi=120)
    plt.close(fig)
    return "accuracy_vs_beta_ci.png"


def fig1_pair(
    out: Path, summary: list[dict[str, Any]], fig1: Mapping[str, Any], *, suite: str, model: str
) -> str:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, key, lab in (
        (axes[0], "target", "target acc (/ fine-tuned)"),
        (axes[1], "control", "control acc (/ zero-shot)"),
    ):
        for kind, style in (("shallow", "o-"), ("deep", "s--")):
            pts = sorted((r["gamma"], r) for r in summary if r["schedule"] == kind)
            xs = [g for g, _ in pts]
            ys = [r[f"{key}_norm"] for _, r in pts]
            (line,) = ax.plot(xs, ys, style, label=f"{kind} layers downscaled")
            if all(f"{key}_lo" in r for _, r in pts):
                ax.fill_between(
                    xs,
                    [r[f"{key}_lo"] for _, r in pts],
                    [r[f"{key}_hi"] for _, r in pts],
                    color=line.get_color(),
                    alpha=0.15,
                )
        ax.set_xlabel("γ (1 = fine-tuned)")
        ax.set_ylabel(lab)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(
        fig,
        f"Figure 1: shallow vs deep layers downscaled, mean over {', '.join(fig1['fig_tasks'])} (test; band: 95% bootstrap)",
        suite,
        model,
        fig1["tasks"],
    )
    fig.savefig(out / "fig1_schedules.png", dpi=120)
    plt.close(fig)
    return "fig1_schedules.png"
