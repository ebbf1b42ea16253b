"""The ``lines`` command end to end: every bad input exits 2 with one ``lines: error:`` line that
names the problem and writes nothing; the good paths write what the manifest says."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import CkptSet, perturbed, snapshot, write_family

import lines
from lines.io import load_state_dict, save_state_dict, sha256_file

LINES = Path(sys.executable).with_name("lines")
PROGRESS_OFF = "--no-progress"


def assert_refused(r, *needles: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line ``lines: error: …`` containing every
    needle (the file, the first offending key, the value out of range)."""
    assert r.code == 2, (r.code, r.out, r.err)
    assert r.out == ""
    lines_ = r.err.splitlines()
    assert len(lines_) == 1, r.err
    line = lines_[0]
    assert line.startswith("lines: error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def merge_args(cs: CkptSet, out: Path, method: str = "task_arithmetic", *extra: str) -> list:
    return ["merge", *cs.args(), "--method", method, "--out", out, PROGRESS_OFF, *extra]


# ----------------------------------------------------------------------------------------------
# Bad inputs: one line, exit 2, nothing written


def _edit(cs: CkptSet, name: str, change) -> Path:
    sd = {k: v.clone() for k, v in cs.fts[0].items()}
    change(sd)
    return save_state_dict(cs.root / name, sd)


KEY = "encoder.layer.1.output.dense.weight"


def _bad_missing(cs):
    return _edit(cs, "bad.safetensors", lambda sd: sd.pop(KEY)), ["missing 1 key", f"'{KEY}'"]


def _bad_extra(cs):
    def add(sd):
        sd["encoder.layer.1.adapter.weight"] = torch.zeros(2)

    p = _edit(cs, "bad.safetensors", add)
    return p, ["1 extra key", "'encoder.layer.1.adapter.weight'"]


def _bad_shape(cs):
    def change(sd):
        sd[KEY] = torch.zeros(3, 3)

    return _edit(cs, "bad.safetensors", change), ["shape mismatch", f"'{KEY}'", "[3, 3]"]


def _bad_dtype(cs):
    def change(sd):
        sd[KEY] = sd[KEY].half()

    return _edit(cs, "bad.safetensors", change), ["dtype mismatch", f"'{KEY}'", "float16"]


def _bad_nan(cs):
    def change(sd):
        sd[KEY][1, 2] = float("nan")

    return _edit(cs, "bad.safetensors", change), ["NaN", f"'{KEY}'"]


def _bad_inf(cs):
    def change(sd):
        sd[KEY][0, 0] = float("-inf")

    return _edit(cs, "bad.safetensors", change), ["Inf", f"'{KEY}'"]


def _bad_truncated(cs):
    data = cs.finetuned[0].read_bytes()
    p = cs.root / "bad.safetensors"
    p.write_bytes(data[:-100])
    return p, ["truncated file"]


def _bad_truncated_header(cs):
    p = cs.root / "bad.safetensors"
    p.write_bytes(cs.finetuned[0].read_bytes()[:200])
    return p, ["truncated safetensors header"]


def _bad_header(cs):
    data = bytearray(cs.finetuned[0].read_bytes())
    data[8:12] = b"#!@$"
    p = cs.root / "bad.safetensors"
    p.write_bytes(bytes(data))
    return p, ["corrupt safetensors header"]


def _bad_torch_truncated(cs):
    p = cs.root / "bad.pt"
    torch.save(cs.fts[0], p)
    p.write_bytes(p.read_bytes()[:1500])
    return p, ["corrupt or truncated torch file"]


def _bad_torch_garbage(cs):
    p = cs.root / "bad.pt"
    p.write_bytes(b"this is not a checkpoint\n" * 200)
    return p, ["corrupt or truncated torch file"]


def _bad_module(cs):
    p = cs.root / "bad.pt"
    torch.save(torch.nn.Linear(8, 8), p)
    return p, ["not a plain state dict", "torch.nn.modules.linear.Linear"]


def _bad_optimizer_ckpt(cs):
    p = cs.root / "bad.pt"
    torch.save({"model": cs.fts[0], "epoch": 3}, p)
    return p, ["not a plain state dict", "'model'"]


BAD_INPUTS = {
    "missing_key": _bad_missing,
    "extra_key": _bad_extra,
    "shape_mismatch": _bad_shape,
    "dtype_mismatch": _bad_dtype,
    "nan": _bad_nan,
    "inf": _bad_inf,
    "truncated_safetensors": _bad_truncated,
    "truncated_safetensors_header": _bad_truncated_header,
    "corrupt_safetensors_header": _bad_header,
    "truncated_torch": _bad_torch_truncated,
    "corrupt_torch": _bad_torch_garbage,
    "pickled_module": _bad_module,
    "training_checkpoint": _bad_optimizer_ckpt,
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
@pytest.mark.parametrize("out_name", ["merged.safetensors", "merged_dir"])
def test_bad_finetuned_input_is_refused(tmp_path, run_cli, kind, out_name) -> None:
    cs = write_family(tmp_path / "ckpt", n=2)
    bad, needles = BAD_INPUTS[kind](cs)
    before = snapshot(tmp_path)
    argv = [
        "merge",
        "--pretrained",
        cs.pretrained,
        "--finetuned",
        cs.finetuned[0],
        bad,
        "--method",
        "task_arithmetic",
        "--lines-beta",
        "0.5",
        "--out",
        tmp_path / out_name,
        PROGRESS_OFF,
    ]
    r = run_cli(argv)
    assert_refused(r, str(bad), *needles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "method, extra",
    [
        ("task_arithmetic", []),  # one direct pass
        ("task_arithmetic", ["--lines-beta", "0.3"]),  # automatic α
        ("ties", ["--lines-beta", "0.3"]),  # statistics passes, then τ file, then apply
        ("ties", ["--scope", "per_tensor"]),
        ("dare", []),  # whole tensors (not sliced)
        ("consensus", ["--save-task-vector", "TV"]),
    ],
)
@pytest.mark.parametrize("where", ["pretrained", "finetuned", "last_tensor"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nan_inf_anywhere_leaves_nothing(tmp_path, run_cli, method, extra, where, value) -> None:
    cs = write_family(tmp_path / "ckpt", n=3)
    key = "pooler.dense.bias" if where == "last_tensor" else KEY
    src = cs.base if where == "pretrained" else cs.fts[2]
    sd = {k: v.clone() for k, v in src.items()}
    sd[key].reshape(-1)[-1] = float(value)
    target = cs.pretrained if where == "pretrained" else cs.finetuned[2]
    save_state_dict(target, sd)
    before = snapshot(tmp_path)
    extra = [str(tmp_path / "tv.safetensors") if a == "TV" else a for a in extra]
    r = run_cli(merge_args(cs, tmp_path / "out.safetensors", method, *extra))
    assert_refused(r, str(target), "NaN" if value == "nan" else "Inf", f"'{key}'")
    assert snapshot(tmp_path) == before


def test_existing_output_is_kept_without_overwrite(bert_ckpts, tmp_path, run_cli) -> None:
    """An earlier output of lines is kept without --overwrite and replaced with it. (Foreign
    files at the output are refused even with --overwrite: tests/test_safety.py.)"""
    out = tmp_path / "merged.safetensors"
    d = tmp_path / "merged_dir"
    for o in (out, d):
        assert run_cli(merge_args(bert_ckpts, o, "ties")).code == 0
    before = snapshot(tmp_path)
    assert_refused(run_cli(merge_args(bert_ckpts, out)), str(out), "output exists", "--overwrite")
    assert_refused(run_cli(merge_args(bert_ckpts, d)), str(d), "output exists", "--overwrite")
    assert snapshot(tmp_path) == before

    r = run_cli(merge_args(bert_ckpts, out, "task_arithmetic", "--overwrite"))
    assert r.code == 0, r.err
    assert set(safetensors.torch.load_file(str(out))) == set(bert_ckpts.base)
    assert json.loads((tmp_path / "merged.json").read_text())["method"] == "task_arithmetic"
    r = run_cli(merge_args(bert_ckpts, d, "task_arithmetic", "--overwrite"))
    assert r.code == 0, r.err
    assert sorted(p.name for p in d.iterdir()) == ["lines_manifest.json", "model.safetensors"]
    assert json.loads((d / "lines_manifest.json").read_text())["method"] == "task_arithmetic"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("out_name", ["merged.safetensors", "merged_dir"])
@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_failed_overwrite_keeps_the_old_output(tmp_path, run_cli, out_name, method) -> None:
    """--overwrite replaces the output only once the new one is complete: a NaN found in the last
    tensor leaves the previous result byte for byte."""
    cs = write_family(tmp_path / "ckpt", n=2)
    out = tmp_path / out_name
    r = run_cli(merge_args(cs, out, method, "--lines-beta", "0.5"))
    assert r.code == 0, r.err
    sd = {k: v.clone() for k, v in cs.fts[1].items()}
    sd["pooler.dense.bias"][-1] = float("nan")
    save_state_dict(cs.finetuned[1], sd)
    before = snapshot(tmp_path)
    r = run_cli(merge_args(cs, out, method, "--lines-beta", "0.5", "--overwrite"))
    assert_refused(r, str(cs.finetuned[1]), "NaN", "'pooler.dense.bias'")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("which", ["pretrained", "finetuned", "finetuned_relative"])
def test_output_equal_to_an_input_is_refused(bert_ckpts, tmp_path, run_cli, which) -> None:
    cs = bert_ckpts
    if which == "pretrained":
        out = str(cs.pretrained)
    elif which == "finetuned":
        out = str(cs.finetuned[1])
    else:  # the same file spelled differently
        out = os.path.relpath(cs.root / "x" / ".." / cs.finetuned[1].name)
    before = snapshot(tmp_path)
    r = run_cli(merge_args(cs, out, "task_arithmetic", "--overwrite"))
    assert_refused(r, out, "output path is one of the inputs")
    assert snapshot(tmp_path) == before


def test_output_folder_equal_to_input_folder_is_refused(tmp_path, run_cli) -> None:
    cs = write_family(tmp_path / "c", n=2)
    folder = tmp_path / "pre"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(cs.pretrained.read_bytes())
    (folder / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    r = run_cli(
        ["merge", "--pretrained", folder, "--finetuned", *cs.finetuned]
        + ["--method", "uniform_soup", "--out", folder, "--overwrite", PROGRESS_OFF]
    )
    assert_refused(r, str(folder), "output path is one of the inputs")
    assert snapshot(tmp_path) == before


def test_output_parent_missing(bert_ckpts, tmp_path, run_cli) -> None:
    before = snapshot(tmp_path)
    r = run_cli(merge_args(bert_ckpts, tmp_path / "no" / "such" / "m.safetensors"))
    assert_refused(r, "output folder does not exist")
    assert snapshot(tmp_path) == before


def _undetectable(tmp_path: Path) -> list:
    keys = {"stem.weight": torch.zeros(4), "head.weight": torch.zeros(2)}
    p = save_state_dict(tmp_path / "flat_pre.safetensors", keys)
    f0 = save_state_dict(tmp_path / "flat_0.safetensors", {k: v + 1 for k, v in keys.items()})
    f1 = save_state_dict(tmp_path / "flat_1.safetensors", {k: v + 2 for k, v in keys.items()})
    return ["--pretrained", p, "--finetuned", f0, f1]


BAD_OPTIONS = {
    "unknown_family": (["--family", "nope"], ["unknown model family 'nope'", "known:"]),
    "beta_negative": (["--lines-beta", "-0.5"], ["beta out of range: -0.5"]),
    "beta_nan": (["--lines-beta", "nan"], ["beta must be a finite number"]),
    "alpha_without_beta": (["--lines-alpha", "0.3"], ["--lines-alpha needs --lines-beta"]),
    "density_with_task_arithmetic": (
        ["--density", "0.5"],
        ["--density does not apply to method 'task_arithmetic'"],
    ),
    "ties_density_0": (["--method", "ties", "--density", "0"], ["density out of range: 0.0"]),
    "ties_density_1.5": (
        ["--method", "ties", "--density", "1.5"],
        ["density out of range: 1.5", "(0, 1]"],
    ),
    "magnitude_prune_density": (
        ["--method", "magnitude_prune", "--density", "-1"],
        ["density out of range: -1.0"],
    ),
    "dare_drop_1": (["--method", "dare", "--drop-rate", "1.0"], ["drop_rate out of range: 1.0"]),
    "ties_bad_scope": (["--method", "ties", "--scope", "layer"], ["scope", "'layer'"]),
    "rewarded_soup_sum": (
        ["--method", "rewarded_soup", "--weights", "0.3", "0.3", "0.3"],
        ["rewarded_soup weights must sum to 1, got 0.9"],
    ),
    "rewarded_soup_count": (
        ["--method", "rewarded_soup", "--weights", "0.5", "0.5"],
        ["rewarded_soup has 2 weights for 3 fine-tuned models"],
    ),
    "rewarded_soup_negative": (
        ["--method", "rewarded_soup", "--weights", "1.5", "-0.25", "-0.25"],
        ["weights out of range"],
    ),
    "consensus_k": (["--method", "consensus", "--k", "4"], ["consensus k out of range: 4"]),
    "greedy_without_scores": (["--method", "greedy_soup"], ["greedy_soup needs --eval-cmd"]),
    "greedy_eval_without_model": (
        ["--method", "greedy_soup", "--scores", "1", "2", "3", "--eval-cmd", "echo 1"],
        ["--eval-cmd must contain '{model}'"],
    ),
    "scores_with_ties": (
        ["--method", "ties", "--scores", "1", "2", "3"],
        ["--eval-cmd and --scores apply to method 'greedy_soup' only"],
    ),
    "pre_lines_half": (["--pre-lines-alpha", "0.5"], ["--pre-lines-alpha and --pre-lines-beta"]),
    "save_tv_not_safetensors": (
        ["--save-task-vector", "TVDIR"],
        ["--save-task-vector must be a .safetensors file"],
    ),
    "device": (["--device", "tpu"], ["unknown device 'tpu'"]),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_option_is_refused(bert_ckpts, tmp_path, run_cli, case) -> None:
    extra, needles = BAD_OPTIONS[case]
    extra = [str(tmp_path / "tv_dir") if a == "TVDIR" else a for a in extra]
    method = "task_arithmetic"
    if "--method" in extra:
        i = extra.index("--method")
        method = extra[i + 1]
        extra = extra[:i] + extra[i + 2 :]
    before = snapshot(tmp_path)
    r = run_cli(merge_args(bert_ckpts, tmp_path / "m.safetensors", method, *extra))
    assert_refused(r, *needles)
    assert snapshot(tmp_path) == before


def test_save_task_vector_conflicts_leave_nothing(bert_ckpts, tmp_path, run_cli) -> None:
    tv = tmp_path / "tv.safetensors"
    tv.write_bytes(b"old")
    before = snapshot(tmp_path)
    for out in (tmp_path / "merged_dir", tmp_path / "m.safetensors"):
        r = run_cli(merge_args(bert_ckpts, out, "ties", "--save-task-vector", tv))
        assert_refused(r, str(tv), "output exists")
        assert snapshot(tmp_path) == before
    out = tmp_path / "same.safetensors"
    r = run_cli(merge_args(bert_ckpts, out, "ties", "--save-task-vector", out, "--overwrite"))
    assert_refused(r, "--save-task-vector must differ from --out")
    assert snapshot(tmp_path) == before


def test_undetectable_family(tmp_path, run_cli) -> None:
    inputs = _undetectable(tmp_path)
    before = snapshot(tmp_path)
    r = run_cli(
        ["merge", *inputs, "--method", "task_arithmetic", "--out", tmp_path / "o.safetensors"]
    )
    assert_refused(r, "cannot detect the model family", "stem.weight", "pass --family")
    r = run_cli(["blocks", inputs[1]])
    assert_refused(r, "cannot detect the model family")
    r = run_cli(["blocks", inputs[1], "--family", "bert"])
    assert_refused(r, "family 'bert'", "no parameter matches")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "uniform_soup", "consensus"])
def test_fewer_than_two_checkpoints(bert_ckpts, tmp_path, run_cli, method) -> None:
    before = snapshot(tmp_path)
    r = run_cli(
        ["merge", *bert_ckpts.args(1), "--method", method]
        + ["--out", tmp_path / "o.safetensors", PROGRESS_OFF]
    )
    assert_refused(r, f"method '{method}' needs at least 2 fine-tuned checkpoint(s), got 1")
    r = run_cli(
        ["merge", *bert_ckpts.args(1), "--method", "greedy_soup", "--scores", "1"]
        + ["--eval-cmd", "echo {model} 1", "--out", tmp_path / "o.safetensors"]
    )
    assert_refused(r, "greedy_soup needs at least 2 fine-tuned checkpoints, got 1")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "gamma, shown", [("1.5", "gamma out of range: 1.5"), ("-0.1", "gamma out of range: -0.1")]
)
def test_edit_gamma_out_of_range(bert_ckpts, tmp_path, run_cli, gamma, shown) -> None:
    before = snapshot(tmp_path)
    r = run_cli(
        ["edit", "--pretrained", bert_ckpts.pretrained, "--finetuned", bert_ckpts.finetuned[0]]
        + ["--gamma", gamma, "--out", tmp_path / "e.safetensors", PROGRESS_OFF]
    )
    assert_refused(r, shown, "[0, 1]")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--gamma", "1.2"], ["gamma out of range: 1.2"]),
        (["--gamma", "-0.2"], ["gamma out of range: -0.2"]),
        (["--weights", "0.7", "0.7"], ["rewarded_soup weights must sum to 1, got 1.4"]),
        (["--gamma", "0.5", "--weights", "0.5", "0.5"], ["exactly one of --gamma"]),
        ([], ["exactly one of --gamma"]),
    ],
)
def test_interpolate_bad_values(bert_ckpts, tmp_path, run_cli, extra, needles) -> None:
    n = 1 if "--gamma" in extra and "--weights" not in extra else 2
    before = snapshot(tmp_path)
    r = run_cli(
        ["interpolate", *bert_ckpts.args(n), *extra, "--out", tmp_path / "i.safetensors"]
        + [PROGRESS_OFF]
    )
    assert_refused(r, *needles)
    assert snapshot(tmp_path) == before


def test_wise_ft_needs_one_model(bert_ckpts, tmp_path, run_cli) -> None:
    r = run_cli(
        ["interpolate", *bert_ckpts.args(2), "--gamma", "0.5", "--out", tmp_path / "i.safetensors"]
    )
    assert_refused(r, "wise_ft interpolates one fine-tuned model, got 2")


def test_apply_refuses_a_plain_checkpoint_as_task_vector(bert_ckpts, tmp_path, run_cli) -> None:
    before = snapshot(tmp_path)
    r = run_cli(
        ["apply", "--pretrained", bert_ckpts.pretrained, "--task-vector", bert_ckpts.finetuned[0]]
        + ["--lines-beta", "0.5", "--out", tmp_path / "a.safetensors", PROGRESS_OFF]
    )
    assert_refused(r, str(bert_ckpts.finetuned[0]), "not a task vector")
    assert snapshot(tmp_path) == before


def test_greedy_soup_failing_eval_cmd_leaves_nothing(bert_ckpts, tmp_path, run_cli) -> None:
    before = snapshot(tmp_path)
    r = run_cli(
        merge_args(bert_ckpts, tmp_path / "g.safetensors", "greedy_soup")
        + ["--scores", "3", "2", "1", "--eval-cmd", "echo {model} >&2; exit 3"]
    )
    assert_refused(r, "--eval-cmd failed with exit 3")
    assert snapshot(tmp_path) == before


def test_malicious_pickle_is_never_executed(bert_ckpts, tmp_path, run_cli) -> None:
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil_pt = tmp_path / "evil.pt"
    torch.save({**bert_ckpts.fts[1], "x": Evil()}, evil_pt)
    evil_bin = tmp_path / "evil.bin"
    evil_bin.write_bytes(pickle.dumps(Evil()))
    before = snapshot(tmp_path)
    for evil in (evil_pt, evil_bin):
        for role in ("finetuned", "pretrained"):
            if role == "finetuned":
                inputs = ["--pretrained", bert_ckpts.pretrained, "--finetuned"]
                inputs += [bert_ckpts.finetuned[0], evil]
            else:
                inputs = ["--pretrained", evil, "--finetuned", *bert_ckpts.finetuned]
            r = run_cli(
                ["merge", *inputs, "--method", "task_arithmetic"]
                + ["--out", tmp_path / "o.safetensors", PROGRESS_OFF]
            )
            assert_refused(r, str(evil), "not a plain state dict", "unpickling runs code")
        assert_refused(run_cli(["blocks", evil]), str(evil), "not a plain state dict")
    assert not marker.exists()
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# Good paths


SUBCOMMANDS = ["blocks", "families", "methods", "edit", "merge", "interpolate", "apply"]


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_exits_zero(run_cli, sub) -> None:
    r = run_cli(["--help"] if sub is None else [sub, "--help"])
    assert r.code == 0
    assert "usage: lines" in r.out


def test_version(run_cli) -> None:
    r = run_cli(["--version"])
    assert r.code == 0 and lines.__version__ in r.out


def test_families_and_methods_lists(run_cli) -> None:
    r = run_cli(["families"])
    assert r.code == 0 and "bert" in r.out and "openclip-vit" in r.out
    r = run_cli(["methods"])
    assert r.code == 0
    for m in ("task_arithmetic", "ties", "dare", "consensus", "greedy_soup", "--density"):
        assert m in r.out


def test_blocks_tiny_bert(bert_ckpts, run_cli) -> None:
    r = run_cli(["blocks", bert_ckpts.pretrained])
    assert r.code == 0, r.err
    assert r.out.startswith("family: bert   L = 2   block policy: reference")
    assert "encoder.layer.1.attention.self.query.weight" in r.out
    assert "(+7 outside the blocks)" in r.out  # 5 embeddings + 2 pooler keys in block 1

    r = run_cli(["blocks", bert_ckpts.pretrained, "--json", "--block-policy", "depth"])
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert (d["family"], d["num_blocks"], d["block_policy"]) == ("bert", 2, "depth")
    blocks = d["blocks"]
    assert set(blocks) == set(bert_ckpts.base)
    assert blocks["embeddings.word_embeddings.weight"] == 1
    assert blocks["encoder.layer.0.output.dense.weight"] == 1
    assert blocks["encoder.layer.1.output.dense.weight"] == 2
    assert blocks["pooler.dense.weight"] == 2  # output side → block L under 'depth'

    r = run_cli(["blocks", bert_ckpts.pretrained, "--json"])
    assert json.loads(r.out)["blocks"]["pooler.dense.weight"] == 1  # reference: block 1

    r = run_cli(["blocks", bert_ckpts.pretrained, "--keys"])
    assert r.code == 0
    assert "  1  pooler.dense.weight  (outside blocks)" in r.out


def _lam(cs: CkptSet, key: str, lambdas: list[float], policy: str = "reference") -> float:
    if key.startswith("encoder.layer."):
        return lambdas[int(key.split(".")[2])]
    if policy == "depth" and key.startswith("pooler."):
        return lambdas[-1]
    return lambdas[0]


def test_edit_values_and_manifest(bert_ckpts, tmp_path, run_cli) -> None:
    cs = bert_ckpts
    out = tmp_path / "edited.safetensors"
    r = run_cli(
        ["edit", "--pretrained", cs.pretrained, "--finetuned", cs.finetuned[0]]
        + ["--gamma", "0.25", "--out", out, PROGRESS_OFF]
    )
    assert r.code == 0, r.err
    assert r.out.startswith(f"wrote {out}")
    got = load_state_dict(out)
    for k, b in cs.base.items():
        lam = _lam(cs, k, [0.25, 1.0])
        assert torch.allclose(got[k], b + lam * (cs.fts[0][k] - b), atol=1e-6), k
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["edit"] == {"gamma": 0.25}
    assert m["scaling"]["lambdas"] == [0.25, 1.0]
    assert m["inputs"]["finetuned"][0]["sha256"] == sha256_file(cs.finetuned[0])


METHODS = {
    "task_arithmetic": ["--mode", "mean"],
    "ties": ["--density", "0.5"],
    "magnitude_prune": ["--density", "0.3", "--scope", "per_tensor"],
    "dare": ["--drop-rate", "0.5", "--seed", "7"],
    "consensus": ["--k", "2", "--tall-lambda", "0.5"],
    "uniform_soup": [],
    "rewarded_soup": ["--weights", "0.5", "0.25", "0.25"],
    "greedy_soup": ["--scores", "0.9", "0.8", "0.7", "--eval-cmd", "echo {model} 1.0"],
}


@pytest.mark.parametrize("policy", ["reference", "depth"])
@pytest.mark.parametrize("method", METHODS)
def test_merge_every_method(bert_ckpts, tmp_path, run_cli, method, policy) -> None:
    cs = bert_ckpts
    out = tmp_path / f"{method}.safetensors"
    r = run_cli(
        merge_args(cs, out, method, *METHODS[method])
        + ["--block-policy", policy, "--lines-beta", "0.5"]
    )
    assert r.code == 0, r.err
    assert r.out.startswith(f"wrote {out}") and r.err == ""
    got = safetensors.torch.load_file(str(out))
    assert set(got) == set(cs.base)
    assert all(torch.isfinite(v).all() for v in got.values())
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["block_policy"] == policy and m["family"] == "bert" and m["num_blocks"] == 2
    assert m["lines_version"] == lines.__version__
    s = m["scaling"]
    assert s["scaling"] == "lines" and s["alpha"] == "auto" and s["beta"] == 0.5
    a = s["alpha_value"]
    assert s["lambdas"] == pytest.approx([a, a + 0.5])
    assert m["output"]["sha256"] == sha256_file(out)
    if method == "greedy_soup":
        assert m["method"] == "uniform_soup"
        assert m["greedy_soup"]["selected"] == [0, 1, 2]
        assert m["greedy_soup"]["scores"] == [0.9, 0.8, 0.7]
    else:
        assert m["method"] == method
    if method in ("uniform_soup", "greedy_soup"):
        # τ_MTL = mean τ: α = (1/N)‖Σ τ‖/‖mean τ‖ = 1, so the last block gets 1.5
        assert a == pytest.approx(1.0)
    if method == "rewarded_soup":
        assert m["params"] == {"weights": [0.5, 0.25, 0.25]}
    if method == "ties":
        assert m["params"] == {"density": 0.5, "scope": "global"}
    if method == "dare":
        assert m["params"] == {"drop_rate": 0.5, "seed": 7, "mode": "sum"}


def test_merge_manifest_records_everything(bert_ckpts, tmp_path, run_cli) -> None:
    cs = bert_ckpts
    out = tmp_path / "m.safetensors"
    r = run_cli(merge_args(cs, out, "ties", "--density", "0.4", "--lines-beta", "0.7"))
    assert r.code == 0, r.err
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["kind"] == "merge"
    assert m["inputs"]["pretrained"] == {
        "path": str(cs.pretrained),
        "sha256": sha256_file(cs.pretrained),
    }
    assert m["inputs"]["finetuned"] == [
        {"path": str(p), "sha256": sha256_file(p)} for p in cs.finetuned
    ]
    assert m["method"] == "ties"
    assert m["params"] == {"density": 0.4, "scope": "global"}
    assert m["reference"]
    s = m["scaling"]
    assert s["alpha"] == "auto" and s["alpha_norm"] == "l1" and s["beta"] == 0.7
    n = m["norms"]
    assert n["kind"] == "l1"
    assert s["alpha_value"] == pytest.approx(n["task_vector_sum"] / n["merged_task_vector"] / 3)
    assert s["lambdas"] == pytest.approx([s["alpha_value"], s["alpha_value"] + 0.7])
    assert (m["family"], m["block_policy"], m["num_blocks"]) == ("bert", "reference", 2)
    assert m["lines_version"] == lines.__version__ and m["torch_version"] == torch.__version__
    assert m["output"]["path"] == str(out) and m["output"]["sha256"] == sha256_file(out)
    assert m["pre_merge_lines"] is None

    # α given by hand, uniform scaling, and --no-hash
    r = run_cli(
        merge_args(cs, tmp_path / "u.safetensors", "task_arithmetic", "--scale", "0.3")
        + ["--no-hash"]
    )
    assert r.code == 0, r.err
    m = json.loads((tmp_path / "u.json").read_text())
    assert m["scaling"] == {"scaling": "uniform", "coef": 0.3, "lambdas": [0.3, 0.3]}
    assert "sha256" not in m["inputs"]["pretrained"]
    r = run_cli(
        merge_args(cs, tmp_path / "a.safetensors", "task_arithmetic")
        + ["--lines-beta", "0.2", "--lines-alpha", "0.1"]
    )
    m = json.loads((tmp_path / "a.json").read_text())
    assert m["scaling"]["alpha"] == 0.1 and m["scaling"]["lambdas"] == pytest.approx([0.1, 0.3])


@pytest.mark.parametrize("policy", ["reference", "depth"])
def test_task_arithmetic_lines_values(bert_ckpts, tmp_path, run_cli, policy) -> None:
    """θ = θ_0 + λ(ℓ)·Σ τ_i with α = 1/N (task arithmetic, L1), λ = [1/3, 1/3 + β]."""
    cs = bert_ckpts
    out = tmp_path / "m.safetensors"
    r = run_cli(
        merge_args(cs, out, "task_arithmetic", "--lines-beta", "0.6", "--block-policy", policy)
    )
    assert r.code == 0, r.err
    got = load_state_dict(out)
    lambdas = [1 / 3, 1 / 3 + 0.6]
    for k, b in cs.base.items():
        tau = sum(ft[k] - b for ft in cs.fts)
        assert torch.allclose(got[k], b + _lam(cs, k, lambdas, policy) * tau, atol=1e-6), k


def test_interpolate_gamma_and_weights(bert_ckpts, tmp_path, run_cli) -> None:
    cs = bert_ckpts
    out = tmp_path / "wise.safetensors"
    r = run_cli(["interpolate", *cs.args(1), "--gamma", "0.3", "--out", out, PROGRESS_OFF])
    assert r.code == 0, r.err
    got = load_state_dict(out)
    for k, b in cs.base.items():
        assert torch.allclose(got[k], b + 0.3 * (cs.fts[0][k] - b), atol=1e-6)
    assert json.loads(out.with_suffix(".json").read_text())["params"] == {"gamma": 0.3}

    out = tmp_path / "rs.safetensors"
    w = [0.2, 0.3, 0.5]
    r = run_cli(["interpolate", *cs.args(), "--weights", *map(str, w), "--out", out, PROGRESS_OFF])
    assert r.code == 0, r.err
    got = load_state_dict(out)
    for k, b in cs.base.items():
        expect = b + sum(wi * (ft[k] - b) for wi, ft in zip(w, cs.fts, strict=True))
        assert torch.allclose(got[k], expect, atol=1e-6)
    m = json.loads(out.with_suffix(".json").read_text())
    assert m["method"] == "rewarded_soup" and m["params"] == {"weights": w}


def test_save_task_vector_then_apply_matches_direct_merge(bert_ckpts, tmp_path, run_cli) -> None:
    cs = bert_ckpts
    tv = tmp_path / "tv.safetensors"
    direct = tmp_path / "direct.safetensors"
    r = run_cli(merge_args(cs, direct, "ties", "--lines-beta", "0.4", "--save-task-vector", tv))
    assert r.code == 0, r.err
    assert tv.is_file()
    applied = tmp_path / "applied.safetensors"
    r = run_cli(
        ["apply", "--pretrained", cs.pretrained, "--task-vector", tv, "--lines-beta", "0.4"]
        + ["--out", applied, PROGRESS_OFF]
    )
    assert r.code == 0, r.err
    assert r.out.startswith(f"wrote {applied}")
    a, d = load_state_dict(applied), load_state_dict(direct)
    for k in d:
        assert torch.equal(a[k], d[k]), k
    m = json.loads(applied.with_suffix(".json").read_text())
    dm = json.loads(direct.with_suffix(".json").read_text())
    assert m["kind"] == "apply"
    assert m["inputs"]["task_vector"]["sha256"] == sha256_file(tv)
    assert m["scaling"]["alpha_value"] == pytest.approx(dm["scaling"]["alpha_value"])
    # a β sweep: another β from the same τ, uniform scale too
    r = run_cli(
        ["apply", "--pretrained", cs.pretrained, "--task-vector", tv, "--scale", "0.5"]
        + ["--out", tmp_path / "half.safetensors", PROGRESS_OFF]
    )
    assert r.code == 0, r.err


# ----------------------------------------------------------------------------------------------
# The real console command (a few subprocess runs)


def run_lines(*args, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [str(LINES), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_console_merge_and_nan_refusal(tmp_path) -> None:
    cs = write_family(tmp_path / "c", n=2)
    r = run_lines(
        "merge",
        *cs.args(),
        "--method",
        "ties",
        "--lines-beta",
        "0.5",
        "--out",
        "m",
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert (tmp_path / "m" / "model.safetensors").is_file()

    bad = perturbed(cs.base, 9)
    bad[KEY][0, 0] = float("nan")
    save_state_dict(cs.finetuned[1], bad)
    before = snapshot(tmp_path)
    r = run_lines(
        "merge",
        *cs.args(),
        "--method",
        "ties",
        "--out",
        "m2.safetensors",
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [f"lines: error: {cs.finetuned[1]}: NaN in tensor '{KEY}'"]
    assert snapshot(tmp_path) == before


def test_console_refuses_malicious_pickle(tmp_path) -> None:
    cs = write_family(tmp_path / "c", n=2)
    marker = tmp_path / "PWNED"
    src = (
        "import os, pickle, sys\n"
        "class E:\n"
        f"    def __reduce__(self): return (os.system, ('touch {marker}',))\n"
        "open(sys.argv[1], 'wb').write(pickle.dumps({'w': E()}, protocol=4))\n"
    )
    evil = tmp_path / "evil.pt"
    subprocess.run([sys.executable, "-c", src, str(evil)], check=True)
    before = snapshot(tmp_path)
    r = run_lines(
        "merge",
        "--pretrained",
        cs.pretrained,
        "--finetuned",
        cs.finetuned[0],
        evil,
        "--method",
        "task_arithmetic",
        "--out",
        "o.safetensors",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert len(r.stderr.splitlines()) == 1, r.stderr  # no torch warning on stderr either
    assert r.stderr.startswith(f"lines: error: {evil}: not a plain state dict")
    assert "unpickling runs code" in r.stderr
    assert not marker.exists()
    assert snapshot(tmp_path) == before


def test_console_error_is_one_clean_line_without_no_progress(tmp_path) -> None:
    cs = write_family(tmp_path / "c", n=2)
    bad = perturbed(cs.base, 9)
    bad[KEY][0, 0] = float("inf")
    save_state_dict(cs.finetuned[1], bad)
    r = run_lines("merge", *cs.args(), "--method", "ties", "--out", "m.safetensors", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("lines: error: ") and len(r.stderr.splitlines()) == 1, r.stderr


# ----------------------------------------------------------------------------------------------
# scripts/make_random_checkpoints.py and scripts/acceptance_merge.sh

ROOT = Path(__file__).resolve().parents[1]


def _script_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_random_checkpoints", ROOT / "scripts" / "make_random_checkpoints.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_random_checkpoints_are_seeded_perturbations(tmp_path) -> None:
    mod = _script_module()
    sd = {
        "encoder.layer.0.w": torch.randn(40, 3),
        "encoder.layer.1.w": torch.randn(5),
        "ids": torch.arange(4),
    }
    paths = mod.write_family(sd, tmp_path / "a", n=3, seed=5, noise=1e-2, quiet=True)
    assert [p.name for p in paths] == [
        "pretrained.safetensors",
        "ft_0.safetensors",
        "ft_1.safetensors",
        "ft_2.safetensors",
    ]
    again = mod.write_family(sd, tmp_path / "b", n=3, seed=5, noise=1e-2, quiet=True)
    pre = load_state_dict(paths[0])
    for p, q in zip(paths[1:], again[1:], strict=True):
        assert p.read_bytes() == q.read_bytes()  # seeded: reproducible
        ft = load_state_dict(p)
        assert torch.equal(ft["ids"], pre["ids"])  # integer buffers are not perturbed
        d = ft["encoder.layer.0.w"] - pre["encoder.layer.0.w"]
        assert 0.005 < float(d.std()) < 0.02
    assert not torch.equal(
        load_state_dict(paths[1])["encoder.layer.0.w"],
        load_state_dict(paths[2])["encoder.layer.0.w"],
    )


@pytest.mark.slow
def test_random_vit_b_32_layouts() -> None:
    from lines.families import partition_keys

    mod = _script_module()
    full = mod.vit_b_32_state_dict(0)
    assert sum(v.numel() for v in full.values()) == 151_277_313
    image = mod.vit_b_32_state_dict(0, image_only=True)
    assert all(k.startswith("visual.") for k in image)
    assert sum(v.numel() for v in image.values()) == 87_849_216
    assert image["visual.conv1.weight"].shape == (768, 3, 32, 32)
    tall = mod.vit_b_32_state_dict(0, tall_masks=True)
    assert all(k.startswith("model.") for k in tall)
    assert not any(k.startswith("model.transformer.") for k in tall)
    for k in ("model.token_embedding.weight", "model.ln_final.weight", "model.logit_scale"):
        assert k in tall
    for sd in (image, tall):
        part = partition_keys(list(sd), None, "depth")
        assert (part.family, part.num_blocks) == ("openclip-vit", 12)


@pytest.mark.slow
def test_acceptance_loop_reduced(tmp_path) -> None:
    """scripts/acceptance_merge.sh on 3 MiniLM-shaped checkpoints: every method × both block
    policies × with/without LiNeS must succeed (the full run uses 8 ViT-B/32 and 8 MiniLM)."""
    env = {**os.environ, "ACCEPT_KINDS": "minilm", "ACCEPT_N": "3", "LINES": str(LINES)}
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "acceptance_merge.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [ln.split("\t") for ln in (tmp_path / "timings.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 8 * 2 * 2
    assert {row[1] for row in rows} == set(METHODS)
    assert all(row[4] == "0" for row in rows)
    assert not list(tmp_path.glob("out_*"))


# ----------------------------------------------------------------------------------------------
# --gpu-inputs: holding the inputs (here in RAM, as a GPU would in device memory) changes nothing


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_held_inputs_give_the_streamed_output(tmp_path, run_cli, method, monkeypatch) -> None:
    import lines.engine.stream as stream

    built = []

    class Spy(stream.Resident):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(stream, "Resident", Spy)
    cs = write_family(tmp_path / "ckpt", n=3)
    outs = {}
    for mode, held in (("stream", 0), ("hold", 1), ("auto", 0)):  # auto holds on a GPU only
        built.clear()
        out = tmp_path / f"{mode}.safetensors"
        r = run_cli(merge_args(cs, out, method, "--lines-beta", "0.5", "--gpu-inputs", mode))
        assert r.code == 0, r.err
        assert len(built) == held, mode
        outs[mode] = load_state_dict(out)
    for k, v in outs["stream"].items():
        assert torch.equal(v, outs["hold"][k]) and torch.equal(v, outs["auto"][k]), k


def test_held_inputs_refuse_nan_and_write_nothing(tmp_path, run_cli) -> None:
    cs = write_family(tmp_path / "ckpt", n=3)
    sd = {k: v.clone() for k, v in cs.fts[1].items()}
    sd[KEY].reshape(-1)[3] = float("nan")
    save_state_dict(cs.finetuned[1], sd)
    before = snapshot(tmp_path)
    import lines.engine.stream as stream

    def no_stream(*a, **k):
        raise AssertionError("--gpu-inputs hold streamed")

    with pytest.MonkeyPatch.context() as mp:  # the refusal must come from the held reader
        mp.setattr(stream, "ReadAhead", no_stream)
        r = run_cli(merge_args(cs, tmp_path / "out.safetensors", "ties", "--gpu-inputs", "hold"))
    assert_refused(r, str(cs.finetuned[1]), "NaN", f"'{KEY}'")
    assert snapshot(tmp_path) == before
    r = run_cli(merge_args(cs, tmp_path / "out.safetensors", "ties", "--gpu-inputs", "always"))
    assert r.code == 2 and "--gpu-inputs" in r.err
