"""Tests of train.py: the advantage / loss / aggregation math on hand-computed cases, config errors, data helpers,
log-probs on a tiny random Qwen2, and end-to-end runs of the tiny preset (with a kill-and-resume check).

    python -m pytest -q tests/test_train.py              # everything (the slow end-to-end part: ~2 min on 2 cores)
    python -m pytest -q tests/test_train.py -m "not slow"

The end-to-end tests use the tiny warm start cached by tiny.prepare under $MATHRL_CACHE (default ~/.cache/mathrl);
the first run builds it (a few minutes).
"""

import json
import math
import re
import signal
import subprocess
import sys
import time
from dataclasses import fields, replace

import pytest
import torch

import train
from conftest import REPO
from mathrl.engine import Completion
from mathrl.templates import TINY_TEMPLATES, draw_template, render
from mathrl.tiny import SETTINGS, build_model, build_tokenizer
from train import (
    Config,
    aggregate,
    batch_indices,
    batch_tensors,
    clean_rows,
    compute_advantages,
    field_help,
    pad_batch,
    parse_config,
    policy_loss,
    read_rows,
    score,
    step_prompts,
    token_logprobs,
    trim,
)

approx = pytest.approx

# ----------------------------------------------------------------------------------------------------------------------
# Advantages

# Three groups of G = 4: a 0/1 group, a zero-variance group, a graded group.
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [1.5, 0.5, 1.0, 0.0]], dtype=torch.float64)
# group 0: mean 0.5, deviations +-0.5, unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.5773502692
# group 2: mean 0.75, deviations (.75, -.25, .25, -.75), sum of squares 1.25, std = sqrt(1.25 / 3) = 0.6454972244
GRPO_0 = 0.8660239038  # 0.5 / (0.5773502692 + 1e-6)
GRPO_2_BIG, GRPO_2_SMALL = 1.1618932039, 0.3872977346  # 0.75 / (0.6454972244 + 1e-6), 0.25 / (... + 1e-6)
AAPO_0 = 0.8658754298  # 0.5 / (0.5773502692 + 1e-4): AAPO's eps


def test_grpo_advantages_hand_computed():
    adv = compute_advantages(REWARDS, "grpo")
    expected = [
        [GRPO_0, -GRPO_0, -GRPO_0, GRPO_0],
        [0, 0, 0, 0],  # zero-variance group
        [GRPO_2_BIG, -GRPO_2_SMALL, GRPO_2_SMALL, -GRPO_2_BIG],
    ]
    assert adv.tolist() == [approx(row, abs=1e-9) for row in expected]


def test_drgrpo_advantages_are_centred_rewards_only():
    adv = compute_advantages(REWARDS, "drgrpo")
    expected = [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [0.75, -0.25, 0.25, -0.75]]
    assert adv.tolist() == [approx(row, abs=1e-12) for row in expected]


# Reference rewards (frozen initial policy). Margins r - r_ref, then clip(., -0.2, 0.28):
#   group 0: (1, 0, -1, 0)           -> (0.28, 0, -0.2, 0)
#   group 1: (0.1, 0, -0.1, -1)      -> (0.1, 0, -0.1, -0.2)   zero-variance group: the advantage is the clipped margin
#   group 2: (0.5, 0.5, -0.05, 0)    -> (0.28, 0.28, -0.05, 0)
REF = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.9, 2.0, 2.1, 3.0], [1.0, 0.0, 1.05, 0.0]], dtype=torch.float64)
CLIPPED_MARGIN = [[0.28, 0, -0.2, 0], [0.1, 0, -0.1, -0.2], [0.28, 0.28, -0.05, 0]]


def test_aapo_advantages_with_std():
    adv = compute_advantages(REWARDS, "aapo", REF)
    big, small = 0.75 / 0.6455972244, 0.25 / 0.6455972244  # group 2 with eps 1e-4: 1.1617136, 0.3872379
    expected = [
        [AAPO_0 + 0.28, -AAPO_0, -AAPO_0 - 0.2, AAPO_0],
        CLIPPED_MARGIN[1],
        [big + 0.28, -small + 0.28, small - 0.05, -big],
    ]
    assert adv.tolist() == [approx(row, abs=1e-9) for row in expected]


def test_aapo_advantages_without_std():
    adv = compute_advantages(REWARDS, "aapo", REF, aapo_std=False)
    expected = [[0.78, -0.5, -0.7, 0.5], [0.1, 0, -0.1, -0.2], [1.03, 0.03, 0.2, -0.75]]
    assert adv.tolist() == [approx(row, abs=1e-12) for row in expected]


def test_aapo_clip_bounds_are_arguments():
    adv = compute_advantages(REWARDS[:1], "aapo", REF[:1], aapo_std=False, delta_low=0.5, delta_high=0.1)
    assert adv.tolist() == [approx([0.5 + 0.1, -0.5, -0.5 - 0.5, 0.5])]


