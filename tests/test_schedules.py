"""Layer-scaling schedules: hand-computed λ(ℓ) for every schedule, validation, the spec syntax,
``linear`` bit for bit equal to LiNeS's formula, and schedules through the command (edit, merge
with a data-informed schedule, apply, pre-merge schedule and task weights)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_family
from test_cli import merge_args

from lines.errors import LinesError
from lines.io import load_state_dict
from lines.scaling import Scaling, lines_lambdas
from lines.schedules import BlockNorms, all_schedules, make_schedule, parse_schedule

A, B = 0.2, 0.8  # α, β used by the golden values below (L = 5)


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


GOLDEN = {
    "linear": [0.2, 0.4, 0.6, 0.8, 1.0],
    "reversed": [1.0, 0.8, 0.6, 0.4, 0.2],
    "power:p=2": [0.2, 0.2 + 0.8 * 0.0625, 0.2 + 0.8 * 0.25, 0.2 + 0.8 * 0.5625, 1.0],
    "power:p=0.5": [
        0.2,
        0.2 + 0.8 * 0.5,
        0.2 + 0.8 * math.sqrt(0.5),
        0.2 + 0.8 * math.sqrt(0.75),
        1,
    ],
    "step:k=2": [0.2, 0.2, 1.0, 1.0, 1.0],
    "step:k=0": [1.0] * 5,
    "step:k=5": [0.2] * 5,
    "piecewise:knots=0/0/1": [0.2, 0.2, 0.2, 0.6, 1.0],
    "piecewise:knots=0/1/0": [0.2, 0.6, 1.0, 0.6, 0.2],
    "sigmoid:center=0.5,width=0.1": [
        0.2,
        0.2 + 0.8 * (sig(-2.5) - sig(-5)) / (sig(5) - sig(-5)),
        0.6,
        0.2 + 0.8 * (sig(2.5) - sig(-5)) / (sig(5) - sig(-5)),
        1.0,
    ],
}


@pytest.mark.parametrize("spec", GOLDEN)
def test_golden_lambdas(spec) -> None:
    got = parse_schedule(spec).lambdas(5, A, B)
    assert got == pytest.approx(GOLDEN[spec], abs=1e-12)


def test_linear_is_lines_bit_for_bit() -> None:
    for L in (1, 2, 3, 7, 12, 24, 48):
        for a, b in ((0.1, 0.9), (1 / 3, 0.7), (0.125, 1.5), (0.0, 0.0)):
            assert parse_schedule("linear").lambdas(L, a, b) == lines_lambdas(L, a, b)
            assert Scaling.lines(b, a).lambdas(L) == Scaling.lines(
                b, a, schedule=parse_schedule("linear")
            ).lambdas(L)


def test_measured_from_block_norms() -> None:
    norms = BlockNorms(tau=[1, 2, 4, 2, 1], base=[10] * 5)  # r = .1 .2 .4 .2 .1
    assert norms.relative() == pytest.approx([0.1, 0.2, 0.4, 0.2, 0.1])
    assert parse_schedule("measured").lambdas(5, 0.0, 1.0, norms) == pytest.approx(
        [0, 1 / 3, 1, 1 / 3, 0]
    )
    assert parse_schedule("measured:invert=true").lambdas(5, 0.0, 1.0, norms) == pytest.approx(
        [1, 2 / 3, 0, 2 / 3, 1]
    )
    flat = BlockNorms(tau=[1, 1], base=[2, 2])
    assert parse_schedule("measured").lambdas(2, 0.3, 0.5, flat) == [0.3, 0.3]
    with pytest.raises(LinesError, match="needs the per-block norms"):
        parse_schedule("measured").lambdas(5, 0.0, 1.0)


def test_single_block_gets_alpha() -> None:
    for name in all_schedules():
        if name == "measured":
            continue
        assert make_schedule(name).lambdas(1, 0.3, 0.5) == [0.3]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("power:p=0", "power p out of range"),
        ("power:p=-1", "power p out of range"),
        ("sigmoid:width=0", "sigmoid width out of range"),
        ("sigmoid:center=1.5", "sigmoid center out of range"),
        ("piecewise:knots=1", "at least 2 knots"),
        ("step:k=-1", "step k out of range"),
        ("wiggly", "unknown schedule 'wiggly'"),
        ("power:q=2", "has no parameter 'q'"),
        ("power:p=abc", "bad value for p: 'abc'"),
        ("power:p", "expected k=v"),
        ("measured:invert=maybe", "bad value for invert"),
    ],
)
def test_bad_schedules(spec, words) -> None:
    with pytest.raises(LinesError, match=words):
        parse_schedule(spec)


def test_step_beyond_the_blocks_and_negative_beta() -> None:
    with pytest.raises(LinesError, match="exceeds the number of blocks L = 5"):
        parse_schedule("step:k=6").lambdas(5, A, B)
    with pytest.raises(LinesError, match="beta out of range"):
        parse_schedule("power").lambdas(5, A, -0.1)


def test_spec_round_trip() -> None:
    for spec in ["linear", "power:p=2.5", "step:k=3", "piecewise:knots=0.0/0.3/1.0"]:
        s = parse_schedule(spec)
        assert parse_schedule(s.spec()) == s
    assert parse_schedule(None) == parse_schedule("linear")


# ----------------------------------------------------------------------------------------------
# Through the command


def _block_keys(base: dict) -> tuple[str, str]:
    return "encoder.layer.0.output.dense.weight", "encoder.layer.1.output.dense.weight"


def test_edit_with_reversed_schedule(tmp_path, run_cli) -> None:
    """Tiny BERT, 2 blocks: λ = γ + (1−γ)(L−ℓ)/(L−1) = [1, γ] (Figure 1's deep-downscaled edit)."""
    cs = write_family(tmp_path / "c", n=1)
    out = tmp_path / "e.safetensors"
    r = run_cli(
        ["edit", "--pretrained", cs.pretrained, "--finetuned", cs.finetuned[0], "--gamma", "0.25"]
        + ["--schedule", "reversed", "--out", out, "--no-progress"]
    )
    assert r.code == 0, r.err
    man = json.loads(out.with_suffix(".json").read_text())
    assert man["scaling"]["schedule"] == "reversed"
    assert man["scaling"]["lambdas"] == [1.0, 0.25]
    got = load_state_dict(out)
    k0, k1 = _block_keys(cs.base)
    for k, lam in ((k0, 1.0), (k1, 0.25)):
        tau = cs.fts[0][k] - cs.base[k]
        assert torch.equal(got[k], cs.base[k] + lam * tau)


def test_linear_schedule_output_is_identical_to_default(tmp_path, run_cli) -> None:
    cs = write_family(tmp_path / "c", n=3)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run_cli(merge_args(cs, a, "ties", "--lines-beta", "0.5")).code == 0
    r = run_cli(merge_args(cs, b, "ties", "--lines-beta", "0.5", "--schedule", "linear"))
    assert r.code == 0, r.err
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_merge_with_measured_schedule(tmp_path, run_cli) -> None:
    """λ from the merged task vector's per-block relative change: recomputed here by hand
    (4 blocks, so the min-max scaling leaves two values strictly inside (0, 1))."""
    cs = write_family(tmp_path / "c", n=2, layers=4)
    out = tmp_path / "m.safetensors"
    r = run_cli(
        merge_args(cs, out, "task_arithmetic", "--lines-beta", "1", "--lines-alpha", "0")
        + ["--schedule", "measured", "--block-policy", "depth"]
    )
    assert r.code == 0, r.err
    man = json.loads(out.with_suffix(".json").read_text())
    from lines.families import partition_keys

    part = partition_keys(list(cs.base), None, "depth")
    t2 = [0.0] * part.num_blocks
    b2 = [0.0] * part.num_blocks
    for k, v in cs.base.items():
        tau = sum(ft[k].double() - v.double() for ft in cs.fts)
        t2[part.block_of(k) - 1] += float((tau**2).sum())
        b2[part.block_of(k) - 1] += float((v.double() ** 2).sum())
    rel = [math.sqrt(t) / math.sqrt(b) for t, b in zip(t2, b2, strict=True)]
    want = [(x - min(rel)) / (max(rel) - min(rel)) for x in rel]
    assert man["scaling"]["schedule"] == "measured"
    assert len(want) == 4 and sum(0 < x < 1 for x in want) == 2
    assert man["scaling"]["lambdas"] == pytest.approx(want, rel=1e-5)
    norms = man["scaling"]["block_norms"]
    assert norms["tau"] == pytest.approx([math.sqrt(t) for t in t2], rel=1e-5)


def test_apply_with_measured_schedule_matches_merge(tmp_path, run_cli) -> None:
    cs = write_family(tmp_path / "c", n=2)
    tv, m1, m2 = (tmp_path / n for n in ("tv.safetensors", "m1.safetensors", "m2.safetensors"))
    args = ["--lines-beta", "0.7", "--lines-alpha", "0.2", "--schedule", "measured"]
    assert run_cli(merge_args(cs, m1, "ties", *args, "--save-task-vector", tv)).code == 0
    r = run_cli(
        ["apply", "--pretrained", cs.pretrained, "--task-vector", tv, *args, "--out", m2]
        + ["--no-progress"]
    )
    assert r.code == 0, r.err
    l1 = json.loads(m1.with_suffix(".json").read_text())["scaling"]["lambdas"]
    l2 = json.loads(m2.with_suffix(".json").read_text())["scaling"]["lambdas"]
    assert l1 == pytest.approx(l2, rel=1e-6)


def test_task_weights_and_pre_schedule(tmp_path, run_cli) -> None:
    """Task weights (1, 0): the merge is θ_0 + τ_1 alone; a pre-merge step schedule with k = 1
    and α = 0 zeroes block 1 of each τ_i."""
    cs = write_family(tmp_path / "c", n=2)
    out = tmp_path / "w.safetensors"
    r = run_cli(merge_args(cs, out, "task_arithmetic", "--task-weights", "1", "0"))
    assert r.code == 0, r.err
    got = load_state_dict(out)
    for k, v in cs.base.items():
        tau = (cs.fts[0][k] - v) * 1.0 + (cs.fts[1][k] - v) * 0.0
        assert torch.equal(got[k], v + 1.0 * tau)
    man = json.loads(out.with_suffix(".json").read_text())
    assert man["task_weights"] == [1.0, 0.0]

    out2 = tmp_path / "p.safetensors"
    r = run_cli(
        merge_args(cs, out2, "task_arithmetic", "--pre-lines-alpha", "0", "--pre-lines-beta", "1")
        + ["--pre-schedule", "step:k=1"]
    )
    assert r.code == 0, r.err
    got = load_state_dict(out2)
    k0, k1 = _block_keys(cs.base)
    assert torch.equal(got[k0], cs.base[k0])  # block 1: λ_pre = 0
    assert not torch.equal(got[k1], cs.base[k1])
    man = json.loads(out2.with_suffix(".json").read_text())
    assert man["pre_merge_lines"]["lambdas"] == [0.0, 1.0]
    assert man["pre_merge_lines"]["schedule"]["schedule"] == "step"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--schedule", "power:p=0", "--lines-beta", "0.5"], "power p out of range"),
        (["--schedule", "reversed"], "--schedule needs --lines-beta"),
        (["--task-weights", "1"], "1 task weights for 3 fine-tuned checkpoints"),
        (
            ["--pre-lines-alpha", "0", "--pre-lines-beta", "1", "--pre-schedule", "measured"],
            "cannot edit each τ_i before merging",
        ),
        (["--pre-schedule", "power"], "a pre-merge schedule needs"),
    ],
)
def test_bad_schedule_options_are_one_line(bert_ckpts, tmp_path, run_cli, extra, words) -> None:
    from conftest import snapshot
    from test_cli import assert_refused

    before = snapshot(tmp_path)
    r = run_cli(merge_args(bert_ckpts, tmp_path / "m.safetensors", "task_arithmetic", *extra))
    assert_refused(r, words)
    assert snapshot(tmp_path) == before


def test_schedules_listing(run_cli) -> None:
    r = run_cli(["schedules"])
    assert r.code == 0
    for name in ("linear", "reversed", "power", "step", "sigmoid", "piecewise", "measured"):
        assert any(line.startswith(name) for line in r.out.splitlines()), name
