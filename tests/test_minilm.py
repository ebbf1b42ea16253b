"""lines.pipeline.minilm against transformers' BertModel and BertTokenizerFast: the same ids, the
same state-dict keys, bit-identical hidden states in eval mode and (same seed) in training mode
with dropout — on a tiny random BERT built from a config and on the real all-MiniLM-L6-v2 of the
embedded default."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lines.errors import LinesError
from lines.pipeline.minilm import Tokenizer, load_minibert

TEXTS = [
    "the movie was great",
    "A much longer sentence about the weather in Paris, and movies!",
    "x",
    "Ünïcödé TEXT with 123 numbers",
]


def tiny_bert(folder: Path) -> Path:
    from tokenizers import Tokenizer as Tk
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = "the movie was great a much longer sentence about weather in paris and movies".split()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    vocab.update({f"##{c}": len(vocab) + i for i, c in enumerate("s!,")})
    tk = Tk(WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _compare(folder: Path, max_length: int) -> None:
    from transformers import AutoModel, AutoTokenizer

    ours, tok = load_minibert(folder), Tokenizer(folder)
    ref, ref_tok = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    ids = tok(TEXTS, truncation=True, max_length=max_length)["input_ids"]
    assert ids == ref_tok(TEXTS, truncation=True, max_length=max_length)["input_ids"]
    assert tok.pad_token_id == ref_tok.pad_token_id
    assert list(ours.state_dict()) == list(ref.state_dict())
    T = max(map(len, ids))
    x = torch.full((len(ids), T), tok.pad_token_id)
    att = torch.zeros_like(x)
    for i, s in enumerate(ids):
        x[i, : len(s)], att[i, : len(s)] = torch.tensor(s), 1
    real = att.bool()
    with torch.no_grad():
        a = ours(x, att).last_hidden_state
        b = ref(input_ids=x, attention_mask=att).last_hidden_state
    assert torch.equal(a[real], b[real])
    ours.train(), ref.train()
    torch.manual_seed(1)
    a = ours(x, att).last_hidden_state
    torch.manual_seed(1)
    b = ref(input_ids=x, attention_mask=att).last_hidden_state
    assert torch.equal(a[real], b[real])  # dropout where BertModel has it, in the same order


def test_tiny_bert_matches_transformers(tmp_path: Path) -> None:
    _compare(tiny_bert(tmp_path / "bert"), max_length=8)


def test_real_minilm_matches_transformers() -> None:
    from lines.data.assets import locate_name

    try:
        weights = locate_name("minilm/model.safetensors")
    except LinesError as e:  # pragma: no cover - the asset packages are part of the set-up
        pytest.skip(str(e))
    _compare(weights.parent, max_length=32)


def test_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    folder = tiny_bert(tmp_path / "bert")
    from lines.io import load_state_dict, save_state_dict

    sd = load_state_dict(folder / "model.safetensors")
    sd.pop("pooler.dense.bias")
    save_state_dict(folder / "model.safetensors", sd)
    with pytest.raises(LinesError, match=r"missing \['pooler.dense.bias'\]"):
        load_minibert(folder)


def test_kept_batches_give_the_same_features(tmp_path: Path) -> None:
    """The evaluator's batches made once per split (``collate_batches``) give exactly the
    features of batches made at every call, in the split's order; over the memory budget they
    are not kept."""
    from lines.pipeline.backbones import TextBackbone, collate_batches, extract_features

    bb = TextBackbone(tiny_bert(tmp_path / "bert"), max_len=16)
    texts = [
        "the movie",
        "great",
        "a much longer sentence about weather in paris",
        "movies!",
        "the weather was great",
        "paris",
        "a movie about paris",
    ]
    prepared = bb.prepare(texts)
    assert len({len(x) for x in prepared}) > 2  # lengths differ: batches are length-sorted
    want = extract_features(bb, prepared, 3)
    batches = collate_batches(bb, prepared, 3)
    assert batches is not None and [len(b.index) for b in batches] == [3, 3, 1]
    assert torch.equal(extract_features(bb, prepared, 3, batches), want)
    # the order of the split, not of the batches
    one = torch.stack([extract_features(bb, bb.prepare([t]), 1)[0] for t in texts])
    torch.testing.assert_close(want, one, atol=1e-5, rtol=0)
    assert collate_batches(bb, prepared, 3, budget_bytes=10) is None