def test_advantage_errors():
    with pytest.raises(ValueError, match="unknown estimator 'ppo'"):
        compute_advantages(REWARDS, "ppo")
    with pytest.raises(ValueError, match=r"\(B, G\) with G >= 2, got \(4,\)"):
        compute_advantages(REWARDS[0], "grpo")
    with pytest.raises(ValueError, match=r"got \(3, 1\)"):
        compute_advantages(REWARDS[:, :1], "drgrpo")
    with pytest.raises(ValueError, match="aapo needs ref_rewards"):
        compute_advantages(REWARDS, "aapo")
    with pytest.raises(ValueError, match="aapo needs ref_rewards"):
        compute_advantages(REWARDS, "aapo", REF[:2])


# ----------------------------------------------------------------------------------------------------------------------
# Policy loss


def ppo(ratios, adv, mask=None, **kw):
    """policy_loss with old_logp = 0 (so ratio = exp(logp)); returns the loss, stats and d loss / d logp."""
    logp = torch.tensor(ratios, dtype=torch.float64).log().requires_grad_(True)  # (N, T)
    mask = torch.ones_like(logp) if mask is None else torch.tensor(mask, dtype=torch.float64)
    loss, stats = policy_loss(logp, torch.zeros_like(logp), torch.tensor(adv, dtype=torch.float64), mask, "ppo", **kw)
    loss.backward()
    return loss.item(), stats, logp.grad.tolist()


def test_ppo_positive_advantage_clip_high():
    # A = +1, ratios (1, 1.5, 0.5, 1.1); clip range [0.8, 1.28] (clip-higher 0.2 / 0.28)
    # obj = min(r A, clip(r) A) = (1, 1.28, 0.5, 1.1): 1.5 is clipped; 0.5 is not (min keeps the unclipped 0.5)
    # loss = -(1 + 1.28 + 0.5 + 1.1) / 4 = -0.97
    # d loss / d logp = -(1/4) d(r A)/d logp = -r/4 where unclipped, 0 where clipped
    loss, stats, grad = ppo([[1.0, 1.5, 0.5, 1.1]], [1.0])
    assert loss == approx(-0.97)
    assert grad == [approx([-0.25, 0.0, -0.125, -0.275])]
    assert stats["clip_frac"] == approx(0.25)


def test_ppo_negative_advantage_clip_low_and_dual_clip():
    # A = -1, ratios (1, 0.7, 1.5, 5); clip(r) = (1, 0.8, 1.28, 1.28)
    # min(r A, clip(r) A) = (-1, -0.8, -1.5, -5); dual-clip max(., 3 A = -3) = (-1, -0.8, -1.5, -3)
    # loss = (1 + 0.8 + 1.5 + 3) / 4 = 1.575; gradient r A * (-1/4) = r/4 on live tokens: (0.25, 0, 0.375, 0)
    loss, _, grad = ppo([[1.0, 0.7, 1.5, 5.0]], [-1.0])
    assert loss == approx(1.575)
    assert grad == [approx([0.25, 0.0, 0.375, 0.0])]
    # dual-clip off: the 5x ratio passes through, (1 + 0.8 + 1.5 + 5) / 4 = 2.075, and its gradient 5/4 is live
    loss, _, grad = ppo([[1.0, 0.7, 1.5, 5.0]], [-1.0], dual_clip=0.0)
    assert loss == approx(2.075)
    assert grad == [approx([0.25, 0.0, 0.375, 1.25])]
    # dual-clip c = 2: max(-5, -2) = -2 -> (1 + 0.8 + 1.5 + 2) / 4 = 1.325
    assert ppo([[1.0, 0.7, 1.5, 5.0]], [-1.0], dual_clip=2.0)[0] == approx(1.325)


def test_ppo_clip_frac_counts_dual_clipped_tokens():
    # same case: token 2 is clipped by the PPO clip (ratio 0.7 < 0.8), token 4 by the dual clip (-5 -> -3): 2 of 4
    _, stats, _ = ppo([[1.0, 0.7, 1.5, 5.0]], [-1.0])
    assert stats["clip_frac"] == approx(0.5)


def test_ppo_clip_frac_without_dual_clip():
    # A = -1: only the ratio 0.7 token is clipped (0.7 -> 0.8); with dual-clip off the 5x token is not clipped
    assert ppo([[1.0, 0.7, 1.5, 5.0]], [-1.0], dual_clip=0.0)[1]["clip_frac"] == approx(0.25)
    # masked tokens do not count: mask out the clipped one -> 0 of 3
    assert ppo([[1.0, 0.7, 1.5, 5.0]], [-1.0], [[1, 0, 1, 1]], dual_clip=0.0)[1]["clip_frac"] == 0.0


def test_ppo_log_ratio_clamp():
    # log ratio 30 clamped to 20 before exp: with A = -1 and no dual clip, loss = exp(20) = 485165195.41 (not exp(30))
    logp = torch.tensor([[30.0]], dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), "ppo", dual_clip=0.0)
    loss.backward()
    assert loss.item() == approx(485165195.4097903)
    assert logp.grad.item() == 0.0  # beyond the clamp: no gradient
    loss, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), "ppo", dual_clip=0.0,
                          log_ratio_clamp=2.0)  # fmt: skip
    assert loss.item() == approx(7.3890561)  # exp(2)


