"""The regime check: is a suite in the regime the LiNeS paper's claims are about?

LiNeS claims to remove *forgetting* (fine-tuned models lose accuracy on other tasks; ViT-B/32 on
8 tasks: control 48.3 → 38.0, i.e. 79% of zero-shot) and to reduce *interference* in merging
(task arithmetic keeps ~70-77% normalised accuracy on 8-20 tasks). A suite without forgetting
cannot test the first claim, whatever its numbers say. This module measures, from the stage
outputs, with paired bootstrap intervals over test examples:

- per task: zero-shot vs fine-tuned accuracy (fine-tuning must have learnt the task);
- forgetting: the fine-tuned models' mean control accuracy as a fraction of zero-shot
  (mean over t of mean over o ≠ t of acc(θ_t, o) / acc(θ_0, o));
- interference: task arithmetic's normalised accuracy at its λ chosen on val.

"Forgetting is present" when the whole interval of the retention lies below 1; the suite is
"in the forgetting regime" when, in addition, every fine-tuned model beats zero-shot on its own
task (the interval of the difference above 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lines.protocol.intervals import Bootstrap, Interval, from_examples, unpack_all
from lines.protocol.scores import mean

# The paper's reference points (ViT-B/32, 8 tasks; docs REFERENCE.md).
PAPER = {"retention": 38.0 / 48.3, "task_arithmetic_norm": (0.70, 0.77)}


def _nan_interval(value: float) -> Interval:
    return Interval(value, float("nan"), float("nan"))


def regime_check(
    base: Mapping[str, Any],
    tasks: Sequence[str],
    merge: Mapping[str, Any] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The regime numbers of a run (see the module docstring); intervals where the stage outputs
    carry per-example correctness (``test_correct``), points only otherwise."""
    tasks = list(tasks)
    zs_acc = base["pretrained"]["test"]
    ft_acc = {t: base["finetuned"][t]["test"] for t in tasks}
    bits = base.get("test_correct") or {}
    have = bool(bits.get("pretrained")) and all(t in bits.get("finetuned", {}) for t in tasks)
    ta = (merge or {}).get("methods", {}).get("task_arithmetic")
    ta_bits = (ta or {}).get("baseline", {}).get("test_correct")

    retention_pt = mean(
        mean(ft_acc[t][o] / zs_acc[o] for o in tasks if o != t and zs_acc[o] > 0) for t in tasks
    )
    per_task: dict[str, Any] = {}
    if have:
        zs = unpack_all(bits["pretrained"])
        ft = {t: unpack_all(bits["finetuned"][t]) for t in tasks}
        bs: Bootstrap = from_examples([zs, *ft.values()], n_boot, seed, level)
        for t in tasks:
            per_task[t] = {
                "zeroshot": bs.mean_acc(zs, [t]),
                "finetuned": bs.mean_acc(ft[t], [t]),
                "gain": bs.delta_acc(ft[t], zs, [t]),
            }
        models = {"zs": zs, **{f"ft:{t}": ft[t] for t in tasks}}

        def retention(A: Mapping[str, Mapping[str, Any]]) -> Any:
            per = [
                sum(A[f"ft:{t}"][o] / A["zs"][o] for o in tasks if o != t) / (len(tasks) - 1)
                for t in tasks
            ]
            return sum(per) / len(per)

        ret = bs.ci(retention, models) if len(tasks) > 1 else _nan_interval(float("nan"))
        own = {t: ft[t][t] for t in tasks}  # each fine-tuned model on its own task
        interference = (
            bs.mean_norm(unpack_all(ta_bits), own, tasks)
            if ta_bits is not None
            else _nan_interval(ta["baseline"]["test_avg_norm"] if ta else float("nan"))
        )
    else:
        for t in tasks:
            per_task[t] = {
                "zeroshot": _nan_interval(zs_acc[t]),
                "finetuned": _nan_interval(ft_acc[t][t]),
                "gain": _nan_interval(ft_acc[t][t] - zs_acc[t]),
            }
        ret = _nan_interval(retention_pt)
        interference = _nan_interval(ta["baseline"]["test_avg_norm"] if ta else float("nan"))

    forgetting = bool(ret.hi < 1.0)  # NaN (no interval) compares False: not claimed
    learnt = all(per_task[t]["gain"].lo > 0 for t in tasks)
    return {
        "tasks": tasks,
        "intervals": have,
        "per_task": {t: {k: v.as_dict() for k, v in d.items()} for t, d in per_task.items()},
        "retention": ret.as_dict(),
        "task_arithmetic_norm": interference.as_dict(),
        "task_arithmetic_lambda": ta["baseline"]["lambda"] if ta else None,
        "forgetting": forgetting,
        "finetuning_learnt_every_task": learnt,
        "in_forgetting_regime": forgetting and learnt,
        "interference": bool(interference.hi < 1.0),
    }


def regime_md(r: Mapping[str, Any], *, suite: str, model: str) -> str:
    """The report's opening section: the regime first, then what may be concluded."""

    def iv(d: Mapping[str, float], signed: bool = False) -> str:
        return Interval(d["value"], d["lo"], d["hi"], d.get("level", 0.95)).pct(signed)

    tasks = r["tasks"]
    lines = [
        f"Suite {suite}, model {model}, {len(tasks)} tasks ({', '.join(tasks)}). Test accuracy %, "
        + (
            "95% paired-bootstrap intervals over test examples."
            if r["intervals"]
            else "no intervals (the evaluator gives no per-example correctness)."
        ),
        "",
        "| task | zero-shot | fine-tuned | fine-tuned − zero-shot |",
        "|---|---|---|---|",
    ]
    for t in tasks:
        p = r["per_task"][t]
        lines.append(
            f"| {t} | {iv(p['zeroshot'])} | {iv(p['finetuned'])} | {iv(p['gain'], True)} |"
        )
    ret, ta = r["retention"], r["task_arithmetic_norm"]
    lines += [
        "",
        f"- **Forgetting**: the fine-tuned models keep {iv(ret)}% of zero-shot control accuracy "
        f"(paper, ViT-B/32 8 tasks: {100 * PAPER['retention']:.0f}%).",
        f"- **Interference**: task arithmetic keeps {iv(ta)}% normalised accuracy at λ = "
        f"{r['task_arithmetic_lambda']} (paper: {100 * PAPER['task_arithmetic_norm'][0]:.0f}–"
        f"{100 * PAPER['task_arithmetic_norm'][1]:.0f}% on 8–20 tasks).",
        "",
    ]
    if r["in_forgetting_regime"]:
        lines.append(
            "**In the forgetting regime**: every fine-tuned model beats zero-shot on its task and "
            "control accuracy drops significantly; the editing results below test LiNeS's "
            "forgetting claim."
        )
    else:
        why = []
        if not r["forgetting"]:
            why.append("control accuracy does not drop significantly below zero-shot")
        if not r["finetuning_learnt_every_task"]:
            why.append("fine-tuning does not beat zero-shot significantly on every task")
        lines.append(
            f"**Not in the forgetting regime** ({'; '.join(why)}): no conclusion about LiNeS's "
            "forgetting claim is drawn from this run; the editing numbers below are reported "
            "as measured, not as evidence for or against it."
        )
    if not r["interference"]:
        lines.append(
            "\n**No significant interference**: task arithmetic is not significantly below the "
            "fine-tuned models, so the merging results cannot show LiNeS reducing interference."
        )
    return "\n".join(lines)
