"""Command-line entry points of the pipeline stages: ``python -m lines.pipeline.stages STAGE …``.

``dvc.yaml`` calls these with values interpolated from ``params.yaml`` (this module never reads
it); the Prefect tasks run the same stages through DVC. Options use the params' own names
(``--max_train``) because DVC unpacks a params dict as ``--key value``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lines.merging.options import add_method_options
from lines.protocol.options import add_learned_options, add_schedules_options


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fetch", type=Path, default=Path("data/fetch"), help="fetch stage output folder"
    )
    p.add_argument(
        "--heads", type=Path, default=Path("out/heads"), help="heads stage output folder"
    )
    p.add_argument("--suite", default="text", help="text or vision (informational here)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_len", type=int, default=64, help="text: tokens per example")
    p.add_argument("--image_size", type=int, default=64, help="vision: input resolution")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max_train", type=int, default=1000, help="training examples per task")
    p.add_argument(
        "--max_val", type=int, default=200, help="val examples per task used for selection"
    )
    p.add_argument("--max_test", type=int, default=500, help="test examples per task")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--finetune", type=Path, default=Path("out/finetune"))
    p.add_argument("--base_eval", type=Path, default=Path("out/eval/base.json"))
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--family", default=None, help="model family override (default: detected)")
    p.add_argument("--out", type=Path, required=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lines.pipeline.stages", description=__doc__)
    sub = ap.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("heads", help="build frozen heads: zero-shot (class-name prompts) or probes")
    _common(p)
    _data(p)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument(
        "--kind",
        default="probe",
        choices=("zeroshot", "probe"),
        help="zeroshot: class-name prompts through the pretrained encoder (text); probe: linear probe",
    )
    p.add_argument(
        "--logit_scale", type=float, default=100.0, help="zero-shot heads' fixed logit scale"
    )
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the probes")
    p.add_argument(
        "--max_probe",
        type=int,
        default=1000,
        help="probe examples per task (disjoint from fine-tuning's)",
    )
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("finetune", help="fine-tune the backbone on one task, head frozen")
    _common(p)
    _data(p)
    p.add_argument("--task", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument(
        "--steps", type=int, default=0, help="optimiser steps (0: --epochs passes over the data)"
    )
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--warmup_frac", type=float, default=0.1)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser(
        "base_eval", help="accuracy of θ_0 and of every fine-tuned model on every task"
    )
    _common(p)
    _data(p)
    _eval_args(p)

    p = sub.add_parser("edit", help="single-task LiNeS editing over γ")
    _common(p)
    _data(p)
    _eval_args(p)
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--block_policy", default="reference")

    p = sub.add_parser("merge", help="multi-task merging with and without LiNeS")
    _common(p)
    _data(p)
    _eval_args(p)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--lambdas", nargs="+", type=float, required=True)
    p.add_argument("--betas", nargs="+", type=float, required=True)
    add_method_options(p, skip={"seed"})
    p.add_argument("--block_policy", default="reference")
    p.add_argument("--alpha_norm", default="l1")

    p = sub.add_parser(
        "soups", help="uniform and greedy soups of one task's seeds, with and without LiNeS"
    )
    _common(p)
    _data(p)
    _eval_args(p)
    p.add_argument("--task", required=True, help="the task whose seeds are souped")
    p.add_argument(
        "--seeds", nargs="+", type=int, required=True, help="extra seeds (besides --seed)"
    )
    p.add_argument("--finetune_seeds", type=Path, default=Path("out/finetune_seeds"))
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--block_policy", default="reference")

    p = sub.add_parser("wiseft", help="WiSE-FT over γ with and without LiNeS")
    _common(p)
    _data(p)
    _eval_args(p)
    p.add_argument("--wiseft_tasks", nargs="+", required=True)
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--lines_gamma", type=float, default=0.5)
    p.add_argument("--block_policy", default="reference")

    p = sub.add_parser(
        "evaluate", help="accuracy of one backbone checkpoint with the frozen heads (any file)"
    )
    _common(p)
    _data(p)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--tasks", nargs="+", required=True)
    p.add_argument("--splits", nargs="+", default=["test"], choices=["val", "test"])
    p.add_argument("--out", type=Path, required=True, help="JSON: {split: {task: accuracy}}")

    p = sub.add_parser(
        "fig1", help="the paper's Figure 1: shallow vs deep layers downscaled, over γ (test)"
    )
    _common(p)
    _data(p)
    _eval_args(p)
    p.add_argument("--fig1_tasks", nargs="+", required=True, help="tasks whose τ is rescaled")
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--block_policy", default="reference")

    p = sub.add_parser(
        "schedules", help="every λ(ℓ) schedule at an equal val budget against linear (test)"
    )
    _common(p)
    _data(p)
    _eval_args(p)
    add_schedules_options(p)
    p.add_argument("--block_policy", default="reference")

    p = sub.add_parser(
        "learned", help="Fisher, AdaMerging, aTLAS, output ensembles against TA + LiNeS, with cost"
    )
    _common(p)
    _data(p)
    _eval_args(p)
    add_learned_options(p)
    p.add_argument("--block_policy", default="reference")

    p = sub.add_parser("report", help="metrics, tables and plots")
    p.add_argument("--fig1", type=Path, default=None, help="fig1 stage output folder")
    p.add_argument("--schedules", type=Path, default=None, help="schedules stage output folder")
    p.add_argument("--learned", type=Path, default=None, help="learned stage output folder")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)
    p.add_argument("--base_eval", type=Path, default=Path("out/eval/base.json"))
    p.add_argument("--heads", type=Path, default=Path("out/heads"))
    p.add_argument("--edit", type=Path, default=Path("out/edit"))
    p.add_argument("--merge", type=Path, default=Path("out/merge"))
    p.add_argument("--soups", type=Path, default=Path("out/soups"))
    p.add_argument("--wiseft", type=Path, default=Path("out/wiseft"))
    p.add_argument("--suite", default="text")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--out", type=Path, required=True)
    return ap


def _evaluator(a: argparse.Namespace):  # noqa: ANN202 - internal
    from lines.pipeline.evaluation import Evaluator

    return Evaluator(
        a.fetch,
        a.heads,
        a.backbone,
        a.tasks,
        limits={"val": a.max_val, "test": a.max_test},
        max_len=a.max_len,
        image_size=a.image_size,
        seed=a.seed,
        device=a.device,
    )


def run(a: argparse.Namespace) -> None:
    from lines.pipeline import experiments as ex
    from lines.pipeline import training as tr

    if a.stage == "heads":
        tr.run_heads(
            a.fetch,
            a.out,
            a.backbone,
            a.tasks,
            max_train=a.max_train,
            max_val=a.max_val,
            max_probe=a.max_probe,
            max_len=a.max_len,
            image_size=a.image_size,
            C=a.C,
            seed=a.seed,
            device=a.device,
            kind=a.kind,
            logit_scale=a.logit_scale,
        )
    elif a.stage == "finetune":
        tr.finetune(
            a.fetch,
            a.heads,
            a.out,
            a.backbone,
            a.task,
            max_train=a.max_train,
            max_val=a.max_val,
            epochs=a.epochs,
            steps=a.steps,
            lr=a.lr,
            batch_size=a.batch_size,
            weight_decay=a.weight_decay,
            warmup_frac=a.warmup_frac,
            max_len=a.max_len,
            image_size=a.image_size,
            seed=a.seed,
            device=a.device,
        )
    elif a.stage == "base_eval":
        ex.run_base_eval(
            _evaluator(a), a.heads / "backbone.safetensors", a.finetune, a.tasks, a.out
        )
    elif a.stage == "edit":
        ex.run_edit(
            _evaluator(a),
            a.heads / "backbone.safetensors",
            a.finetune,
            ex.load_base_eval(a.base_eval),
            a.tasks,
            a.gammas,
            a.out,
            family=a.family,
            block_policy=a.block_policy,
        )
    elif a.stage == "merge":
        from lines.pipeline.config import merge_section

        cfg = merge_section(vars(a))
        ex.run_merge(
            _evaluator(a),
            a.heads / "backbone.safetensors",
            a.finetune,
            ex.load_base_eval(a.base_eval),
            a.tasks,
            cfg,
            a.out,
            family=a.family,
        )
    elif a.stage == "soups":
        models = [a.finetune / a.task / "model.safetensors"] + [
            a.finetune_seeds / str(s) / "model.safetensors" for s in a.seeds
        ]
        ex.run_soups(
            _evaluator(a),
            a.heads / "backbone.safetensors",
            models,
            ex.load_base_eval(a.base_eval),
            a.task,
            a.gammas,
            a.out,
            family=a.family,
            block_policy=a.block_policy,
        )
    elif a.stage == "wiseft":
        ex.run_wiseft(
            _evaluator(a),
            a.heads / "backbone.safetensors",
            a.finetune,
            ex.load_base_eval(a.base_eval),
            a.wiseft_tasks,
            a.gammas,
            a.lines_gamma,
            a.out,
            family=a.family,
            block_policy=a.block_policy,
        )
    elif a.stage == "evaluate":
        from lines.io import load_state_dict
        from lines.protocol.results import write_json

        ev, sd = _evaluator(a), load_state_dict(a.checkpoint)
        res = {s: ev.evaluate(sd, s) for s in a.splits}
        write_json(a.out, res)
        print(
            f"{a.checkpoint}: "
            + ", ".join(f"{s} {t} {v:.3f}" for s, r in res.items() for t, v in r.items())
        )
    elif a.stage == "fig1":
        ex.run_fig1(
            _evaluator(a),
            a.heads / "backbone.safetensors",
            a.finetune,
            ex.load_base_eval(a.base_eval),
            a.tasks,
            a.fig1_tasks,
            a.gammas,
            a.out,
            family=a.family,
            block_policy=a.block_policy,
        )
    elif a.stage in ("schedules", "learned"):
        ex.run_protocol_stage(
            a.stage,
            _evaluator(a),
            a.heads / "backbone.safetensors",
            a.finetune,
            ex.load_base_eval(a.base_eval),
            a.tasks,
            vars(a),
            a.out,
            family=a.family,
            block_policy=a.block_policy,
        )
    elif a.stage == "report":
        from lines.pipeline.report import run_report

        run_report(
            a.base_eval,
            a.heads / "heads.json",
            a.edit,
            a.merge,
            a.soups,
            a.wiseft,
            a.out,
            suite=a.suite,
            backbone=a.backbone,
            fig1_dir=a.fig1,
            schedules_dir=a.schedules,
            learned_dir=a.learned,
            n_boot=a.bootstrap,
            boot_seed=a.bootstrap_seed,
        )


def main(argv: Sequence[str] | None = None) -> int:
    from lines.protocol.stage import run_stage  # here: tests load build_parser without torch

    args = build_parser().parse_args(argv)
    return run_stage(args.stage, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
