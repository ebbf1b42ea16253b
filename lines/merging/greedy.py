"""Greedy soup (Wortsman et al., "Model soups", ICML 2022, Recipe 1).

Sort the fine-tuned models by held-out score; starting from the best, add the next model to the
soup if the uniform soup of the enlarged set scores at least as well on held-out data. The
evaluation is a callback (a path in, a score out): this module never imports evaluation code.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lines.engine import merge_checkpoints
from lines.errors import LinesError
from lines.io.outputs import check_distinct_inputs, check_output
from lines.io.tempfiles import make_tmp_dir
from lines.merging.methods.uniform_soup import UniformSoup
from lines.merging.methods.wise_ft import WiseFT
from lines.scaling import Scaling

PathLike = str | os.PathLike[str]


def greedy_soup(
    pretrained: PathLike,
    finetuned: Sequence[PathLike],
    scores: Sequence[float],
    evaluate: Callable[[Path], float],
    out: PathLike,
    *,
    scaling: Scaling | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Build the greedy soup and write it to ``out``; the manifest's ``greedy_soup`` entry records
    the order, every candidate's score and the selected models (indices into ``finetuned``)."""
    if len(finetuned) < 2:
        raise LinesError(
            f"greedy_soup needs at least 2 fine-tuned checkpoints, got {len(finetuned)}"
        )
    if len(scores) != len(finetuned):
        raise LinesError(f"greedy_soup has {len(scores)} scores for {len(finetuned)} models")
    scaling = scaling or Scaling.uniform(1.0)
    if not kwargs.get("allow_duplicate_inputs", False):
        check_distinct_inputs(pretrained, finetuned)
    # Every output check now, not after the evaluations.
    check_output(out, [pretrained, *finetuned], kwargs.get("overwrite", False), Path(pretrained))
    order = sorted(range(len(finetuned)), key=lambda i: -scores[i])
    selected, best = [order[0]], float(scores[order[0]])
    history: list[dict[str, Any]] = [{"models": [order[0]], "score": best, "accepted": True}]
    quiet = {**kwargs, "progress": False, "hash_inputs": False, "overwrite": True}
    tmpdir = make_tmp_dir(Path(out))  # named for ``out``: a crashed run's is cleaned by the next
    try:
        for i in order[1:]:
            cand = selected + [i]
            path = tmpdir / "candidate.safetensors"
            merge_checkpoints(
                pretrained, [finetuned[j] for j in cand], UniformSoup(), scaling, path, **quiet
            )
            score = float(evaluate(path))
            accepted = score >= best
            history.append({"models": cand, "score": score, "accepted": accepted})
            if accepted:
                selected, best = cand, score
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    method = UniformSoup() if len(selected) > 1 else WiseFT(gamma=1.0)
    extra = {
        "greedy_soup": {
            "order": order,
            "scores": list(scores),
            "history": history,
            "selected": selected,
            "selected_paths": [str(finetuned[j]) for j in selected],
            "best_score": best,
        }
    }
    return merge_checkpoints(
        pretrained,
        [finetuned[j] for j in selected],
        method,
        scaling,
        out,
        extra_manifest=extra,
        **kwargs,
    )
