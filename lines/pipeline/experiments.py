"""Stages ``base_eval``, ``edit``, ``merge``, ``soups`` and ``wiseft`` of the embedded experiment,
following the paper's protocol (Wang et al., ICLR 2025):

- single-task editing (Figs. 1-2): for each fine-tuned model and γ, accuracy on its own task
  (target, normalised by the fine-tuned accuracy) and on the others (control, normalised by the
  pretrained-with-heads accuracy); γ chosen on val by 2·target + control, as the reference;
- multi-task merging: each method with and without LiNeS; the uniform λ (baselines) or β (LiNeS,
  α from the rule) chosen on val by average normalised accuracy, reported on test;
- soups of one task's seeds (uniform, greedy) with and without LiNeS;
- WiSE-FT over γ with and without LiNeS: target against the other tasks as the shift.

All task vectors go through ``lines`` (engine + methods); sweeps reuse τ_MTL in memory, one
scaled add per tensor per point.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lines.engine import build_task_vector
from lines.families import partition_keys
from lines.io import load_state_dict
from lines.merging import make_method
from lines.merging.greedy import greedy_soup
from lines.merging.methods.uniform_soup import UniformSoup
from lines.merging.methods.wise_ft import WiseFT
from lines.pipeline.common import mean, read_json, write_json
from lines.pipeline.evaluation import Evaluator, normalise, scaled_state_dict
from lines.scaling import auto_alpha, lines_lambdas, single_task_lambdas


def ft_path(finetune_dir: Path, task: str) -> Path:
    return Path(finetune_dir) / task / "model.safetensors"


def _split_limits(max_val: int, max_test: int) -> dict[str, int]:
    return {"val": max_val, "test": max_test}


def run_base_eval(
    evaluator: Evaluator, pretrained: Path, finetune_dir: Path, tasks: Sequence[str], out: Path
) -> dict[str, Any]:
    """Accuracies of θ_0 (with heads) and of every fine-tuned model on every task, val and test:
    the normalisers of every other stage."""
    res: dict[str, Any] = {"pretrained": {}, "finetuned": {}}
    base = load_state_dict(pretrained)
    for split in ("val", "test"):
        res["pretrained"][split] = evaluator.evaluate(base, split)
    for t in tqdm(tasks, desc="base_eval", unit="model"):
        sd = load_state_dict(ft_path(finetune_dir, t))
        res["finetuned"][t] = {split: evaluator.evaluate(sd, split) for split in ("val", "test")}
    res["examples"] = {
        split: {t: evaluator.num_examples(t, split) for t in tasks} for split in ("val", "test")
    }
    write_json(out, res)
    return res


def _target_control(
    acc: Mapping[str, float], task: str, ft_ref: Mapping[str, float], pre_ref: Mapping[str, float]
) -> dict[str, float]:
    others = [o for o in acc if o != task]
    return {
        "target_acc": acc[task],
        "target_norm": acc[task] / ft_ref[task] if ft_ref[task] > 0 else float("nan"),
        "control_acc": mean(acc[o] for o in others),
        "control_norm": mean(acc[o] / pre_ref[o] for o in others if pre_ref[o] > 0),
    }


class _TauCache:
    """Task vectors written once through the engine into a scratch folder, then held in memory."""

    def __init__(self, pretrained: Path, family: str | None, policy: str):
        self.pretrained = Path(pretrained)
        self.base = load_state_dict(pretrained)
        self.part = partition_keys(list(self.base), family, policy)
        self.family, self.policy = family, policy
        self.tmp = Path(tempfile.mkdtemp(prefix="lines-tau-"))

    def build(
        self, name: str, finetuned: Sequence[Path], method: Any, norm: str = "l1"
    ) -> tuple[dict, dict]:
        path = self.tmp / f"{name}.safetensors"
        man = build_task_vector(
            self.pretrained,
            list(finetuned),
            method,
            path,
            family=self.family,
            block_policy=self.policy,
            norm=norm,  # type: ignore[arg-type]
            overwrite=True,
            progress=False,
        )
        return load_state_dict(path), man

    def theta(
        self, tau: Mapping[str, torch.Tensor], lambdas: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        return scaled_state_dict(self.base, tau, self.part, lambdas)

    @property
    def L(self) -> int:
        return self.part.num_blocks

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_edit(
    evaluator: Evaluator,
    pretrained: Path,
    finetune_dir: Path,
    base_eval: Mapping[str, Any],
    tasks: Sequence[str],
    gammas: Sequence[float],
    out_dir: Path,
    *,
    family: str | None = None,
    block_policy: str = "reference",
) -> dict[str, Any]:
    """Single-task LiNeS editing over a γ grid, target vs control on val and test."""
    cache = _TauCache(pretrained, family, block_policy)
    pre = base_eval["pretrained"]
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"gammas": list(gammas), "tasks": {}}
    try:
        for t in tqdm(tasks, desc="edit", unit="task"):
            tau, _ = cache.build(f"edit-{t}", [ft_path(finetune_dir, t)], WiseFT(gamma=1.0))
            ft = base_eval["finetuned"][t]
            per_gamma = []
            for g in gammas:
                rec: dict[str, Any] = {"task": t, "gamma": g}
                if g == 1.0:
                    accs = {s: ft[s] for s in ("val", "test")}  # γ = 1 is the fine-tuned model
                else:
                    sd = cache.theta(tau, single_task_lambdas(cache.L, g))
                    accs = {s: evaluator.evaluate(sd, s) for s in ("val", "test")}
                for s in ("val", "test"):
                    tc = _target_control(accs[s], t, ft[s], pre[s])
                    rec.update({f"{s}_{k}": v for k, v in tc.items()})
                rec["val_score"] = 2 * rec["val_target_norm"] + rec["val_control_norm"]
                per_gamma.append(rec)
                rows.append(rec)
            best = max(per_gamma, key=lambda r: r["val_score"])
            summary["tasks"][t] = {
                "best_gamma": best["gamma"],
                "best": best,
                "finetuned": per_gamma[-1] if gammas[-1] == 1.0 else None,
            }
    finally:
        cache.close()
    summary["average_at_best"] = {
        k: mean(summary["tasks"][t]["best"][k] for t in tasks)
        for k in ("test_target_norm", "test_control_norm", "test_target_acc", "test_control_acc")
    }
    write_json(Path(out_dir) / "edit.json", summary)
    _write_csv(Path(out_dir) / "edit_sweep.csv", rows)
    return summary


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{v:.6g}" if isinstance(v, float) else v) for c, v in r.items()})
    tmp.replace(path)


def _select(
    evaluator: Evaluator,
    make_theta: Callable[[float], dict[str, torch.Tensor]],
    grid: Sequence[float],
    ft_val: Mapping[str, float],
    label: str,
) -> tuple[float, list[dict[str, Any]]]:
    """Evaluate every grid point on val; return the coefficient with the best average
    normalised accuracy and the sweep."""
    sweep = []
    for c in tqdm(grid, desc=label, unit="pt", leave=False):
        acc = evaluator.evaluate(make_theta(c), "val")
        nrm = normalise(acc, ft_val)
        sweep.append(
            {
                "coef": c,
                "val_avg_norm": mean(nrm.values()),
                "val_avg_acc": mean(acc.values()),
                **{f"val_acc_{t}": a for t, a in acc.items()},
            }
        )
    best = max(sweep, key=lambda r: r["val_avg_norm"])
    return best["coef"], sweep


def _test_report(
    evaluator: Evaluator, sd: Mapping[str, torch.Tensor], ft_test: Mapping[str, float]
) -> dict[str, Any]:
    acc = evaluator.evaluate(sd, "test")
    nrm = normalise(acc, ft_test)
    return {
        "test_acc": acc,
        "test_norm": nrm,
        "test_avg_acc": mean(acc.values()),
        "test_avg_norm": mean(nrm.values()),
    }


def method_params(name: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's per-method parameters (params.yaml ``merge`` section) for ``make_method``."""
    if name == "ties":
        return {"density": cfg["ties_density"], "scope": cfg.get("ties_scope", "global")}
    if name == "consensus":
        return {"k": cfg["consensus_k"], "tall_lambda": cfg["tall_lambda"]}
    if name == "dare":
        return {"drop_rate": cfg.get("dare_drop_rate", 0.9), "seed": cfg.get("seed", 0)}
    if name in ("magnitude_prune",):
        return {"density": cfg["ties_density"]}
    return {}


