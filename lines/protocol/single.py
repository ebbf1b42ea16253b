"""The single-model stages of the protocol (Wang et al., ICLR 2025):

- single-task editing (Sec. 4.1, Figs. 1-2): θ_0 + λ(ℓ)τ_t with λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1);
  target = t (normalised by the fine-tuned model), control = the other tasks (normalised by the
  zero-shot model); γ chosen on val by 2·target_norm + control_norm, as the reference;
- soups (Sec. 4.3): uniform and greedy soups (Wortsman et al. 2022) of one task's models, each
  plain and with its soup task vector edited by LiNeS (γ chosen as for editing);
- WiSE-FT (Wortsman et al. 2022) θ_0 + γτ against θ_0 + γ·λ(ℓ)τ: target against shifted tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lines.merging.greedy import greedy_soup
from lines.merging.methods.uniform_soup import UniformSoup
from lines.merging.methods.wise_ft import WiseFT
from lines.protocol.results import write_csv
from lines.protocol.schemas import EditResult, SoupsResult, WiseftResult, write_output
from lines.protocol.scores import edit_score, mean, select, target_control
from lines.protocol.suite import SPLITS, Workbench
from lines.scaling import single_task_lambdas

SUMMARY_KEYS = ("test_target_norm", "test_control_norm", "test_target_acc", "test_control_acc")


def _tc(
    accs: Mapping[str, Mapping[str, float]],
    target: str,
    controls: Sequence[str],
    ft: Mapping[str, float],
    zs: Mapping[str, Mapping[str, float]],
) -> dict[str, float]:
    """``<split>_<target|control>_<acc|norm>`` for every split in ``accs``."""
    return {
        f"{s}_{k}": v
        for s, acc in accs.items()
        for k, v in target_control(acc, target, controls, ft[s], zs[s]).items()
    }


def run_edit(
    bench: Workbench,
    base: Mapping[str, Any],
    tasks: Sequence[str],
    edit_tasks: Sequence[str],
    finetuned: Mapping[str, Path],
    gammas: Sequence[float],
    out_dir: Path,
) -> dict[str, Any]:
    """Single-task LiNeS editing of each of ``edit_tasks`` over the γ grid, val and test; writes
    ``edit.json`` and ``edit_sweep.csv``. At γ = 1 (the fine-tuned model) the accuracies of
    ``base`` are reused when it holds the fine-tuned model's on every task."""
    zs = base["pretrained"]
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"gammas": [float(g) for g in gammas], "tasks": {}}
    for t in tqdm(edit_tasks, desc="edit", unit="task"):
        tau, _ = bench.task_vector(f"edit-{t}", [finetuned[t]], WiseFT(gamma=1.0))
        controls = [o for o in tasks if o != t]
        ft_acc = base["finetuned"][t]
        ft_ref = {s: ft_acc[s][t] for s in SPLITS}
        per = []
        bits_at: dict[float, dict[str, str] | None] = {}
        ft_bits = (base.get("test_correct") or {}).get("finetuned", {}).get(t)
        for g in gammas:
            if float(g) == 1.0 and all(set(tasks) <= set(ft_acc[s]) for s in SPLITS):
                accs = {s: ft_acc[s] for s in SPLITS}
                bits_at[1.0] = ft_bits
            else:
                sd = bench.theta(tau, single_task_lambdas(bench.L, float(g)))
                accs = {"val": bench.accuracy(sd, "val", tasks)}
                accs["test"], bits_at[float(g)] = bench.scored(None, "test", tasks)
            rec: dict[str, Any] = {
                "task": t,
                "gamma": float(g),
                **_tc(accs, t, controls, ft_ref, zs),
            }
            rec["val_score"] = edit_score(rec["val_target_norm"], rec["val_control_norm"])
            per.append(rec)
            rows.append(rec)
        best = select(per, lambda r: r["val_score"])
        summary["tasks"][t] = {
            "best_gamma": best["gamma"],
            "best": best,
            "finetuned": next((r for r in per if r["gamma"] == 1.0), None),
        }
        if bits_at.get(best["gamma"]) is not None:
            summary["tasks"][t]["best_test_correct"] = bits_at[best["gamma"]]
        del tau
    summary["average_at_best"] = {
        k: mean(summary["tasks"][t]["best"][k] for t in edit_tasks) for k in SUMMARY_KEYS
    }
    summary["block_policy"] = bench.block_policy
    summary = write_output(Path(out_dir) / "edit.json", EditResult, summary)
    write_csv(Path(out_dir) / "edit_sweep.csv", rows)
    return summary


