"""A tiny random LLaMA and a word-level tokenizer with a chat template: θ_0 of the smoke profile
and of the tests (no real weights, no network). Seeded, so the same call gives the same bytes."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch

from lines.llm.prompts import GENERIC_QUESTION, PROMPTS

SPECIALS = ("<unk>", "<pad>", "<|im_start|>", "<|im_end|>")
# SmolLM2's template without the default system turn; the word-level pre-tokenizer drops the
# newlines, which only matters for readability.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def default_words() -> list[str]:
    """The words of every written prompt and the chat roles: the smoke vocabulary."""
    words = {"user", "assistant", "system", "text", "answer", "with", "one", "word", "or"}
    words.update(re.findall(r"\w+|[^\w\s]+", GENERIC_QUESTION.lower()))
    for p in PROMPTS.values():
        words.update(re.findall(r"\w+|[^\w\s]+", p.template.lower().replace("{text}", "")))
        words.update(p.verbalisers)
    return sorted(words)


def tiny_tokenizer(words: Iterable[str] | None = None) -> Any:
    """A lower-casing word-level tokenizer (``<unk>`` for unknown words) wrapped as a
    ``PreTrainedTokenizerFast`` with a ChatML template; ids: specials first, then ``words``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS)}
    for w in sorted(set(words if words is not None else default_words())):
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(
    vocab_size: int,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 64,
    seed: int = 0,
    tie: bool = True,
) -> Any:
    """A random ``LlamaForCausalLM`` (fp32), seeded; embeddings tied like SmolLM2's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()