def test_masked_tokens_contribute_nothing():
    # Live tokens: sequence 0, ratios (1, 0.5) with A = -1: min(-1, -1) = -1 and min(-0.5, -0.8) = -0.8 (0.5 clipped
    # up to 0.8); token-mean over these 2 tokens: loss = (1 + 0.8) / 2 = 0.9, gradient (r/2 = 0.5, clipped: 0).
    # Masked: sequence 0's last token (ratio 1.105, in the clip range: it would have a gradient), all of sequence 1
    # (in range, A = 5), and sequence 2 with absurd log ratios (50, clamped to 20: exp(20) with A = -1, no dual clip).
    logp = torch.tensor([[0.0, math.log(0.5), 0.1], [0.0, -0.1, 0.1], [50.0, 50.0, 50.0]], dtype=torch.float64)
    logp.requires_grad_(True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    loss, stats = policy_loss(logp, torch.zeros(3, 3), torch.tensor([-1.0, 5.0, -1.0]), mask, "ppo", dual_clip=0.0)
    loss.backward()
    assert loss.item() == approx(0.9)
    assert logp.grad.tolist() == [approx([0.5, 0.0, 0.0]), [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert stats["clip_frac"] == approx(0.5)


def reinforce_case(agg, **kw):
    # obj = A logp: row 0 A = 2, logp (-1, -2, [-3]) -> (-2, -4); row 1 A = -1, logp (-0.5, [-0.5, -9]) -> (0.5)
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, stats = policy_loss(logp, torch.zeros(2, 3), torch.tensor([2.0, -1.0]), mask, "reinforce", agg=agg, **kw)
    loss.backward()
    return loss.item(), stats, logp.grad.tolist()


def test_reinforce_loss_and_gradient():
    # token-mean: -(-2 - 4 + 0.5) / 3 = 5.5 / 3; gradient -A / 3 on live tokens
    loss, stats, grad = reinforce_case("token-mean")
    assert loss == approx(5.5 / 3)
    assert grad == [approx([-2 / 3, -2 / 3, 0.0]), approx([1 / 3, 0.0, 0.0])]
    assert stats["clip_frac"] == 0.0
    # seq-mean-token-mean: -((-2 - 4) / 2 + 0.5 / 1) / 2 = 1.25; gradient row 0: -2 / 2 / 2, row 1: 1 / 1 / 2
    loss, _, grad = reinforce_case("seq-mean-token-mean")
    assert loss == approx(1.25)
    assert grad == [approx([-0.5, -0.5, 0.0]), approx([0.5, 0.0, 0.0])]
    # seq-mean-token-sum-norm with max_len 4: 5.5 / (2 * 4) = 0.6875
    assert reinforce_case("seq-mean-token-sum-norm", max_len=4)[0] == approx(0.6875)


def test_k3_kl_term():
    # A = 0, so only the KL term: log(pi_ref / pi) = (log 2, log 0.5)
    # k3 = e^x - x - 1 = (2 - 0.6931472 - 1, 0.5 + 0.6931472 - 1) = (0.3068528, 0.1931472), mean 0.25
    # loss = 0.1 * 0.25 = 0.025; d k3 / d logp = 1 - e^x = (-1, 0.5), times 0.1 / 2 -> (-0.05, 0.025)
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.tensor([[-1.0 + math.log(2), -2.0 + math.log(0.5)]], dtype=torch.float64)
    loss, stats = policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), "ppo", ref_logp=ref_logp,
                              kl_coef=0.1)  # fmt: skip
    loss.backward()
    assert loss.item() == approx(0.025)
    assert stats["kl"] == approx(0.25)
    assert logp.grad.tolist() == [approx([-0.05, 0.025])]
    assert "kl" not in policy_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2))[1]  # kl_coef 0: no term


def test_entropy_bonus():
    # A = 0; entropy (1, 3, [100]) with coefficient 0.01: loss = -0.01 * (1 + 3) / 2 = -0.02; d loss / d H = -0.005
    entropy = torch.tensor([[1.0, 3.0, 100.0]], requires_grad=True)
    logp = torch.zeros(1, 3)
    loss, _ = policy_loss(logp, logp, torch.zeros(1), torch.tensor([[1.0, 1.0, 0.0]]), "reinforce", entropy=entropy,
                          entropy_coef=0.01)  # fmt: skip
    loss.backward()
    assert loss.item() == approx(-0.02)
    assert entropy.grad.tolist() == [approx([-0.005, -0.005, 0.0])]


