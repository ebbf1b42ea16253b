"""Is linear layer scaling optimal? Every schedule of ``lines.schedules`` searched at an equal
budget of validation evaluations, then compared with LiNeS's linear schedule on test with paired
bootstrap intervals (Wang et al., ICLR 2025, leave the question open).

- Multi-task merging: θ = θ_0 + λ(ℓ)·τ_MTL, λ(ℓ) = α + β·f(ℓ), α by the paper's rule and
  (β, the schedule's own parameters) chosen on val by average normalised accuracy.
- Single-task editing: λ(ℓ) = γ + (1−γ)·f(ℓ), (γ, parameters) chosen on val by the reference's
  2·target + control criterion.

Equal budget: a schedule family with C parameter combinations gets ⌊B/C⌋ coefficients evenly
spread over the coefficient's range per combination, so every family uses at most B val
evaluations (the count each used is recorded). ``measured`` reads the per-block norms of τ and
θ_0 (computed here in memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lines.merging import make_method
from lines.merging.methods.wise_ft import WiseFT
from lines.merging.params import method_params
from lines.protocol import schemas
from lines.protocol.intervals import from_examples, unpack_all, verdict
from lines.protocol.schemas import write_output
from lines.protocol.scores import edit_score, mean, normalise, select, target_control
from lines.protocol.suite import Workbench
from lines.scaling import auto_alpha
from lines.schedules import BlockNorms, Schedule, parse_schedule


def block_norms(
    base: Mapping[str, torch.Tensor], tau: Mapping[str, torch.Tensor], block_of: Mapping[str, int]
) -> BlockNorms:
    """Per-block L2 norms of τ and of θ_0 over τ's floating keys (for ``measured``)."""
    num = max(block_of.values())
    t2, b2 = [0.0] * num, [0.0] * num
    for k, t in tau.items():
        ell = block_of[k] - 1
        t2[ell] += float(t.double().square().sum())
        b2[ell] += float(base[k].double().square().sum())
    return BlockNorms(tau=[x**0.5 for x in t2], base=[x**0.5 for x in b2])


def families_of(specs: Sequence[str]) -> dict[str, list[Schedule]]:
    """``NAME[:k=v,…]`` specs grouped by schedule family (``power:p=0.5`` and ``power:p=2`` are
    two parameter settings of ``power``), in order of first appearance."""
    out: dict[str, list[Schedule]] = {}
    for spec in specs:
        sched = parse_schedule(spec)
        out.setdefault(sched.name, []).append(sched)
    return out


