"""Zero-shot heads (issue 11): CLIP's recipe on a text encoder, checked on hand-made embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from lines.data.prompts import PROMPTS, prompts_for
from lines.data.registry import SUITES, TASKS
from lines.errors import LinesError
from lines.pipeline.training import zeroshot_weights

TABLE = {
    "cat in A": [3.0, 4.0],  # normalised: (0.6, 0.8)
    "cat in B": [1.0, 0.0],
    "dog in A": [0.0, 2.0],
    "dog in B": [0.0, 5.0],
}


def embed(texts):
    return torch.nn.functional.normalize(torch.tensor([TABLE[t] for t in texts]), dim=-1)


def test_rows_are_normalised_means_of_normalised_template_embeddings_times_the_scale():
    w, b = zeroshot_weights(embed, ["cat", "dog"], ["{} in A", "{} in B"], logit_scale=10.0)
    assert w.shape == (2, 2) and b.tolist() == [0.0, 0.0]
    # cat: mean((0.6, 0.8), (1, 0)) = (0.8, 0.4) -> /|.| = (2, 1)/sqrt(5)
    assert w[0].tolist() == pytest.approx([20 / math.sqrt(5), 10 / math.sqrt(5)], rel=1e-6)
    assert w[1].tolist() == pytest.approx([0.0, 10.0], abs=1e-6)
    assert w.norm(dim=1).tolist() == pytest.approx([10.0, 10.0], rel=1e-6)


def test_every_default_text_task_has_prompts_for_each_class():
    for t in SUITES["text_more"]:
        names, templates = prompts_for(t, len(TASKS[t].classes))
        assert len(names) == len(TASKS[t].classes) and all("{}" in x for x in templates)
        assert len(templates) >= 3
    assert set(PROMPTS) >= set(SUITES["text_more"])
    with pytest.raises(LinesError, match="no class-name prompts"):
        prompts_for("mnist", 10)
    with pytest.raises(LinesError, match="prompt names for 3 classes"):
        prompts_for("trec", 3)
