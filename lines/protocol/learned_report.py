"""The learned-baselines table and metrics (torch-free, so reports and their tests render it
without the protocol's compute)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def learned_md(res: Mapping[str, Any]) -> str:
    """The table: accuracy, Δ against TA + LiNeS and cost of every method."""
    rows = res["methods"]
    lin = rows["lines"]["cost"]
    out = [
        f"Average normalised test accuracy (%) over {len(res['tasks'])} tasks; Δ against task "
        "arithmetic + LiNeS with its 95% paired-bootstrap interval; cost on this machine "
        f"({res['device']}): wall time, examples passed forward / backward, model-sized tensors "
        "held at once. AdaMerging learns on unlabelled "
        f"**{res['adamerging_inputs']}** inputs; aTLAS on labelled val; Fisher on val inputs.",
        "",
        "| method | test norm | Δ vs TA + LiNeS | verdict | wall s | × LiNeS | forward | backward | "
        "held MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in rows.items():
        c = r["cost"]
        d = r.get("delta_vs_lines")
        ds = f"{100 * d['value']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]" if d else "–"
        ratio = c["wall_s"] / lin["wall_s"] if lin["wall_s"] else float("nan")
        out.append(
            f"| {m} | {100 * r['test_avg_norm']:.1f} | {ds} | {r.get('verdict', 'reference')} | "
            f"{c['wall_s']:.1f} | {ratio:.1f} | {c['forward']} | {c['backward']} | "
            f"{c['held_bytes'] / 2**20:.0f} |"
        )
    best = max(
        (m for m in rows if m != "lines"), key=lambda m: rows[m]["test_avg_norm"], default=None
    )
    if best is not None:
        out += [
            "",
            f"Best learned/ensemble: **{best}** ({100 * rows[best]['test_avg_norm']:.1f}% vs "
            f"{100 * rows['lines']['test_avg_norm']:.1f}% for TA + LiNeS, at "
            f"{rows[best]['cost']['wall_s'] / max(lin['wall_s'], 1e-9):.1f}× its wall time).",
        ]
    return "\n".join(out)


def learned_metrics(res: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method: average normalised test accuracy, Δ against TA + LiNeS and the cost, for the
    report's ``metrics.json``."""
    out = {}
    for m, r in res["methods"].items():
        d = r.get("delta_vs_lines") or {}
        row = {"test_avg_norm": r["test_avg_norm"], "delta_vs_lines": d.get("value")}
        row |= {f"cost_{k}": v for k, v in r["cost"].items()}
        # DVC metrics hold numbers only: a missing value (no interval, no CUDA peak) is left out
        out[m] = {k: v for k, v in row.items() if v is not None}
    return out
