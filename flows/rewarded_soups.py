"""Rewarded soups (Ramé et al., 2023): interpolate two fine-tuned models over a weight grid
(``lines interpolate --weights w 1-w``, optionally with LiNeS on the soup's task vector) and
evaluate every point on both tasks; the two normalised accuracies are the two rewards, and the
record marks the Pareto front.

The fine-tuned models and their normalisers come from the pipeline (``dvc repro base_eval``);
each weight point is one unit (interpolate + evaluate), so with ``fan_out=True`` the points run
on the pool's workers in parallel. Points are written to ``out/rewarded_soups/<experiment>/``
(not a DVC stage: the grid is a flow parameter, recorded in MLflow; the checkpoints are deleted
after evaluation unless ``keep_checkpoints``).

    prefect deployment run 'rewarded-soups/smoke' --param weights='[0, 0.5, 1]' --watch
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows._core import BlockPolicy, Context, Experiment, RunOptions, Unit, run_flow
from orchestration.records import rewarded_soups_record


def _weight_units(
    ctx: Context,
    pair: list[str],
    weights: list[float],
    lines_beta: float | None,
    block_policy: str,
    keep_checkpoints: bool,
) -> list[Unit]:
    c, d = ctx.params["common"], ctx.params["data"]
    out = f"out/rewarded_soups/{ctx.name}"
    ctx.extra["grid"] = []
    units = []
    for i, w in enumerate(weights):
        wts = (float(w), float(1.0 - w))
        ck = f"{out}/point{i}.safetensors"
        ev = f"{out}/point{i}.eval.json"
        finetuned = " ".join(f"out/finetune/{t}/model.safetensors" for t in pair)
        interp = (
            "python -m lines.cli interpolate --pretrained out/heads/backbone.safetensors "
            f"--finetuned {finetuned} --weights {wts[0]!r} {wts[1]!r} --block-policy {block_policy} "
            f"--out {ck} --overwrite --no-progress"
        )
        if lines_beta is not None:
            interp += f" --lines-beta {lines_beta!r}"
        evaluate = (
            "python -m lines.pipeline.stages evaluate "
            f"--checkpoint {ck} --tasks {' '.join(pair)} "
            f"--backbone {c['backbone']} --fetch data/fetch --heads out/heads "
            f"--max_test {d['max_test']} --max_len {c['max_len']} --image_size {c['image_size']} "
            f"--seed {c['seed']} --device {c.get('device', 'cpu')} --out {ev}"
        )
        cmds = [interp, evaluate]
        if not keep_checkpoints:
            cmds.append(f"rm -f {ck}")
        units.append(Unit(f"rs-point{i}", cmds, [ck, ev]))
        ctx.extra["grid"].append({"weights": list(wts), "eval": ev, "lines_beta": lines_beta})
    return units


@flow(name="rewarded-soups", log_prints=True)
def rewarded_soups(
    profile: str | None = "smoke",
    pair: list[str] | None = None,
    weights: list[float] = [0.0, 0.25, 0.5, 0.75, 1.0],  # noqa: B006 - Prefect parameter default
    lines_beta: float | None = None,
    block_policy: BlockPolicy = "reference",
    keep_checkpoints: bool = False,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    fan_out: bool = False,
    name: str | None = None,
    workspace: str = ".",
    run: RunOptions | None = None,
) -> dict[str, Any]:
    """``pair``: the two tasks whose fine-tuned models are interpolated (default: the profile's
    first two); ``weights``: the grid of the first model's weight w (the second gets 1 − w);
    ``lines_beta``: LiNeS β on the soup's task vector (None: plain interpolation)."""
    args = dict(locals())  # the flow's parameters (before any local name is defined)
    if any(not 0.0 <= w <= 1.0 for w in weights):
        raise ValueError(f"weights must lie in [0, 1], got {weights}")

    def units(ctx: Context) -> list[Unit]:
        p = pair or list(ctx.params["common"]["tasks"][:2])
        if len(p) != 2 or any(t not in ctx.params["common"]["tasks"] for t in p):
            raise ValueError(f"pair must be two of {ctx.params['common']['tasks']}, got {p}")
        ctx.extra["pair"] = p
        return _weight_units(ctx, p, weights, lines_beta, block_policy, keep_checkpoints)

    def record(ctx: Context):  # noqa: ANN202
        rec = rewarded_soups_record(
            ctx.workspace, ctx.params, ctx.extra["grid"], f"out/rewarded_soups/{ctx.name}"
        )
        rec.params.update(
            {
                "pair": ctx.extra["pair"],
                "weights": weights,
                "lines_beta": lines_beta,
                "block_policy": block_policy,
            }
        )
        return rec

    exp = Experiment(
        "rewarded-soups",
        targets=["base_eval"],
        fan_out_groups=["finetune"],
        build_record=record,
        extra_units=units,
        keys={"seed": "common.seed"},
    )
    return run_flow(exp, args)


if __name__ == "__main__":
    rewarded_soups()