def run_merge(
    evaluator: Evaluator,
    pretrained: Path,
    finetune_dir: Path,
    base_eval: Mapping[str, Any],
    tasks: Sequence[str],
    cfg: Mapping[str, Any],
    out_dir: Path,
    *,
    family: str | None = None,
) -> dict[str, Any]:
    """Each method with and without LiNeS, coefficients chosen on val, reported on test."""
    policy = cfg.get("block_policy", "reference")
    cache = _TauCache(pretrained, family, policy)
    ft_val = {t: base_eval["finetuned"][t]["val"][t] for t in tasks}
    ft_test = {t: base_eval["finetuned"][t]["test"][t] for t in tasks}
    results: dict[str, Any] = {
        "tasks": list(tasks),
        "block_policy": policy,
        "num_blocks": cache.L,
        "methods": {},
    }
    rows: list[dict[str, Any]] = []
    try:
        for name in cfg["methods"]:
            method = make_method(name, **method_params(name, cfg))
            tau, man = cache.build(
                f"merge-{name}",
                [ft_path(finetune_dir, t) for t in tasks],
                method,
                cfg.get("alpha_norm", "l1"),
            )
            grid = cfg.get(f"{name}_lambdas") or cfg["lambdas"]
            betas = cfg.get(f"{name}_betas") or cfg["betas"]
            lam, sweep_b = _select(
                evaluator,
                lambda c, tau=tau: cache.theta(tau, [c] * cache.L),
                grid,
                ft_val,
                f"{name} λ",
            )
            norms = man["norms"]
            alpha = auto_alpha(norms["task_vector_sum"], norms["merged_task_vector"], len(tasks))
            beta, sweep_l = _select(
                evaluator,
                lambda b, tau=tau, alpha=alpha: cache.theta(tau, lines_lambdas(cache.L, alpha, b)),
                betas,
                ft_val,
                f"{name} β",
            )
            base_rep = _test_report(evaluator, cache.theta(tau, [lam] * cache.L), ft_test)
            lines_rep = _test_report(
                evaluator, cache.theta(tau, lines_lambdas(cache.L, alpha, beta)), ft_test
            )
            results["methods"][name] = {
                "params": method.params(),
                "input_sha256": [c["sha256"] for c in man["inputs"]["finetuned"]],
                "pretrained_sha256": man["inputs"]["pretrained"]["sha256"],
                "baseline": {"lambda": lam, **base_rep},
                "lines": {
                    "alpha": alpha,
                    "beta": beta,
                    "lambdas": lines_lambdas(cache.L, alpha, beta),
                    **lines_rep,
                },
                "norms": norms,
            }
            rows += [{"method": name, "variant": "baseline", **r} for r in sweep_b]
            rows += [{"method": name, "variant": "lines", **r} for r in sweep_l]
    finally:
        cache.close()
    write_json(Path(out_dir) / "merge.json", results)
    _write_csv(Path(out_dir) / "merge_sweep.csv", rows)
    # One file per series, so `dvc plots show` draws each method and variant as its own line.
    for name in cfg["methods"]:
        for variant in ("baseline", "lines"):
            series = [r for r in rows if r["method"] == name and r["variant"] == variant]
            _write_csv(Path(out_dir) / "sweeps" / f"{name}-{variant}.csv", series)
    return results


