#!/usr/bin/env python
"""LLM suite evaluation throughput (issue 13): rank-classification scoring against the bare
forward pass of the same batches, in one run.

    python benchmarks/bench_llm_eval.py --device cuda --machine h100            # SmolLM2-135M shape
    python benchmarks/bench_llm_eval.py --device cpu --machine cpu --model tiny --examples 64

A LLaMA with SmolLM2-135M-Instruct's configuration and random weights (nothing downloaded) scores
synthetic requests shaped like the suite's (``--examples`` examples × ``--options`` options;
contexts of 60–300 tokens, as the chat prompts of texts cut at 1,000 characters; continuations
of 1–3 tokens). Per evaluation of all requests, through ``lines.llm.scoring.loglikelihoods``:

- **per call**: requests passed as a list (laid out into padded batches at every call, as the
  evaluator did before it kept them);
- **collated**: ``collate``'s batches, kept on the device (what ``LLMEvaluator`` does now);
- **bare forward**: the base model's forward on the same collated batches, nothing else.

Throughput counts real tokens (not padding): tokens/s = Σ request lengths / seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from timing import against_bare, best_of, run_header  # noqa: E402

SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


def requests(n: int, k: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ctx = torch.randint(
            3, vocab, (int(torch.randint(60, 301, (1,), generator=g)),), generator=g
        )
        for _ in range(k):
            cont = torch.randint(
                3, vocab, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g
            )
            out.append((ctx.tolist(), cont.tolist()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--machine", default="h100")
    ap.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "tiny"])
    ap.add_argument("--examples", type=int, default=800, help="examples (4 tasks × 200 val)")
    ap.add_argument("--options", type=int, default=4)
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[128])
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results"))
    a = ap.parse_args(argv)

    from lines._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()  # transformers' lazy imports fail on a broken torchvision
    from transformers import LlamaConfig, LlamaForCausalLM

    from lines.llm.scoring import autocast, collate, loglikelihoods

    dev = torch.device(a.device)
    cfg = SMOLLM2_135M if a.model == "smollm2-135m" else TINY
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to(dev).eval()
    reqs = requests(a.examples, a.options, cfg["vocab_size"])
    tokens = sum(len(c) + len(k) - 1 for c, k in reqs)
    res: dict = {
        **run_header(a.machine, dev),
        "model": a.model,
        "requests": len(reqs),
        "tokens": tokens,
        "precision": a.precision,
        "runs": [],
    }
    for bs in a.batch_sizes:
        col = collate(model, reqs, pad_id=0, batch_size=bs)
        padded = sum(int(b["ids"].numel()) for b in col.batches)
        base = getattr(model, model.base_model_prefix)

        def bare(col=col, base=base) -> None:
            with torch.inference_mode(), autocast(dev, a.precision):
                for b in col.batches:
                    base(input_ids=b["ids"], attention_mask=b["mask"])

        t_call = best_of(
            lambda bs=bs: loglikelihoods(
                model, reqs, pad_id=0, batch_size=bs, precision=a.precision
            ),
            dev,
            a.repeat,
        )
        t_col = best_of(
            lambda col=col: loglikelihoods(model, col, precision=a.precision), dev, a.repeat
        )
        t_bare = best_of(bare, dev, a.repeat)
        run = {
            "batch_size": bs,
            "padded_tokens": padded,
            **against_bare(
                tokens, "tokens", "collated", per_call=t_call, collated=t_col, bare_forward=t_bare
            ),
        }
        res["runs"].append(run)
        print(json.dumps(run), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"llm_eval_{a.machine}.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
