"""The ``lines`` subcommands: each turns parsed arguments into one library call and prints a
one-line summary. Errors are raised as ``LinesError`` and printed by ``lines.cli.main``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from lines.cli.parser import method_fields
from lines.errors import LinesError


def check_usual(args: argparse.Namespace) -> None:
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
        if args.schedule is not None:
            raise LinesError("--schedule needs --lines-beta (LiNeS is on only with a β)")
        return Scaling.uniform(uniform)
    return Scaling.lines(
        beta=args.lines_beta,
        alpha=args.lines_alpha,
        norm=args.alpha_norm,
        schedule=_schedule(args.schedule),
    )


def _schedule(spec: str | None) -> Any:
    from lines.schedules import parse_schedule

    return parse_schedule(spec) if spec is not None else None


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
    resident = {"auto": None, "hold": True, "stream": False}[args.gpu_inputs]
    return {
        **_common_kwargs(args),
        "allow_duplicate_inputs": args.allow_unusual,
        "resident": resident,
    }


def _method_params(args: argparse.Namespace, method_name: str) -> dict[str, Any]:
    from lines.merging import all_methods

    cls = all_methods().get(method_name)
    own = {f.name for f in dataclasses.fields(cls)} if cls else set()
    params: dict[str, Any] = {}
    for name in method_fields():
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


def cmd_schedules(args: argparse.Namespace) -> int:
    from lines.schedules import all_schedules

    for name, cls in all_schedules().items():
        print(f"{name:12} {cls.summary}  [{cls.reference}]")
        for f in dataclasses.fields(cls):
            print(f"    {f.name}={f.default!r}  {f.metadata.get('help', '')}")
    print("usage: --schedule NAME[:k=v,...], e.g. --schedule power:p=2 or piecewise:knots=0/0.2/1")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from lines.engine import edit_checkpoint

    m = edit_checkpoint(
        args.pretrained,
        args.finetuned,
        args.gamma,
        args.out,
        schedule=_schedule(args.schedule),
        **_merge_kwargs(args),
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
    from lines.cli.shell_eval import make_evaluate_command
    from lines.engine import merge_checkpoints
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

        if pre is not None or args.task_weights is not None or args.pre_schedule is not None:
            raise LinesError("greedy_soup takes no pre-merge edit or task weights")

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
        pre_schedule=_schedule(args.pre_schedule),
        task_weights=args.task_weights,
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
    "schedules": cmd_schedules,
    "edit": cmd_edit,
    "merge": cmd_merge,
    "interpolate": cmd_interpolate,
    "apply": cmd_apply,
}
