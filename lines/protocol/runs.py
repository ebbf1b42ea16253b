"""Several runs of one suite: fine-tuning seeds (mean ± sd) and a sweep of the fine-tuning
budget (steps × learning rate), read from each run's ``metrics.json``.

The paper's mechanism predicts that LiNeS's gain grows with forgetting; the sweep puts the
forgetting (control retention), the interference (task arithmetic's normalised accuracy) and the
LiNeS Δ of each method side by side per budget, each as mean ± sd over seeds (and each run's own
bootstrap interval stays in its report)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lines.protocol.results import read_json, write_json


def _mean_sd(xs: Sequence[float]) -> dict[str, float]:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not vals:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return {"mean": m, "sd": sd, "n": len(vals)}


def summarise(metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean ± sd (sample sd, n − 1) over runs of the regime numbers and each method's Δ."""
    out: dict[str, Any] = {
        "retention": _mean_sd([m["regime"]["retention"]["value"] for m in metrics]),
        "task_arithmetic_norm": _mean_sd(
            [m["regime"]["task_arithmetic_norm"]["value"] for m in metrics]
        ),
        "finetuned_test_avg_acc": _mean_sd([m["finetuned_test_avg_acc"] for m in metrics]),
        "pretrained_test_avg_acc": _mean_sd([m["pretrained_test_avg_acc"] for m in metrics]),
        "lines_delta_norm": {},
        "edit_control_norm": _mean_sd([m["edit"]["test_control_norm"] for m in metrics]),
        "edit_target_norm": _mean_sd([m["edit"]["test_target_norm"] for m in metrics]),
        # LiNeS editing's gain in control accuracy (edited − fine-tuned, fraction of zero-shot).
        "edit_control_gain": _mean_sd(
            [m["edit"]["test_control_norm"] - m["regime"]["retention"]["value"] for m in metrics]
        ),
    }
    out["baseline_norm"], out["lines_norm"] = {}, {}
    for name in metrics[0]["merge"] if metrics else []:
        out["lines_delta_norm"][name] = _mean_sd(
            [m["merge"][name]["lines_delta_norm"] for m in metrics]
        )
        out["baseline_norm"][name] = _mean_sd([m["merge"][name]["test_avg_norm"] for m in metrics])
        out["lines_norm"][name] = _mean_sd(
            [m["merge"][name]["lines_test_avg_norm"] for m in metrics]
        )
    # The schedules comparison (Δ of each family's val-chosen schedule against linear) and the
    # learned baselines, where the runs have them.
    if metrics and all(m.get("schedules") for m in metrics):
        out["schedules"] = {
            method: {
                fam: {
                    k: _mean_sd([m["schedules"][method][fam].get(k) for m in metrics])
                    for k in ("test_avg_norm", "delta_vs_linear")
                }
                for fam in fams
            }
            for method, fams in metrics[0]["schedules"].items()
        }
    if metrics and all(m.get("learned") for m in metrics):
        out["learned"] = {
            name: {
                k: _mean_sd([m["learned"][name].get(k) for m in metrics])
                for k in ("test_avg_norm", "delta_vs_lines", "cost_wall_s")
            }
            for name in metrics[0]["learned"]
        }
    return out


def _detail_md(label: str, r: Mapping[str, Any], ms: Any) -> list[str]:
    """Per budget: each merge method with and without LiNeS, the schedules' Δ against linear and
    the learned baselines, mean ± sd over seeds."""

    def pts(d: Mapping[str, float]) -> str:
        return f"{100 * d['mean']:+.1f} ± {100 * d['sd']:.1f}"

    out = [
        "",
        f"### {label}: merging (normalised test accuracy %, mean ± sd over seeds)",
        "",
        "| method | baseline | + LiNeS | Δ (points) |",
        "|---|---|---|---|",
    ]
    for m in r["lines_delta_norm"]:
        out.append(
            f"| {m} | {ms(r['baseline_norm'][m])} | {ms(r['lines_norm'][m])} | "
            f"{pts(r['lines_delta_norm'][m])} |"
        )
    if r.get("schedules"):
        fams = list(next(iter(r["schedules"].values())))
        out += [
            "",
            f"### {label}: schedules, Δ of each family's val-chosen schedule against linear "
            "(points, mean ± sd)",
            "",
            "| method | linear (norm %) | " + " | ".join(f for f in fams if f != "linear") + " |",
            "|---|---|" + "---|" * (len(fams) - 1),
        ]
        for m, by in r["schedules"].items():
            out.append(
                f"| {m} | {ms(by['linear']['test_avg_norm'])} | "
                + " | ".join(pts(by[f]["delta_vs_linear"]) for f in fams if f != "linear")
                + " |"
            )
    if r.get("learned"):
        out += [
            "",
            f"### {label}: learned baselines and output ensembles (mean ± sd)",
            "",
            "| method | normalised test % | Δ vs TA + LiNeS (points) | wall s |",
            "|---|---|---|---|",
        ]
        for m, d in r["learned"].items():
            delta = "–" if m == "lines" else pts(d["delta_vs_lines"])
            w = d["cost_wall_s"]
            out.append(
                f"| {m} | {ms(d['test_avg_norm'])} | {delta} | {w['mean']:.0f} ± {w['sd']:.0f} |"
            )
    return out


