"""Checking an ``llm/params.yaml`` (or profile) before anything runs: every stage's command line
is built from its sections exactly as ``llm/dvc.yaml`` unpacks them and parsed by the stages' own
parser, so the check and the stages can never disagree on a key, a type or a choice."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from lines.errors import LinesError
from lines.protocol.options import unpack_section as unpack

# stage → the params sections unpacked into its command line (llm/dvc.yaml), and the extra
# arguments dvc.yaml adds (a placeholder output, the foreach item).
STAGE_SECTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "finetune": (("common", "finetune"), ("--task", "X", "--out", "o")),
    "base_eval": (("common",), ("--out", "o")),
    "edit": (("common", "edit"), ("--out", "o")),
    "merge": (("common", "merge"), ("--out", "o")),
    "gather_merge": (("merge",), ("--out", "o")),
    "schedules": (("common", "schedules"), ("--out", "o")),
    "learned": (("common", "learned"), ("--out", "o")),
    "wiseft": (("common", "wiseft"), ("--out", "o")),
    "soups": (("common", "soups"), ("--out", "o")),
    "sft": (("rlhf", "sft"), ("--out", "o")),
    "rl": (("rlhf", "rl"), ("--reward", "X", "--out", "o")),
    "rsoups": (("rlhf", "rsoups"), ("--out", "o")),
    "report": (("report",), ("--out", "o")),
}


class _Refused(Exception):
    pass


def validate_llm_params(data: Mapping[str, Any], source: str = "llm/params.yaml") -> None:
    """Raise a one-line :class:`LinesError` naming ``source``, the stage and the problem when a
    section is missing or a stage's parser refuses its arguments."""
    from lines.llm.stages import build_parser

    parser = build_parser()

    def refuse(self: argparse.ArgumentParser, message: str) -> None:
        raise _Refused(message)

    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if data.get("fetch", {}).get("source") not in ("smollm2", "tiny"):
        raise LinesError(f"{source}: fetch.source must be smollm2 or tiny")
    for stage, (sections, extra) in STAGE_SECTIONS.items():
        argv = [stage]
        for s in sections:
            if not isinstance(data.get(s), Mapping):
                raise LinesError(f"{source}: section '{s}' is missing (stage {stage} needs it)")
            argv += unpack(data[s])
        both = (parser, subs.choices[stage])  # unknown keys reach the top parser's error
        for p in both:
            p.error = refuse.__get__(p)  # type: ignore[method-assign]
        try:
            parser.parse_args(argv + list(extra))
        except _Refused as e:
            raise LinesError(f"{source}: stage {stage}: {e}") from None
        finally:
            for p in both:
                del p.error  # back to the class's method
    rs = data["rsoups"]
    if len(rs.get("rewards", [])) != 2:
        raise LinesError(f"{source}: rsoups.rewards must name two rewards, got {rs.get('rewards')}")
    from lines.llm.rewards import get_reward

    for r in rs["rewards"]:
        try:
            get_reward(r)
        except LinesError as e:
            raise LinesError(f"{source}: rsoups.rewards: {e}") from None
    bad = [x for x in rs.get("lambdas", []) if not 0.0 <= float(x) <= 1.0]
    if bad:
        raise LinesError(f"{source}: rsoups.lambdas out of [0, 1]: {bad}")
