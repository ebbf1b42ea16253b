"""The LLM suite's evaluator: rank classification of chat prompts (:mod:`lines.llm.scoring`) on
the registry's text tasks, with per-example correctness (``lines.protocol.suite``'s
``PerExampleEvaluator``). Zero-shot is the instruct model itself: no heads, no examples.

Splits come from :mod:`lines.data` (the registry's split protocol: test hold-out, val = 10% of
train, seed 0); ``limits`` caps a split at a seeded random subset (``Split.subset``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Literal

import torch

from lines.data import LoadedTask, Task, get_task, load_task
from lines.errors import LinesError
from lines.llm.model import assign_weights, load_folder
from lines.llm.prompts import TaskPrompt, render, task_prompt
from lines.llm.scoring import (
    Collated,
    Norm,
    Request,
    autocast,
    choose_norm,
    collate,
    encode,
    loglikelihoods,
    logprob_batch,
    normalisers,
    rank_classify,
)
from lines.pipeline.common import Split
from lines.protocol.suite import AccuracyFromCorrect


@cache
def _loaded(task: Task) -> LoadedTask:
    """Loaded once per process and registry entry (keyed by the entry, not its name, so a task
    registered again under the same name is loaded again)."""
    return load_task(task.name)


# A folder written by the text pipeline's fetch stage (``datasets/<task>/<split>.jsonl``: the
# registry's splits, written once): read instead of the asset packages when set, so a GPU
# machine without the packages runs on the same examples (``--data``).
DATA_ROOT: Path | None = None


def examples(task: str, split: str, limit: int | None = None, seed: int = 0) -> Split:
    """Texts and labels of ``task``'s ``split`` (``train``, ``val`` or ``test``), at most
    ``limit`` of them (a seeded subset; 0/None: all)."""
    if get_task(task).modality != "text":
        raise LinesError(f"{task} is not a text task: the LLM suite takes text tasks only")
    if DATA_ROOT is not None:
        from lines.pipeline.common import read_split

        return read_split(DATA_ROOT, task, split).subset(limit, seed)
    texts, labels = _loaded(get_task(task)).split(split)
    return Split(list(texts), torch.as_tensor(labels).long()).subset(limit, seed)


def prompt_of(task: str) -> TaskPrompt:
    return task_prompt(task, get_task(task).classes)


class LLMEvaluator(AccuracyFromCorrect):
    """Accuracy of a causal LM's weights on each task's ``val`` or ``test`` subset, by rank
    classification over the task's verbalisers."""

    def __init__(
        self,
        model_dir: Path,
        tasks: Sequence[str],
        *,
        limits: Mapping[str, int] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int = 32,
        max_chars: int = 1000,
        norm: Norm | Literal["auto"] = "chars",
        seed: int = 0,
    ):
        self.tasks = list(tasks)
        self.device = torch.device(device)
        self.model, self.tokenizer = load_folder(model_dir, self.device)
        self.encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        self.limits = dict(limits or {})
        self.precision, self.batch_size = precision, batch_size
        self.max_chars, self.norm, self.seed = max_chars, norm, seed
        self._prepared: dict[tuple[str, str], tuple[list[Request], list[float], torch.Tensor]] = {}
        self._conts: dict[tuple[str, str], list[list[int]]] = {}
        self._collated: dict[tuple[str, str], Collated] = {}
        # norm "auto": per task, the normalisation under which θ_0 (the weights loaded now) is
        # most accurate on val — a choice made once, on val, then fixed for every model.
        self.norms: dict[str, Norm] = {}
        self.norm_choice: dict[str, dict[str, float]] = {}
        if norm == "auto":
            for t in self.tasks:
                self._choose_norm(t)

    def _split(self, task: str, split: str) -> tuple[list[Request], list[float], torch.Tensor]:
        """Every (example, option) request of the split, flattened example-major; the options'
        normalisers; the labels. Tokenised once per process, so a sweep only runs forwards."""
        key = (task, split)
        if key not in self._prepared:
            s = examples(task, split, self.limits.get(split), self.seed)
            p = prompt_of(task)
            reqs: list[Request] = []
            conts: list[list[int]] = []
            for text in s.inputs:
                ctx = render(self.tokenizer, p, text, self.max_chars)
                for v in p.verbalisers:
                    r = encode(self.tokenizer, ctx, v, self.encoder_decoder)
                    reqs.append(r)
                    if len(conts) < len(p.verbalisers):
                        conts.append(r[1])
            norm = self.norms.get(task, self.norm)
            denom = normalisers(p.verbalisers, conts, norm)  # type: ignore[arg-type]
            self._prepared[key] = (reqs, denom, s.labels)
            self._conts[key] = conts
        return self._prepared[key]

    def _choose_norm(self, task: str) -> None:
        self.norms[task] = "none"  # any: the val requests are prepared once, then re-normalised
        reqs, _, labels = self._split(task, "val")
        ll = self.scores(None, "val", task)
        options = prompt_of(task).verbalisers
        best, accs = choose_norm(ll, options, self._conts[(task, "val")], labels)
        self.norms[task], self.norm_choice[task] = best, accs
        self._prepared.pop((task, "val"))  # rebuilt with the chosen normalisers
        self._collated.pop((task, "val"), None)

    def num_examples(self, task: str, split: str) -> int:
        return len(self._split(task, split)[2])

    def load(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        assign_weights(self.model, state_dict)

    def scores(
        self, state_dict: Mapping[str, torch.Tensor] | None, split: str, task: str
    ) -> torch.Tensor:
        """Summed log-likelihood of every option (examples × options, float64)."""
        if state_dict is not None:
            self.load(state_dict)
        reqs, denom, _ = self._split(task, split)
        key = (task, split)
        if key not in self._collated:  # laid out once per process: points only run forwards
            pad = int(self.tokenizer.pad_token_id)
            self._collated[key] = collate(self.model, reqs, pad_id=pad, batch_size=self.batch_size)
        ll = loglikelihoods(self.model, self._collated[key], precision=self.precision)
        return ll.view(-1, len(denom))

    # -- the learned baselines' hooks (lines.protocol.learned.Differentiable) ----------------
    # ``self.model`` is the module whose state-dict keys are the checkpoints'. Rank
    # classification's class scores are the options' normalised log-likelihoods, so they are the
    # logits: softmax over them is the model's distribution over the task's labels.

    def labels(self, task: str, split: str) -> torch.Tensor:
        return self._split(task, split)[2]

    def logits(self, task: str, split: str, index: Sequence[int]) -> torch.Tensor:
        """Normalised option log-likelihoods (examples ``index`` × options) with the model's
        current weights, on its device; gradients flow when the caller enables them."""
        reqs, denom, _ = self._split(task, split)
        k = len(denom)
        sub = [reqs[i * k + j] for i in index for j in range(k)]
        pad = int(self.tokenizer.pad_token_id)
        self.model.eval()  # dropout off
        parts = []
        with autocast(self.device, self.precision):
            for b in range(0, len(sub), self.batch_size):
                parts.append(
                    logprob_batch(self.model, sub[b : b + self.batch_size], pad, on_device=True)
                )
        ll = torch.cat(parts).float().view(len(index), k)
        return ll / torch.tensor(denom, dtype=ll.dtype, device=ll.device)

    def correct_task(self, task: str, split: str) -> torch.Tensor:
        _, denom, labels = self._split(task, split)
        return rank_classify(self.scores(None, split, task), denom) == labels
