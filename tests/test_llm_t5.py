"""The LLM suite's evaluator and stages on an encoder–decoder (issue 12, item 5): a tiny T5 built
from a config. Rank classification of a T5 equals its own teacher-forced loss; a local T5 folder
goes through fetch → finetune → base_eval → merge (the ``t5`` layer family); ``hf:`` sources fail
at once offline, naming what to download. Also the learned baselines' hook of the LLM evaluator
(differentiable rank scores) and its ``learned`` stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_llm import _toy

from lines.data import TASKS
from lines.errors import LinesError
from lines.llm import stages
from lines.llm.model import family_of, is_encoder_decoder
from lines.llm.scoring import loglikelihoods
from lines.llm.tiny import default_words, tiny_tokenizer
from lines.protocol.results import read_json


def tiny_t5(tmp_path: Path) -> Path:
    """A random T5 (2 + 2 layers) with the tiny word-level tokenizer, without a chat template
    (T5 prompts are plain instructions), saved as an HF folder."""
    from transformers import T5Config, T5ForConditionalGeneration

    tok = tiny_tokenizer(default_words() + ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"])
    tok.chat_template = None
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(cfg).eval()
    folder = tmp_path / "t5-src"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_t5_rank_scores_equal_its_teacher_forced_loss(tmp_path: Path) -> None:
    from transformers import AutoModelForSeq2SeqLM

    folder = tiny_t5(tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    # Different context and continuation lengths, so both the encoder and the labels pad.
    reqs = [([5, 6, 7, 8, 9], [10]), ([5, 6], [11, 12, 13]), ([7, 8, 9], [12, 10])]
    ll = loglikelihoods(model, reqs, pad_id=1, batch_size=3)
    for (ctx, cont), got in zip(reqs, ll.tolist(), strict=True):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ctx]), labels=torch.tensor([cont]))
        # The mean token cross-entropy × the length is −Σ log p(continuation | context).
        assert got == pytest.approx(-out.loss.item() * len(cont), rel=1e-5, abs=1e-5)


def test_t5_folder_fetch_finetune_eval_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = ["t5toy_sentiment", "t5toy_spam"]
    monkeypatch.setitem(TASKS, tasks[0], _toy(tasks[0], ("negative", "positive")))
    monkeypatch.setitem(TASKS, tasks[1], _toy(tasks[1], ("normal", "spam")))
    src = tiny_t5(tmp_path)
    P = stages.build_parser()
    base, ft = tmp_path / "base", tmp_path / "ft"
    info = stages.run(P.parse_args(["fetch", "--source", str(src), "--out", str(base)]))
    assert info["source"]["format"] == "hf" and is_encoder_decoder(base)
    assert family_of(base) == "t5"
    # Tied embeddings are stored once (shared / encoder / decoder embeddings, the head).
    keys = set(read_json(base / "fetch.json")["files"])
    assert "model.safetensors" in keys and info["num_tensors"] < 60
    common = ["--tasks", *tasks, "--device", "cpu", "--max_val", "12", "--max_test", "12"]
    logs = stages.run(
        P.parse_args(
            [
                "finetune",
                *common,
                "--task",
                *tasks,
                "--base",
                str(base),
                "--out",
                str(ft),
                "--epochs",
                "4",
                "--lr",
                "3e-3",
                "--train_batch_size",
                "8",
            ]
        )
    )
    for t in tasks:
        assert logs[t]["loss_last"] < logs[t]["loss_first"]
    io = ["--base", str(base), "--finetuned", str(ft)]
    be = tmp_path / "base.json"
    res = stages.run(P.parse_args(["base_eval", *common, *io, "--out", str(be)]))
    for t in tasks:
        assert res["finetuned"][t]["test"][t] >= 0.75, res
    out = tmp_path / "merge"
    m = stages.run(
        P.parse_args(
            [
                "merge",
                *common,
                *io,
                "--base_eval",
                str(be),
                "--methods",
                "task_arithmetic",
                "--lambdas",
                "0.5",
                "1",
                "--betas",
                "0.5",
                "1",
                "--out",
                str(out),
            ]
        )
    )
    ta = m["methods"]["task_arithmetic"]
    # T5's blocks: 2 encoder + 2 decoder layers, the family's order (encoder first).
    assert len(ta["lines"]["lambdas"]) == 4
    assert ta["lines"]["alpha"] == pytest.approx(
        ta["norms"]["task_vector_sum"] / ta["norms"]["merged_task_vector"] / 2, rel=1e-9
    )


def test_hf_source_fails_at_once_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    P = stages.build_parser()
    a = P.parse_args(
        [
            "fetch",
            "--source",
            "hf:google-t5/t5-base@a9723ea",
            "--out",
            str(tmp_path / "b"),
            "--cache_dir",
            str(tmp_path / "cache"),
        ]
    )
    with pytest.raises(LinesError, match="hf download google-t5/t5-base"):
        stages.run(a)
    assert not (tmp_path / "b").exists()


def test_llm_evaluator_logits_are_differentiable_rank_scores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The learned baselines' hook (issue 17): logits = normalised option log-likelihoods, with
    gradients to the weights; the ``learned`` stage runs on the suite."""
    from lines.llm.evaluate import LLMEvaluator
    from lines.protocol.learned import Differentiable

    tasks = ["t5toy_sentiment", "t5toy_spam"]
    monkeypatch.setitem(TASKS, tasks[0], _toy(tasks[0], ("negative", "positive")))
    monkeypatch.setitem(TASKS, tasks[1], _toy(tasks[1], ("normal", "spam")))
    P = stages.build_parser()
    base, ft = tmp_path / "base", tmp_path / "ft"
    stages.run(P.parse_args(["fetch", "--source", "tiny", "--out", str(base)]))
    ev = LLMEvaluator(base, tasks, limits={"val": 6, "test": 6}, norm="tokens", batch_size=5)
    assert isinstance(ev, Differentiable)
    idx = [0, 2, 3]
    with torch.enable_grad():
        lg = ev.logits(tasks[0], "val", idx)
        lg.logsumexp(1).sum().backward()
    assert lg.shape == (3, 2)
    scores = ev.scores(None, "val", tasks[0])  # summed log-likelihoods, inference mode
    denom = ev._split(tasks[0], "val")[1]
    want = scores[idx].float() / torch.tensor(denom)
    assert torch.allclose(lg.detach(), want, atol=1e-5)
    grads = [p.grad for p in ev.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert ev.labels(tasks[0], "val").shape == (ev.num_examples(tasks[0], "val"),)

    common = ["--tasks", *tasks, "--device", "cpu", "--max_val", "8", "--max_test", "8"]
    stages.run(
        P.parse_args(
            [
                "finetune",
                *common,
                "--task",
                *tasks,
                "--base",
                str(base),
                "--out",
                str(ft),
                "--epochs",
                "1",
                "--lr",
                "3e-3",
            ]
        )
    )
    io = ["--base", str(base), "--finetuned", str(ft)]
    be = tmp_path / "base.json"
    stages.run(P.parse_args(["base_eval", *common, *io, "--out", str(be)]))
    res = stages.run(
        P.parse_args(
            [
                "learned",
                *common,
                *io,
                "--base_eval",
                str(be),
                "--methods",
                "adamerging_task",
                "ensemble",
                "--betas",
                "0.5",
                "1",
                "--steps",
                "2",
                "--batch_size",
                "4",
                "--bootstrap",
                "20",
                "--out",
                str(tmp_path / "learned"),
            ]
        )
    )
    assert set(res["methods"]) == {"lines", "adamerging_task", "ensemble"}
    assert res["methods"]["adamerging_task"]["cost"]["backward"] > 0
