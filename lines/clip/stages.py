"""Stage entry points of the CLIP benchmark: ``python -m lines.clip.stages STAGE …``.

``clip/dvc.yaml`` calls these with the sections of ``clip/params.yaml`` unpacked as
``--key value`` (DVC's dict unpacking: lists become ``--key a b``, an empty list disappears, so
every list option defaults to "empty"). This module never reads params.yaml and imports neither
Prefect nor MLflow. Paths below are relative to the stage's working directory (``clip/``).

=============== ===================================================================================
stage           what it writes
=============== ===================================================================================
prepare         ``ckpt/``: every checkpoint source (``openclip:``/``hf:`` references or local
                files and folders in any community layout) in canonical form —
                ``pretrained.safetensors`` (image tower), ``text.safetensors`` (the whole CLIP,
                for the heads), ``finetuned/<key>.safetensors`` — each with its manifest, and
                ``prepare.json`` (sources, sha256s, the tower's sizes). Unchanged sources are
                not converted again (the output persists between runs).
heads           ``out/heads/``: the zero-shot head of every task (``heads.safetensors``,
                ``heads.json``); computed through the content-keyed cache under ``cache_dir``.
finetuned_eval  ``out/eval/base.json``: zero-shot accuracy of θ_0 on every task and of each
                fine-tuned model on its own task, val and test (or read from a reference JSON
                such as tall_masks' ``nonlinear_ft_accuracies.json``).
merge           ``out/merge/merge.json`` + ``merge_sweep.csv``: task arithmetic, TIES, Consensus
                (any ``lines`` method), each without LiNeS (uniform λ) and with LiNeS (β, α from
                the rule); every coefficient chosen on val by average normalised accuracy,
                reported on test, absolute and normalised, per task and on average.
edit            ``out/edit/``: single-task LiNeS editing over γ (target vs control).
wiseft          ``out/wiseft/``: WiSE-FT with and without LiNeS, target task → shifted tasks
                (ImageNet → its OOD sets in the reference).
soups           ``out/soups/``: uniform and greedy soups, with and without LiNeS.
report          ``out/report/``: report.md (tables, plots), metrics.json, merge_table.csv.
=============== ===================================================================================

The output shapes are those of the text/vision pipeline (``out/merge/merge.json`` etc.), so the
orchestration's records and the report helpers read both. Every task vector goes through the
engine (``build_task_vector``, once per method); a sweep then costs one scaled add per tensor
and one evaluation per point.
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

from lines.clip.prepare import (
    Checkpoints,
    resolve_tasks,
    run_prepare,
)
from lines.clip.suite import HEADS_FILE, HEADS_INDEX, Bench, text_encoder
from lines.engine import resolve_device
from lines.errors import LinesError
from lines.merging.options import add_method_options
from lines.protocol import merge as pm
from lines.protocol import single as ps
from lines.protocol.options import add_learned_options, add_schedules_options
from lines.protocol.results import write_csv, write_json
from lines.protocol.schemas import BaseEval, SoupsResult, WiseftResult, read_output, write_output
from lines.protocol.stage import run_stage
from lines.protocol.suite import SPLITS

__all__ = ["build_parser", "main", "parse_finetuned", "run", "run_prepare"]


# ----------------------------------------------------------------------------------------------
# heads


def run_heads(a: argparse.Namespace, ckpt: Path, out: Path) -> dict[str, Any]:
    """The zero-shot head of every task of the suite, into ``out`` (and the shared cache)."""
    from lines.clip.datasets import get_task
    from lines.clip.heads import zero_shot_head
    from lines.io import save_state_dict

    ck = Checkpoints(ckpt)
    tasks = resolve_tasks(a.suite, a.tasks)
    dev = resolve_device(a.device)
    enc = text_encoder(ck.text, a)
    weights, info = {}, {}
    t0 = time.perf_counter()
    for t in tasks:
        task = get_task(t)
        h = zero_shot_head(task, enc, cache_dir=a.cache_dir, device=dev)
        weights[t] = h.weight.cpu().contiguous()
        info[t] = {
            "key": h.key,
            "num_classes": h.num_classes,
            "num_templates": len(task.templates),
        }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(out / HEADS_FILE, weights)
    res = {
        "model_id": enc.model_id,
        "text_sha256": ck.index["text"]["sha256"],
        "text_tower": enc.describe(),
        "tasks": info,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(out / HEADS_INDEX, res)
    return res


# ----------------------------------------------------------------------------------------------
# finetuned_eval


def run_finetuned_eval(
    a: argparse.Namespace, ckpt: Path, heads: Path, out: Path, reference: str = ""
) -> dict[str, Any]:
    """Zero-shot accuracy of θ_0 on every task, and each fine-tuned model's on its own task
    (val and test), in the text pipeline's ``base.json`` shape. With ``reference`` (a JSON file
    of fine-tuned accuracies, tall_masks' format) those are read from it where it has them."""
    from lines.clip.evaluate import reference_accuracies

    tasks = resolve_tasks(a.suite, a.tasks)
    refs = {s: reference_accuracies(reference, s) if reference else {} for s in SPLITS}
    res: dict[str, Any] = {
        "tasks": tasks,
        "pretrained": {},
        "finetuned": {},
        "source": {},
        "reference_file": reference or None,
    }
    with Bench(a, ckpt, heads) as b:
        for s in SPLITS:
            res["pretrained"][s] = b.accuracy(b.base, s, tasks)
        for t in tasks:
            res["finetuned"][t] = {}
            res["source"][t] = {}
            missing = [s for s in SPLITS if t not in refs[s]]
            if missing:
                b.load(b.finetuned_state(b.ck.for_task(t)))
            for s in SPLITS:
                if t in refs[s]:
                    res["finetuned"][t][s] = {t: refs[s][t]}
                    res["source"][t][s] = "reference"
                else:
                    res["finetuned"][t][s] = b.accuracy(None, s, [t])
                    res["source"][t][s] = "measured"
        res["examples"] = {s: {t: b.num_examples(t, s) for t in tasks} for s in SPLITS}
        res["sha256"] = {
            "pretrained": b.ck.index["pretrained"]["sha256"],
            **{t: b.ck.sha256(b.ck.key_of(t)) for t in tasks},
        }
    return write_output(Path(out), BaseEval, res)