def test_tis_weight_scales_only_the_policy_gradient_term():
    # w = min(pi_old / pi_engine, 2): ratios (0.5, 3, 1) -> (0.5, 2, 1), the 3 truncated
    old = torch.tensor([[math.log(0.5), math.log(3.0), 0.0]], dtype=torch.float64)
    w, truncated = train.tis_weight(old, torch.zeros(1, 3, dtype=torch.float64), cap=2.0)
    assert w.tolist() == [approx([0.5, 2.0, 1.0])] and truncated.tolist() == [[False, True, False]]
    # reinforce, A = 1, logp = (-1, -1, -1), k3 term with log(pi_ref / pi) = log 2 on every token (k3 = 0.3068528):
    # obj = w A logp - 0.1 k3 = (-0.5, -2, -1) - 0.0306853; loss = (0.5 + 2 + 1) / 3 + 0.0306853 = 1.1973520
    logp = torch.full((1, 3), -1.0, dtype=torch.float64)
    loss, _ = policy_loss(logp, logp, torch.ones(1), torch.ones(1, 3), "reinforce", ref_logp=logp + math.log(2),
                          kl_coef=0.1, is_weight=w)  # fmt: skip
    assert loss.item() == approx(1.1973520)


def test_unknown_loss_kind():
    with pytest.raises(ValueError, match="unknown loss 'dpo'"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1), torch.ones(1, 1), "dpo")


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation

X = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # row 2 fully masked


def test_aggregate_hand_computed():
    # live values: row 0 (1, 2, 3), row 1 (10, 20): 5 tokens, 2 sequences, total 36
    assert aggregate(X, MASK, "token-mean").item() == approx(36 / 5)
    assert aggregate(X, MASK, "seq-mean-token-mean").item() == approx((6 / 3 + 30 / 2) / 2)  # 8.5
    assert aggregate(X, MASK, "seq-mean-token-sum-norm").item() == approx(36 / (2 * 4))  # max_len = T = 4
    assert aggregate(X, MASK, "seq-mean-token-sum-norm", max_len=10).item() == approx(36 / 20)
    with pytest.raises(ValueError, match="unknown aggregation 'sum'"):
        aggregate(X, MASK, "sum")


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_micro_batches_sum_to_full_batch(mode):
    full = aggregate(X, MASK, mode, max_len=4).item()
    n_tokens, n_seqs = 5, 2  # the whole batch's counts, passed to each micro-batch
    parts = [aggregate(X[rows], MASK[rows], mode, n_tokens, n_seqs, max_len=4).item() for rows in ([0], [1, 2])]
    assert sum(parts) == approx(full)
    assert full == approx({"token-mean": 7.2, "seq-mean-token-mean": 8.5, "seq-mean-token-sum-norm": 4.5}[mode])


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_policy_loss_micro_batches_match_full_batch_loss_and_gradient(agg):
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)  # (N, T)
    old = logp.detach() + 0.3 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    adv, mask = torch.tensor([1.0, -2.0, 0.5, -0.1]), (torch.rand(4, 5, generator=gen) > 0.3).double()
    kw = dict(kind="ppo", agg=agg, max_len=5)
    full, _ = policy_loss(logp, old, adv, mask, **kw)
    (g_full,) = torch.autograd.grad(full, logp)
    n_tokens, n_seqs = mask.sum().item(), int((mask.sum(-1) > 0).sum())
    micro = ([0, 1], [2, 3])
    parts = [policy_loss(logp[r], old[r], adv[r], mask[r], n_tokens=n_tokens, n_seqs=n_seqs, **kw)[0] for r in micro]
    (g_parts,) = torch.autograd.grad(sum(parts), logp)
    assert sum(parts).item() == approx(full.item(), abs=1e-12)
    torch.testing.assert_close(g_parts, g_full)


