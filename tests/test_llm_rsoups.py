"""Rewarded soups of the LLM suite (lines/llm/rewards.py, rl.py, rsoups.py): reward values by
hand, GRPO's advantages / loss / masks by hand, fronts and hypervolumes by hand, the soup's θ by
hand, GRPO raising a reward on a tiny LLaMA, and sft → rl → rsoups end to end through the stage
command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lines.errors import LinesError
from lines.llm import rewards, rl, stages
from lines.llm.model import load_folder
from lines.llm.rsoups import soup_theta
from lines.protocol.results import read_json


def test_flesch_reading_ease_by_hand() -> None:
    # 6 one-syllable words, one sentence: 206.835 − 1.015·6 − 84.6·1.
    assert rewards.flesch_reading_ease("The cat sat on the mat.") == pytest.approx(116.145)
    # pyphen: ex-tra-or-di-nary (5), won-der-ful (3), film (1); 3 words, 1 sentence.
    assert rewards.syllables("extraordinary") == 5
    f = rewards.flesch_reading_ease("Extraordinary wonderful film")
    assert f == pytest.approx(206.835 - 1.015 * 3 - 84.6 * 9 / 3)
    # Two sentences halve the words per sentence.
    two = rewards.flesch_reading_ease("It is good. I like it.")
    assert two == pytest.approx(206.835 - 1.015 * 3 - 84.6 * 1)
    assert rewards.flesch_reading_ease("...") is None
    # Clipped to [0, 1] after dividing by 100: 116 → 1, no words → 0, negative → 0, and
    # "It is a wonderful film." (5 words, 7 syllables) inside the range.
    assert rewards.readability(
        ["The cat sat on the mat.", "", "Extraordinary wonderful film", "It is a wonderful film."]
    ) == [1.0, 0.0, 0.0, pytest.approx((206.835 - 1.015 * 5 - 84.6 * 7 / 5) / 100)]


def test_sentiment_neutrality_brevity() -> None:
    s = rewards.sentiment(["good", "", "terrible awful film"])
    assert s[0] == pytest.approx(0.4404)  # VADER's lexicon value of "good", normalised
    assert s[1] == 0.0 and s[2] < -0.5
    assert rewards.neutrality(["the film", ""]) == [1.0, 0.0]
    assert rewards.brevity(["a b c", "", " ".join(["w"] * 40)]) == [
        pytest.approx(0.9),
        1.0,
        0.0,
    ]
    with pytest.raises(LinesError, match="unknown reward 'nope'"):
        rewards.get_reward("nope")


def test_group_advantages_and_grpo_loss_by_hand() -> None:
    adv = rl.group_advantages(torch.tensor([1.0, 2.0, 3.0, 3.0]), group=2)
    s = 2**-0.5  # std (ddof 1) of [1, 2]
    assert adv.tolist() == pytest.approx([-0.5 / (s + 1e-4), 0.5 / (s + 1e-4), 0.0, 0.0])
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    a = torch.tensor([2.0, -1.0])
    # Same policy as the reference: KL 0; loss = mean over completions of −A·mean(log π).
    loss, kl = rl.grpo_loss(logp, logp.clone(), mask, a, kl_coef=0.1)
    assert kl.item() == 0.0
    assert loss.item() == pytest.approx(((-2.0 * -1.5) + (1.0 * -0.5)) / 2)
    # k3 = exp(q) − q − 1 with q = log π_ref − log π = 1 on every token.
    loss2, kl2 = rl.grpo_loss(logp, logp + 1.0, mask, torch.zeros(2), kl_coef=0.1)
    k3 = torch.e - 1.0 - 1.0
    assert kl2.item() == pytest.approx(k3)
    assert loss2.item() == pytest.approx(0.1 * k3)


def test_completion_mask_stops_after_the_first_end_token() -> None:
    gen = torch.tensor([[5, 3, 7, 3], [5, 6, 7, 8], [3, 4, 4, 4]])
    assert rl.completion_mask(gen, eos_id=3, pad_id=1).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
    ]


def test_pareto_front_and_hypervolume_by_hand() -> None:
    pts = [(1.0, 0.0), (0.0, 1.0), (0.4, 0.4), (0.5, 0.5)]
    assert rl.pareto_front(pts) == [0, 1, 3]
    assert rl.dominated((0.4, 0.4), (0.5, 0.5)) and not rl.dominated((0.5, 0.5), (0.5, 0.5))
    # Union of [-1,1]×[-1,0] and [-1,0]×[-1,1]: 2 + 2 − 1.
    assert rl.hypervolume_2d([(1.0, 0.0), (0.0, 1.0)], (-1.0, -1.0)) == pytest.approx(3.0)
    # (0.5, 0.5) adds [-1,0.5]×[0,0.5] minus what (0,1) already covers: 0.5·0.5.
    assert rl.hypervolume_2d(pts, (-1.0, -1.0)) == pytest.approx(3.25)
    ci = rl.mean_ci([0.0, 1.0, 0.0, 1.0])
    assert ci["value"] == 0.5 and ci["hi"] - ci["lo"] == pytest.approx(
        2 * 1.96 * (1 / 3) ** 0.5 / 2
    )


def test_soup_theta_by_hand() -> None:
    sft = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0])}
    t1 = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([4.0])}
    t2 = {"a": torch.tensor([0.0, 2.0]), "b": torch.tensor([-4.0])}
    blocks = {"a": 1, "b": 2}
    plain = soup_theta(sft, t1, t2, 0.25, blocks, [1.0, 1.0])
    assert plain["a"].tolist() == [1.25, 2.5] and plain["b"].tolist() == [-2.0]
    lines = soup_theta(sft, t1, t2, 0.25, blocks, [1.0, 2.0])  # the deeper block twice as far
    assert lines["a"].tolist() == [1.25, 2.5] and lines["b"].tolist() == [-4.0]


def test_grpo_raises_a_reward_on_a_tiny_llama(tmp_path: Path) -> None:
    """GRPO for "say 'positive'": the fraction of generated words equal to it must rise."""
    base = tmp_path / "base"
    stages.run(stages.build_parser().parse_args(["fetch", "--source", "tiny", "--out", str(base)]))
    policy, tok = load_folder(base)
    ref, _ = load_folder(base)
    ctx = [rl.render_opening(tok, f"the {w} one") for w in ("movie", "film", "story", "plot")]

    def reward(texts):
        return [sum(w == "positive" for w in t.split()) / max(1, len(t.split())) for t in texts]

    before = rl.score_policy(policy, tok, ctx * 8, {"r": reward}, max_new_tokens=6, seed=1)
    log = rl.grpo(
        policy,
        ref,
        tok,
        ctx,
        reward,
        steps=25,
        prompts_per_step=4,
        group=8,
        max_new_tokens=6,
        lr=3e-2,
        kl_coef=0.0,
        seed=0,
    )
    after = rl.score_policy(policy, tok, ctx * 8, {"r": reward}, max_new_tokens=6, seed=1)
    b, a = (sum(x["values"]["r"]) / 32 for x in (before, after))
    assert a > b + 0.2, (b, a, log["curve"]["reward"])


def test_sft_rl_rsoups_stages_end_to_end(tmp_path: Path) -> None:
    P = stages.build_parser()
    base, sft, rld, out = (tmp_path / d for d in ("base", "sft", "rl", "out"))
    rlhf = ["--device", "cpu", "--max_new_tokens", "6", "--base", str(base)]
    stages.run(P.parse_args(["fetch", "--source", "tiny", "--out", str(base)]))
    log = stages.run(P.parse_args(["sft", *rlhf, "--max_train", "16", "--out", str(sft)]))
    assert log["examples"] > 0 and (sft / "model.safetensors").is_file()
    stages.run(
        P.parse_args(
            [
                "rl",
                *rlhf,
                "--sft",
                str(sft),
                "--reward",
                "brevity",
                "sentiment",
                "--steps",
                "2",
                "--prompts_per_step",
                "2",
                "--group",
                "2",
                "--max_prompts",
                "16",
                "--out",
                str(rld),
            ]
        )
    )
    assert read_json(rld / "brevity" / "rl.json")["steps"] == 2
    with pytest.raises(LinesError, match="λ out of range"):
        stages.run(
            P.parse_args(
                [
                    "rsoups",
                    *rlhf,
                    "--sft",
                    str(sft),
                    "--rl",
                    str(rld),
                    "--rewards",
                    "brevity",
                    "sentiment",
                    "--lambdas",
                    "1.5",
                    "--out",
                    str(out),
                ]
            )
        )
    res = stages.run(
        P.parse_args(
            [
                "rsoups",
                *rlhf,
                "--sft",
                str(sft),
                "--rl",
                str(rld),
                "--rewards",
                "brevity",
                "sentiment",
                "--lambdas",
                "0",
                "0.5",
                "1",
                "--max_eval",
                "12",
                "--bootstrap",
                "20",
                "--out",
                str(out),
            ]
        )
    )
    # SFT + 3 λ × (baseline, LiNeS, uniform ×1.5: the mean of LiNeS's 1 … 2 over 2 blocks).
    assert [p["variant"] for p in res["points"]] == ["sft"] + ["baseline"] * 3 + ["lines"] * 3 + [
        "scaled"
    ] * 3
    assert res["uniform_scale"] == pytest.approx(1.5) and res["lines"]["num_blocks"] == 2
    # λ = 1 without LiNeS is policy 1 itself: θ_SFT + τ_brevity.
    assert res["points"][3]["lambda"] == 1.0
    for k in ("baseline", "lines", "scaled", "difference", "difference_vs_scaled"):
        assert k in res["hypervolume"]
    assert "LiNeS" in res["verdict"] and (out / "fronts.png").is_file()
    md = (out / "rsoups.md").read_text()
    assert "tiny random LLaMA" in md and "| lines | 0.50 |" in md
    assert read_json(out / "rsoups.json")["rewards"] == ["brevity", "sentiment"]


def test_token_logprobs_under_left_padding_match_an_unpadded_forward(tmp_path: Path) -> None:
    """The completion slice and the position ids of a left-padded batch give each generated
    token the log-probability an unpadded forward pass of that one sequence gives it."""
    base = tmp_path / "base"
    stages.run(stages.build_parser().parse_args(["fetch", "--source", "tiny", "--out", str(base)]))
    model, tok = load_folder(base)
    ctx = [
        rl.render_opening(tok, "the movie"),
        rl.render_opening(tok, "a much longer opening of it"),
    ]
    ids, mask, gen, cmask, _ = rl.generate(model, tok, ctx, n=2, max_new_tokens=4, seed=3)
    with torch.no_grad():
        lp = rl.token_logprobs(model, ids, mask, gen, cmask)
        for r in range(ids.shape[0]):
            real = ids[r][mask[r].bool()]
            seq = torch.cat([real, gen[r]])[None]
            logits = model(input_ids=seq).logits[0].float().log_softmax(-1)
            n = len(real)
            want = logits[n - 1 : -1].gather(1, gen[r][:, None])[:, 0]
            m = cmask[r].bool()
            assert torch.allclose(lp[r][m], want[m], atol=1e-5)
        # At temperature T the scores are those of logits / T.
        lp2 = rl.token_logprobs(model, ids, mask, gen, cmask, temperature=2.0)
        assert not torch.allclose(lp2, lp)


def test_verdict_names_the_regime_and_the_interval() -> None:
    from lines.llm.rsoups import verdict

    def res(reg, lo, hi, ds=None):
        hv = {"difference": {"value": (lo + hi) / 2, "lo": lo, "hi": hi}}
        if ds is not None:
            hv["difference_vs_scaled"] = ds
        return {
            "regime": reg,
            "hypervolume": hv,
            "baseline_points_dominated_by_lines": 3,
            "baseline_points": 5,
            "uniform_scale": 1.5,
        }

    v = verdict(res({"checked": False, "why": "λ grid lacks 0 or 1"}, 0.1, 0.2))
    assert v.startswith("Trade-off not checked (λ grid lacks 0 or 1)") and "larger" in v
    v = verdict(res({"checked": True, "tradeoff": False}, -0.2, -0.1))
    assert "do NOT trade off" in v and "LiNeS does not help" in v and "3 of 5" in v
    v = verdict(res({"checked": True, "tradeoff": True}, 0.1, 0.2, {"lo": -0.1, "hi": -0.05}))
    assert "the gain comes from moving further" in v
    v = verdict(res({"checked": True, "tradeoff": True}, -0.1, 0.2, {"lo": -0.1, "hi": 0.1}))
    assert "not distinguishable" in v and "moving further" not in v
