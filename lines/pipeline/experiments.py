"""The embedded text and vision suites on the shared protocol (``lines.protocol``): where their
checkpoints live and how their stages call the protocol. The protocol itself — editing, merging
with and without LiNeS, soups, WiSE-FT, selection on val — is not here.

Checkpoints: θ_0 is ``<heads>/backbone.safetensors`` (the backbone the heads were fitted on),
the fine-tuned model of task t is ``<finetune>/<t>/model.safetensors`` and extra seeds of the
soups' task ``<finetune_seeds>/<seed>/model.safetensors``. The suite's evaluator is
``lines.pipeline.evaluation.Evaluator``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lines.io import load_state_dict
from lines.pipeline.evaluation import Evaluator
from lines.protocol import merge as pm
from lines.protocol import single as ps
from lines.protocol.schemas import BaseEval, read_output, write_output
from lines.protocol.suite import SPLITS, Workbench, score


def ft_path(finetune_dir: Path, task: str) -> Path:
    return Path(finetune_dir) / task / "model.safetensors"


def workbench(
    evaluator: Evaluator, pretrained: Path, family: str | None, block_policy: str
) -> Workbench:
    """θ_0 on the CPU (the evaluator copies weights into its own device's model) and task
    vectors merged on the CPU, as this suite always did, except iterative methods on its GPU."""
    return Workbench(
        pretrained,
        evaluator,
        family=family,
        block_policy=block_policy,
        accelerator=evaluator.backbone.device,
    )


def run_base_eval(
    evaluator: Evaluator, pretrained: Path, finetune_dir: Path, tasks: Sequence[str], out: Path
) -> dict[str, Any]:
    """Accuracies of θ_0 (with heads) and of every fine-tuned model on every task, val and test:
    the normalisers of every other stage (and the fine-tuned end of the editing curves)."""
    res: dict[str, Any] = {"pretrained": {}, "finetuned": {}}
    # Per-example test correctness of every model, for the report's bootstrap intervals.
    bits: dict[str, Any] = {"pretrained": {}, "finetuned": {}}
    base = load_state_dict(pretrained)
    res["pretrained"]["val"] = evaluator.evaluate(base, "val")
    res["pretrained"]["test"], bits["pretrained"] = score(evaluator, None, "test", evaluator.tasks)
    for t in tqdm(tasks, desc="base_eval", unit="model"):
        sd = load_state_dict(ft_path(finetune_dir, t))
        res["finetuned"][t] = {"val": evaluator.evaluate(sd, "val")}
        res["finetuned"][t]["test"], bits["finetuned"][t] = score(
            evaluator, None, "test", evaluator.tasks
        )
    res["test_correct"] = bits
    res["examples"] = {
        split: {t: evaluator.num_examples(t, split) for t in tasks} for split in SPLITS
    }
    return write_output(out, BaseEval, res)


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
    """Single-task LiNeS editing of every task (``lines.protocol.single.run_edit``)."""
    fts = {t: ft_path(finetune_dir, t) for t in tasks}
    with workbench(evaluator, pretrained, family, block_policy) as b:
        return ps.run_edit(b, base_eval, tasks, tasks, fts, gammas, out_dir)


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
    """Each method with and without LiNeS (``lines.protocol.merge.run_merge``)."""
    policy = cfg.get("block_policy") or "reference"
    with workbench(evaluator, pretrained, family, policy) as b:
        fts = [ft_path(finetune_dir, t) for t in tasks]
        return pm.run_merge(b, base_eval, tasks, fts, cfg, out_dir)


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
    """Soups of one task's seeds; controls are the suite's other tasks, normalised by θ_0's
    accuracies from ``base_eval`` (``lines.protocol.single.run_soups``)."""
    controls = [t for t in evaluator.tasks if t != task]
    with workbench(evaluator, pretrained, family, block_policy) as b:
        return ps.run_soups(
            b,
            {str(p): Path(p) for p in seed_models},
            task,
            controls,
            gammas,
            out_dir,
            zeroshot=base_eval["pretrained"],
        )


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
    """WiSE-FT of each of ``tasks``' fine-tuned models, the suite's other tasks as the shift
    (``lines.protocol.single.run_wiseft``)."""
    items = [
        (t, t, ft_path(finetune_dir, t), [o for o in evaluator.tasks if o != t]) for t in tasks
    ]
    with workbench(evaluator, pretrained, family, block_policy) as b:
        return ps.run_wiseft(
            b,
            items,
            gammas,
            lines_gamma,
            out_dir,
            finetuned_ref={t: base_eval["finetuned"][t]["test"] for t in tasks},
            zeroshot=base_eval["pretrained"]["test"],
        )


def load_base_eval(path: Path) -> dict[str, Any]:
    return read_output(path, BaseEval)


def run_fig1(
    evaluator: Evaluator,
    pretrained: Path,
    finetune_dir: Path,
    base_eval: Mapping[str, Any],
    tasks: Sequence[str],
    fig_tasks: Sequence[str],
    gammas: Sequence[float],
    out_dir: Path,
    *,
    family: str | None = None,
    block_policy: str = "reference",
) -> dict[str, Any]:
    """The paper's Figure 1 (``lines.protocol.schedules_fig1.run_fig1``)."""
    from lines.protocol.schedules_fig1 import run_fig1 as fig1

    fts = {t: ft_path(finetune_dir, t) for t in fig_tasks}
    with workbench(evaluator, pretrained, family, block_policy) as b:
        return fig1(b, base_eval, tasks, fig_tasks, fts, gammas, out_dir)


def run_protocol_stage(
    name: str,
    evaluator: Evaluator,
    pretrained: Path,
    finetune_dir: Path,
    base_eval: Mapping[str, Any],
    tasks: Sequence[str],
    cfg: Mapping[str, Any],
    out_dir: Path,
    *,
    family: str | None = None,
    block_policy: str = "reference",
) -> dict[str, Any]:
    """A protocol experiment over every task's fine-tuned model with bootstrap intervals:
    ``schedules`` (is linear optimal? ``lines.protocol.schedules.run_schedules``) or ``learned``
    (the learned baselines against TA + LiNeS, ``lines.protocol.baselines.run_baselines``)."""
    if name == "schedules":
        from lines.protocol.schedules import run_schedules as experiment
    elif name == "learned":
        from lines.protocol.baselines import run_baselines as experiment
    else:  # pragma: no cover - the parser only offers these
        raise ValueError(f"unknown protocol stage {name}")
    fts = {t: ft_path(finetune_dir, t) for t in tasks}
    with workbench(evaluator, pretrained, family, block_policy) as b:
        return experiment(
            b,
            base_eval,
            tasks,
            fts,
            cfg,
            out_dir,
            n_boot=int(cfg.get("bootstrap", 1000)),
            boot_seed=int(cfg.get("bootstrap_seed", 0)),
        )
