"""The report pieces every suite shares: the headline of a merge, the Markdown tables of merging,
editing and soups, the metrics written for DVC, and the plots a researcher expects — target vs
control (the paper's Fig. 2), accuracy against β and λ, per-task bars, WiSE-FT curves. Every
number is read from the typed stage outputs; nothing is recomputed."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lines.protocol.scores import mean


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal; "n/a" for a missing or NaN value."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


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


def verdict(delta: float, tol: float = 0.005) -> str:
    if delta > tol:
        return "LiNeS helps"
    if delta < -tol:
        return "LiNeS hurts"
    return "no clear difference"


def grid_edge_notes(merge: Mapping[str, Any]) -> list[str]:
    """Warnings for coefficients chosen on val at the edge of their grid (the smallest positive
    or the largest value): the best value may lie outside it, so Δ compares clipped optima."""
    notes = []
    for name, r in merge["methods"].items():
        grids = r.get("grids") or {}
        for key, chosen, sym in (
            ("lambda", r["baseline"]["lambda"], "λ"),
            ("beta", r["lines"]["beta"], "β"),
        ):
            g = [float(x) for x in grids.get(key) or []]
            if len(g) < 2:
                continue
            if chosen == min(g) and min(g) > 0:
                notes.append(f"- {name}: {sym} = {chosen:g} is the smallest value of its grid")
            elif chosen == max(g):
                notes.append(f"- {name}: {sym} = {chosen:g} is the largest value of its grid")
    if not notes:
        return []
    return [
        "",
        "Chosen at the edge of the grid (the optimum may lie outside it; widen the grid before "
        "reading Δ as LiNeS's effect):",
        "",
        *notes,
    ]


def merge_table_md(
    merge: Mapping[str, Any], suite_note: str, verdicts: Mapping[str, str] | None = None
) -> str:
    """The merging table; ``verdicts`` (method → verdict from its interval) replaces the
    fixed-threshold verdict where given."""
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
            f"| {r['method']} | {r['lambda']:g} | {pct(r['abs'])} | {pct(r['norm'])} | {r['alpha']:.3g} | "
            f"{r['beta']:g} | {pct(r['lines_abs'])} | {pct(r['lines_norm'])} | {100 * r['delta_norm']:+.1f} | "
            f"{(verdicts or {}).get(r['method']) or verdict(r['delta_norm'])} |"
        )
    lines += grid_edge_notes(merge)
    lines += ["", "Per task (test accuracy %, baseline → LiNeS):", ""]
    lines.append("| method | " + " | ".join(tasks) + " |")
    lines.append("|---|" + "---|" * len(tasks))
    for name, r in merge["methods"].items():
        cells = [
            f"{pct(r['baseline']['test_acc'][t])} → {pct(r['lines']['test_acc'][t])}" for t in tasks
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
            f"| {t} | {pct(ft.get('test_target_norm', float('nan')))} | {pct(ft.get('test_control_norm', float('nan')))} | "
            f"{b['gamma']:g} | {pct(b['test_target_norm'])} | {pct(b['test_control_norm'])} |"
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
            f"| {kind} ({len(e['members'])} models) | {pct(p['test_target_norm'])} | {pct(p['test_control_norm'])} | "
            f"{li['gamma']:g} | {pct(li['test_target_norm'])} | {pct(li['test_control_norm'])} |"
        )
    ens = soups.get("ensemble")
    if ens:
        lines.append(
            f"| output ensemble ({len(ens['members'])} models, mean {ens['combine']}; not one "
            f"model) | {pct(ens['test_target_norm'])} | {pct(ens['test_control_norm'])} | – | – | – |"
        )
    return "\n".join(lines)


def plots(
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


def merge_metrics(merge: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``metrics.json``'s ``merge`` section: the headline of each method, keyed by method."""
    return {
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
    }