def run_soups(
    bench: Workbench,
    members: Mapping[str, Path],
    task: str,
    controls: Sequence[str],
    gammas: Sequence[float],
    out_dir: Path,
    *,
    zeroshot: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Uniform and greedy soups of ``members`` (name → checkpoint, models of ``task``), each
    plain and with LiNeS; writes ``soups.json``. Target accuracy is normalised by the first
    member's, control by the zero-shot model's (``zeroshot``, else measured here). The greedy
    soup adds members in order of val accuracy while the soup's val accuracy does not drop."""
    every = [task, *controls]
    names, paths = list(members), [Path(p) for p in members.values()]
    zs = zeroshot or {s: bench.accuracy(bench.base, s, every) for s in SPLITS}
    res: dict[str, Any] = {
        "task": task,
        "control_tasks": list(controls),
        "num_models": len(paths),
        "members": names,
        "gammas": [float(g) for g in gammas],
        "soups": {},
    }
    member_acc = []
    for p in paths:
        sd = bench.load(p)
        member_acc.append({s: bench.accuracy(sd, s, every) for s in SPLITS})
    ref = {s: member_acc[0][s][task] for s in SPLITS}  # the first member: the reference
    res["individual"] = [
        {"model": n, **_tc(acc, task, controls, ref, zs)}
        for n, acc in zip(names, member_acc, strict=True)
    ]
    res["zeroshot"] = {s: {t: zs[s][t] for t in every} for s in SPLITS}

    def val_target(path: Path) -> float:
        return bench.accuracy(bench.load(path), "val", [task])[task]

    g_man = greedy_soup(
        bench.pretrained,
        paths,
        [r["val_target_acc"] for r in res["individual"]],
        val_target,
        bench.tmp / "greedy.safetensors",
        family=bench.family,
        block_policy=bench.block_policy,
        progress=False,
    )
    (bench.tmp / "greedy.safetensors").unlink(missing_ok=True)
    for kind, idx in (
        ("uniform", list(range(len(paths)))),
        ("greedy", g_man["greedy_soup"]["selected"]),
    ):
        mpaths = [paths[i] for i in idx]
        method = UniformSoup() if len(mpaths) > 1 else WiseFT(gamma=1.0)
        tau, _ = bench.task_vector(f"soup-{kind}", mpaths, method)
        plain = bench.theta(tau, [1.0] * bench.L)
        entry: dict[str, Any] = {
            "members": [names[i] for i in idx],
            "plain": _tc(
                {s: bench.accuracy(plain, s, every) for s in SPLITS}, task, controls, ref, zs
            ),
        }
        sweep = []
        for g in gammas:
            acc = bench.accuracy(
                bench.theta(tau, single_task_lambdas(bench.L, float(g))), "val", every
            )
            tc = _tc({"val": acc}, task, controls, ref, zs)
            score = edit_score(tc["val_target_norm"], tc["val_control_norm"])
            sweep.append({"gamma": float(g), "val_score": score, **tc})
        best = select(sweep, lambda r: r["val_score"])
        sd = bench.theta(tau, single_task_lambdas(bench.L, best["gamma"]))
        entry["lines"] = {
            "gamma": best["gamma"],
            **_tc({"test": bench.accuracy(sd, "test", every)}, task, controls, ref, zs),
        }
        entry["sweep"] = sweep
        res["soups"][kind] = entry
        del tau
    res["greedy_history"] = g_man["greedy_soup"]["history"]
    from lines.protocol.learned import Differentiable, ensemble_correct

    if isinstance(bench.evaluator, Differentiable) and len(paths) > 1:
        # The output ensemble of the same members (issue 17): not one model, N forwards per input.
        mdev = next(iter(bench.evaluator.model.parameters())).device
        sds = [{k: v.to(mdev) for k, v in bench.load(p).items()} for p in paths]
        correct = ensemble_correct(bench.evaluator, sds, every, "test")
        acc = {t: float(c.float().mean()) for t, c in correct.items()}
        res["ensemble"] = {
            "members": names,
            "combine": "logits",
            **_tc({"test": acc}, task, controls, ref, zs),
        }
        del sds
    res = write_output(Path(out_dir) / "soups.json", SoupsResult, res)
    return res


def run_wiseft(
    bench: Workbench,
    items: Sequence[tuple[str, str, Path, Sequence[str]]],
    gammas: Sequence[float],
    lines_gamma: float,
    out_dir: Path,
    *,
    finetuned_ref: Mapping[str, Mapping[str, float]] | None = None,
    zeroshot: Mapping[str, float] | None = None,
    header: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """WiSE-FT θ_0 + γτ against θ_0 + γ·λ(ℓ)τ (λ from ``lines_gamma``) on test, for each item
    (name, target task, checkpoint, shifted tasks); writes ``wiseft.json`` and
    ``wiseft_sweep.csv``. The target is normalised by the fine-tuned model's accuracy
    (``finetuned_ref[task]``, else measured as γ = 1), the shifted tasks by the zero-shot model's
    (``zeroshot``, else measured)."""
    rows = []
    zs_all: dict[str, float] = {}
    ft_all: dict[str, float] = {}
    examples: dict[str, int] = {}
    for _name, task, path, shifts in tqdm(items, desc="wiseft", unit="task"):
        every = [task, *shifts]
        tau, _ = bench.task_vector(f"wiseft-{task}", [path], WiseFT(gamma=1.0))
        zs = zeroshot or bench.accuracy(bench.base, "test", every)
        ft = (finetuned_ref or {}).get(task) or bench.accuracy(
            bench.theta(tau, [1.0] * bench.L), "test", every
        )
        zs_all.update({t: zs[t] for t in every})
        ft_all[task] = ft[task]
        edit = single_task_lambdas(bench.L, lines_gamma)
        for g in gammas:
            for variant, lams in (
                ("wiseft", [float(g)] * bench.L),
                ("wiseft+lines", [float(g) * x for x in edit]),
            ):
                acc = bench.accuracy(bench.theta(tau, lams), "test", every)
                rows.append(
                    {
                        "task": task,
                        "variant": variant,
                        "gamma": float(g),
                        **target_control(acc, task, shifts, ft[task], zs),
                        **{f"acc_{t}": acc[t] for t in every},
                    }
                )
        examples.update({t: bench.evaluator.num_examples(t, "test") for t in every})
        del tau
    res = {
        **(header or {}),
        "tasks": [it[1] for it in items],
        "ood_tasks": sorted(
            {t for it in items for t in it[3]}, key=[t for it in items for t in it[3]].index
        ),
        "gammas": [float(g) for g in gammas],
        "lines_gamma": lines_gamma,
        "zeroshot": zs_all,
        "finetuned": ft_all,
        "examples": examples,
        "rows": rows,
    }
    res = write_output(Path(out_dir) / "wiseft.json", WiseftResult, res)
    write_csv(Path(out_dir) / "wiseft_sweep.csv", rows)
    return res
