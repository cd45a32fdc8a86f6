"""Tests of engine.TransformersEngine on a tiny random Qwen2 model: python -m pytest -q tests/test_engine.py

Log-probs are checked against an independent recomputation (one unpadded forward pass per sequence, fp64 softmax),
which also checks that left padding does not shift positions.
"""

import math

import pytest
import torch

from mathrl.engine import Completion, TransformersEngine, process_logits
from mathrl.tiny import SETTINGS, build_model, build_tokenizer


@pytest.fixture(scope="module")
def world():
    tokenizer = build_tokenizer()
    settings = dict(SETTINGS, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = build_model(tokenizer, settings, seed=0).eval()
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in ["12+3=?", "7-5", "<|im_start|>user\n99+99=?"]]
    return model, tokenizer, prompts


def reference_logprobs(model, prompt, completion, temperature, vocab_limit):
    """fp64 log-probs of the completion's tokens, one forward pass on prompt + completion without padding."""
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()  # (T, V)
    logits[:, vocab_limit:] = float("-inf")
    if temperature > 0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, -1)
    return logp.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(-1)  # (T,)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_match_unpadded_recomputation(world, temperature):
    model, tokenizer, prompts = world
    limit = len(tokenizer)
    engine = TransformersEngine(model, tokenizer, batch_size=4, vocab_limit=limit)
    out = engine.generate(prompts, n=3, max_new_tokens=12, temperature=temperature, seed=1)
    assert len(out) == len(prompts) and all(len(group) == 3 for group in out)
    for prompt, group in zip(prompts, out):
        for c in group:
            assert isinstance(c, Completion) and len(c.logprobs) == len(c.token_ids) > 0
            ref = reference_logprobs(model, prompt, c, temperature, limit)
            diff = (torch.tensor(c.logprobs, dtype=torch.float64) - ref).abs().max().item()
            assert diff < 1e-4, f"max |logp - ref| = {diff}"
            if temperature == 0:  # greedy: every token is the argmax of the (masked) distribution
                assert all(lp > math.log(1 / limit) for lp in c.logprobs)


def test_seeded_and_greedy_is_deterministic(world):
    model, tokenizer, prompts = world
    engine = TransformersEngine(model, tokenizer, batch_size=2)
    ids = lambda out: [[c.token_ids for c in g] for g in out]  # noqa: E731
    a = engine.generate(prompts, n=4, max_new_tokens=10, seed=7)
    b = engine.generate(prompts, n=4, max_new_tokens=10, seed=7)
    c = engine.generate(prompts, n=4, max_new_tokens=10, seed=8)
    assert ids(a) == ids(b) and ids(a) != ids(c)
    greedy = engine.generate(prompts, n=2, max_new_tokens=10, temperature=0.0, seed=3)
    assert all(g[0].token_ids == g[1].token_ids for g in greedy)
    state = torch.get_rng_state()
    engine.generate(prompts, n=1, max_new_tokens=5, seed=9)
    assert torch.equal(state, torch.get_rng_state()), "generate() must not touch the global RNG"


def test_padded_vocab_ids_are_never_sampled(world):
    model, tokenizer, prompts = world
    limit = len(tokenizer)
    assert model.config.vocab_size > limit  # the tiny head is padded, like Qwen2.5's
    sampled = lambda engine: {t for g in engine.generate(prompts, 16, 16, seed=0) for c in g for t in c.token_ids}  # noqa: E731
    assert max(sampled(TransformersEngine(model, tokenizer, batch_size=64))) >= limit  # the test can fail
    assert max(sampled(TransformersEngine(model, tokenizer, batch_size=64, vocab_limit=limit))) < limit


def test_finished_flag_and_stop_tokens(world):
    model, tokenizer, prompts = world
    stop = list(range(0, model.config.vocab_size, 3))  # a third of the vocab stops: most samples end early
    engine = TransformersEngine(model, tokenizer, batch_size=8, stop_token_ids=stop)
    out = [c for g in engine.generate(prompts, n=8, max_new_tokens=6, seed=0) for c in g]
    assert any(c.finished for c in out) and any(not c.finished for c in out)
    for c in out:
        body = c.token_ids[:-1] if c.finished else c.token_ids
        assert not any(t in stop for t in body)
        if c.finished:
            assert c.token_ids[-1] in stop and len(c.token_ids) <= 6
        else:
            assert len(c.token_ids) == 6
        assert c.text == tokenizer.decode(body, skip_special_tokens=True)


def test_top_p_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logp = process_logits(probs.log(), temperature=1.0, top_p=0.7)
    # mass of strictly better tokens: 0, 0.5, 0.8, 0.95 -> keep the first two, renormalised to 0.625 / 0.375
    assert torch.allclose(logp.exp(), torch.tensor([[0.625, 0.375, 0.0, 0.0]]), atol=1e-6)
    logp = process_logits(probs.log(), temperature=0.5, top_p=1.0, vocab_limit=3)
    expected = torch.tensor([0.25, 0.09, 0.0225, 0.0])  # p^(1/T) over the first 3 ids, renormalised
    assert torch.allclose(logp.exp()[0], expected / expected.sum(), atol=1e-6)


def test_load_weights_and_bad_arguments(world):
    model, tokenizer, prompts = world
    other = build_model(tokenizer, dict(SETTINGS, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64), seed=1)
    engine = TransformersEngine(other, tokenizer)
    engine.load_weights(model.state_dict())
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(prompts, n=1, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(prompts, n=1, max_new_tokens=3, top_p=0.0)
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[]], n=1, max_new_tokens=3)
