"""The schedule comparison's tables and its one-paragraph answer (torch-free, so reports and
their tests render it without the protocol's compute)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def schedules_md(res: Mapping[str, Any]) -> str:
    """The tables and the one-paragraph answer: is linear optimal here?"""
    mults = res.get("alpha_mults") or [1.0]
    how_alpha = (
        "α by the rule"
        if list(mults) == [1.0]
        else f"α searched as the rule's α × {', '.join(f'{m:g}' for m in mults)}"
    )
    out = [
        f"Every schedule searched with at most {res['budget']} val evaluations ({how_alpha}); "
        "test accuracy with Δ against linear (95% paired-bootstrap interval).",
        "",
    ]
    for name, rows in res["merging"].items():
        out += [
            f"**Merging, {name}** (average normalised test accuracy, %)",
            "",
            "| schedule (chosen on val) | α | β | evals | test norm | Δ vs linear | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows.values():
            d = r.get("delta_vs_linear")
            ds = (
                f"{100 * d['value']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
                if d
                else "–"
            )
            out.append(
                f"| `{r['schedule']}` | {r['alpha']:.3g} | {r['beta']:.3g} | {r['evaluations']} | "
                f"{100 * r['test_avg_norm']:.1f} | {ds} | {r.get('verdict', 'reference')} |"
            )
        out.append("")
    for t, rows in res["editing"].items():
        out += [
            f"**Editing, {t}** (test target / control, normalised, %)",
            "",
            "| schedule (chosen on val) | γ | evals | target | control | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows.values():
            out.append(
                f"| `{r['schedule']}` | {r['gamma']:.3g} | {r['evaluations']} | "
                f"{100 * r['target_norm']:.1f} | {100 * r['control_norm']:.1f} | "
                f"{r.get('verdict', 'reference')} |"
            )
        out.append("")
    out += ["**Is linear optimal here?** " + answer(res), ""]
    return "\n".join(out)


def answer(res: Mapping[str, Any]) -> str:
    """One sentence per merge: the best schedule on val and whether it beats linear on test;
    says so when the choice is a tie or when every schedule chose β = 0 (a uniform λ = α, so the
    shapes were never put to the test)."""
    parts = []
    for name, rows in res["merging"].items():
        if rows and all(r["beta"] == 0 for r in rows.values()):
            alphas = sorted({round(r["alpha"], 4) for r in rows.values() if "alpha" in r})
            at = f" = {', '.join(f'{a:g}' for a in alphas)}" if alphas else ""
            parts.append(
                f"for {name}, every schedule chose β = 0 on val (a uniform λ = α{at}): the depth "
                "profile did not help, so this run does not rank the shapes"
            )
            continue
        best = max(rows, key=lambda f: rows[f]["val_avg_norm"])
        r = rows[best]
        lin = rows.get("linear", {}).get("val_avg_norm")
        if best == "linear" or "delta_vs_linear" not in r or r["val_avg_norm"] == lin:
            parts.append(f"for {name}, no schedule beats linear on val")
            continue
        d = r["delta_vs_linear"]
        parts.append(
            f"for {name}, `{r['schedule']}` is best on val and on test it is "
            f"{100 * d['value']:+.1f} points [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] against "
            f"linear ({r['verdict']})"
        )
    if not parts:
        return "no merge was compared."
    return "; ".join(parts) + "."


def schedules_metrics(res: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Per merge and schedule family: the average normalised test accuracy of the schedule chosen
    on val and, where the suite gives per-example results, its Δ against linear — the report's
    ``metrics.json`` entry (numbers only, as DVC metrics hold)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m, rows in res["merging"].items():
        for f, r in rows.items():
            row = {"test_avg_norm": r.get("test_avg_norm")}
            row["delta_vs_linear"] = (r.get("delta_vs_linear") or {}).get("value")
            row = {k: float(v) for k, v in row.items() if v is not None}
            if row:
                out.setdefault(m, {})[f] = row
    return out
