"""Stage entry points of the LLM suite: ``python -m lines.llm.stages STAGE …``.

``llm/dvc.yaml`` calls these with the sections of ``llm/params.yaml`` unpacked as ``--key value``
(lists as ``--key a b``). This module never reads params.yaml and imports neither Prefect nor
MLflow. Paths are relative to the stage's working directory (``llm/``).

=========== ======================================================================================
stage       what it writes
=========== ======================================================================================
fetch       ``ckpt/base/``: θ_0 as an HF folder (``model.safetensors``, config, tokenizer,
            ``fetch.json`` with the source pin and every file's sha256). ``--source smollm2``:
            the dequantised Q4_1 GGUF of SmolLM2-135M-Instruct; ``--source tiny``: a tiny
            random LLaMA (smoke profile). Byte-deterministic.
finetune    ``ckpt/finetuned/<task>/model.safetensors`` + ``train.json``: full fine-tuning on
            one task, loss on the answer tokens only.
base_eval   ``out/eval/base.json``: rank-classification accuracy of θ_0 (zero-shot: the
            instruct model itself) and of every fine-tuned model on every task, val and test —
            the normalisers of the protocol.
edit        ``out/edit/``: single-task LiNeS editing over γ (``lines.protocol.single``).
merge       ``out/merge/``: task arithmetic, TIES, Consensus (any ``lines`` method), each
            without LiNeS (uniform λ) and with LiNeS (β, α from the rule), chosen on val,
            reported on test (``lines.protocol.merge``). In ``llm/dvc.yaml`` each method is a
            stage of its own (``merge_method@<method>`` → ``out/merge_parts/<method>/``, so a
            flow fans them out over GPUs) and ``gather_merge`` writes the one ``out/merge/``.
schedules   ``out/schedules/``: every λ(ℓ) schedule at an equal val budget against linear.
learned     ``out/learned/``: Fisher merging, AdaMerging, aTLAS, output ensembles against
            TA + LiNeS, with their cost (``lines.protocol.baselines``).
wiseft      ``out/wiseft/``: WiSE-FT of one task's model ± LiNeS, its test set and shifted sets.
soups       ``out/soups/``: uniform and greedy soups of one task's seeds (``soup_finetune``:
            ``ckpt/soup/seed<s>/<task>/``), each ± LiNeS.
report      ``out/report/``: regime check, intervals, tables and plots of the above.
sft         ``ckpt/sft/``: the SFT policy of rewarded soups (continues review openings).
rl          ``ckpt/rl/<reward>/``: a GRPO policy per reward, from the SFT policy.
rsoups      ``out/rsoups/``: θ_SFT + λτ₁ + (1−λ)τ₂ ± LiNeS over λ, both rewards on held-out
            prompts, Pareto fronts and their hypervolumes with intervals (``lines.llm.rsoups``).
=========== ======================================================================================
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lines.engine import resolve_device
from lines.errors import LinesError
from lines.llm.evaluate import LLMEvaluator
from lines.llm.model import family_of
from lines.merging.options import add_method_options
from lines.protocol import merge as pm
from lines.protocol import single as ps
from lines.protocol.options import add_learned_options, add_schedules_options
from lines.protocol.results import read_json, write_json
from lines.protocol.suite import SPLITS, Workbench


def weights(base: Path) -> Path:
    """θ_0's weight file inside the fetched folder."""
    return Path(base) / "model.safetensors"


def ft_path(finetuned_dir: Path, task: str) -> Path:
    return Path(finetuned_dir) / task / "model.safetensors"


def evaluator(a: argparse.Namespace, base: Path, extra: Sequence[str] = ()) -> LLMEvaluator:
    """The suite's evaluator from the ``common`` options (``extra``: tasks evaluated besides
    the suite's, e.g. WiSE-FT's shifted sets)."""
    return LLMEvaluator(
        base,
        list(dict.fromkeys([*a.tasks, *extra])),
        limits={"val": a.max_val, "test": a.max_test},
        device=resolve_device(a.device),
        precision=a.precision,
        batch_size=a.batch_size,
        max_chars=a.max_chars,
        norm=a.norm,
        seed=a.seed,
    )


