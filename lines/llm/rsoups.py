"""The rewarded-soups experiment of the LLM suite (Ramé et al., NeurIPS 2023; LiNeS, Wang et al.
ICLR 2025, Sec. 5 "rewarded soups"): SFT → one RL policy per reward → θ(λ) = θ_SFT + λτ₁ +
(1−λ)τ₂ over a λ grid, without and with LiNeS on the interpolated residual (θ_SFT +
LiNeS_{α,β}(λτ₁ + (1−λ)τ₂); the paper uses α = β = 1), every point scored by both rewards on
held-out prompts, the two Pareto fronts compared.

Three stages (``lines.llm.stages``): ``sft`` (``ckpt/sft/``), ``rl`` (one per reward,
``ckpt/rl/<reward>/``) and ``rsoups`` (``out/rsoups/``: ``rsoups.json``, ``rsoups.md``,
``fronts.png``). Whether LiNeS dominates is measured, with intervals: the hypervolume of each
front above a common reference point, and its difference by a paired bootstrap over the held-out
prompts (every point is scored on the same prompts with the same sampling seed).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lines.apply import apply_lambdas
from lines.errors import LinesError
from lines.families import partition_keys
from lines.llm import rl
from lines.llm.finetune import save_model, seed_all, train_items
from lines.llm.model import assign_weights, family_of, is_encoder_decoder, load_folder
from lines.llm.rewards import get_reward
from lines.protocol.results import write_json
from lines.scaling import lines_lambdas


def _load(path: Path) -> dict[str, torch.Tensor]:
    from lines.io import load_state_dict

    if not Path(path).is_file():
        raise LinesError(f"{path} is missing (run the sft/rl stages first)")
    return load_state_dict(path)


def _contexts(tok: Any, split: str, limit: int, n_words: int, seed: int) -> list[str]:
    pairs = rl.review_openings(split, limit or None, n_words, seed)
    if not pairs:
        raise LinesError(f"no {split} review is longer than {n_words} words")
    return [rl.render_opening(tok, op) for op, _ in pairs]


def decoder_only(base: Path) -> None:
    if is_encoder_decoder(base):
        raise LinesError(
            f"{base}: rewarded soups sample continuations from a decoder-only LM; this is an "
            "encoder–decoder (use it for classification: finetune, edit, merge)"
        )


def run_sft(a: Any, base: Path, out: Path) -> dict[str, Any]:
    """The SFT policy: θ_0 fine-tuned to continue review openings with the reviews' rests."""
    decoder_only(base)
    seed_all(a.seed)
    model, tok = load_folder(base, torch.device(a.device))
    pairs = rl.review_openings("train", a.max_train or None, a.opening_words, a.seed)
    items = rl.sft_items(tok, pairs, a.max_new_tokens)
    log = train_items(
        model,
        tok,
        items,
        epochs=a.epochs,
        lr=a.lr,
        batch_size=a.train_batch_size,
        seed=a.seed,
        precision=a.precision,
        desc="sft",
    )
    save_model(model, Path(out) / "model.safetensors", {"lines_llm": "sft", "seed": str(a.seed)})
    log = {"opening_words": a.opening_words, "max_new_tokens": a.max_new_tokens, **log}
    write_json(Path(out) / "sft.json", log)
    return log


def run_rl(a: Any, base: Path, sft: Path, out: Path) -> dict[str, Any]:
    """One GRPO policy per ``--reward``, each from the SFT policy (``out/<reward>/``)."""
    dev = torch.device(a.device)
    theta_sft = _load(Path(sft) / "model.safetensors")
    logs = {}
    for name in a.reward:
        seed_all(a.seed)
        policy, tok = load_folder(base, dev)
        ref, _ = load_folder(base, dev)
        assign_weights(policy, theta_sft)
        assign_weights(ref, theta_sft)
        ctx = _contexts(tok, "train", a.max_prompts, a.opening_words, a.seed)
        log = rl.grpo(
            policy,
            ref,
            tok,
            ctx,
            get_reward(name),
            steps=a.steps,
            prompts_per_step=a.prompts_per_step,
            group=a.group,
            max_new_tokens=a.max_new_tokens,
            temperature=a.temperature,
            lr=a.lr,
            kl_coef=a.kl_coef,
            seed=a.seed,
            precision=a.precision,
            desc=f"grpo {name}",
        )
        log = {"reward_name": name, "opening_words": a.opening_words, **log}
        save_model(policy, Path(out) / name / "model.safetensors", {"lines_llm": f"rl:{name}"})
        write_json(Path(out) / name / "rl.json", log)
        logs[name] = log
        del policy, ref
    return logs


