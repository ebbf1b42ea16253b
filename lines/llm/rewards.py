"""Reward functions that run offline, for the rewarded-soups experiment (Ramé et al., NeurIPS 2023;
LiNeS Sec. 5): each maps generated texts to one float per text, higher is better.

=============  ==============================================================================
name           reward of a continuation
=============  ==============================================================================
sentiment      VADER's compound score (Hutto & Gilbert, ICWSM 2014; ``vaderSentiment`` 3.3.2),
               in [−1, 1]: positive wording.
readability    Flesch reading ease (Flesch 1948: 206.835 − 1.015·words/sentences −
               84.6·syllables/words) divided by 100 and clipped to [0, 1]: short words, short
               sentences. Syllables are counted with ``pyphen``'s shipped en_US hyphenation
               dictionary, as textstat ≤ 0.7.4 did (textstat 0.7.13 downloads NLTK's cmudict
               at first use, which fails offline).
neutrality     VADER's neutral share, in [0, 1]: matter-of-fact wording.
brevity        1 − min(words, 30)/30: fewer words.
=============  ==============================================================================

An empty continuation gets 0 from every reward but brevity: saying nothing is never "positive"
or "readable". The two rewards of a rewarded soup should pull apart (their single-reward
policies trade one for the other); the experiment measures whether they do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from lines.errors import LinesError

Reward = Callable[[Sequence[str]], list[float]]

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+")
_SENTENCE_END = re.compile(r"[.!?]+")


@cache
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as e:  # pragma: no cover - the LLM assets install it
        raise LinesError(
            "the sentiment reward needs vaderSentiment==3.3.2 (bash scripts/install_llm_assets.sh)"
        ) from e
    return SentimentIntensityAnalyzer()


@cache
def _pyphen() -> Any:
    try:
        import pyphen
    except ImportError as e:  # pragma: no cover - the LLM assets install it
        raise LinesError(
            "the readability reward needs pyphen==0.18.1 (bash scripts/install_llm_assets.sh)"
        ) from e
    return pyphen.Pyphen(lang="en_US")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def syllables(word: str) -> int:
    """Syllables of one word: pyphen's hyphenation points + 1 (at least 1)."""
    return len(_pyphen().positions(word.lower())) + 1


def flesch_reading_ease(text: str) -> float | None:
    """206.835 − 1.015·(words/sentences) − 84.6·(syllables/words); None without words.
    Sentences: runs of . ! ? (at least one)."""
    ws = words(text)
    if not ws:
        return None
    sentences = max(1, len([s for s in _SENTENCE_END.split(text) if words(s)]))
    syl = sum(syllables(w) for w in ws)
    return 206.835 - 1.015 * len(ws) / sentences - 84.6 * syl / len(ws)


def sentiment(texts: Sequence[str]) -> list[float]:
    return [float(_vader().polarity_scores(t)["compound"]) if words(t) else 0.0 for t in texts]


def neutrality(texts: Sequence[str]) -> list[float]:
    return [float(_vader().polarity_scores(t)["neu"]) if words(t) else 0.0 for t in texts]


def readability(texts: Sequence[str]) -> list[float]:
    out = []
    for t in texts:
        f = flesch_reading_ease(t)
        out.append(0.0 if f is None else min(1.0, max(0.0, f / 100.0)))
    return out


BREVITY_WORDS = 30


def brevity(texts: Sequence[str]) -> list[float]:
    return [1.0 - min(len(words(t)), BREVITY_WORDS) / BREVITY_WORDS for t in texts]


REWARDS: dict[str, Reward] = {
    "sentiment": sentiment,
    "readability": readability,
    "neutrality": neutrality,
    "brevity": brevity,
}


def get_reward(name: str) -> Reward:
    try:
        return REWARDS[name]
    except KeyError:
        raise LinesError(f"unknown reward '{name}' (known: {', '.join(REWARDS)})") from None
