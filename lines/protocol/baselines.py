"""The learned-baselines experiment (issue 17): task arithmetic + LiNeS against Fisher merging,
AdaMerging (task- and layer-wise), aTLAS and output ensembles on one suite, each with its test
accuracy, its Δ against TA + LiNeS (95% paired-bootstrap interval) and its cost on this machine
(:mod:`lines.protocol.learned`). Writes ``learned.json``."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lines.errors import LinesError
from lines.io import save_state_dict
from lines.merging.methods.task_arithmetic import TaskArithmetic
from lines.merging.methods.wise_ft import WiseFT
from lines.protocol import schemas
from lines.protocol.intervals import from_examples, pack, unpack_all, verdict
from lines.protocol.learned import (
    Cost,
    Differentiable,
    combine,
    ensemble_correct,
    fisher_diagonal,
    fisher_merge,
    lazy,
    learn_coefficients,
    measured,
    nbytes,
)
from lines.protocol.merge import ft_reference, sweep, test_report
from lines.protocol.options import LEARNED_METHODS as METHODS
from lines.protocol.schemas import write_output
from lines.protocol.suite import Workbench
from lines.scaling import auto_alpha, lines_lambdas


def run_baselines(
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
    """Every method of ``cfg['methods']`` (``METHODS``) on ``tasks``; ``cfg`` is the params'
    ``learned`` section (``betas``, ``fisher_examples``, ``fisher_labels``, ``fisher_floor``,
    ``steps``, ``lr``, ``batch_size``, ``init``, ``adamerging_inputs``, ``ensemble_combine``,
    ``seed``). The suite (``bench.evaluator``) must be :class:`Differentiable`."""
    suite = bench.evaluator
    if not isinstance(suite, Differentiable):
        raise LinesError(
            f"{type(suite).__name__} does not support the learned baselines (it needs model, "
            "logits and labels: lines.protocol.learned.Differentiable)"
        )
    methods = list(cfg.get("methods") or [])
    if not methods:  # the stage is in every pipeline; a profile may leave it out this way
        res = {"skipped": "learned.methods is empty", "tasks": list(tasks)}
        res |= {"adamerging_inputs": str(cfg.get("adamerging_inputs", "test")), "methods": {}}
        return write_output(Path(out_dir) / "learned.json", schemas.LearnedResult, res)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise LinesError(f"learned.methods: unknown {unknown[0]!r} (known: {', '.join(METHODS)})")
    if "lines" not in methods:
        methods.insert(0, "lines")  # every Δ and cost is against it
    seed = int(cfg.get("seed", 0))
    ft_val, ft_test = ft_reference(base, "val", tasks), ft_reference(base, "test", tasks)
    L, dev = bench.L, bench.device
    # Learned coefficients, Fishers and ensembles run the suite's module: its weights' device.
    mdev = next(iter(suite.model.parameters())).device

    def on(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(mdev) for k, v in sd.items()}

    n_test = sum(suite.num_examples(t, "test") for t in tasks)
    n_val = sum(suite.num_examples(t, "val") for t in tasks)
    fts = [finetuned[t] for t in tasks]
    inputs = str(cfg.get("adamerging_inputs", "test"))
    if inputs not in ("test", "val"):
        raise LinesError(f"learned.adamerging_inputs '{inputs}': choose test or val")
    res: dict[str, Any] = {
        "tasks": list(tasks),
        "num_blocks": L,
        # where the forward/backward passes (the cost) ran; θ may be assembled elsewhere (bench)
        "device": str(mdev),
        "adamerging_inputs": inputs,
        "methods": {},
    }

    def record(name: str, acc: Mapping[str, float], bits: Any, cost: Cost, **extra: Any) -> None:
        rep = test_report(acc, ft_test)
        if bits is not None:
            rep["test_correct"] = bits
        res["methods"][name] = {**extra, **rep, "cost": cost.as_dict()}

    # -- TA + LiNeS: the reference (β on val over the grid, α by the rule, one test pass) -----
    cost = Cost()
    with measured(cost, mdev):
        tau, man = bench.task_vector("learned-ta", fts, TaskArithmetic())
        norms = man["norms"]
        alpha = auto_alpha(norms["task_vector_sum"], norms["merged_task_vector"], len(tasks))
        betas = [float(b) for b in cfg.get("betas") or (0.2, 0.4, 0.6, 0.8, 1.0)]
        beta, _ = sweep(
            lambda b, tau=tau, alpha=alpha: bench.accuracy(
                bench.theta(tau, lines_lambdas(L, alpha, b)), "val", tasks
            ),
            betas,
            ft_val,
        )
        theta = bench.theta(tau, lines_lambdas(L, alpha, beta))
        acc, bits = bench.scored(theta, "test", tasks)
    cost.forward = len(betas) * n_val + n_test
    cost.held_bytes = nbytes(bench.base) + nbytes(tau) + nbytes(theta)
    record("lines", acc, bits, cost, alpha=alpha, beta=beta, val_evaluations=len(betas))
    del tau, theta

    # -- task vectors, one per task (AdaMerging, aTLAS) ------------------------------------------
    taus: list[dict[str, torch.Tensor]] = []
    if any(m in methods for m in ("adamerging_task", "adamerging_layer", "atlas")):
        for t in tasks:
            tv, _ = bench.task_vector(f"learned-tau-{t}", [finetuned[t]], WiseFT(gamma=1.0))
            taus.append(on(tv))
    base_m = on(bench.base)
    learn = {
        "adamerging_task": ("entropy", inputs, "task", None),
        "adamerging_layer": ("entropy", inputs, "tensor", (0.0, 1.0)),
        "atlas": ("ce", "val", "tensor", None),
    }
    for name in [m for m in methods if m in learn]:
        loss, split, gran, clamp = learn[name]
        cost = Cost()
        with measured(cost, mdev):
            coefs, group, history = learn_coefficients(
                suite,
                base_m,
                taus,
                tasks,
                loss=loss,
                split=split,
                granularity=gran,
                steps=int(cfg.get("steps", 100)),
                lr=float(cfg.get("lr", 1e-3)),
                batch_size=int(cfg.get("batch_size", 16)),
                init=float(cfg.get("init", 0.3)),
                clamp=clamp,
                seed=seed,
                cost=cost,
                label=name,
            )
            with torch.no_grad():
                theta = combine(base_m, taus, coefs, group)
            acc, bits = bench.scored(theta, "test", tasks)
        cost.forward += n_test
        # θ_0, N task vectors, θ(λ) and its gradient are held together while learning
        cost.held_bytes = nbytes(bench.base) + sum(nbytes(t) for t in taus) + 2 * nbytes(theta)
        c = coefs.cpu()
        record(
            name,
            acc,
            bits,
            cost,
            loss=loss,
            inputs=split,
            granularity=gran,
            coefficients={
                "mean_per_task": {t: float(c[i].mean()) for i, t in enumerate(tasks)},
                "min": float(c.min()),
                "max": float(c.max()),
                "count": int(c.numel()),
            },
            loss_first_last=[history[0], history[-1]] if history else [],
        )
        del theta
    del taus, base_m

    # -- Fisher merging: Fishers to disk, then a streaming merge -------------------------------
    if "fisher" in methods:
        cost = Cost()
        with measured(cost, mdev), tempfile.TemporaryDirectory(dir=bench.tmp) as tmp:
            fisher_paths = []
            held = 0
            for t in tasks:
                sd = on(bench.load(finetuned[t]))
                f = fisher_diagonal(
                    suite,
                    sd,
                    t,
                    "val",
                    int(cfg.get("fisher_examples", 64)),
                    labels=str(cfg.get("fisher_labels", "sampled")),
                    seed=seed,
                    cost=cost,
                )
                held = max(held, nbytes(sd) + 2 * nbytes(f))  # θ_t, its gradient, F_t
                p = Path(tmp) / f"fisher-{t}.safetensors"
                save_state_dict(p, {k: v.float().cpu().contiguous() for k, v in f.items()})
                fisher_paths.append(p)
                del sd, f
            theta = fisher_merge(
                [lazy(p) for p in fts],
                [lazy(p) for p in fisher_paths],
                floor=float(cfg.get("fisher_floor", 1e-6)),
            )
            theta = {k: v.to(dev) for k, v in theta.items()}
            acc, bits = bench.scored(theta, "test", tasks)
        cost.forward += n_test
        cost.held_bytes = max(held, nbytes(theta))
        record(
            "fisher",
            acc,
            bits,
            cost,
            examples_per_task=int(cfg.get("fisher_examples", 64)),
            labels=str(cfg.get("fisher_labels", "sampled")),
        )
        del theta

    # -- output ensemble of the fine-tuned models (N models' forwards per example) ------------
    if "ensemble" in methods:
        cost = Cost()
        combine_by = str(cfg.get("ensemble_combine", "logits"))
        with measured(cost, mdev):
            members = [on(bench.load(p)) for p in fts]
            correct = ensemble_correct(
                suite, members, tasks, "test", combine_by=combine_by, cost=cost
            )
        cost.held_bytes = sum(nbytes(m) for m in members)
        acc = {t: float(c.float().mean()) for t, c in correct.items()}
        record(
            "ensemble",
            acc,
            {t: pack(c) for t, c in correct.items()},
            cost,
            combine=combine_by,
            note="not a single model: N forward passes per input",
        )
        del members

    _intervals(res, base, tasks, n_boot, boot_seed)
    return write_output(Path(out_dir) / "learned.json", schemas.LearnedResult, res)


def _intervals(
    res: dict[str, Any], base: Mapping[str, Any], tasks: Sequence[str], n_boot: int, seed: int
) -> None:
    """Δ average normalised test accuracy of each method against TA + LiNeS (paired)."""
    ft_bits = (base.get("test_correct") or {}).get("finetuned", {})
    if not all(t in ft_bits for t in tasks):
        return
    ref = {t: unpack_all(ft_bits[t])[t] for t in tasks}
    rows = res["methods"]
    lin_bits = rows["lines"].get("test_correct")
    if lin_bits is None:
        return
    lin = unpack_all(lin_bits)
    sets = {m: unpack_all(r["test_correct"]) for m, r in rows.items() if r.get("test_correct")}
    boot = from_examples([lin, ref, *sets.values()], n_boot, seed)
    for m, c in sets.items():
        if m == "lines":
            continue
        ci = boot.delta_norm(c, lin, ref)
        rows[m]["delta_vs_lines"] = ci.as_dict()
        rows[m]["verdict"] = verdict(ci, "beats TA + LiNeS", "below TA + LiNeS")