def soup_theta(
    theta_sft: Mapping[str, torch.Tensor],
    tau1: Mapping[str, torch.Tensor],
    tau2: Mapping[str, torch.Tensor],
    lam: float,
    block_of: Mapping[str, int],
    lambdas: Sequence[float],
) -> dict[str, torch.Tensor]:
    """θ_SFT + λ(ℓ)·(λτ₁ + (1−λ)τ₂) per block ℓ; ``lambdas`` all 1 is the plain rewarded soup."""
    tau = {k: lam * tau1[k].float() + (1.0 - lam) * tau2[k].float() for k in tau1}
    return apply_lambdas(theta_sft, tau, block_of, lambdas)


def hv_bootstrap(
    values: Mapping[str, np.ndarray],
    groups: Mapping[str, Sequence[int]],
    ref: Sequence[float],
    names: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Hypervolume of each group's points (means over prompts) above ``ref``, and the paired
    bootstrap interval of ``lines − baseline`` (prompts resampled jointly for every point)."""
    v1, v2 = values[names[0]], values[names[1]]  # points × prompts
    n = v1.shape[1]

    def hvs(idx: np.ndarray | None) -> dict[str, float]:
        m1 = v1.mean(1) if idx is None else v1[:, idx].mean(1)
        m2 = v2.mean(1) if idx is None else v2[:, idx].mean(1)
        return {g: rl.hypervolume_2d([(m1[i], m2[i]) for i in ix], ref) for g, ix in groups.items()}

    point = hvs(None)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        h = hvs(rng.integers(0, n, n))
        diffs.append(h["lines"] - h["baseline"])
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if diffs else (np.nan, np.nan)
    d = point["lines"] - point["baseline"]
    return {
        "reference_point": list(map(float, ref)),
        "baseline": point["baseline"],
        "lines": point["lines"],
        "difference": {"value": d, "lo": float(lo), "hi": float(hi), "level": 0.95},
        "bootstrap": n_boot,
    }


def run_rsoups(a: Any, base: Path, sft: Path, rl_dir: Path, out: Path) -> dict[str, Any]:
    """Score θ_SFT, both RL policies and θ(λ) ± LiNeS on held-out prompts with both rewards."""
    t0 = time.perf_counter()
    if len(a.rewards) != 2:
        raise LinesError(f"rewarded soups interpolate two policies, got rewards {a.rewards}")
    for lam in a.lambdas:
        if not 0.0 <= lam <= 1.0:
            raise LinesError(f"λ out of range: {lam} (the soup interpolates, λ ∈ [0, 1])")
    names = list(a.rewards)
    dev = torch.device(a.device)
    model, tok = load_folder(base, dev)
    theta_sft = _load(Path(sft) / "model.safetensors")
    thetas = [_load(Path(rl_dir) / r / "model.safetensors") for r in names]
    taus = [{k: t[k].float() - theta_sft[k].float() for k in theta_sft} for t in thetas]
    part = partition_keys(list(theta_sft), family_of(base), a.block_policy)
    L = part.num_blocks
    ones = [1.0] * L
    lines = lines_lambdas(L, a.lines_alpha, a.lines_beta)
    # The control that separates "layer-wise" from "larger": LiNeS with α = β = 1 scales the
    # residual by 1 … 2, so a uniform scale by LiNeS's mean λ(ℓ) moves it as far on average.
    scale = float(np.mean(lines)) if a.uniform_scale < 0 else float(a.uniform_scale)
    variants = [("baseline", ones), ("lines", lines)]
    if scale > 0 and scale != 1.0:
        variants.append(("scaled", [scale] * L))
    contexts = _contexts(tok, "test", a.max_eval, a.opening_words, a.seed)
    rewards = {r: get_reward(r) for r in names}

    def score(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        assign_weights(model, sd)
        return rl.score_policy(
            model,
            tok,
            contexts,
            rewards,
            batch_size=a.batch_size,
            max_new_tokens=a.max_new_tokens,
            temperature=a.temperature,
            seed=a.seed,
            precision=a.precision,
        )

    points: list[dict[str, Any]] = []
    jobs: list[tuple[str, float | None, Any]] = [("sft", None, lambda: theta_sft)]
    for variant, lam_l in variants:
        for lam in a.lambdas:
            jobs.append(
                (
                    variant,
                    lam,
                    lambda lam=lam, lam_l=lam_l: soup_theta(
                        theta_sft, taus[0], taus[1], lam, part.block, lam_l
                    ),
                )
            )
    for variant, lam, build in tqdm(jobs, desc="rewarded soups", unit="point"):
        s = score(build())
        points.append(
            {
                "variant": variant,
                "lambda": lam,
                "rewards": {r: rl.mean_ci(s["values"][r]) for r in names},
                "values": {r: [round(x, 6) for x in s["values"][r]] for r in names},
                "samples": s["samples"],
            }
        )
    # Fronts and the hypervolume comparison over the interpolated points.
    groups = {g: [i for i, p in enumerate(points) if p["variant"] == g] for g, _ in variants}
    means = [[p["rewards"][r]["value"] for r in names] for p in points]
    ref = [min(m[0] for m in means), min(m[1] for m in means)]
    values = {r: np.array([p["values"][r] for p in points]) for r in names}
    hv = hv_bootstrap(values, groups, ref, names, a.bootstrap, a.bootstrap_seed)
    if "scaled" in groups:  # LiNeS against the uniformly scaled soup, same prompts, same ref
        sub = {"baseline": groups["scaled"], "lines": groups["lines"]}
        hv_s = hv_bootstrap(values, sub, ref, names, a.bootstrap, a.bootstrap_seed)
        hv["scaled"] = hv_s["baseline"]
        hv["difference_vs_scaled"] = hv_s["difference"]
    fronts = {
        g: [ix[j] for j in rl.pareto_front([means[i] for i in ix])] for g, ix in groups.items()
    }
    dominated_by_lines = [
        i
        for i in groups["baseline"]
        if any(rl.dominated(means[i], means[j]) for j in groups["lines"])
    ]
    res = {
        "suite": "llm",
        "experiment": "rewarded_soups",
        "model": str(_fetch_source(base)),
        "rewards": names,
        "lambdas": list(a.lambdas),
        "lines": {"alpha": a.lines_alpha, "beta": a.lines_beta, "num_blocks": L},
        "uniform_scale": scale if "scaled" in groups else None,
        "block_policy": a.block_policy,
        "prompts": {"task": rl.PROMPT_TASK, "split": "test", "n": len(contexts)},
        "sampling": {
            "max_new_tokens": a.max_new_tokens,
            "temperature": a.temperature,
            "seed": a.seed,
        },
        "points": points,
        "fronts": fronts,
        "hypervolume": hv,
        "baseline_points_dominated_by_lines": len(dominated_by_lines),
        "baseline_points": len(groups["baseline"]),
        "regime": regime(points, names),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    res["verdict"] = verdict(res)
    out = Path(out)
    write_json(out / "rsoups.json", res)
    (out / "rsoups.md").write_text(report_md(res))
    plot_fronts(res, out / "fronts.png")
    return res


def _fetch_source(base: Path) -> str:
    from lines.llm.fetch import model_name

    return model_name(base)


def regime(points: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Do the two rewards pull apart? The λ=1 soup is policy 1, λ=0 policy 2 (baseline
    variant): a trade-off exists when each beats the other on its own reward, beyond the
    intervals."""
    by = {(p["variant"], p["lambda"]): p for p in points}
    p1, p2 = by.get(("baseline", 1.0)), by.get(("baseline", 0.0))
    sft = by.get(("sft", None))
    if p1 is None or p2 is None:
        return {"checked": False, "why": "λ grid lacks 0 or 1"}

    def gap(x: Mapping[str, Any], y: Mapping[str, Any], r: str) -> float:
        return x["rewards"][r]["lo"] - y["rewards"][r]["hi"]

    own1, own2 = gap(p1, p2, names[0]) > 0, gap(p2, p1, names[1]) > 0
    rl_moved = sft is not None and (
        p1["rewards"][names[0]]["lo"] > sft["rewards"][names[0]]["hi"]
        or p2["rewards"][names[1]]["lo"] > sft["rewards"][names[1]]["hi"]
    )
    return {
        "checked": True,
        "tradeoff": bool(own1 and own2),
        "policy1_wins_own_reward": bool(own1),
        "policy2_wins_own_reward": bool(own2),
        "rl_improved_over_sft": bool(rl_moved),
    }


def verdict(res: Mapping[str, Any]) -> str:
    d = res["hypervolume"]["difference"]
    reg = res["regime"]
    if not reg.get("checked"):
        where = f"Trade-off not checked ({reg.get('why', 'no λ = 0 and 1 points')})"
    elif reg.get("tradeoff"):
        where = (
            "The two rewards trade off (each policy wins its own reward beyond the intervals), "
            "so the fronts can be compared"
        )
    else:
        where = (
            "The two rewards do NOT trade off here (one policy is not better on its own reward "
            "beyond the intervals): the experiment is outside the regime the claim is about and "
            "the comparison below says little"
        )
    if d["lo"] > 0:
        v = "LiNeS's front has the larger hypervolume (interval above 0)"
    elif d["hi"] < 0:
        v = "LiNeS's front has the smaller hypervolume (interval below 0): LiNeS does not help"
    else:
        v = "the hypervolumes are not distinguishable (interval contains 0): LiNeS does not help"
    n, m = res["baseline_points_dominated_by_lines"], res["baseline_points"]
    out = f"{where}. {v}; {n} of {m} baseline points are dominated by a LiNeS point."
    ds = res["hypervolume"].get("difference_vs_scaled")
    if ds is not None:
        c = res["uniform_scale"]
        than = f"the soup scaled uniformly by {c:g} (LiNeS's mean λ(ℓ))"
        if ds["lo"] > 0:
            out += f" LiNeS's front is larger than that of {than}"
            out += (
                ": the layer-wise shape matters, not only the size of the step."
                if d_pos(res)
                else "."
            )
        elif ds["hi"] < 0:
            out += f" The front of {than} is larger than LiNeS's"
            out += (
                ": the gain comes from moving further from θ_SFT, not from the layer-wise shape."
                if d_pos(res)
                else "."
            )
        else:
            out += f" LiNeS's front and that of {than} are not distinguishable."
    return out


def d_pos(res: Mapping[str, Any]) -> bool:
    """Did LiNeS's front beat the plain soup's (interval above 0)?"""
    return res["hypervolume"]["difference"]["lo"] > 0


def report_md(res: Mapping[str, Any]) -> str:
    r1, r2 = res["rewards"]
    hv = res["hypervolume"]
    d = hv["difference"]
    lines_cfg = res["lines"]
    rows = [
        f"# Rewarded soups — {res['model']}",
        "",
        f"θ(λ) = θ_SFT + λτ_{r1} + (1−λ)τ_{r2}; with LiNeS: θ_SFT + LiNeS(λτ_{r1} + (1−λ)τ_{r2}) "
        f"with α = {lines_cfg['alpha']}, β = {lines_cfg['beta']} over {lines_cfg['num_blocks']} "
        f"blocks. Each point: one sampled continuation (T = {res['sampling']['temperature']}, "
        f"≤ {res['sampling']['max_new_tokens']} tokens, seed {res['sampling']['seed']}) of "
        f"{res['prompts']['n']} held-out review openings ({res['prompts']['task']} "
        f"{res['prompts']['split']}), scored by both rewards; mean [95% CI].",
        "",
        f"**Verdict.** {res['verdict']}",
        "",
        f"Hypervolume above ({hv['reference_point'][0]:.3f}, {hv['reference_point'][1]:.3f}): "
        f"baseline {hv['baseline']:.4f}, LiNeS {hv['lines']:.4f}, difference "
        f"{d['value']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] (paired bootstrap over prompts, "
        f"{hv['bootstrap']} resamples)."
        + (
            f" Uniformly scaled soup (×{res['uniform_scale']:g}) {hv['scaled']:.4f}; LiNeS − "
            f"scaled {hv['difference_vs_scaled']['value']:+.4f} "
            f"[{hv['difference_vs_scaled']['lo']:+.4f}, {hv['difference_vs_scaled']['hi']:+.4f}]."
            if "scaled" in hv
            else ""
        ),
        "",
        f"| variant | λ | {r1} | {r2} | on front |",
        "|---|---|---|---|---|",
    ]
    front = {i for ix in res["fronts"].values() for i in ix}
    for i, p in enumerate(res["points"]):
        c1, c2 = p["rewards"][r1], p["rewards"][r2]
        lam = "" if p["lambda"] is None else f"{p['lambda']:.2f}"
        rows.append(
            f"| {p['variant']} | {lam} | {c1['value']:.3f} [{c1['lo']:.3f}, {c1['hi']:.3f}] | "
            f"{c2['value']:.3f} [{c2['lo']:.3f}, {c2['hi']:.3f}] | {'✓' if i in front else ''} |"
        )
    rows += ["", "Samples (first held-out prompts):", ""]
    for p in res["points"]:
        if p["lambda"] in (None, 0.0, 1.0):
            tag = p["variant"] + ("" if p["lambda"] is None else f" λ={p['lambda']}")
            rows.append(f"- {tag}: " + " | ".join(repr(s[:120]) for s in p["samples"][:2]))
    return "\n".join(rows) + "\n"


def plot_fronts(res: Mapping[str, Any], path: Path) -> None:
    from lines.protocol.plots_ci import _plt

    plt = _plt()
    r1, r2 = res["rewards"]
    fig, ax = plt.subplots(figsize=(6, 5))
    styles = {
        "baseline": ("tab:blue", "o", "rewarded soup"),
        "lines": ("tab:red", "s", "+ LiNeS"),
        "scaled": ("tab:gray", "^", f"scaled uniformly ×{res.get('uniform_scale') or 1:g}"),
    }
    for g, (color, marker, label) in styles.items():
        pts = [p for p in res["points"] if p["variant"] == g]
        if not pts:
            continue
        x = [p["rewards"][r1]["value"] for p in pts]
        y = [p["rewards"][r2]["value"] for p in pts]
        xe = [
            [v - p["rewards"][r1]["lo"] for p, v in zip(pts, x, strict=True)],
            [p["rewards"][r1]["hi"] - v for p, v in zip(pts, x, strict=True)],
        ]
        ye = [
            [v - p["rewards"][r2]["lo"] for p, v in zip(pts, y, strict=True)],
            [p["rewards"][r2]["hi"] - v for p, v in zip(pts, y, strict=True)],
        ]
        ax.errorbar(
            x,
            y,
            xerr=xe,
            yerr=ye,
            color=color,
            marker=marker,
            label=label,
            lw=1,
            capsize=2,
            alpha=0.9,
        )
        for p, xi, yi in zip(pts, x, y, strict=True):
            if p["lambda"] in (0.0, 0.5, 1.0):
                ax.annotate(
                    f"λ={p['lambda']:g}",
                    (xi, yi),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    sft = next(p for p in res["points"] if p["variant"] == "sft")
    ax.plot(sft["rewards"][r1]["value"], sft["rewards"][r2]["value"], "k*", ms=10, label="SFT")
    ax.set_xlabel(f"{r1} reward (mean, 95% CI)")
    ax.set_ylabel(f"{r2} reward (mean, 95% CI)")
    lc = res["lines"]
    ax.set_title(
        f"Rewarded soups ± LiNeS (α={lc['alpha']}, β={lc['beta']})\n{res['model']}", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