def aggregate(runs: Mapping[str, Sequence[Path]], out_dir: Path) -> dict[str, Any]:
    """``runs``: budget label → the report folders of its seeds. Writes ``runs.json`` and
    ``runs.md`` (and ``budget_sweep.png`` for two or more budgets) under ``out_dir``."""
    res = {
        label: {
            "runs": [str(p) for p in dirs],
            **summarise([read_json(Path(p) / "metrics.json") for p in dirs]),
        }
        for label, dirs in runs.items()
    }
    out_dir = Path(out_dir)
    write_json(out_dir / "runs.json", res)

    def ms(d: Mapping[str, float]) -> str:
        return f"{100 * d['mean']:.1f} ± {100 * d['sd']:.1f} (n={d['n']})"

    methods = sorted({m for r in res.values() for m in r["lines_delta_norm"]})
    lines = [
        "Fine-tuning budget sweep: mean ± sd over seeds (%; Δ in points).",
        "",
        "Control retention: the fine-tuned models' control accuracy as % of zero-shot (forgetting"
        " below 100); edited: the same after LiNeS editing (γ on val), with its target accuracy as"
        " % of the fine-tuned model's; Δ: LiNeS − baseline normalised merging accuracy.",
        "",
        "| budget | fine-tuned acc | control retention | edited: control | edited: target | "
        "TA normalised | " + " | ".join(f"Δ {m}" for m in methods) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(methods),
    ]
    for label, r in res.items():
        lines.append(
            f"| {label} | {ms(r['finetuned_test_avg_acc'])} | {ms(r['retention'])} | "
            f"{ms(r['edit_control_norm'])} | {ms(r['edit_target_norm'])} | "
            f"{ms(r['task_arithmetic_norm'])} | "
            + " | ".join(ms(r["lines_delta_norm"][m]) for m in methods)
            + " |"
        )
    for label, r in res.items():
        lines += _detail_md(label, r, ms)
    (out_dir / "runs.md").write_text("\n".join(lines) + "\n")
    if len(res) >= 2:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
        xs = [100 * r["retention"]["mean"] for r in res.values()]
        for m in methods:
            ys = [100 * r["lines_delta_norm"][m]["mean"] for r in res.values()]
            es = [100 * r["lines_delta_norm"][m]["sd"] for r in res.values()]
            ax.errorbar(xs, ys, yerr=es, fmt="o-", capsize=3, label=m)
        ys = [100 * r["edit_control_gain"]["mean"] for r in res.values()]
        es = [100 * r["edit_control_gain"]["sd"] for r in res.values()]
        ax2.errorbar(xs, ys, yerr=es, fmt="s-", capsize=3, color="tab:purple")
        # Alternate above/below so labels of neighbouring budgets do not overlap.
        for i, (x, y, label) in enumerate(sorted(zip(xs, ys, res, strict=True))):
            ax2.annotate(
                label,
                (x, y),
                textcoords="offset points",
                xytext=(4, 6 if i % 2 else -12),
                fontsize=7,
            )
        xlabel = "control retention of fine-tuned models (% of zero-shot; lower = more forgetting)"
        for a in (ax, ax2):
            a.axhline(0, color="gray", lw=0.8)
            a.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("LiNeS Δ normalised acc (points, mean ± sd over seeds)")
        ax.set_title("Merging: LiNeS − baseline, one point per budget", fontsize=9)
        ax.legend(fontsize=7, loc="best")
        ax2.set_ylabel("control gain of LiNeS editing (points of zero-shot)")
        ax2.set_title("Editing: edited − fine-tuned control accuracy", fontsize=9)
        fig.suptitle(
            "LiNeS against forgetting, by fine-tuning budget: " + ", ".join(res), fontsize=9
        )
        fig.savefig(out_dir / "budget_sweep.png", dpi=120)
        plt.close(fig)
    return res
