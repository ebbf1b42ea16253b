"""Multi-task merging with and without LiNeS (Wang et al., ICLR 2025, Sec. 4.2).

For each method g: τ_MTL = g(τ_1..τ_N) through the engine, then
- baseline: θ_0 + λ·τ_MTL, the uniform λ chosen on val;
- LiNeS:    θ_0 + λ(ℓ)·τ_MTL with λ(ℓ) = α + β(ℓ−1)/(L−1), α = (1/N)·‖τ_sum‖₁/‖τ_MTL‖₁ (the
            reference's rule) and β chosen on val;
both by average normalised accuracy on val (:mod:`lines.protocol.scores`), reported on test.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lines.errors import LinesError
from lines.merging import make_method
from lines.merging.params import method_params
from lines.protocol.results import write_csv
from lines.protocol.schemas import MergeResult, read_output, write_output
from lines.protocol.scores import mean, normalise, select
from lines.protocol.suite import Workbench
from lines.scaling import auto_alpha, lines_lambdas


def sweep(
    evaluate: Callable[[float], Mapping[str, float]],
    grid: Sequence[float],
    ref_val: Mapping[str, float],
    label: str = "",
    timing: list[float] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Evaluate every grid point on val; the coefficient with the best average normalised
    accuracy (``select``'s rule: NaN never wins, the first of equal scores wins) and the rows."""
    rows = []
    for c in tqdm(grid, desc=label, unit="pt", leave=False, disable=not label):
        t0 = time.perf_counter()
        acc = evaluate(c)
        if timing is not None:
            timing.append(time.perf_counter() - t0)
        rows.append(
            {
                "coef": float(c),
                "val_avg_norm": mean(normalise(acc, ref_val).values()),
                "val_avg_acc": mean(acc.values()),
                **{f"val_acc_{t}": v for t, v in acc.items()},
            }
        )
    best = select(rows, lambda r: r["val_avg_norm"])
    return best["coef"], rows


def test_report(acc: Mapping[str, float], ref: Mapping[str, float]) -> dict[str, Any]:
    """Absolute and normalised test accuracy, per task and on average."""
    nrm = normalise(acc, ref)
    return {
        "test_acc": dict(acc),
        "test_norm": nrm,
        "test_avg_acc": mean(acc.values()),
        "test_avg_norm": mean(nrm.values()),
    }


def ft_reference(base: Mapping[str, Any], split: str, tasks: Sequence[str]) -> dict[str, float]:
    """Each fine-tuned model's accuracy on its own task: the normaliser of merged models."""
    return {t: base["finetuned"][t][split][t] for t in tasks}


