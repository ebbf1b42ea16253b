"""Zero-shot heads: equal to a hand-written computation through open_clip, cached on disk."""

from __future__ import annotations

import pytest
import torch
from fixtures_clip import TEXT, openclip_state_dict, tiny_openclip

from lines.clip.datasets import Task, get_task
from lines.clip.heads import head_from_state_dict, head_key, zero_shot_head
from lines.clip.model import build_text_encoder
from lines.errors import LinesError

TASK = Task(
    "Toy",
    ("cat", "dog", "aquarium_fish"),
    ("a photo of a {c}.", "a blurry photo of the {c}."),
)


@pytest.fixture(scope="module")
def text():
    return build_text_encoder(openclip_state_dict(0), heads=TEXT["heads"])


def _by_hand(model, classnames, templates):
    """task_vectors' build_classification_head, written out."""
    import open_clip

    rows = []
    with torch.no_grad():
        for c in classnames:
            e = model.encode_text(open_clip.tokenize([t.replace("{c}", c) for t in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            e = e.mean(dim=0, keepdim=True)
            e = e / e.norm()
            rows.append(e)
        w = torch.stack(rows, dim=0).transpose(0, 2) * model.logit_scale.exp()
        return w.squeeze().float().transpose(0, 1)


def test_head_equals_the_reference_computation(text):
    head = zero_shot_head(TASK, text)
    ref = _by_hand(tiny_openclip(0), TASK.classnames, TASK.templates)
    assert head.weight.shape == (3, 48)
    torch.testing.assert_close(head.weight, ref, rtol=1e-5, atol=1e-5)
    # Each row has norm exp(logit_scale) = 1/0.07.
    torch.testing.assert_close(head.weight.norm(dim=1), torch.full((3,), 1 / 0.07))
    # Scoring: normalised features times the rows.
    f = torch.randn(4, 48)
    torch.testing.assert_close(head.logits(f), (f / f.norm(dim=1, keepdim=True)) @ ref.t())


def test_second_call_hits_the_cache(text, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = type(text).encode

    def counting(self, texts, device="cpu"):
        calls["n"] += 1
        return real(self, texts, device)

    monkeypatch.setattr(type(text), "encode", counting)
    first = zero_shot_head("MNIST", text, cache_dir=tmp_path)
    assert calls["n"] >= 1
    files = list((tmp_path / "heads").glob("MNIST-*.safetensors"))
    assert len(files) == 1
    calls["n"] = 0
    second = zero_shot_head("MNIST", text, cache_dir=tmp_path)
    assert calls["n"] == 0 and torch.equal(first.weight, second.weight)

    # With the model id known, the text encoder is not even built on a hit.
    def factory():
        raise AssertionError("text tower built on a cache hit")

    third = zero_shot_head("MNISTVal", factory, cache_dir=tmp_path, model_id=text.model_id)
    assert torch.equal(third.weight, first.weight)


def test_key_depends_on_model_and_prompts(text):
    k = head_key(text.model_id, TASK)
    assert head_key("other", TASK) != k
    other = Task(TASK.name, TASK.classnames, TASK.templates[:1])
    assert head_key(text.model_id, other) != k
    # Same weights from another layout: same model id (a content hash), same heads.
    from lines.clip.convert import openclip_to_hf

    hf = build_text_encoder(openclip_to_hf(openclip_state_dict(0), "clip"), heads=TEXT["heads"])
    assert hf.model_id == text.model_id


def test_ood_sets_use_the_imagenet_head():
    t = get_task("ImageNetA")
    assert t.head_spec().name == "ImageNet" and t.head_spec().num_classes == 1000


def test_head_from_weights():
    h = head_from_state_dict("EuroSAT", {"weight": torch.ones(10, 5), "bias": torch.zeros(10)})
    assert h.num_classes == 10
    with pytest.raises(LinesError, match="has 3 rows"):
        head_from_state_dict("EuroSAT", {"weight": torch.ones(3, 5)})
