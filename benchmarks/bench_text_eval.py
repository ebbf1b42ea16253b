#!/usr/bin/env python
"""Text suite evaluation throughput (issue 13): one evaluation of every task's val and test
subsets through ``lines.pipeline.evaluation.Evaluator`` against the bare forward pass of the same
batches, in one run, on the embedded default (all-MiniLM-L6-v2, the 8 text tasks).

    dvc repro heads                                   # data/fetch and out/heads of params.yaml
    python benchmarks/bench_text_eval.py --machine cpu-2core
    python benchmarks/bench_text_eval.py --machine h100 --device cuda

Per evaluation (all tasks, val then test, the default's subsets):

- **per call**: the batches padded and moved to the device at every evaluation (the evaluator
  before it kept them), features copied to the CPU batch by batch;
- **kept**: ``Evaluator.accuracy`` as it is now (batches made once per split, features on the
  device until the end);
- **bare forward**: ``backbone.features`` on the kept batches, nothing else.

Throughput counts real tokens (not padding). Best of ``--repeat`` after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from timing import against_bare, best_of, run_header  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--machine", default="cpu-2core")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--fetch", default=str(ROOT / "data" / "fetch"))
    ap.add_argument("--heads", default=str(ROOT / "out" / "heads"))
    ap.add_argument("--batch_size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)

    from lines.pipeline.backbones import extract_features
    from lines.pipeline.evaluation import Evaluator

    p = yaml.safe_load(Path(a.params).read_text())
    tasks = p["common"]["tasks"]
    limits = {"val": p["data"]["max_val"], "test": p["data"]["max_test"]}
    dev = torch.device(a.device)
    ev = Evaluator(
        Path(a.fetch),
        Path(a.heads),
        p["common"]["backbone"],
        tasks,
        limits=limits,
        max_len=p["common"]["max_len"],
        batch_size=a.batch_size,
        device=a.device,
    )
    splits = [(t, s) for s in ("val", "test") for t in tasks]
    tokens = sum(len(x) for t, s in splits for x in ev._split(t, s)[0])
    examples = sum(ev.num_examples(t, s) for t, s in splits)

    def per_call() -> None:
        for t, s in splits:
            prepared, labels = ev._split(t, s)
            feats = extract_features(ev.backbone, prepared, a.batch_size)
            (ev.heads[t](feats).argmax(1) == labels).float().mean()

    def kept() -> None:
        for s in ("val", "test"):
            ev.accuracy(None, s)

    def bare() -> None:
        with torch.inference_mode():
            for key in splits:
                for b in ev._batches[key]:
                    ev.backbone.features(b)

    torch.set_grad_enabled(False)
    t_call, t_kept = best_of(per_call, dev, a.repeat), best_of(kept, dev, a.repeat)
    t_bare = best_of(bare, dev, a.repeat)
    res = {
        **run_header(a.machine, dev),
        "params": a.params,
        "examples": examples,
        "tokens": tokens,
        "batch_size": a.batch_size,
        **against_bare(tokens, "tokens", "kept", per_call=t_call, kept=t_kept, bare_forward=t_bare),
    }
    print(json.dumps(res, indent=1))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"text_eval_{a.machine}.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