def workbench(a: argparse.Namespace, ev: LLMEvaluator, base: Path) -> Workbench:
    """θ_0 on the evaluator's device in fp32; task vectors merged by the engine on the same
    device (exact float64 norms either way)."""
    return Workbench(
        weights(base),
        ev,
        family=family_of(base),
        block_policy=a.block_policy,
        device=ev.device,
        engine_device=str(ev.device.type),
        dtype=torch.float32,
    )


def run_finetune(a: argparse.Namespace, base: Path, out_dir: Path) -> dict[str, Any]:
    """Fine-tune θ_0 on each of ``--task`` (one DVC stage per task) into ``out_dir/<task>/``."""
    from lines.llm.finetune import finetune

    logs = {}
    for t in a.task:
        log = finetune(
            base,
            t,
            ft_path(out_dir, t),
            epochs=a.epochs,
            lr=a.lr,
            batch_size=a.train_batch_size,
            max_train=a.max_train,
            weight_decay=a.weight_decay,
            warmup=a.warmup,
            max_chars=a.max_chars,
            seed=a.seed,
            device=resolve_device(a.device),
            precision=a.precision,
        )
        write_json(Path(out_dir) / t / "train.json", log)
        logs[t] = log
    return logs


def run_base_eval(
    a: argparse.Namespace, base: Path, finetuned_dir: Path, out: Path
) -> dict[str, Any]:
    """θ_0's and every fine-tuned model's accuracy on every task, val and test (the text
    suite's ``base.json`` shape, which ``lines.protocol`` reads)."""
    from lines.protocol.schemas import BaseEval, write_output
    from lines.protocol.suite import score

    t0 = time.perf_counter()
    ev = evaluator(a, base)  # with norm "auto", it chooses each task's normalisation here (θ_0)
    theta0 = _load(weights(base))
    res: dict[str, Any] = {"tasks": list(a.tasks), "pretrained": {}, "finetuned": {}}
    # Per-example test correctness of every model, for the reports' bootstrap intervals.
    bits: dict[str, Any] = {"pretrained": {}, "finetuned": {}}
    res["pretrained"]["val"] = ev.accuracy(theta0, "val", a.tasks)
    res["pretrained"]["test"], bits["pretrained"] = score(ev, None, "test", a.tasks)
    for t in tqdm(a.tasks, desc="base_eval", unit="model"):
        sd = _load(ft_path(finetuned_dir, t))
        res["finetuned"][t] = {"val": ev.accuracy(sd, "val", a.tasks)}
        res["finetuned"][t]["test"], bits["finetuned"][t] = score(ev, None, "test", a.tasks)
    res["test_correct"] = bits
    res["examples"] = {s: {t: ev.num_examples(t, s) for t in a.tasks} for s in SPLITS}
    res["norm"], res["device"] = a.norm, str(ev.device)
    if ev.norm_choice:  # norm "auto": what was chosen per task, and θ_0's val accuracy under each
        res["norms"] = {t: {"chosen": ev.norms[t], "val_acc": ev.norm_choice[t]} for t in a.tasks}
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return write_output(Path(out), BaseEval, res)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from lines.io import load_state_dict

    if not Path(path).is_file():
        raise LinesError(f"{path} is missing (run the fetch/finetune stages first)")
    return load_state_dict(path)


