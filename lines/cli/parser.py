"""The ``lines`` command's parser: every subcommand and option. Method parameters come from the
methods' own dataclass fields (``lines.merging``), so a new method brings its options along."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from lines import __version__

EXIT_BAD_INPUT = 2


class LinesParser(argparse.ArgumentParser):
    """Usage errors end like every other error: one ``lines: error: …`` line, exit 2 (argparse
    would print the whole usage first). Subcommand parsers inherit the class."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"lines: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def float_or_auto(v: str) -> float | None:
    if v == "auto":
        return None
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got '{v}'") from None


def _add_common_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        required=True,
        help="output .safetensors file (manifest: same name .json) or folder",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier output of lines at --out (never anything else)",
    )
    p.add_argument(
        "--allow-unusual",
        action="store_true",
        help="accept what is almost always a mistake: the same checkpoint twice, the pretrained "
        "model as a fine-tuned one, --lines-alpha/--pre-lines-alpha < 0, --k < 1",
    )
    p.add_argument(
        "--family",
        default=None,
        help="model family (default: detected from the keys); see 'lines families'",
    )
    p.add_argument(
        "--block-policy",
        choices=["reference", "depth"],
        default="reference",
        help="where parameters outside the layer blocks go: 'reference' (all get block 1's factor, "
        "as the reference implementation) or 'depth' (embeddings first, final norm/head last)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or auto (default: auto = cuda when available, else cpu)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="storage dtype of floating outputs (default: as the pretrained checkpoint)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--no-hash", action="store_true", help="skip the sha256 of the inputs in the manifest"
    )


def _add_inputs_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu-inputs",
        choices=["auto", "hold", "stream"],
        default="auto",
        help="where the inputs live while merging: 'hold' reads each input once into device "
        "memory with large parallel reads (on a CPU: into RAM), 'stream' reads them tensor by "
        "tensor; 'auto' (default) holds them on a GPU when they fit in two thirds of its free "
        "memory and streams otherwise",
    )


def _add_lines_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lines-beta",
        type=float,
        default=None,
        help="apply LiNeS with this β ≥ 0 to the merged task vector",
    )
    p.add_argument(
        "--lines-alpha",
        type=float_or_auto,
        default=None,
        help="LiNeS α: a number, or 'auto' = (1/N)‖τ_sum‖/‖τ_MTL‖ (default)",
    )
    p.add_argument(
        "--alpha-norm",
        choices=["l1", "l2"],
        default="l1",
        help="norm of the automatic α (default l1, as the reference)",
    )
    _add_schedule_option(p)


def _add_schedule_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--schedule",
        default=None,
        metavar="NAME[:k=v,...]",
        help="λ(ℓ) = α + β·f(ℓ) with this schedule's shape f (default linear = LiNeS); "
        "see 'lines schedules'",
    )


def method_fields() -> dict[str, dataclasses.Field[Any]]:
    from lines.merging import all_methods

    fields: dict[str, dataclasses.Field[Any]] = {}
    for cls in all_methods().values():
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, f)
    return fields


def field_type(f: dataclasses.Field[Any]) -> Any:
    t = f.type if not isinstance(f.type, str) else f.type
    s = str(t)
    if "tuple" in s:
        return ("list", float)
    if s.startswith("float") or t is float:
        return float
    if s.startswith("int") or t is int:
        return int
    return str