# ----------------------------------------------------------------------------------------------
# merge, edit, wiseft, soups: the protocol (lines.protocol) on this suite's Bench


def run_merge(
    a: argparse.Namespace, ckpt: Path, heads: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Each method with and without LiNeS on the suite (``lines.protocol.merge.run_merge``)."""
    tasks = resolve_tasks(a.suite, a.tasks)
    with Bench(a, ckpt, heads) as b:
        fts = [b.ck.for_task(t) for t in tasks]
        header = {"model": a.model, "suite": str(a.suite)}
        return pm.run_merge(
            b.wb, read_output(base_eval, BaseEval), tasks, fts, vars(a), out, header=header
        )


def run_edit(
    a: argparse.Namespace, ckpt: Path, heads: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Single-task LiNeS editing of ``edit_tasks`` (default: the suite); control = the suite's
    other tasks (``lines.protocol.single.run_edit``)."""
    tasks = resolve_tasks(a.suite, a.tasks)
    edit_tasks = resolve_tasks(a.suite, a.edit_tasks) if a.edit_tasks else tasks
    for t in edit_tasks:
        if t not in tasks:
            raise LinesError(f"edit task {t} is not in the suite")
    with Bench(a, ckpt, heads) as b:
        fts = {t: b.ck.for_task(t) for t in edit_tasks}
        return ps.run_edit(
            b.wb, read_output(base_eval, BaseEval), tasks, edit_tasks, fts, a.gammas, out
        )


def run_wiseft(a: argparse.Namespace, ckpt: Path, heads: Path, out: Path) -> dict[str, Any]:
    """WiSE-FT of ``wiseft_model`` on ``wiseft_task`` (ImageNet) with its OOD sets as the shift
    (``lines.protocol.single.run_wiseft``); fine-tuned and zero-shot references measured here."""
    from lines.clip.datasets import get_task

    out = Path(out)
    if not a.wiseft_model:
        res = {"skipped": "wiseft.wiseft_model is empty", "tasks": [], "gammas": [], "rows": []}
        res = write_output(out / "wiseft.json", WiseftResult, res)
        write_csv(out / "wiseft_sweep.csv", [])
        return res
    task = get_task(a.wiseft_task).name
    shifts = [get_task(t).name for t in a.ood_tasks]
    if not shifts:
        raise LinesError("wiseft.ood_tasks is empty: name the shifted test sets")
    with Bench(a, ckpt, heads) as b:
        item = (a.wiseft_model, task, b.ck.path(a.wiseft_model), shifts)
        header = {"model": a.wiseft_model}
        return ps.run_wiseft(b.wb, [item], a.gammas, a.lines_gamma, out, header=header)


def run_soups(a: argparse.Namespace, ckpt: Path, heads: Path, out: Path) -> dict[str, Any]:
    """Uniform and greedy soups of ``soup_members`` (fine-tuned models of ``soup_task``) with
    and without LiNeS, controls ``control_tasks`` (``lines.protocol.single.run_soups``)."""
    from lines.clip.datasets import get_task

    out = Path(out)
    if not a.soup_members:
        res = {"skipped": "soups.soup_members is empty", "soups": {}}
        res = write_output(out / "soups.json", SoupsResult, res)
        return res
    if len(a.soup_members) < 2:
        raise LinesError("soups.soup_members: a soup needs at least two models")
    task = get_task(a.soup_task).name
    controls = [get_task(t).name for t in a.control_tasks]
    with Bench(a, ckpt, heads) as b:
        members = {k: b.ck.path(k) for k in a.soup_members}
        return ps.run_soups(b.wb, members, task, controls, a.gammas, out)


def run_schedules(
    a: argparse.Namespace, ckpt: Path, heads: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Is linear optimal? Every schedule at an equal val budget against linear, for merging the
    suite and editing ``edit_tasks`` (``lines.protocol.schedules.run_schedules``)."""
    from lines.protocol.schedules import run_schedules as schedules

    tasks = resolve_tasks(a.suite, a.tasks)
    cfg = {**vars(a), "edit_tasks": resolve_tasks(a.suite, a.edit_tasks) if a.edit_tasks else []}
    with Bench(a, ckpt, heads) as b:
        fts = {t: b.ck.for_task(t) for t in tasks}
        base = read_output(base_eval, BaseEval)
        return schedules(
            b.wb, base, tasks, fts, cfg, out, n_boot=a.bootstrap, boot_seed=a.bootstrap_seed
        )


def run_learned(
    a: argparse.Namespace, ckpt: Path, heads: Path, base_eval: Path, out: Path
) -> dict[str, Any]:
    """Fisher merging, AdaMerging, aTLAS and output ensembles against TA + LiNeS, with their
    cost (``lines.protocol.baselines.run_baselines``; ``Bench`` is ``Differentiable``)."""
    from lines.protocol.baselines import run_baselines

    tasks = resolve_tasks(a.suite, a.tasks)
    # One evaluator for every row: the output ensembles score through ``Bench.logits`` (the fp32
    # tower), and the paired intervals and the memory costs compare rows, so the merges are
    # evaluated the same way here (no resident images or bf16 copy in the costs either).
    a.fast_eval = "false"
    cfg = vars(a)
    with Bench(a, ckpt, heads) as b:
        fts = {t: b.ck.for_task(t) for t in tasks}
        base = read_output(base_eval, BaseEval)
        return run_baselines(
            b.wb, base, tasks, fts, cfg, out, n_boot=a.bootstrap, boot_seed=a.bootstrap_seed
        )


# ----------------------------------------------------------------------------------------------
# Command line


def _bool_or_auto(s: str) -> bool | None:
    v = str(s).strip().lower()
    if v in ("auto", ""):
        return None
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, true or false, got '{s}'")


def _common(p: argparse.ArgumentParser) -> None:
    """The ``common`` section of clip/params.yaml (every evaluating stage takes all of it)."""
    p.add_argument("--model", default="", help="e.g. ViT-B-32 (checked against the weights)")
    p.add_argument("--suite", default="8", help="8, 14 or 20 (the merged tasks)")
    p.add_argument("--tasks", nargs="*", default=[], help="explicit tasks instead of the suite")
    p.add_argument("--data_root", type=Path, default=Path("data"), help="datasets folder")
    p.add_argument("--layout", default="auto", help="auto, reference or imagefolder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16, fp16")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument(
        "--fast_eval",
        nargs="?",
        const="true",  # a bare flag (a YAML boolean true under DVC's unpacking) means true
        default="auto",
        choices=["auto", "true", "false"],
        help="resident images, low-precision compiled tower (lines.clip.fast); auto: on CUDA",
    )
    p.add_argument(
        "--fast_eval_budget_gb",
        type=float,
        default=0.0,
        help="device memory the resident images may take (0: half of what is free)",
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "off", "default", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the fast evaluator (auto: default on CUDA, off on CPU)",
    )
    p.add_argument("--num_workers", type=int, default=4, help="decoding workers (first use)")
    p.add_argument(
        "--heads", type=int, default=0, help="attention heads, image tower (0: width/64)"
    )
    p.add_argument("--text_heads", type=int, default=0, help="attention heads, text tower")
    p.add_argument("--act", default="quick_gelu", choices=["quick_gelu", "gelu"])
    p.add_argument(
        "--tower",
        default="lines",
        choices=["lines", "open_clip"],
        help="image tower module: lines.clip.tower (no open_clip import) or open_clip's",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads of torch (0: default)")
    p.add_argument("--block_policy", default="reference", choices=["reference", "depth"])
    p.add_argument("--cache_dir", type=Path, default=Path("cache"), help="image and head cache")
    p.add_argument("--max_val", type=int, default=0, help="val images per task (0: all)")
    p.add_argument("--max_test", type=int, default=0, help="test images per task (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the max_val/max_test subsets")


def _io(p: argparse.ArgumentParser, *names: str) -> None:
    defaults = {
        "ckpt": Path("ckpt"),
        "heads_dir": Path("out/heads"),
        "base_eval": Path("out/eval/base.json"),
    }
    for n in names:
        p.add_argument(f"--{n}", type=Path, default=defaults[n])
    p.add_argument("--out", type=Path, required=True)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m lines.clip.stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="stage", required=True)

    p = sub.add_parser(
        "prepare",
        help="checkpoint sources → canonical safetensors + manifests",
        description="Sources: --pretrained REF, --text REF (a whole CLIP for the heads; empty: "
        "the pretrained one), and one --finetuned.KEY REF per fine-tuned model (what DVC's "
        "unpacking of the 'sources' section gives) or --finetuned KEY=REF ...",
    )
    p.add_argument("--pretrained", required=True)
    p.add_argument("--text", default="")
    p.add_argument("--finetuned", nargs="*", default=[], metavar="KEY=REF")
    p.add_argument("--model", default="")
    p.add_argument("--hub_cache", default="", help="Hugging Face cache (empty: HF's default)")
    p.add_argument("--offline", type=_bool_or_auto, default=None, help="auto, true or false")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the Hub")
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("heads", help="zero-shot heads of the suite's tasks")
    _common(p)
    _io(p, "ckpt")

    p = sub.add_parser("finetuned_eval", help="zero-shot and fine-tuned accuracies, val and test")
    _common(p)
    _io(p, "ckpt", "heads_dir")
    p.add_argument("--reference", default="", help="JSON of fine-tuned accuracies (optional)")

    p = sub.add_parser("merge", help="multi-task merging with and without LiNeS")
    _common(p)
    _io(p, "ckpt", "heads_dir", "base_eval")
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--lambdas", nargs="+", type=float, required=True, help="uniform λ grid")
    p.add_argument("--betas", nargs="+", type=float, required=True, help="LiNeS β grid")
    add_method_options(p, skip={"seed"}, grid_nargs="*")
    p.add_argument("--alpha_norm", default="l1", choices=["l1", "l2"])

    p = sub.add_parser("edit", help="single-task LiNeS editing over γ")
    _common(p)
    _io(p, "ckpt", "heads_dir", "base_eval")
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--edit_tasks", nargs="*", default=[], help="tasks edited (default: suite)")

    p = sub.add_parser("wiseft", help="WiSE-FT with and without LiNeS")
    _common(p)
    _io(p, "ckpt", "heads_dir")
    p.add_argument("--wiseft_model", default="", help="sources.finetuned key (empty: skip)")
    p.add_argument("--wiseft_task", default="ImageNet")
    p.add_argument("--ood_tasks", nargs="*", default=[])
    p.add_argument("--gammas", nargs="+", type=float, required=True)
    p.add_argument("--lines_gamma", type=float, default=0.5)

    p = sub.add_parser("soups", help="uniform and greedy soups with and without LiNeS")
    _common(p)
    _io(p, "ckpt", "heads_dir")
    p.add_argument("--soup_members", nargs="*", default=[], help="sources.finetuned keys")
    p.add_argument("--soup_task", default="")
    p.add_argument("--control_tasks", nargs="*", default=[])
    p.add_argument("--gammas", nargs="+", type=float, required=True)

    p = sub.add_parser("schedules", help="every λ(ℓ) schedule at an equal val budget vs linear")
    _common(p)
    _io(p, "ckpt", "heads_dir", "base_eval")
    add_schedules_options(p)
    add_method_options(p, skip={"seed"}, grid_nargs="*")

    # The learned section's --batch_size (examples per task and step) replaces common's here: it
    # comes later on the command line, and it also sets this stage's evaluation batch.
    p = sub.add_parser(
        "learned",
        help="Fisher, AdaMerging, aTLAS, output ensembles against TA + LiNeS, with cost",
        conflict_handler="resolve",
    )
    _common(p)
    _io(p, "ckpt", "heads_dir", "base_eval")
    add_learned_options(p)

    p = sub.add_parser("report", help="report.md, metrics.json, tables and plots")
    p.add_argument("--model", default="")
    p.add_argument("--suite", default="8")
    p.add_argument("--ckpt", type=Path, default=Path("ckpt"))
    p.add_argument("--heads_dir", type=Path, default=Path("out/heads"))
    p.add_argument("--base_eval", type=Path, default=Path("out/eval/base.json"))
    for n in ("merge", "edit", "wiseft", "soups"):
        p.add_argument(f"--{n}", type=Path, default=Path(f"out/{n}"))
    p.add_argument("--schedules", type=Path, default=None, help="schedules stage output folder")
    p.add_argument("--learned", type=Path, default=None, help="learned stage output folder")
    p.add_argument("--out", type=Path, required=True)
    return ap


def parse_finetuned(pairs: Sequence[str], extra: Sequence[str]) -> dict[str, str]:
    """``KEY=REF`` items of ``--finetuned`` and ``--finetuned.KEY REF`` pairs (DVC's unpacking
    of a nested mapping), in order; anything else is an error."""
    out: dict[str, str] = {}
    for item in pairs:
        key, sep, ref = item.partition("=")
        if not sep or not key:
            raise LinesError(f"--finetuned {item!r}: expected KEY=REF")
        out[key] = ref
    it = iter(extra)
    for tok in it:
        if not tok.startswith("--finetuned."):
            raise LinesError(f"unrecognised argument {tok!r}")
        key = tok[len("--finetuned.") :]
        ref = next(it, None)
        if ref is None or ref.startswith("--"):
            raise LinesError(f"{tok} needs a reference")
        out[key] = ref
    return out


def run(a: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    if a.stage != "prepare" and extra:
        raise LinesError(f"unrecognised arguments: {' '.join(extra)}")
    if a.stage == "prepare":
        return run_prepare(
            a.pretrained,
            a.text,
            parse_finetuned(a.finetuned, extra),
            a.out,
            model=a.model,
            hub_cache=a.hub_cache,
            offline=a.offline,
            timeout=a.timeout,
        )
    if a.stage == "heads":
        return run_heads(a, a.ckpt, a.out)
    if a.stage == "finetuned_eval":
        return run_finetuned_eval(a, a.ckpt, a.heads_dir, a.out, a.reference)
    if a.stage == "merge":
        return run_merge(a, a.ckpt, a.heads_dir, a.base_eval, a.out)
    if a.stage == "edit":
        return run_edit(a, a.ckpt, a.heads_dir, a.base_eval, a.out)
    if a.stage == "wiseft":
        return run_wiseft(a, a.ckpt, a.heads_dir, a.out)
    if a.stage == "soups":
        return run_soups(a, a.ckpt, a.heads_dir, a.out)
    if a.stage == "schedules":
        return run_schedules(a, a.ckpt, a.heads_dir, a.base_eval, a.out)
    if a.stage == "learned":
        return run_learned(a, a.ckpt, a.heads_dir, a.base_eval, a.out)
    if a.stage == "report":
        from lines.clip.report import run_report

        return run_report(
            a.out,
            model=a.model,
            suite=a.suite,
            ckpt=a.ckpt,
            heads=a.heads_dir,
            base_eval=a.base_eval,
            merge=a.merge,
            edit=a.edit,
            wiseft=a.wiseft,
            soups=a.soups,
            schedules=a.schedules,
            learned=a.learned,
        )
    raise LinesError(f"unknown stage {a.stage}")  # pragma: no cover - argparse refuses it


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_stage(args.stage, lambda: run(args, extra))


if __name__ == "__main__":
    sys.exit(main())