def run_merge(
    bench: Workbench,
    base: Mapping[str, Any],
    tasks: Sequence[str],
    finetuned: Sequence[Path],
    cfg: Mapping[str, Any],
    out_dir: Path,
    *,
    header: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Each method of ``cfg['methods']`` with and without LiNeS; writes ``merge.json``,
    ``merge_sweep.csv`` and one CSV per series under ``sweeps/`` (for ``dvc plots``).

    ``cfg`` is the params' ``merge`` section: ``lambdas``/``betas`` (or ``<method>_lambdas``/
    ``<method>_betas``), ``alpha_norm`` and the methods' own keys (see ``method_params``)."""
    ft_val, ft_test = ft_reference(base, "val", tasks), ft_reference(base, "test", tasks)
    L = bench.L
    alpha_norm = cfg.get("alpha_norm") or "l1"
    res: dict[str, Any] = {
        **(header or {}),
        "tasks": list(tasks),
        "block_policy": bench.part.policy,
        "num_blocks": L,
        "alpha_norm": alpha_norm,
        "methods": {},
    }
    rows: list[dict[str, Any]] = []
    for name in cfg["methods"]:
        method = make_method(name, **method_params(name, cfg))
        t0 = time.perf_counter()
        tau, man = bench.task_vector(f"merge-{name}", finetuned, method, alpha_norm)
        build_s = time.perf_counter() - t0
        lam_grid = [float(x) for x in (cfg.get(f"{name}_lambdas") or cfg["lambdas"])]
        beta_grid = [float(x) for x in (cfg.get(f"{name}_betas") or cfg["betas"])]
        times: list[float] = []
        lam, sweep_b = sweep(
            lambda c, tau=tau: bench.accuracy(bench.theta(tau, [c] * L), "val", tasks),
            lam_grid,
            ft_val,
            f"{name} λ",
            times,
        )
        norms = man["norms"]
        alpha = auto_alpha(norms["task_vector_sum"], norms["merged_task_vector"], len(tasks))
        beta, sweep_l = sweep(
            lambda c, tau=tau, alpha=alpha: bench.accuracy(
                bench.theta(tau, lines_lambdas(L, alpha, c)), "val", tasks
            ),
            beta_grid,
            ft_val,
            f"{name} β",
            times,
        )
        lines_l = lines_lambdas(L, alpha, beta)
        base_acc, base_bits = bench.scored(bench.theta(tau, [lam] * L), "test", tasks)
        lines_acc, lines_bits = bench.scored(bench.theta(tau, lines_l), "test", tasks)
        base_rep, lines_rep = test_report(base_acc, ft_test), test_report(lines_acc, ft_test)
        if base_bits is not None and lines_bits is not None:
            base_rep["test_correct"], lines_rep["test_correct"] = base_bits, lines_bits
        res["methods"][name] = {
            "params": method.params(),
            "input_sha256": [c["sha256"] for c in man["inputs"]["finetuned"]],
            "pretrained_sha256": man["inputs"]["pretrained"]["sha256"],
            "grids": {"lambda": lam_grid, "beta": beta_grid},
            "baseline": {"lambda": lam, **base_rep},
            "lines": {"alpha": alpha, "beta": beta, "lambdas": lines_l, **lines_rep},
            "norms": norms,
            "timing": {
                "build_task_vector_s": round(build_s, 3),
                "val_points": len(times),
                "val_point_mean_s": round(mean(times), 4),
            },
        }
        rows += [{"method": name, "variant": "baseline", **r} for r in sweep_b]
        rows += [{"method": name, "variant": "lines", **r} for r in sweep_l]
        del tau
    res["examples"] = bench.examples(tasks)
    res["device"] = str(bench.device)
    out_dir = Path(out_dir)
    res = write_output(out_dir / "merge.json", MergeResult, res)
    write_csv(out_dir / "merge_sweep.csv", rows)
    # One file per series, so `dvc plots show` draws each method and variant as its own line.
    for name in cfg["methods"]:
        for variant in ("baseline", "lines"):
            series = [r for r in rows if r["method"] == name and r["variant"] == variant]
            write_csv(out_dir / "sweeps" / f"{name}-{variant}.csv", series)
    return res


def gather_merge(parts: Sequence[Path], out_dir: Path) -> dict[str, Any]:
    """One ``merge.json`` (and its CSVs) from per-method runs of :func:`run_merge` (``parts``:
    their output folders, one method or more each), so the methods of a sweep can run as
    separate processes (one GPU each) and the report reads one file. The parts must agree on
    everything but their methods (tasks, blocks, policy, α norm, examples); a method in two parts
    is an error."""
    merged: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = []
    shared = ("tasks", "block_policy", "num_blocks", "alpha_norm", "examples")
    for part in parts:
        res = read_output(Path(part) / "merge.json", MergeResult)
        if merged is None:
            merged = {**res, "methods": {}}
        else:
            diff = [k for k in shared if res.get(k) != merged.get(k)]
            if diff:
                raise LinesError(
                    f"{part}/merge.json: {', '.join(diff)} differ from {parts[0]}/merge.json"
                )
        twice = sorted(set(res["methods"]) & set(merged["methods"]))
        if twice:
            raise LinesError(f"{part}/merge.json: method(s) {', '.join(twice)} in two parts")
        merged["methods"].update(res["methods"])
        with open(Path(part) / "merge_sweep.csv", newline="") as f:
            rows += list(csv.DictReader(f))  # values stay the exact text run_merge wrote
        for f in sorted((Path(part) / "sweeps").glob("*.csv")):
            (Path(out_dir) / "sweeps").mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "sweeps" / f.name).write_text(f.read_text())
    if merged is None:
        raise LinesError("gather_merge: no parts given")
    out_dir = Path(out_dir)
    res = write_output(out_dir / "merge.json", MergeResult, merged)
    write_csv(out_dir / "merge_sweep.csv", rows)
    return res