def run_soups(
    evaluator: Evaluator,
    pretrained: Path,
    seed_models: Sequence[Path],
    base_eval: Mapping[str, Any],
    task: str,
    gammas: Sequence[float],
    out_dir: Path,
    *,
    family: str | None = None,
    block_policy: str = "reference",
) -> dict[str, Any]:
    """Uniform and greedy soups of one task's seeds, each with and without LiNeS (the soup's task
    vector edited with λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1), γ chosen on val by 2·target + control)."""
    cache = _TauCache(pretrained, family, block_policy)
    pre, ft = base_eval["pretrained"], base_eval["finetuned"][task]
    res: dict[str, Any] = {"task": task, "num_models": len(seed_models), "soups": {}}
    try:
        individual = []
        for p in seed_models:
            acc = {s: evaluator.evaluate(load_state_dict(p), s) for s in ("val", "test")}
            individual.append(
                {
                    "model": str(p),
                    **{
                        f"{s}_{k}": v
                        for s in ("val", "test")
                        for k, v in _target_control(acc[s], task, ft[s], pre[s]).items()
                    },
                }
            )
        res["individual"] = individual

        def val_target(path: Path) -> float:
            return evaluator.evaluate(load_state_dict(path), "val", [task])[task]

        scratch = Path(tempfile.mkdtemp(prefix="lines-soup-"))
        try:
            g_man = greedy_soup(
                pretrained,
                list(seed_models),
                [r["val_target_acc"] for r in individual],
                val_target,
                scratch / "greedy.safetensors",
                family=family,
                block_policy=block_policy,
                progress=False,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        selected = g_man["greedy_soup"]["selected"]
        for kind, members in (
            ("uniform", list(seed_models)),
            ("greedy", [seed_models[i] for i in selected]),
        ):
            method = UniformSoup() if len(members) > 1 else WiseFT(gamma=1.0)
            tau, _ = cache.build(f"soup-{kind}", members, method)
            entry: dict[str, Any] = {"members": [str(m) for m in members]}
            sd = cache.theta(tau, [1.0] * cache.L)
            accs = {s: evaluator.evaluate(sd, s) for s in ("val", "test")}
            entry["plain"] = {
                f"{s}_{k}": v
                for s in ("val", "test")
                for k, v in _target_control(accs[s], task, ft[s], pre[s]).items()
            }
            best = None
            for g in gammas:
                sd = cache.theta(tau, single_task_lambdas(cache.L, g))
                acc_v = evaluator.evaluate(sd, "val")
                tc = _target_control(acc_v, task, ft["val"], pre["val"])
                score = 2 * tc["target_norm"] + tc["control_norm"]
                if best is None or score > best[0]:
                    best = (score, g)
            assert best is not None
            sd = cache.theta(tau, single_task_lambdas(cache.L, best[1]))
            acc_t = evaluator.evaluate(sd, "test")
            entry["lines"] = {
                "gamma": best[1],
                **{
                    f"test_{k}": v
                    for k, v in _target_control(acc_t, task, ft["test"], pre["test"]).items()
                },
            }
            res["soups"][kind] = entry
        res["greedy_history"] = g_man["greedy_soup"]["history"]
    finally:
        cache.close()
    write_json(Path(out_dir) / "soups.json", res)
    return res


def run_wiseft(
    evaluator: Evaluator,
    pretrained: Path,
    finetune_dir: Path,
    base_eval: Mapping[str, Any],
    tasks: Sequence[str],
    gammas: Sequence[float],
    lines_gamma: float,
    out_dir: Path,
    *,
    family: str | None = None,
    block_policy: str = "reference",
) -> dict[str, Any]:
    """WiSE-FT θ_0 + γτ against WiSE-FT of the LiNeS-edited model θ_0 + γ·λ(ℓ)τ (λ from
    ``lines_gamma``): target accuracy against accuracy on the other tasks (the shift), on test."""
    cache = _TauCache(pretrained, family, block_policy)
    pre = base_eval["pretrained"]
    rows = []
    try:
        for t in tqdm(tasks, desc="wiseft", unit="task"):
            tau, _ = cache.build(f"wiseft-{t}", [ft_path(finetune_dir, t)], WiseFT(gamma=1.0))
            ft = base_eval["finetuned"][t]
            edit = single_task_lambdas(cache.L, lines_gamma)
            for g in gammas:
                for variant, lams in (
                    ("wiseft", [g] * cache.L),
                    ("wiseft+lines", [g * x for x in edit]),
                ):
                    acc = evaluator.evaluate(cache.theta(tau, lams), "test")
                    rows.append(
                        {
                            "task": t,
                            "variant": variant,
                            "gamma": g,
                            **_target_control(acc, t, ft["test"], pre["test"]),
                        }
                    )
    finally:
        cache.close()
    res = {"tasks": list(tasks), "gammas": list(gammas), "lines_gamma": lines_gamma, "rows": rows}
    write_json(Path(out_dir) / "wiseft.json", res)
    _write_csv(Path(out_dir) / "wiseft_sweep.csv", rows)
    return res


def load_base_eval(path: Path) -> dict[str, Any]:
    return read_json(path)