def build_parser() -> argparse.ArgumentParser:
    from lines.merging import all_methods

    parser = LinesParser(
        prog="lines",
        description="LiNeS layer scaling and model merging (Wang et al., ICLR 2025), tensor by tensor.",
    )
    parser.add_argument("--version", action="version", version=f"lines {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "blocks", help="show the model family, L and the block of each parameter group"
    )
    p.add_argument("checkpoint", help="safetensors file, torch state-dict file or HF folder")
    p.add_argument("--family", default=None)
    p.add_argument("--block-policy", choices=["reference", "depth"], default="reference")
    p.add_argument("--keys", action="store_true", help="list every key with its block")
    p.add_argument("--json", action="store_true", help="print the partition as JSON")

    sub.add_parser("families", help="list the known model families")
    sub.add_parser("methods", help="list the merge methods and their parameters")
    sub.add_parser("schedules", help="list the layer-scaling schedules λ(ℓ) and their parameters")

    p = sub.add_parser("edit", help="single-task LiNeS editing: λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1)")
    p.add_argument("--pretrained", required=True)
    p.add_argument("--finetuned", required=True)
    p.add_argument(
        "--gamma",
        type=float,
        required=True,
        help="γ in [0, 1]: the first block's factor (the last keeps 1)",
    )
    _add_schedule_option(p)
    _add_inputs_option(p)
    _add_common_output(p)

    p = sub.add_parser("merge", help="merge several fine-tuned checkpoints, optionally with LiNeS")
    p.add_argument("--pretrained", required=True)
    p.add_argument("--finetuned", nargs="+", required=True)
    p.add_argument("--method", required=True, choices=sorted(all_methods()) + ["greedy_soup"])
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="uniform coefficient λ of the merged task vector when LiNeS is off (default 1.0)",
    )
    _add_lines_options(p)
    p.add_argument(
        "--pre-lines-alpha",
        type=float,
        default=None,
        help="edit each τ_i with LiNeS (this α) before merging",
    )
    p.add_argument(
        "--pre-lines-beta",
        type=float,
        default=None,
        help="edit each τ_i with LiNeS (this β) before merging",
    )
    p.add_argument(
        "--pre-schedule",
        default=None,
        metavar="NAME[:k=v,...]",
        help="the schedule of the pre-merge edit (default linear)",
    )
    p.add_argument(
        "--task-weights",
        nargs="+",
        type=float,
        default=None,
        help="scale each τ_i by its weight before merging (one per --finetuned)",
    )
    p.add_argument(
        "--save-task-vector",
        default=None,
        help="also keep the merged task vector τ_MTL (a .safetensors file) for 'lines apply' sweeps",
    )
    grp = p.add_argument_group("method parameters (see 'lines methods')")
    for name, f in method_fields().items():
        ft = field_type(f)
        flag = "--" + name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if isinstance(ft, tuple):
            grp.add_argument(
                flag, dest=f"m_{name}", nargs="+", type=float, default=None, help=help_
            )
        else:
            grp.add_argument(flag, dest=f"m_{name}", type=ft, default=None, help=help_)
    gs = p.add_argument_group("greedy soup")
    gs.add_argument(
        "--eval-cmd",
        default=None,
        help="shell command printing a held-out score for '{model}' (greedy_soup)",
    )
    gs.add_argument(
        "--scores",
        nargs="+",
        type=float,
        default=None,
        help="held-out score of each fine-tuned model, to order them (greedy_soup)",
    )
    _add_inputs_option(p)
    _add_common_output(p)

    p = sub.add_parser(
        "interpolate",
        help="WiSE-FT (one model, --gamma) or rewarded soups (--weights on the simplex)",
    )
    p.add_argument("--pretrained", required=True, help="θ_0 (WiSE-FT) or θ_SFT (rewarded soups)")
    p.add_argument("--finetuned", nargs="+", required=True)
    p.add_argument(
        "--gamma", type=float, default=None, help="WiSE-FT coefficient γ in [0, 1]: θ_0 + γτ"
    )
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        default=None,
        help="rewarded-soup weights, ≥ 0, summing to 1",
    )
    _add_lines_options(p)
    _add_inputs_option(p)
    _add_common_output(p)

    p = sub.add_parser(
        "apply", help="θ = θ_0 + λ(ℓ)·τ for a task vector saved by 'lines merge --save-task-vector'"
    )
    p.add_argument("--pretrained", required=True)
    p.add_argument("--task-vector", required=True)
    p.add_argument("--scale", type=float, default=1.0)
    _add_lines_options(p)
    _add_common_output(p)
    return parser
