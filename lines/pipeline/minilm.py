"""A BERT encoder (all-MiniLM-L6-v2, the text suite's backbone) in plain torch, and its tokenizer
read with ``tokenizers``: the same module names, state-dict keys and computation as Hugging Face's
``BertModel`` with SDPA attention (Devlin et al. 2019; transformers 5's ``modeling_bert``), without
importing transformers' modelling code.

Why: each DVC stage is its own process, and importing ``transformers.models.bert`` costs 2.2 s on
the 2-core machine (its activations pull the kernels hub, the weight-conversion machinery,
``torch.distributed.tensor`` and sympy) — a third of the smoke pipeline's wall time over its 15
stages. The outputs match ``BertModel``'s to float tolerance (``tests/test_minilm.py``, on the real
weights); dropout sits where BERT has it (embeddings, attention probabilities, both residual
branches), so fine-tuning is the same algorithm.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lines.errors import LinesError


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    pad_token_id: int

    @staticmethod
    def from_folder(folder: Path) -> BertConfig:
        cfg = json.loads((Path(folder) / "config.json").read_text())
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act", "gelu") != "gelu":
            raise LinesError(f"{folder}: not a BERT with GELU (model_type {cfg.get('model_type')})")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise LinesError(f"{folder}: only absolute position embeddings are supported")
        return BertConfig(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=cfg["num_attention_heads"],
            intermediate_size=cfg["intermediate_size"],
            max_position_embeddings=cfg["max_position_embeddings"],
            type_vocab_size=cfg.get("type_vocab_size", 2),
            layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),
            hidden_dropout_prob=cfg.get("hidden_dropout_prob", 0.1),
            attention_probs_dropout_prob=cfg.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=cfg.get("pad_token_id", 0),
        )


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        pos = torch.arange(T, device=input_ids.device)[None]
        # BertModel's order: words + token types (all type 0), then + positions.
        e = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(pos))
        e = e + self.position_embeddings(pos)
        return self.dropout(self.LayerNorm(e))


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads = c.num_attention_heads
        self.head_dim = c.hidden_size // c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.p = c.attention_probs_dropout_prob

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = h.shape
        shape = (B, T, self.heads, self.head_dim)
        q = self.query(h).view(shape).transpose(1, 2)
        k = self.key(h).view(shape).transpose(1, 2)
        v = self.value(h).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.p if self.training else 0.0,
            scale=self.head_dim**-0.5,
        )
        return out.transpose(1, 2).reshape(B, T, -1)


class _Residual(nn.Module):
    """dense → dropout → + input → LayerNorm (BertSelfOutput / BertOutput)."""

    def __init__(self, c: BertConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class _Attention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Residual(c, c.hidden_size)


class _Intermediate(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)


class _Layer(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Residual(c, c.intermediate_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        a = self.attention.output(self.attention.self(x, mask), x)
        return self.output(F.gelu(self.intermediate.dense(a)), a)


class _Encoder(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    """Kept for the checkpoints' keys (``pooler.dense``); mean pooling never runs it."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor


class MiniBert(nn.Module):
    """``BertModel``'s encoder: ``embeddings.*``, ``encoder.layer.{i}.*``, ``pooler.*``."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> EncoderOutput:
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Keys a query may attend to (True), broadcast over heads and queries.
            mask = attention_mask.bool()[:, None, None, :]
        h = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return EncoderOutput(h)


# Keys old checkpoints carry that are buffers, not weights (BertModel recomputes them).
_BUFFERS = {"embeddings.position_ids", "embeddings.token_type_ids"}


def load_minibert(folder: Path) -> MiniBert:
    """The encoder of an HF BERT folder (``config.json`` + ``model.safetensors``), fp32, eval."""
    from lines.io import load_state_dict

    folder = Path(folder)
    model = MiniBert(BertConfig.from_folder(folder))
    sd = {
        k: v for k, v in load_state_dict(folder / "model.safetensors").items() if k not in _BUFFERS
    }
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise LinesError(
            f"{folder}/model.safetensors does not fit a BERT of its config: missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return model.float().eval()


class Tokenizer:
    """The folder's ``tokenizer.json`` through ``tokenizers`` (what ``BertTokenizerFast`` runs):
    ``[CLS] … [SEP]``, lower-cased word pieces, truncated to ``max_length``."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer as Tk

        folder = Path(folder)
        self._tk = Tk.from_file(str(folder / "tokenizer.json"))
        self._tk.no_padding()
        self._tk.no_truncation()
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        pad = cfg.get("pad_token", "[PAD]")
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        self.pad_token_id = self._tk.token_to_id(pad)

    def __call__(
        self, texts: Sequence[str], truncation: bool = True, max_length: int | None = None
    ) -> dict[str, Any]:
        if truncation and max_length:
            self._tk.enable_truncation(max_length)
        else:
            self._tk.no_truncation()
        return {"input_ids": [e.ids for e in self._tk.encode_batch(list(texts))]}