def soups_metrics(soups: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``metrics.json``'s ``soups`` section: test target/control of each soup, plain and LiNeS."""
    return {
        k: {
            "target_norm": e["plain"]["test_target_norm"],
            "lines_target_norm": e["lines"]["test_target_norm"],
            "control_norm": e["plain"]["test_control_norm"],
            "lines_control_norm": e["lines"]["test_control_norm"],
        }
        for k, e in soups["soups"].items()
    }


def wiseft_metrics(wiseft: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Mean target/shift normalised accuracy over the γ path, per variant."""
    return {
        v: {
            k: mean(r[k] for r in wiseft["rows"] if r["variant"] == v)
            for k in ("target_norm", "control_norm")
        }
        for v in ("wiseft", "wiseft+lines")
    }


def verdict_line(merge: Mapping[str, Any]) -> str:
    """One sentence: which methods LiNeS improves (by more than 0.5 normalised points)."""
    rows = headline(merge)
    helped = [r["method"] for r in rows if r["delta_norm"] > 0.005]
    not_helped = [r["method"] for r in rows if r["delta_norm"] <= 0.005]
    return (
        f"LiNeS improves the normalised test accuracy of: {', '.join(helped) or 'none'}; "
        f"it does not improve: {', '.join(not_helped) or 'none'} (threshold 0.5 points)."
    )


def write_merge_table(path: Path, merge: Mapping[str, Any]) -> None:
    """``merge_table.csv``: the headline rows."""
    rows = headline(merge)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ----------------------------------------------------------------------------------------------
# Intervals (issue 11): every Δ with its paired-bootstrap interval, the verdict from the interval


def _ft_bits(base: Mapping[str, Any]) -> dict[str, Any] | None:
    tc = base.get("test_correct") or {}
    return tc.get("finetuned") or None


def merge_intervals(
    merge: Mapping[str, Any], base: Mapping[str, Any], n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per method: normalised test accuracy of the baseline and of LiNeS and their difference,
    each with its paired-bootstrap interval (normalised by each fine-tuned model on its own task,
    resampled with it), and the verdict of the difference. Empty without per-example outputs."""
    from lines.protocol.intervals import from_examples, unpack_all, verdict

    ft = _ft_bits(base)
    tasks = merge["tasks"]
    if not ft or not all(t in ft for t in tasks):
        return {}
    own = {t: unpack_all(ft[t])[t] for t in tasks}
    out: dict[str, dict[str, Any]] = {}
    for name, r in merge["methods"].items():
        b, li = r["baseline"].get("test_correct"), r["lines"].get("test_correct")
        if b is None or li is None:
            continue
        bb, ll = unpack_all(b), unpack_all(li)
        bs = from_examples([bb, ll, own], n_boot, seed)
        d = bs.delta_norm(ll, bb, own, tasks)
        out[name] = {
            "baseline_norm": bs.mean_norm(bb, own, tasks),
            "lines_norm": bs.mean_norm(ll, own, tasks),
            "delta_norm": d,
            "verdict": verdict(d, "LiNeS helps", "LiNeS hurts"),
        }
    return out


def edit_intervals(
    edit: Mapping[str, Any], base: Mapping[str, Any], n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per edited task, LiNeS (γ chosen on val) against the fine-tuned model: Δ target accuracy
    and Δ mean control accuracy normalised by zero-shot, each with its interval; verdicts."""
    from lines.protocol.intervals import from_examples, unpack_all, verdict

    ft = _ft_bits(base)
    zs_bits = (base.get("test_correct") or {}).get("pretrained")
    if not ft or not zs_bits:
        return {}
    zs = unpack_all(zs_bits)
    out: dict[str, dict[str, Any]] = {}
    for t, r in edit["tasks"].items():
        if "best_test_correct" not in r or t not in ft:
            continue
        ed, f = unpack_all(r["best_test_correct"]), unpack_all(ft[t])
        controls = [o for o in ed if o != t]
        bs = from_examples([ed, f, zs], n_boot, seed)
        dt = bs.delta_acc(ed, f, [t])
        dc = bs.delta_norm(ed, f, zs, controls) if controls else None
        out[t] = {
            "gamma": r["best_gamma"],
            "delta_target": dt,
            "delta_control_norm": dc,
            "lines_control_norm": bs.mean_norm(ed, zs, controls) if controls else None,
            "finetuned_control_norm": bs.mean_norm(f, zs, controls) if controls else None,
            "control_verdict": verdict(dc, "control rises", "control drops") if dc else "n/a",
            "target_verdict": verdict(dt, "target rises", "target drops"),
        }
    return out


def merge_ci_md(cis: Mapping[str, Mapping[str, Any]]) -> str:
    if not cis:
        return "(no per-example outputs: no intervals)"
    rows = [
        "Normalised test accuracy % with 95% paired-bootstrap intervals; the verdict follows "
        "the interval of Δ (LiNeS − baseline).",
        "",
        "| method | baseline | LiNeS | Δ | verdict |",
        "|---|---|---|---|---|",
    ]
    for m, c in cis.items():
        rows.append(
            f"| {m} | {c['baseline_norm'].pct()} | {c['lines_norm'].pct()} | "
            f"{c['delta_norm'].pct(True)} | {c['verdict']} |"
        )
    return "\n".join(rows)


def edit_ci_md(cis: Mapping[str, Mapping[str, Any]]) -> str:
    if not cis:
        return "(no per-example outputs: no intervals)"
    rows = [
        "LiNeS-edited (γ on val) − fine-tuned, test, 95% paired-bootstrap intervals: Δ target "
        "accuracy (points) and Δ control accuracy normalised by zero-shot (points).",
        "",
        "| task | γ | fine-tuned control | LiNeS control | Δ control | Δ target | verdicts |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, c in cis.items():
        fc, lc, dc = c["finetuned_control_norm"], c["lines_control_norm"], c["delta_control_norm"]
        rows.append(
            f"| {t} | {c['gamma']:g} | {fc.pct() if fc else 'n/a'} | {lc.pct() if lc else 'n/a'} | "
            f"{dc.pct(True) if dc else 'n/a'} | {c['delta_target'].pct(True)} | "
            f"{c['control_verdict']}; {c['target_verdict']} |"
        )
    return "\n".join(rows)


def fig1_summary(
    fig1: Mapping[str, Any], n_boot: int = 1000, seed: int = 0
) -> list[dict[str, Any]]:
    """Per (schedule, γ): target and control normalised accuracy averaged over the Figure 1
    tasks, with intervals where per-example outputs exist (γ = 1 included: the fine-tuned
    models)."""
    from lines.protocol.intervals import from_examples, unpack_all

    pts = fig1["points"]
    out = []
    for kind in ("shallow", "deep"):
        for g in fig1["gammas"]:
            sel = [p for p in pts if p["schedule"] == kind and p["gamma"] == g]
            row: dict[str, Any] = {
                "schedule": kind,
                "gamma": g,
                "target_norm": mean(p["target_norm"] for p in sel),
                "control_norm": mean(p["control_norm"] for p in sel),
            }
            if sel and all(p.get("test_correct") for p in sel):
                # Per point: target = acc / the fine-tuned model's, control = mean of acc / the
                # zero-shot model's (references held fixed), resampled over test examples.
                zs, ftr = fig1["zeroshot"], fig1["finetuned_ref"]
                bands: dict[str, list[float]] = {k: [] for k in ("t_lo", "t_hi", "c_lo", "c_hi")}
                for p in sel:
                    c, t = unpack_all(p["test_correct"]), p["task"]
                    ctl = [o for o in c if o != t]
                    bs = from_examples([c], n_boot, seed)
                    ti = bs.ci(lambda A, t=t, f=ftr: A["m"][t] / f[t], {"m": c})
                    bands["t_lo"].append(ti.lo)
                    bands["t_hi"].append(ti.hi)
                    if ctl:
                        ci = bs.ci(
                            lambda A, ctl=ctl, z=zs: sum(A["m"][o] / z[o] for o in ctl) / len(ctl),
                            {"m": c},
                        )
                        bands["c_lo"].append(ci.lo)
                        bands["c_hi"].append(ci.hi)
                # The mean of per-task bounds: conservative for the mean over tasks (independent
                # test sets make the interval of the mean narrower).
                row.update(
                    target_lo=mean(bands["t_lo"]),
                    target_hi=mean(bands["t_hi"]),
                    control_lo=mean(bands["c_lo"]),
                    control_hi=mean(bands["c_hi"]),
                )
            out.append(row)
    return out