def run_edit(
    a: argparse.Namespace, base: Path, finetuned_dir: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Single-task LiNeS editing of every task; control = the other tasks."""
    ev = evaluator(a, base)
    fts = {t: ft_path(finetuned_dir, t) for t in a.tasks}
    with workbench(a, ev, base) as b:
        return ps.run_edit(b, read_json(base_eval), a.tasks, a.tasks, fts, a.gammas, out)


def run_merge(
    a: argparse.Namespace, base: Path, finetuned_dir: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Each method with and without LiNeS (``lines.protocol.merge.run_merge``)."""
    ev = evaluator(a, base)
    fts = [ft_path(finetuned_dir, t) for t in a.tasks]
    from lines.llm.fetch import model_name

    header = {"suite": "llm", "model": model_name(base)}
    with workbench(a, ev, base) as b:
        return pm.run_merge(b, read_json(base_eval), a.tasks, fts, vars(a), out, header=header)


def soup_path(soup_dir: Path, task: str, seed: int) -> Path:
    """The extra soup ingredient of ``task`` fine-tuned with ``seed`` (the ``soup_finetune``
    stage)."""
    return Path(soup_dir) / f"seed{seed}" / task / "model.safetensors"


def run_learned(
    a: argparse.Namespace, base: Path, finetuned_dir: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """The learned baselines against TA + LiNeS with their cost
    (``lines.protocol.baselines.run_baselines``); the class logits are the options' normalised
    log-likelihoods (``LLMEvaluator.logits``)."""
    from lines.protocol.baselines import run_baselines

    return _protocol_stage(run_baselines, a, base, finetuned_dir, base_eval, out)


def _protocol_stage(
    fn: Any, a: argparse.Namespace, base: Path, finetuned_dir: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """A protocol step over every task's fine-tuned model with the stage's section as its
    config and bootstrap intervals (``schedules``, ``learned``)."""
    ev = evaluator(a, base)
    fts = {t: ft_path(finetuned_dir, t) for t in a.tasks}
    with workbench(a, ev, base) as b:
        return fn(
            b,
            read_json(base_eval),
            a.tasks,
            fts,
            vars(a),
            out,
            n_boot=a.bootstrap,
            boot_seed=a.bootstrap_seed,
        )


def run_wiseft(a: argparse.Namespace, base: Path, finetuned_dir: Path, out: Path) -> dict[str, Any]:
    """WiSE-FT of the ``wiseft_task`` model, θ_0 + γτ against θ_0 + γ·λ(ℓ)τ, on its own test set
    and its shifted sets (``lines.protocol.single.run_wiseft``)."""
    if a.wiseft_task not in a.tasks:
        raise LinesError(f"wiseft_task {a.wiseft_task} is not one of the suite's tasks {a.tasks}")
    ev = evaluator(a, base, a.ood_tasks)
    item = (a.wiseft_task, a.wiseft_task, ft_path(finetuned_dir, a.wiseft_task), a.ood_tasks)
    with workbench(a, ev, base) as b:
        return ps.run_wiseft(
            b, [item], a.gammas, a.lines_gamma, out, header={"model": a.wiseft_task}
        )


def run_soups(
    a: argparse.Namespace, base: Path, finetuned_dir: Path, soup_dir: Path, out: Path
) -> dict[str, Any]:
    """Uniform and greedy soups of ``soup_task``'s fine-tunes (the suite's, seed ``seed``, and
    one per ``seeds``), each plain and with LiNeS; controls: the suite's other tasks."""
    if not a.seeds:
        raise LinesError("soups.seeds is empty: a soup needs at least one extra fine-tune")
    members = {f"seed{a.seed}": ft_path(finetuned_dir, a.soup_task)}
    members.update({f"seed{s}": soup_path(soup_dir, a.soup_task, s) for s in a.seeds})
    for m, p in members.items():
        if not Path(p).is_file():
            raise LinesError(f"soup member {m}: {p} is missing (run the soup_finetune stage)")
    controls = [t for t in a.tasks if t != a.soup_task]
    ev = evaluator(a, base)
    with workbench(a, ev, base) as b:
        return ps.run_soups(b, members, a.soup_task, controls, a.gammas, out)


def run_schedules(
    a: argparse.Namespace, base: Path, finetuned_dir: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Is linear optimal? (``lines.protocol.schedules.run_schedules``)."""
    from lines.protocol.schedules import run_schedules as schedules

    return _protocol_stage(schedules, a, base, finetuned_dir, base_eval, out)


# ----------------------------------------------------------------------------------------------
# Command line


def _common(p: argparse.ArgumentParser, batch_size: bool = True) -> None:
    """The ``common`` section of llm/params.yaml (``batch_size`` False: the stage defines its
    own, e.g. ``learned``, whose section's value comes later on the command line and wins)."""
    p.add_argument("--tasks", nargs="+", required=True, help="registry text tasks")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA) or fp32")
    if batch_size:
        p.add_argument("--batch_size", type=int, default=32, help="scored sequences per forward")
    p.add_argument("--max_val", type=int, default=0, help="val examples per task (0: all)")
    p.add_argument("--max_test", type=int, default=0, help="test examples per task (0: all)")
    p.add_argument("--max_chars", type=int, default=1000, help="input text cut (characters)")
    p.add_argument(
        "--norm",
        default="auto",
        choices=["auto", "chars", "tokens", "none"],
        help="option-score normalisation; auto: per task, the best of θ_0 on val",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block_policy", default="reference", choices=["reference", "depth"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: default)")
    _data(p)


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a text fetch folder (datasets/<task>/<split>.jsonl) instead of the asset packages",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lines.llm.stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("fetch", help="θ_0 as an HF folder (pinned GGUF or tiny)")
    p.add_argument(
        "--source",
        default="smollm2",
        help="smollm2 (the pinned GGUF), tiny (a random LLaMA), hf:<owner>/<repo>[@<revision>] "
        "or a local HF model folder (decoder-only or encoder–decoder, e.g. T5)",
    )
    p.add_argument("--cache_dir", type=Path, default=Path("~/.cache/lines/hub"))
    p.add_argument("--tiny_layers", type=int, default=2)
    p.add_argument("--tiny_hidden", type=int, default=32)
    p.add_argument("--tiny_seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("finetune", help="full fine-tuning on one task, answer-only loss")
    _common(p)
    p.add_argument("--task", nargs="+", required=True, help="the task(s) to fine-tune on")
    p.add_argument("--base", type=Path, default=Path("ckpt/base"))
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--train_batch_size", type=int, default=16)
    p.add_argument("--max_train", type=int, default=0, help="training examples (0: all)")
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--warmup", type=float, default=0.06, help="warm-up fraction of the steps")
    p.add_argument("--out", type=Path, required=True, help="folder of the fine-tuned models")

    def io(p: argparse.ArgumentParser, base_eval: bool) -> None:
        p.add_argument("--base", type=Path, default=Path("ckpt/base"))
        p.add_argument("--finetuned", type=Path, default=Path("ckpt/finetuned"))
        if base_eval:
            p.add_argument("--base_eval", type=Path, default=Path("out/eval/base.json"))
        p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("base_eval", help="zero-shot and fine-tuned accuracies, val and test")
    _common(p)
    io(p, False)

    p = sub.add_parser("edit", help="single-task LiNeS editing over γ")
    _common(p)
    io(p, True)
    p.add_argument("--gammas", nargs="+", type=float, required=True)

    def merge_options(p: argparse.ArgumentParser) -> None:
        """The ``merge`` section of llm/params.yaml."""
        p.add_argument("--methods", nargs="+", required=True)
        p.add_argument("--lambdas", nargs="+", type=float, required=True, help="uniform λ grid")
        p.add_argument("--betas", nargs="+", type=float, required=True, help="LiNeS β grid")
        add_method_options(p, skip={"seed"}, grid_nargs="*")
        p.add_argument("--alpha_norm", default="l1", choices=["l1", "l2"])

    p = sub.add_parser("merge", help="multi-task merging with and without LiNeS")
    _common(p)
    io(p, True)
    merge_options(p)

    p = sub.add_parser(
        "gather_merge",
        help="one merge.json from per-method merge runs (merge_method@<method>, run in parallel)",
    )
    merge_options(p)  # the section as the parts saw it; --methods gives the report's order
    p.add_argument("--parts", type=Path, default=Path("out/merge_parts"), help="<parts>/<method>/")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser(
        "learned", help="Fisher, AdaMerging, aTLAS, output ensembles against TA + LiNeS, with cost"
    )
    _common(p, batch_size=False)
    io(p, True)
    add_learned_options(p)  # its --batch_size (examples per task and step) also sets scoring's

    p = sub.add_parser("wiseft", help="WiSE-FT with and without LiNeS, own test + shifted sets")
    _common(p)
    io(p, False)
    p.add_argument("--wiseft_task", required=True, help="the fine-tuned task interpolated")
    p.add_argument("--ood_tasks", nargs="+", required=True, help="its distribution shifts")
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--lines_gamma", type=float, default=0.5, help="LiNeS's γ (α = γ, β = 1 − γ)")

    p = sub.add_parser("soups", help="uniform and greedy soups of one task's seeds, ± LiNeS")
    _common(p)
    io(p, False)
    p.add_argument("--soup_dir", type=Path, default=Path("ckpt/soup"))
    p.add_argument("--soup_task", required=True)
    p.add_argument("--seeds", nargs="+", type=int, required=True, help="extra fine-tuning seeds")
    p.add_argument("--gammas", nargs="+", type=float, required=True, help="LiNeS γ grid")

    p = sub.add_parser("report", help="regime check, intervals, tables and plots")
    p.add_argument("--base", type=Path, default=Path("ckpt/base"))
    p.add_argument("--base_eval", type=Path, default=Path("out/eval/base.json"))
    p.add_argument(
        "--edit", type=Path, default=Path("out/edit"), help="edit stage output; 'none': not run"
    )
    p.add_argument("--merge", type=Path, default=Path("out/merge"))
    for n in ("wiseft", "soups", "learned"):
        p.add_argument(f"--{n}", type=Path, default=None, help=f"{n} stage output folder")
    p.add_argument("--schedules", type=Path, default=None, help="schedules stage output folder")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("schedules", help="every λ(ℓ) schedule at an equal val budget vs linear")
    _common(p)
    io(p, True)
    add_schedules_options(p)
    add_method_options(p, skip={"seed"}, grid_nargs="*")

    def rlhf(p: argparse.ArgumentParser) -> None:
        """The ``rlhf`` section: what SFT, RL and the soups' scoring share."""
        p.add_argument("--base", type=Path, default=Path("ckpt/base"))
        p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        p.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA) or fp32")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--opening_words", type=int, default=8, help="words of a review opening")
        p.add_argument("--max_new_tokens", type=int, default=32, help="continuation length cap")
        p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
        p.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: default)")
        _data(p)
        p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("sft", help="rewarded soups: the SFT policy (continue review openings)")
    rlhf(p)
    p.add_argument("--max_train", type=int, default=0, help="training reviews (0: all)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--train_batch_size", type=int, default=16)

    p = sub.add_parser("rl", help="rewarded soups: a GRPO policy per reward, from the SFT policy")
    rlhf(p)
    p.add_argument("--sft", type=Path, default=Path("ckpt/sft"))
    p.add_argument("--reward", nargs="+", required=True, help="the reward(s) to train for")
    p.add_argument("--max_prompts", type=int, default=0, help="training prompts (0: all)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--prompts_per_step", type=int, default=8)
    p.add_argument("--group", type=int, default=4, help="completions per prompt (GRPO group)")
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--kl_coef", type=float, default=0.05, help="β_KL of the k3 penalty")

    p = sub.add_parser("rsoups", help="rewarded soups ± LiNeS: both rewards, Pareto fronts")
    rlhf(p)
    p.add_argument("--sft", type=Path, default=Path("ckpt/sft"))
    p.add_argument("--rl", type=Path, default=Path("ckpt/rl"))
    p.add_argument("--rewards", nargs=2, required=True, help="the two policies' rewards")
    p.add_argument("--lambdas", nargs="+", type=float, required=True, help="λ grid in [0, 1]")
    p.add_argument("--lines_alpha", type=float, default=1.0, help="LiNeS α (paper: 1)")
    p.add_argument("--lines_beta", type=float, default=1.0, help="LiNeS β (paper: 1)")
    p.add_argument(
        "--uniform_scale",
        type=float,
        default=-1.0,
        help="a control soup scaled uniformly by this (−1: LiNeS's mean λ(ℓ); 0: none)",
    )
    p.add_argument("--max_eval", type=int, default=0, help="held-out prompts (0: all)")
    p.add_argument("--batch_size", type=int, default=64, help="prompts per generate call")
    p.add_argument("--block_policy", default="reference", choices=["reference", "depth"])
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--bootstrap_seed", type=int, default=0)
    return ap


def run(a: argparse.Namespace) -> Any:
    if getattr(a, "data", None) is not None:
        from lines.llm import evaluate

        evaluate.DATA_ROOT = a.data
    if a.stage == "fetch":
        from lines.llm.fetch import fetch

        tiny = {"layers": a.tiny_layers, "hidden": a.tiny_hidden, "seed": a.tiny_seed}
        if a.source in ("smollm2", "tiny"):
            return fetch(a.source, a.out, **(tiny if a.source == "tiny" else {}))
        from lines.llm.fetch import fetch_reference

        return fetch_reference(a.source, a.out, a.cache_dir)
    if a.stage == "finetune":
        return run_finetune(a, a.base, a.out)
    if a.stage == "base_eval":
        return run_base_eval(a, a.base, a.finetuned, a.out)
    if a.stage == "edit":
        return run_edit(a, a.base, a.finetuned, a.base_eval, a.out)
    if a.stage == "merge":
        return run_merge(a, a.base, a.finetuned, a.base_eval, a.out)
    if a.stage == "gather_merge":
        return pm.gather_merge([a.parts / m for m in a.methods], a.out)
    if a.stage == "schedules":
        return run_schedules(a, a.base, a.finetuned, a.base_eval, a.out)
    if a.stage == "wiseft":
        return run_wiseft(a, a.base, a.finetuned, a.out)
    if a.stage == "learned":
        return run_learned(a, a.base, a.finetuned, a.base_eval, a.out)
    if a.stage == "soups":
        return run_soups(a, a.base, a.finetuned, a.soup_dir, a.out)
    if a.stage in ("sft", "rl", "rsoups"):
        from lines.llm import rsoups

        a.device = str(resolve_device(a.device))
        if a.stage == "sft":
            return rsoups.run_sft(a, a.base, a.out)
        if a.stage == "rl":
            return rsoups.run_rl(a, a.base, a.sft, a.out)
        return rsoups.run_rsoups(a, a.base, a.sft, a.rl, a.out)
    if a.stage == "report":
        from lines.llm.fetch import model_name
        from lines.pipeline.report import run_report

        model = model_name(a.base)
        edit = a.edit if a.edit is not None and str(a.edit) != "none" else None
        return run_report(
            a.base_eval,
            None,
            edit,
            a.merge,
            a.soups,
            a.wiseft,
            a.out,
            suite="llm",
            backbone=model,
            schedules_dir=a.schedules,
            learned_dir=a.learned,
            n_boot=a.bootstrap,
            boot_seed=a.bootstrap_seed,
        )
    raise LinesError(f"unknown stage {a.stage}")  # pragma: no cover - argparse refuses it


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Never reach a hub: every model and tokenizer is read from local files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        run(args)
    except LinesError as e:
        print(f"lines: error: {e}", file=sys.stderr)
        return 2
    print(f"stage {args.stage} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
