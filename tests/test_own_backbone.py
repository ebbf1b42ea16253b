"""Your own backbone (issue 11): the text suite takes any local Hugging Face encoder folder as θ_0.
A tiny BERT built from a config (random weights, MiniLM's tokenizer) runs the smoke profile end to
end: zero-shot heads, fine-tuning, every protocol stage, the report with its regime check."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _run_profile():
    spec = importlib.util.spec_from_file_location(
        "run_profile", ROOT / "scripts" / "run_profile.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_profile"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    from lines.data.assets import ASSETS, locate

    folder = tmp_path_factory.mktemp("enc") / "tiny-bert"
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(cfg).save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(locate(ASSETS[f"minilm/{f}"]), folder / f)
    return folder


def test_smoke_profile_on_a_tiny_config_built_encoder(tiny_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    params = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())
    params["common"].update(backbone=str(tiny_encoder), tasks=["trec", "sms_spam"], max_len=16)
    params["data"].update(max_train=16, max_val=8, max_test=8)
    params["finetune"].update(steps=2, batch_size=8)
    params["merge"]["methods"] = ["task_arithmetic"]
    params["report"]["bootstrap"] = 50
    times = _run_profile().run(params, tmp_path)
    assert "report" in times and "fig1" in times
    merge = json.loads((tmp_path / "out/merge/merge.json").read_text())
    assert merge["num_blocks"] == 3  # the family (BERT) detected from the tiny model's keys
    assert merge["methods"]["task_arithmetic"]["lines"]["alpha"] == pytest.approx(0.5)
    heads = json.loads((tmp_path / "out/heads/heads.json").read_text())
    assert heads["kind"] == "zeroshot" and heads["backbone"] == str(tiny_encoder)
    report = (tmp_path / "out/report/report.md").read_text()
    assert report.index("## Regime check") < report.index("## Multi-task merging")
    assert "tiny-bert" in report
