"""The ``lines`` command: inspect blocks, edit one model, merge many, interpolate, apply a saved
task vector. Every bad input ends with one line on stderr and exit code 2; nothing is written."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from lines import __version__
from lines.errors import LinesError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """Usage errors end like every other error: one ``lines: error: …`` line, exit 2 (argparse
    would print the whole usage first). Subcommand parsers inherit the class."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"lines: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _float_or_auto(v: str) -> float | None:
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


def _add_lines_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lines-beta",
        type=float,
        default=None,
        help="apply LiNeS with this β ≥ 0 to the merged task vector",
    )
    p.add_argument(
        "--lines-alpha",
        type=_float_or_auto,
        default=None,
        help="LiNeS α: a number, or 'auto' = (1/N)‖τ_sum‖/‖τ_MTL‖ (default)",
    )
    p.add_argument(
        "--alpha-norm",
        choices=["l1", "l2"],
        default="l1",
        help="norm of the automatic α (default l1, as the reference)",
    )


def _method_fields() -> dict[str, dataclasses.Field[Any]]:
    from lines.merging import all_methods

    fields: dict[str, dataclasses.Field[Any]] = {}
    for cls in all_methods().values():
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, f)
    return fields


def _field_type(f: dataclasses.Field[Any]) -> Any:
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

    parser = _Parser(
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

    p = sub.add_parser("edit", help="single-task LiNeS editing: λ(ℓ) = γ + (1−γ)(ℓ−1)/(L−1)")
    p.add_argument("--pretrained", required=True)
    p.add_argument("--finetuned", required=True)
    p.add_argument(
        "--gamma",
        type=float,
        required=True,
        help="γ in [0, 1]: the first block's factor (the last keeps 1)",
    )
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
        "--save-task-vector",
        default=None,
        help="also keep the merged task vector τ_MTL (a .safetensors file) for 'lines apply' sweeps",
    )
    grp = p.add_argument_group("method parameters (see 'lines methods')")
    for name, f in _method_fields().items():
        ft = _field_type(f)
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


def _check_usual(args: argparse.Namespace) -> None:
    """Refuse values that are legal but almost always typos, unless --allow-unusual."""
    if getattr(args, "allow_unusual", False):
        return
    for flag in ("lines_alpha", "pre_lines_alpha"):
        v = getattr(args, flag, None)
        if v is not None and v < 0:
            raise LinesError(
                f"--{flag.replace('_', '-')} {v} is negative (LiNeS shrinks shallow layers toward "
                "θ_0; pass --allow-unusual if a negative α is meant)"
            )
    k = getattr(args, "m_k", None)
    if k is not None and k < 1:
        raise LinesError(
            f"--k {k} keeps entries on which fewer than one task agrees, i.e. every entry "
            "(pass --allow-unusual if this is meant)"
        )


def _scaling(args: argparse.Namespace, uniform: float) -> Any:
    from lines.scaling import Scaling

    if args.lines_beta is None:
        if args.lines_alpha is not None:
            raise LinesError("--lines-alpha needs --lines-beta (LiNeS is on only with a β)")
        return Scaling.uniform(uniform)
    return Scaling.lines(beta=args.lines_beta, alpha=args.lines_alpha, norm=args.alpha_norm)


def _common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "family": args.family,
        "block_policy": args.block_policy,
        "overwrite": args.overwrite,
        "device": args.device,
        "out_dtype": args.dtype,
        "progress": not args.no_progress and sys.stderr.isatty(),
        "hash_inputs": not args.no_hash,
    }


def _merge_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {**_common_kwargs(args), "allow_duplicate_inputs": args.allow_unusual}


def _method_params(args: argparse.Namespace, method_name: str) -> dict[str, Any]:
    from lines.merging import all_methods

    cls = all_methods().get(method_name)
    own = {f.name for f in dataclasses.fields(cls)} if cls else set()
    params: dict[str, Any] = {}
    for name in _method_fields():
        v = getattr(args, f"m_{name}", None)
        if v is None:
            continue
        if name not in own:
            raise LinesError(f"--{name.replace('_', '-')} does not apply to method '{method_name}'")
        params[name] = tuple(v) if isinstance(v, list) else v
    return params