# ----------------------------------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--estimator", "ppo"], "--estimator 'ppo': expected one of grpo, drgrpo, aapo"),
        (["--template", "nope"], "unknown template 'nope'"),
        (["--eval-template", "nope"], "unknown template 'nope'"),
        (["--aug", "--templates", "abel,nope"], "unknown template 'nope'"),
        (["--group-size", "1"], "--group-size 1: group-relative advantages need at least 2"),
        (["--prompts-per-step", "10", "--mini-batch-prompts", "4"], "--mini-batch-prompts 4 must divide --prompts-per"),
        (["--preset", "huge"], "--preset 'huge': expected tiny"),
        (["--agg", "mean"], "--agg 'mean': expected one of"),
        (["--loss", "dpo"], "--loss 'dpo': expected one of auto, ppo, reinforce"),
        (["--lr", "0"], "--lr must be positive"),
        (["--temperature", "0"], "--temperature must be > 0"),
    ],
)
def test_config_errors(argv, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_config(argv)


def test_preset_then_flags():
    cfg = parse_config(["--preset", "tiny", "--group-size", "4", "--no-aapo-std", "--estimator", "aapo"])
    assert (cfg.group_size, cfg.prompts_per_step, cfg.lr, cfg.device, cfg.aapo_std) == (4, 16, 2e-4, "cpu", False)
    assert train.loss_kind(cfg) == "reinforce" and train.loss_kind(parse_config([])) == "ppo"
    assert parse_config([]) == replace(Config(), **train.GPU_PRESET)  # no flags: the paper recipe on one GPU


def test_chain_preset_uses_its_own_templates_and_longer_responses():
    cfg = parse_config(["--preset", "tiny-chain", "--aug"])
    assert (cfg.template, cfg.eval_template, cfg.max_new_tokens, cfg.device) == ("chain-boxed", "chain-boxed", 128, "cpu")
    assert train.template_names(cfg) == ["chain-boxed", "chain-think", "chain-final", "chain-list", "chain-hash"]
    assert cfg.micro_batch_tokens == 4096  # length-sorted micro-batches: less padding, the same loss (test above)
    tiny = parse_config(["--preset", "tiny"])
    assert (tiny.max_new_tokens, tiny.micro_batch_tokens, tiny.micro_batch_size) == (40, 0, 128)  # tiny unchanged
    with pytest.raises(ValueError, match="expected tiny, tiny-chain or paper"):
        parse_config(["--preset", "chain"])


def test_help_lists_every_field_comment(capsys):
    helps = field_help()
    assert set(helps) == {f.name for f in fields(Config)}
    assert all(text.strip() for text in helps.values())
    assert helps["clip_eps_high"].startswith("upper clip, DAPO")
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    squeezed = "".join(capsys.readouterr().out.split())  # argparse re-wraps lines (also at hyphens)
    for name, text in helps.items():
        assert "--" + name.replace("_", "-") in squeezed
        assert "".join(text.split()) in squeezed, name


# ----------------------------------------------------------------------------------------------------------------------
# Data


def test_clean_rows_skips_and_counts():
    raw = [
        {"problem": "1+1", "answer": "2"},
        {"problem": "x", "answer": ""},  # empty answer: skipped
        {"problem": "  ", "answer": "3"},  # empty problem: skipped
        {"question": "q?", "answer": 4},  # the "question" fallback; numbers become strings
        {"problem": "y"},  # missing answer: skipped
        {"problem": "z", "answer": ["a", " ", "b"]},  # list: blanks dropped
        {"problem": "w", "answer": [None, " 5 "]},  # list of one usable answer: a plain string
        {"problem": "n", "answer": None},  # skipped
    ]
    rows, skipped = clean_rows(raw, "problem", "answer", "data.jsonl")
    assert rows == [
        {"problem": "1+1", "answer": "2"},
        {"problem": "q?", "answer": "4"},
        {"problem": "z", "answer": ["a", "b"]},
        {"problem": "w", "answer": "5"},
    ]
    assert skipped == 4
    with pytest.raises(ValueError, match=r"data.jsonl: no row has the field 'solution'"):
        clean_rows(raw, "problem", "solution", "data.jsonl")
    with pytest.raises(ValueError, match=r"no row has the field 'prompt'"):
        clean_rows([{"text": "a", "answer": "1"}], "prompt", "answer", "d")


def test_read_rows(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text('{"problem": "p1", "answer": "1"}\n\n{"problem": "p2", "answer": "2"}\n')
    assert [r["problem"] for r in read_rows(str(good))] == ["p1", "p2"]
    (tmp_path / "b.jsonl").write_text('{"problem": "p3", "answer": "3"}\n')
    assert [r["problem"] for r in read_rows(str(tmp_path))] == ["p1", "p2", "p3"]  # a folder: files in name order
    with pytest.raises(FileNotFoundError, match="data file .*missing.jsonl not found"):
        read_rows(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad" / "c.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"problem": "p", "answer": "1"}\n{"problem": "p", "answer": \n')
    with pytest.raises(ValueError, match=r"c.jsonl line 2: not valid JSON"):
        read_rows(str(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .jsonl/.json/.parquet files"):
        read_rows(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="expected a .jsonl, .json or .parquet file"):
        read_rows(str(good.with_suffix(".txt")))


def test_batch_indices():
    # 12 rows, batches of 3: 4 steps per epoch; each epoch's batches form a permutation of the 12 rows
    epoch0 = [batch_indices(s, 12, 3, seed=1) for s in range(4)]
    epoch1 = [batch_indices(s, 12, 3, seed=1) for s in range(4, 8)]
    assert [e for e, _ in epoch0] == [0, 0, 0, 0] and [e for e, _ in epoch1] == [1, 1, 1, 1]
    for epoch in (epoch0, epoch1):
        assert sorted(i for _, idx in epoch for i in idx) == list(range(12))
    assert [idx for _, idx in epoch0] != [idx for _, idx in epoch1]  # a fresh order per epoch
    assert batch_indices(5, 12, 3, seed=1) == epoch1[1]  # a function of (seed, step) only
    assert [batch_indices(s, 12, 3, seed=2)[1] for s in range(4)] != [idx for _, idx in epoch0]
    # 10 rows, batches of 3: 3 steps per epoch, one row left out per epoch (the incomplete batch is dropped)
    idx = [i for s in range(3) for i in batch_indices(s, 10, 3, seed=0)[1]]
    assert len(set(idx)) == 9 and batch_indices(3, 10, 3, seed=0)[0] == 1


def test_template_draw_per_group_and_epoch():
    """train.step_prompts draws one template per (seed, epoch, row), whatever the step or the row's place in the batch;
    the same call draws the same (a resumed run replays it); each epoch re-draws; without --aug every prompt gets
    --template. batch_tensors then gives prompt b, and so its template, to every sequence b*G .. b*G+G-1 of its group."""
    tokenizer, names = build_tokenizer(), list(TINY_TEMPLATES)
    rows = [{"problem": f"{a}+{a}=", "answer": str(2 * a)} for a in range(40)]
    cfg = Config(aug=True, prompts_per_step=8, mini_batch_prompts=8, group_size=3, seed=7)
    drawn = {}  # (epoch, row) -> template
    for step in range(10):  # 5 steps per epoch: epochs 0 and 1
        epoch, idx, tmpl, prompt_ids = step_prompts(cfg, step, rows, names, tokenizer)
        assert step_prompts(cfg, step, rows, names, tokenizer) == (epoch, idx, tmpl, prompt_ids)
        rendered = [render(t, rows[i]["problem"]) for t, i in zip(tmpl, idx)]
        assert prompt_ids == [tokenizer.encode(r, add_special_tokens=False) for r in rendered]
        drawn.update({(epoch, i): t for i, t in zip(idx, tmpl)})
    assert len(drawn) == 80  # every row once in each epoch
    assert drawn == {(e, i): draw_template(7, e, i, names) for e in (0, 1) for i in range(40)}
    assert set(drawn.values()) == set(names)  # every template is drawn
    assert sum(drawn[0, i] != drawn[1, i] for i in range(40)) >= 10  # re-drawn per epoch (expected 30 of 40 differ)
    assert step_prompts(replace(cfg, aug=False, template=names[1]), 0, rows, names, tokenizer)[2] == [names[1]] * 8
    G = cfg.group_size
    comps = [[Completion(token_ids=[1], logprobs=[0.0], finished=True, text="") for _ in range(G)] for _ in idx]
    batch = batch_tensors(comps, prompt_ids, torch.ones(len(idx), G), torch.zeros(len(idx), G), 0, "cpu")
    P = max(map(len, prompt_ids))
    for n in range(len(idx) * G):
        p = prompt_ids[n // G]
        assert batch["input_ids"][n, P - len(p) : P].tolist() == p and batch["attn"][n, : P - len(p)].sum() == 0


def test_pad_batch_layout():
    ids, attn, resp = pad_batch([[1, 2], [3]], [[4], [5, 6, 7]], pad_id=0)
    assert ids.tolist() == [[1, 2, 4, 0, 0], [0, 3, 5, 6, 7]]  # prompts left-padded to P = 2, responses right to T = 3
    assert attn.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert resp.tolist() == [[1, 0, 0], [1, 1, 1]]
    ids, attn, resp = pad_batch([[1]], [[]], pad_id=9)  # an empty response: T = 1, masked
    assert ids.tolist() == [[1, 9]] and resp.tolist() == [[0]]


def test_trim():
    ids, attn, resp = pad_batch([[1, 2, 3], [4], [5, 6]], [[7], [8, 9], [10]], pad_id=0)  # P = 3, T = 2
    t_ids, t_attn, T = trim(torch.tensor([1, 2]), ids, attn, resp)
    assert T == 2 and t_ids.tolist() == [[0, 4, 8, 9], [5, 6, 10, 0]]  # column 0 is padding in both: dropped
    assert t_attn.tolist() == [[0, 1, 1, 1], [1, 1, 1, 0]]
    t_ids, _, T = trim(torch.tensor([0, 2]), ids, attn, resp)
    assert T == 1 and t_ids.tolist() == [[1, 2, 3, 7], [0, 5, 6, 10]]  # longest response 1: last column dropped


def test_score_accuracy_format_and_overlong():
    def c(text, finished=True):
        return Completion(token_ids=[1], logprobs=[0.0], finished=finished, text=text)

    completions = [
        [c("7+8=15.</think><answer>\\boxed{15}</answer>"), c("\\boxed{14}</answer>")],  # tiny-think, gold 15
        [c("The final answer is: \\boxed{3}", finished=False), c("\\boxed{3}")],  # tiny-final, gold 3
    ]
    args = (completions, ["15", "3"], ["tiny-think", "tiny-final"])
    res = score(Config(reward_workers=1), *args)
    assert res["accuracy"].tolist() == [[1, 0], [1, 1]]
    assert res["format"].tolist() == [[1, approx(1 / 3)], [1, 0]]  # 1 of 3 tags in "\boxed{14}</answer>"
    assert res["reward"].tolist() == [[2, approx(1 / 3)], [2, 1]]
    assert res["truncated"].tolist() == [[0, 0], [1, 0]]
    res = score(Config(reward_workers=1, overlong="zero"), *args)  # the truncated response scores 0
    assert res["reward"].tolist() == [[2, approx(1 / 3)], [0, 1]] and res["accuracy"][1, 0] == 1
    res = score(Config(reward_workers=1, use_format=False), *args)  # accuracy only
    assert res["reward"].tolist() == [[1, 0], [1, 1]]


def test_score_format_rules_of_the_paper_templates():
    """reward = accuracy + format score: qwen-math's format is constant (1), open-r1's counts its four tags (each
    exactly once); the answer is cut at the first </answer>, so a box after it does not count. Worker processes give
    the in-process numbers."""

    def c(text):
        return Completion(token_ids=[1], logprobs=[0.0], finished=True, text=text)

    half = "<think>\nwork\n</think>\n\\boxed{2}"  # two of the four tags
    after = "<think>\nw\n</think>\n<answer>\n\\boxed{3}\n</answer> \\boxed{2}"
    completions = [[c("so \\boxed{2}"), c("so \\boxed{3}")], [c(half), c(after)]]
    args = (completions, ["2", "2"], ["qwen-math", "open-r1"])
    res = score(Config(reward_workers=1), *args)
    assert res["accuracy"].tolist() == [[1, 0], [1, 0]]
    assert res["format"].tolist() == [[1, 1], [0.5, 1]]
    assert res["reward"].tolist() == [[2, 1], [1.5, 1]]
    assert {k: v.tolist() for k, v in score(Config(reward_workers=2), *args).items()} == {
        k: v.tolist() for k, v in res.items()
    }


# ----------------------------------------------------------------------------------------------------------------------
# Log-probs on a tiny random Qwen2


@pytest.mark.parametrize("temperature, from_hidden", [(1.0, False), (0.7, False), (0.7, True)])
def test_token_logprobs_match_plain_forward(temperature, from_hidden):
    tokenizer = build_tokenizer()
    settings = dict(SETTINGS, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = build_model(tokenizer, settings, seed=0).eval()
    limit = len(tokenizer)  # the LM head has padded rows beyond it
    assert model.config.vocab_size > limit
    gen = torch.Generator().manual_seed(1)
    lens = [(5, 3), (2, 4), (7, 1)]  # (prompt, response) lengths: left padding on rows 1 and 2, right padding too
    prompts = [torch.randint(3, limit, (p,), generator=gen).tolist() for p, _ in lens]
    responses = [torch.randint(3, limit, (r,), generator=gen).tolist() for _, r in lens]
    ids, attn, resp = pad_batch(prompts, responses, tokenizer.pad_token_id)  # (3, 7 + 4), (3, 4)
    with torch.no_grad():
        logp, ent = token_logprobs(model, ids, attn, resp.shape[1], temperature, limit, from_hidden)  # (3, 4) each
        for n, (p, r) in enumerate(zip(prompts, responses)):  # reference: one unpadded forward pass per sequence
            logits = model(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1].double()  # (T_n, V)
            logits[:, limit:] = float("-inf")
            ref = torch.log_softmax(logits / temperature, dim=-1)  # (T_n, V)
            ref_ent = -(ref.exp() * ref.nan_to_num(neginf=0.0)).sum(-1)  # (T_n,)
            torch.testing.assert_close(logp[n, : len(r)].double(), ref.gather(-1, torch.tensor(r)[:, None])[:, 0],
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            torch.testing.assert_close(ent[n, : len(r)].double(), ref_ent, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# End to end: train.py --preset tiny in a subprocess (uses the cached tiny warm start)

# 4 prompts x 4 samples, 2 mini-batches of 2 prompts, 2 micro-batches each. The grader's time limit is wall-clock, so
# a generous one keeps a busy machine from scoring a slow verification 0 (which would break the exact-resume check).
SMALL = ["--preset", "tiny", "--prompts-per-step", "4", "--group-size", "4", "--mini-batch-prompts", "2",
         "--micro-batch-size", "4", "--eval-limit", "16", "--reward-timeout", "60"]  # fmt: skip
REQUIRED = ["train/reward", "train/accuracy", "train/format", "train/entropy", "train/response_len", "train/truncated",
            "train/clip_frac", "train/zero_var_groups", "train/grad_norm", "time/generate", "time/reward",
            "time/logprobs", "time/train"]  # fmt: skip
AAPO_KEYS = ["aapo/ref_reward", "aapo/margin_mean", "aapo/margin_abs", "aapo/margin_clipped", "aapo/ref_samples"]


def run_train(*flags, check=True):
    proc = subprocess.run([sys.executable, "train.py", *flags], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if check:
        assert proc.returncode == 0, f"train.py {' '.join(flags)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def check_checkpoint(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (path / "trainer_state.pt").is_file()
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tokenizer.encode("12+34=?", add_special_tokens=False)])
    assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.fixture(scope="module")
def aapo_run(tmp_path_factory):
    """4 uninterrupted steps of AAPO with prompt augmentation (checkpoints at 2 and 4, eval at 0, 2, 4)."""
    out = tmp_path_factory.mktemp("e2e") / "aapo-aug"
    flags = [*SMALL, "--estimator", "aapo", "--aug", "--aapo-ref", "cache", "--max-steps", "4", "--eval-every", "2",
             "--save-every", "2"]  # fmt: skip
    run_train(*flags, "--out", str(out))
    return out, flags


@pytest.mark.slow
def test_end_to_end_aapo_aug(aapo_run):
    out, _ = aapo_run
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 4]
    for r in rows[1:]:
        for key in REQUIRED + AAPO_KEYS:
            assert key in r, f"step {r['step']}: {key} missing"
        templates = {k.split("/")[1] for k in r if k.startswith("template/")}
        assert templates and templates <= set(TINY_TEMPLATES)
        for t in templates:
            assert {f"template/{t}/accuracy", f"template/{t}/entropy"} <= set(r)
        assert sum(r[f"template/{t}/prompts"] for t in templates) == 4  # every prompt has one template
        assert r["aapo/ref_samples"] % 4 == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    check_checkpoint(out / "checkpoint-4")


@pytest.mark.slow
def test_end_to_end_grpo_and_no_silent_overwrite(tmp_path):
    out = tmp_path / "grpo"
    flags = [*SMALL, "--estimator", "grpo", "--max-steps", "3", "--eval-every", "3", "--save-every", "3"]
    flags += ["--out", str(out)]
    run_train(*flags)
    rows = metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "eval/accuracy" in rows[0] and "eval/accuracy" in rows[3]
    for r in rows[1:]:
        assert all(key in r for key in REQUIRED), sorted(set(REQUIRED) - set(r))
        assert not any(k.startswith(("template/", "aapo/")) for k in r)
    check_checkpoint(out / "checkpoint-3")
    assert json.loads((out / "config.json").read_text())["estimator"] == "grpo"
    proc = run_train(*flags, check=False)  # same --out, neither --resume nor --overwrite
    assert proc.returncode != 0
    assert "already holds a run: pass --resume to continue it or --overwrite to start over" in proc.stderr
    assert len(metrics(out)) == 4  # untouched


def comparable(rows):
    """Metrics rows keyed by step, without wall-clock keys."""
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows}


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(aapo_run, tmp_path):
    """SIGKILL the same run once checkpoint-2 exists, resume it: steps 1..4 must match the uninterrupted run exactly
    (CPU, same thread count; the AAPO reference cache, RNG, optimizer and data order all come back)."""
    reference, flags = aapo_run
    out = tmp_path / "killed"
    with open(tmp_path / "log.txt", "w") as log:
        cmd = [sys.executable, "train.py", *flags, "--out", str(out)]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
        saved, deadline = out / "checkpoint-2" / "trainer_state.pt", time.time() + 3600
        while not saved.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    assert not (out / "checkpoint-4").exists()  # killed mid-run
    assert [r["step"] for r in metrics(out)][:3] == [0, 1, 2]
    resumed = run_train(*flags, "--out", str(out), "--resume").stdout
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in resumed  # not a silent restart from scratch
    assert [int(m) for m in re.findall(r"^step +(\d+)/4", resumed, re.M)] == [3, 4]
    got, want = comparable(metrics(out)), comparable(metrics(reference))
    assert list(got) == [0, 1, 2, 3, 4]
    for step in want:
        assert got[step] == want[step], f"step {step}: " + ", ".join(
            f"{k}: {got[step].get(k)} != {v}" for k, v in want[step].items() if got[step].get(k) != v
        )


def test_truncate_jsonl_keeps_rows_up_to_the_step_and_drops_a_cut_line(tmp_path):
    from mathrl.outputs import truncate_jsonl  # moved from train.py with the rest of the run folder I/O

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "a": 1}\n{"step": 1}\n{"step": 2}\n{"step": 3, "a"')  # the kill cut the last line
    truncate_jsonl(path, 1)
    assert path.read_text() == '{"step": 0, "a": 1}\n{"step": 1}\n'
    truncate_jsonl(path, -1)  # --resume before the first checkpoint: every row is redone
    assert path.read_text() == ""


def test_lr_schedule_hand_computed():
    from train import lr_at

    assert [lr_at(2.0, "constant", s, 4) for s in range(4)] == [2.0] * 4
    # cosine over 4 steps: 2 * (1 + cos(pi * s / 4)) / 2 = 2, 1 + sqrt(2)/2, 1, 1 - sqrt(2)/2
    assert [lr_at(2.0, "cosine", s, 4) for s in range(4)] == pytest.approx([2.0, 1 + 2**-0.5, 1.0, 1 - 2**-0.5])
    with pytest.raises(ValueError, match="--lr-schedule 'linear'"):
        parse_config(["--preset", "tiny", "--lr-schedule", "linear"])
