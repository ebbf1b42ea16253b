"""Evaluate one backbone checkpoint on the pipeline's tasks with their frozen heads:

    python -m tasks.evaluate --checkpoint soup.safetensors --tasks trec sms_spam \
        --backbone minilm --fetch data/fetch --heads out/heads --max_test 32 --out acc.json

The command-line wrapper the rewarded-soups flow runs per weight point (the evaluation itself is
``lines.pipeline.evaluation.Evaluator``). Writes ``{split: {task: accuracy}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tasks.evaluate", description=__doc__)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--tasks", nargs="+", required=True)
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--fetch", type=Path, default=Path("data/fetch"))
    ap.add_argument("--heads", type=Path, default=Path("out/heads"))
    ap.add_argument("--splits", nargs="+", default=["test"], choices=["val", "test"])
    ap.add_argument("--max_val", type=int, default=200)
    ap.add_argument("--max_test", type=int, default=500)
    ap.add_argument("--max_len", type=int, default=64)
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    from lines.errors import LinesError
    from lines.io import load_state_dict
    from lines.pipeline.evaluation import Evaluator

    try:
        ev = Evaluator(
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
        sd = load_state_dict(a.checkpoint)
        res = {s: ev.evaluate(sd, s) for s in a.splits}
    except LinesError as e:
        print(f"tasks.evaluate: error: {e}", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2, sort_keys=True))
    tmp.replace(a.out)
    print(
        f"{a.checkpoint}: "
        + ", ".join(f"{s} {t} {v:.3f}" for s, r in res.items() for t, v in r.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
