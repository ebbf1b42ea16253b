"""The suite interface the protocol runs on, and the workbench that builds θ for it.

A suite provides (FusionBench's vocabulary: a pool of models and a pool of tasks)
  (a) checkpoints: θ_0 and the fine-tuned models, as files the streaming engine reads;
  (b) an :class:`Evaluator`: accuracy of a state dict on a split of a list of tasks, and the
      per-example correctness behind it (for bootstrap confidence intervals).
Everything else — task vectors through the engine, θ_0 + λ(ℓ)τ on the evaluation device, the
sweeps and selections — is the protocol's, in :class:`Workbench` and the ``lines.protocol``
stage functions.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from lines.apply import apply_lambdas
from lines.families import Partition, partition_keys
from lines.io import load_state_dict

SPLITS = ("val", "test")


@runtime_checkable
class Evaluator(Protocol):
    """What a suite implements to be evaluated by the protocol."""

    def accuracy(
        self, state_dict: Mapping[str, torch.Tensor] | None, split: str, tasks: Sequence[str]
    ) -> dict[str, float]:
        """Top-1 accuracy in [0, 1] per task of the model with weights ``state_dict`` (None: the
        weights loaded by the previous call)."""
        ...

    def num_examples(self, task: str, split: str) -> int:
        """Examples of ``task``'s ``split`` that :meth:`accuracy` evaluates."""
        ...


@runtime_checkable
class PerExampleEvaluator(Evaluator, Protocol):
    """An evaluator that also returns per-example correctness (bool tensors), from which the
    accuracies are the means: the input of bootstrap intervals."""

    def correct(
        self, state_dict: Mapping[str, torch.Tensor] | None, split: str, tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]: ...


class AccuracyFromCorrect:
    """For a :class:`PerExampleEvaluator`: the one ``correct`` / ``accuracy`` of every suite.

    A suite sets ``self.tasks`` and implements :meth:`load` (weights into its model) and
    :meth:`correct_task` (per-example correctness of the loaded weights on one task's split);
    ``calls`` counts evaluations (the equal-budget searches report it)."""

    tasks: list[str]
    calls: int = 0

    def load(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def correct_task(self, task: str, split: str) -> torch.Tensor:
        raise NotImplementedError

    def correct(
        self,
        state_dict: Mapping[str, torch.Tensor] | None,
        split: str,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-example correctness (bool, one per example of the split's subset) per task of the
        model with weights ``state_dict`` (None: the weights loaded last)."""
        if state_dict is not None:
            self.load(state_dict)
        self.calls += 1
        return {t: self.correct_task(t, split) for t in tasks or self.tasks}

    def accuracy(
        self,
        state_dict: Mapping[str, torch.Tensor] | None,
        split: str,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, float]:
        """Accuracy per task: the mean of :meth:`correct`."""
        return {
            t: float(c.float().mean()) for t, c in self.correct(state_dict, split, tasks).items()
        }


class Workbench:
    """θ_0 held on the evaluation device, task vectors built by the engine, θ = θ_0 + λ(ℓ)τ.

    ``dtype`` casts θ_0 (None keeps the checkpoint's dtypes); ``engine_device`` is where the
    engine merges (the text suite merges on CPU whatever it evaluates on, to keep its numbers);
    ``accelerator`` (the suite's GPU, if any) is where methods that declare ``accelerated``
    (iterative ones, e.g. WUDI) merge instead."""

    def __init__(
        self,
        pretrained: Path,
        evaluator: Evaluator,
        *,
        family: str | None = None,
        block_policy: str = "reference",
        device: torch.device | str = "cpu",
        engine_device: str = "cpu",
        accelerator: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        scratch: Path | None = None,
    ):
        self.pretrained = Path(pretrained)
        self.evaluator = evaluator
        self.family, self.block_policy = family, block_policy
        self.device = torch.device(device)
        self.engine_device = engine_device
        acc = torch.device(accelerator) if accelerator is not None else None
        self.accelerator = str(acc) if acc is not None and acc.type == "cuda" else None
        raw = load_state_dict(self.pretrained)
        self.base: dict[str, torch.Tensor] = {
            k: v.to(self.device, dtype) if dtype is not None else v.to(self.device)
            for k, v in raw.items()
        }
        self.part: Partition = partition_keys(list(raw), family, block_policy)
        self.block_of = dict(self.part.block)
        if scratch is not None:
            Path(scratch).mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".lines-tau-", dir=scratch))

    @property
    def L(self) -> int:
        return self.part.num_blocks

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Workbench:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def theta(
        self, tau: Mapping[str, torch.Tensor] | None, lambdas: Sequence[float]
    ) -> dict[str, torch.Tensor]:
        """θ_0 + λ(ℓ)·τ on the device (θ_0 itself for ``tau`` None)."""
        return self.base if tau is None else apply_lambdas(self.base, tau, self.block_of, lambdas)

    def task_vector(
        self, name: str, finetuned: Sequence[Path], method: Any, norm: str = "l1"
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """τ_MTL of ``method`` over ``finetuned`` through the streaming engine (the one
        implementation of every merge), then held in float32 on the device; and its manifest."""
        from lines.engine import build_task_vector

        path = self.tmp / f"{name}.safetensors"
        # An iterative method merges on the suite's GPU; the others keep the engine device (and
        # so their numbers).
        engine_device = self.engine_device
        if self.accelerator is not None and getattr(method, "accelerated", False):
            engine_device = self.accelerator
        man = build_task_vector(
            self.pretrained,
            list(finetuned),
            method,
            path,
            family=self.family,
            block_policy=self.block_policy,
            norm=norm,  # type: ignore[arg-type]
            overwrite=True,
            progress=False,
            device=engine_device,
        )
        tau = {k: v.to(self.device, torch.float32) for k, v in load_state_dict(path).items()}
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
        return tau, man

    def load(self, path: Path) -> dict[str, torch.Tensor]:
        """A fine-tuned checkpoint on the device, in θ_0's dtypes."""
        sd = load_state_dict(path)
        return {
            k: v.to(self.device, self.base[k].dtype) if k in self.base else v for k, v in sd.items()
        }

    def accuracy(
        self, sd: Mapping[str, torch.Tensor] | None, split: str, tasks: Sequence[str]
    ) -> dict[str, float]:
        return self.evaluator.accuracy(sd, split, tasks)

    def scored(
        self, sd: Mapping[str, torch.Tensor] | None, split: str, tasks: Sequence[str]
    ) -> tuple[dict[str, float], dict[str, str] | None]:
        """Accuracies and, where the evaluator gives it, per-example correctness packed as
        '0'/'1' strings (:func:`lines.protocol.intervals.pack`; None otherwise) from one pass."""
        return score(self.evaluator, sd, split, tasks)

    def examples(self, tasks: Sequence[str]) -> dict[str, dict[str, int]]:
        return {s: {t: self.evaluator.num_examples(t, s) for t in tasks} for s in SPLITS}


def score(
    evaluator: Evaluator,
    sd: Mapping[str, torch.Tensor] | None,
    split: str,
    tasks: Sequence[str],
) -> tuple[dict[str, float], dict[str, str] | None]:
    """One evaluation: accuracies, and packed per-example correctness when the evaluator is a
    :class:`PerExampleEvaluator` (None otherwise: the report then shows no interval)."""
    from lines.protocol.intervals import pack

    if isinstance(evaluator, PerExampleEvaluator):
        correct = evaluator.correct(sd, split, tasks)
        return (
            {t: float(c.float().mean()) for t, c in correct.items()},
            {t: pack(c) for t, c in correct.items()},
        )
    return evaluator.accuracy(sd, split, tasks), None