def cmd_blocks(args: argparse.Namespace) -> int:
    from lines.families import partition_keys
    from lines.io import open_checkpoint

    with open_checkpoint(args.checkpoint) as ck:
        keys = ck.keys()
        part = partition_keys(keys, args.family, args.block_policy)
        if args.json:
            print(
                json.dumps(
                    {
                        "family": part.family,
                        "num_blocks": part.num_blocks,
                        "block_policy": part.policy,
                        "blocks": {k: part.block[k] for k in keys},
                    },
                    indent=1,
                )
            )
            return 0
        print(f"family: {part.family}   L = {part.num_blocks}   block policy: {part.policy}")
        print(f"{'block':>5}  {'tensors':>7}  {'params':>12}  first … last key")
        for ell, group in enumerate(part.groups, 1):
            n = sum(ck.info(k).numel for k in group)
            outside = sum(1 for k in group if k in part.placed_by_policy)
            span = f"{group[0]} … {group[-1]}" if len(group) > 1 else (group[0] if group else "-")
            extra = f"  (+{outside} outside the blocks)" if outside else ""
            print(f"{ell:>5}  {len(group):>7}  {n:>12,}  {span}{extra}")
        if args.keys:
            for k in keys:
                tag = "  (outside blocks)" if k in part.placed_by_policy else ""
                print(f"{part.block[k]:>3}  {k}{tag}")
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    from lines.families import all_families

    for f in all_families().values():
        alias = f"  (aliases: {', '.join(f.aliases)})" if f.aliases else ""
        print(f"{f.name:16} {f.description}{alias}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from lines.merging import all_methods

    for name, cls in all_methods().items():
        print(f"{name:16} {cls.summary}  [{cls.reference}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "required"
            print(
                f"    --{f.name.replace('_', '-'):14} {f.metadata.get('help', '')} (default: {default})"
            )
    print(
        f"{'greedy_soup':16} add models by held-out score while the soup improves  [Wortsman et al., ICML 2022]"
    )
    print("    --scores, --eval-cmd")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from lines.engine import edit_checkpoint

    m = edit_checkpoint(
        args.pretrained, args.finetuned, args.gamma, args.out, **_merge_kwargs(args)
    )
    print(
        f"wrote {m['output']['path']}  (L = {m['num_blocks']}, λ = {_fmt(m['scaling']['lambdas'])})"
    )
    return 0


def _fmt(lams: Sequence[float]) -> str:
    if len(lams) <= 4:
        return ", ".join(f"{x:.4g}" for x in lams)
    return f"{lams[0]:.4g} … {lams[-1]:.4g}"


def cmd_merge(args: argparse.Namespace) -> int:
    from lines.engine import make_evaluate_command, merge_checkpoints
    from lines.merging import make_method

    pre = None
    if (args.pre_lines_alpha is None) != (args.pre_lines_beta is None):
        raise LinesError("--pre-lines-alpha and --pre-lines-beta go together")
    if args.pre_lines_alpha is not None:
        from lines.scaling import lines_lambdas

        lines_lambdas(2, args.pre_lines_alpha, args.pre_lines_beta)
        pre = (args.pre_lines_alpha, args.pre_lines_beta)
    scaling = _scaling(args, args.scale)
    if args.method == "greedy_soup":
        from lines.merging.greedy import greedy_soup

        if args.eval_cmd is None or args.scores is None:
            raise LinesError(
                "greedy_soup needs --eval-cmd and --scores (one held-out score per model)"
            )
        m = greedy_soup(
            args.pretrained,
            args.finetuned,
            args.scores,
            make_evaluate_command(args.eval_cmd),
            args.out,
            scaling=scaling,
            **_merge_kwargs(args),
        )
        print(
            f"wrote {m['output']['path']}  (soup of {len(m['greedy_soup']['selected'])}: {m['greedy_soup']['selected']})"
        )
        return 0
    if args.eval_cmd is not None or args.scores is not None:
        raise LinesError("--eval-cmd and --scores apply to method 'greedy_soup' only")
    method = make_method(args.method, **_method_params(args, args.method))
    m = merge_checkpoints(
        args.pretrained,
        args.finetuned,
        method,
        scaling,
        args.out,
        pre_lines=pre,
        save_task_vector=args.save_task_vector,
        **_merge_kwargs(args),
    )
    alpha = m["scaling"].get("alpha_value")
    a = f", α = {alpha:.4g}" if alpha is not None else ""
    print(
        f"wrote {m['output']['path']}  ({m['method']}, L = {m['num_blocks']}{a}, λ = {_fmt(m['scaling']['lambdas'])})"
    )
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from lines.engine import merge_checkpoints
    from lines.merging import make_method

    if (args.gamma is None) == (args.weights is None):
        raise LinesError(
            "interpolate needs exactly one of --gamma (WiSE-FT) or --weights (rewarded soups)"
        )
    if args.gamma is not None:
        method = make_method("wise_ft", gamma=args.gamma)
    else:
        method = make_method("rewarded_soup", weights=tuple(args.weights))
    m = merge_checkpoints(
        args.pretrained,
        args.finetuned,
        method,
        _scaling(args, 1.0),
        args.out,
        **_merge_kwargs(args),
    )
    print(f"wrote {m['output']['path']}  ({m['method']}, L = {m['num_blocks']})")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from lines.engine import apply_task_vector

    m = apply_task_vector(
        args.pretrained,
        args.task_vector,
        _scaling(args, args.scale),
        args.out,
        **_common_kwargs(args),
    )
    print(f"wrote {m['output']['path']}  (λ = {_fmt(m['scaling']['lambdas'])})")
    return 0


COMMANDS = {
    "blocks": cmd_blocks,
    "families": cmd_families,
    "methods": cmd_methods,
    "edit": cmd_edit,
    "merge": cmd_merge,
    "interpolate": cmd_interpolate,
    "apply": cmd_apply,
}


class _StderrLines(logging.Handler):
    """Shows the library's log lines (e.g. stale temporaries it removed) as ``lines: …`` on the
    current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"lines: {record.getMessage()}", file=sys.stderr)


def _log_to_stderr() -> None:
    logger = logging.getLogger("lines")
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _log_to_stderr()
    try:
        _check_usual(args)
        return COMMANDS[args.command](args)
    except LinesError as e:
        print(f"lines: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # anything the library did not word itself: still one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"lines: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lines: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