def candidates(
    settings: Sequence[Schedule], budget: int, lo: float, hi: float
) -> list[tuple[Schedule, float]]:
    """(schedule, coefficient) pairs of one family within ``budget`` evaluations: each of its C
    parameter settings with ⌊budget/C⌋ coefficients evenly spread over [lo, hi] (the middle of
    the range when there is room for one)."""
    per = max(1, budget // len(settings))
    coefs = [float(c) for c in np.linspace(lo, hi, per)] if per > 1 else [(lo + hi) / 2]
    return [(sched, c) for sched in list(settings)[:budget] for c in coefs]


def merge_candidates(
    settings: Sequence[Schedule],
    budget: int,
    beta_max: float,
    alpha_mults: Sequence[float] = (1.0,),
) -> list[tuple[Schedule, float, float]]:
    """(schedule, α multiplier, β) triples of one family within ``budget`` evaluations. With one
    multiplier (1: α by the rule, the paper's protocol) this is :func:`candidates` over
    [0, beta_max]; with M multipliers the budget is shared: each setting gets ⌊budget/C⌋
    evaluations, ⌊that/M⌋ β values per multiplier (at least one), so searching α costs β
    resolution, never extra evaluations."""
    mults = [float(m) for m in alpha_mults] or [1.0]
    per_setting = max(1, budget // len(settings))
    per = max(1, per_setting // len(mults))
    betas = [float(c) for c in np.linspace(0.0, beta_max, per)] if per > 1 else [beta_max / 2]
    out = [(s, m, b) for s in list(settings)[:budget] for m in mults for b in betas]
    return out[: max(budget, len(mults))]


def _correct(bits: Mapping[str, str] | None) -> dict[str, np.ndarray] | None:
    return unpack_all(bits) if bits else None


def run_schedules(
    bench: Workbench,
    base: Mapping[str, Any],
    tasks: Sequence[str],
    finetuned: Mapping[str, Path],
    cfg: Mapping[str, Any],
    out_dir: Path,
    *,
    n_boot: int = 1000,
    boot_seed: int = 0,
) -> dict[str, Any]:
    """The schedule comparison on this suite; writes ``schedules.json``. ``cfg`` is the params'
    ``schedules`` section: ``specs`` (``NAME[:k=v,…]``, several settings of one family allowed),
    ``budget``, ``beta_max``, ``alpha_mults`` (merging: α = the rule's α × each multiplier, within
    the same budget; default [1]: the rule alone), ``methods`` (merges to rescale), ``edit_tasks``;
    method parameters under their pipeline keys as in ``merge``."""
    families = families_of(cfg["specs"])
    budget = int(cfg["budget"])
    ft_val = {t: base["finetuned"][t]["val"][t] for t in tasks}
    ft_test = {t: base["finetuned"][t]["test"][t] for t in tasks}
    bits_ft = (base.get("test_correct") or {}).get("finetuned", {})
    bits_zs = (base.get("test_correct") or {}).get("pretrained")
    ref_correct = (
        {t: unpack_all(bits_ft[t])[t] for t in tasks} if all(t in bits_ft for t in tasks) else None
    )
    res: dict[str, Any] = {
        "tasks": list(tasks),
        "budget": budget,
        "families": {f: [x.spec() for x in g] for f, g in families.items()},
        "num_blocks": bench.L,
        "alpha_mults": [float(m) for m in cfg.get("alpha_mults") or (1.0,)],
        "merging": {},
        "editing": {},
    }
    for name in cfg.get("methods", []):
        method = make_method(name, **method_params(name, cfg))
        tau, man = bench.task_vector(f"schedules-{name}", [finetuned[t] for t in tasks], method)
        norms = man["norms"]
        alpha = auto_alpha(norms["task_vector_sum"], norms["merged_task_vector"], len(tasks))
        bn = block_norms(bench.base, tau, bench.block_of)
        rows: dict[str, Any] = {}
        for fam, settings in tqdm(families.items(), desc=f"schedules {name}", leave=False):
            tried = []
            for sched, mult, beta in merge_candidates(
                settings, budget, float(cfg["beta_max"]), cfg.get("alpha_mults") or (1.0,)
            ):
                lam = sched.lambdas(bench.L, alpha * mult, beta, bn)
                acc = bench.accuracy(bench.theta(tau, lam), "val", tasks)
                tried.append(
                    {
                        "sched": sched,
                        "alpha": alpha * mult,
                        "beta": beta,
                        "lambdas": lam,
                        "val": acc,
                    }
                )
            best = select(tried, lambda r: mean(normalise(r["val"], ft_val).values()))
            acc, bits = bench.scored(bench.theta(tau, best["lambdas"]), "test", tasks)
            rows[fam] = {
                "schedule": best["sched"].spec(),
                "alpha": best["alpha"],
                "alpha_rule": alpha,
                "beta": best["beta"],
                "lambdas": best["lambdas"],
                "evaluations": len(tried),
                "val_avg_norm": mean(normalise(best["val"], ft_val).values()),
                "test_acc": acc,
                "test_avg_norm": mean(normalise(acc, ft_test).values()),
                "test_correct": bits,
            }
        _merge_intervals(rows, ref_correct, n_boot, boot_seed)
        res["merging"][name] = rows
        del tau
    zs_test = base["pretrained"]["test"]
    zs_val = base["pretrained"]["val"]
    for t in cfg.get("edit_tasks", []):
        tau, _ = bench.task_vector(f"schedules-edit-{t}", [finetuned[t]], WiseFT(gamma=1.0))
        bn = block_norms(bench.base, tau, bench.block_of)
        controls = [o for o in tasks if o != t]
        rows = {}
        for fam, settings in tqdm(families.items(), desc=f"schedules edit {t}", leave=False):
            tried = []
            for sched, g in candidates(settings, budget, 0.0, 1.0):
                lam = sched.lambdas(bench.L, g, 1.0 - g, bn)
                acc = bench.accuracy(bench.theta(tau, lam), "val", tasks)
                tc = target_control(acc, t, controls, ft_val[t], zs_val)
                tried.append({"sched": sched, "gamma": g, "lambdas": lam, **tc})
            best = select(tried, lambda r: edit_score(r["target_norm"], r["control_norm"]))
            acc, bits = bench.scored(bench.theta(tau, best["lambdas"]), "test", tasks)
            rows[fam] = {
                "schedule": best["sched"].spec(),
                "gamma": best["gamma"],
                "lambdas": best["lambdas"],
                "evaluations": len(tried),
                **target_control(acc, t, controls, ft_test[t], zs_test),
                "test_correct": bits,
            }
        _edit_intervals(rows, t, controls, bits_ft.get(t), bits_zs, n_boot, boot_seed)
        res["editing"][t] = rows
        del tau
    return write_output(Path(out_dir) / "schedules.json", schemas.SchedulesResult, res)


def _merge_intervals(
    rows: dict[str, Any], ref: Mapping[str, np.ndarray] | None, n_boot: int, seed: int
) -> None:
    """Δ average normalised accuracy of each family against ``linear``, paired bootstrap."""
    lin = _correct(rows.get("linear", {}).get("test_correct"))
    if lin is None or ref is None:
        return
    sets = {f: _correct(r["test_correct"]) for f, r in rows.items()}
    boot = from_examples([lin, ref, *(c for c in sets.values() if c)], n_boot, seed)
    for f, c in sets.items():
        if c is None or f == "linear":
            continue
        ci = boot.delta_norm(c, lin, ref)
        rows[f]["delta_vs_linear"] = ci.as_dict()
        rows[f]["verdict"] = verdict(ci, "beats linear", "worse than linear")


def _edit_intervals(
    rows: dict[str, Any],
    target: str,
    controls: Sequence[str],
    ft_bits: Mapping[str, str] | None,
    zs_bits: Mapping[str, str] | None,
    n_boot: int,
    seed: int,
) -> None:
    """Δ target (normalised by the fine-tuned model) and Δ control (each control task normalised
    by the zero-shot model, averaged) of each family against ``linear``."""
    lin = _correct(rows.get("linear", {}).get("test_correct"))
    ft, zs = _correct(ft_bits), _correct(zs_bits)
    if lin is None or ft is None or zs is None:
        return
    sets = {f: _correct(r["test_correct"]) for f, r in rows.items()}
    boot = from_examples([lin, ft, zs, *(c for c in sets.values() if c)], n_boot, seed)
    for f, c in sets.items():
        if c is None or f == "linear":
            continue
        models = {"a": c, "b": lin, "f": ft, "z": zs}
        d_t = boot.ci(lambda A: (A["a"][target] - A["b"][target]) / A["f"][target], models)
        d_c = boot.ci(
            lambda A: sum((A["a"][o] - A["b"][o]) / A["z"][o] for o in controls) / len(controls),
            models,
        )
        rows[f]["delta_target_vs_linear"] = d_t.as_dict()
        rows[f]["delta_control_vs_linear"] = d_c.as_dict()
        rows[f]["verdict"] = (
            f"target {verdict(d_t, 'higher', 'lower')}, control {verdict(d_c, 'higher', 'lower')}"
        )
