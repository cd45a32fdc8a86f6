"""train.py's GPU path on CPU: python -m pytest -q tests/test_train_vllm.py

The loop runs for real (`train.main` on the tiny preset with --engine vllm) against the stand-in `vllm` module of
tests/fake_vllm.py, which records every engine call and the weights each generate() used. A recording AdamW adds the
trainer's optimizer steps to those logs, so the tests see the whole order: rollout, sleep, optimizer steps, wake,
weight push, prefix-cache reset, next rollout. Also: token-budget micro-batches, the TIS weight, the 1.5b preset,
and eval.py's vLLM engine.
"""

import json
import math
import sys

import pytest
import torch

import eval as evaluation
from mathrl import tiny
import train
from mathrl.engine_vllm import request_seed
from fake_vllm import install

OPT = "optimizer_step"  # what RecordingAdamW writes into every fake engine's log
WAKE_PUSH = [("wake_up", ("weights",)), "push", ("wake_up", ("kv_cache",)), "reset_prefix_cache"]
REFERENCE = ["push", "reset_prefix_cache", "generate", "push", "reset_prefix_cache"]  # AAPO's, on the policy's engine


@pytest.fixture(scope="module")
def tiny_world():
    """The tiny preset's cached world (model dir, data) and its model as loaded from disk (the initial weights)."""
    from transformers import AutoModelForCausalLM

    world = tiny.prepare(log=lambda *a: None)
    return world, AutoModelForCausalLM.from_pretrained(world["model"], dtype=torch.float32)


def run_train(monkeypatch, tmp_path, tiny_world, extra: list[str]):
    """train.main with the fake vllm; returns (fake module, optimizer snapshots, metrics rows)."""
    world, model = tiny_world
    fake = install(monkeypatch, model)
    snapshots = []  # trainer weights right after each optimizer step

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, closure=None):
            out = super().step(closure)
            params = self.param_groups[0]["params"]
            snapshots.append({n: p.detach().clone() for n, p in zip(fake.LLM.param_names, params, strict=True)})
            for llm in fake.LLM.instances:
                llm.log.append(OPT)
            return out

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    real_score = train.score

    def varied_score(cfg, completions, golds, names):  # the fake's random tokens all score alike: spread the rewards
        res = real_score(cfg, completions, golds, names)  # by sample index, so that the updates move the weights
        res["reward"] = res["reward"] + 0.5 * torch.arange(len(completions[0]), dtype=torch.float64)  # (B, G)
        return res

    monkeypatch.setattr(train, "score", varied_score)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast and does not spin against other processes
    out = tmp_path / "run"
    try:
        train.main(["--preset", "tiny", "--engine", "vllm", "--out", str(out), "--max-steps", "2",
                    "--prompts-per-step", "4", "--group-size", "2", "--mini-batch-prompts", "2", "--eval-every", "2",
                    "--eval-limit", "4", "--max-new-tokens", "12", "--temperature", "0.9", "--samples-every", "0",
                    "--save-every", "0", *extra])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return fake, snapshots, rows


def assert_weights(weights: dict, expected: dict):
    assert weights is not None and set(weights) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), f"{name}: the engine generated with other weights than the trainer's"


@pytest.mark.parametrize("estimator", ["grpo", "aapo"])
def test_vllm_loop_pushes_the_trainers_weights_after_every_training_phase(monkeypatch, tmp_path, tiny_world, estimator):
    world, model = tiny_world
    fake, snapshots, rows = run_train(
        monkeypatch, tmp_path, tiny_world, ["--estimator", estimator, "--tis-cap", "2", "--micro-batch-tokens", "64"]
    )
    (policy,) = fake.LLM.instances  # one engine: AAPO's reference samples on it (engine_vllm.ReferencePolicy)
    assert policy.model_path == world["model"] and policy.multiprocessing_env == "0"
    assert {k: policy.kwargs[k] for k in ("dtype", "gpu_memory_utilization", "max_model_len", "enable_sleep_mode",
                                          "load_format")} == {
        "dtype": "bfloat16", "gpu_memory_utilization": 0.45, "max_model_len": 256, "enable_sleep_mode": True,
        "load_format": "dummy",
    }  # max_model_len: max(200 + 12, eval context 256)  fmt: skip

    # order: initial push, eval, then per step rollout (AAPO: push the reference, sample, push the policy back) ->
    # sleep (level 2) -> 2 optimizer steps -> wake + push -> next generate
    ref = REFERENCE if estimator == "aapo" else []
    cycle = [("sleep", 2), OPT, OPT, *WAKE_PUSH]
    assert policy.log == ["push", "reset_prefix_cache", "generate", "generate", *ref, *cycle, "generate", *ref, *cycle,
                          "generate"]  # fmt: skip
    assert len(snapshots) == 4

    # weights: each generate ran on exactly the trainer's weights of that moment, and those changed every phase
    initial = {n: p.detach() for n, p in model.named_parameters()}
    rollout_calls = (1, 3) if estimator == "aapo" else (1, 2)  # generate() calls that were the policy's rollouts
    weights = [w for _, _, w in policy.generations]
    eval0, roll0, roll1, eval2 = weights[0], weights[rollout_calls[0]], weights[rollout_calls[1]], weights[-1]
    assert_weights(eval0, initial)
    assert_weights(roll0, initial)
    assert_weights(roll1, snapshots[1])  # after the 2nd optimizer step, the last of rollout batch 0
    assert_weights(eval2, snapshots[3])
    assert any(not torch.equal(snapshots[1][n], initial[n]) for n in initial), "the update changed no weight"
    assert any(not torch.equal(snapshots[3][n], snapshots[1][n]) for n in initial)

    # sampling parameters pass through: rollouts at --temperature, top_p 1, G samples, seeded per step and prompt
    rollouts = [policy.generations[i] for i in rollout_calls]
    eos = [model.config.eos_token_id]
    for step, (prompts, params, _) in enumerate(rollouts):
        assert len(prompts) == len(params) == 4
        for i, sp in enumerate(params):
            assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.logprobs) == (2, 0.9, 1.0, 0, 12, 0)
            assert sp.stop_token_ids == eos and sp.seed == request_seed(train.rollout_seed(42, step, 0), i, 2)
    for _, params, _ in (policy.generations[0], policy.generations[-1]):  # eval: greedy, one sample, eval budget
        assert all((sp.n, sp.temperature, sp.max_tokens) == (1, 0.0, 40) for sp in params) and len(params) == 4

    if estimator == "aapo":  # the reference: the initial weights in the engine's dtype, its own seeds
        initial_bf16 = {n: t.to(torch.bfloat16) for n, t in initial.items()}
        for step, (_, params, w) in enumerate([policy.generations[2], policy.generations[4]]):
            assert_weights(w, initial_bf16)
            assert [sp.seed for sp in params] == [request_seed(train.rollout_seed(42, step, 1), i, 2) for i in range(4)]
            assert all((sp.n, sp.temperature, sp.top_p, sp.max_tokens) == (2, 0.9, 1.0, 12) for sp in params)

    assert [r["step"] for r in rows] == [0, 1, 2]
    for r in rows[1:]:
        assert r["train/updates"] == 2 and 0 <= r["train/tis_clip_frac"] <= 1 and "train/logp_diff" in r


def test_vllm_config_errors_and_the_paper_preset():
    assert train.parse_config(["--engine", "vllm", "--estimator", "aapo"]).vllm_sleep_level == 2  # one engine: fine
    with pytest.raises(ValueError, match="--vllm-sleep-level 3: expected one of 1, 2"):
        train.parse_config(["--vllm-sleep-level", "3"])
    with pytest.raises(ValueError, match="--max-model-len 4000: .* need 4096"):
        train.parse_config(["--engine", "vllm", "--max-model-len", "4000"])  # 1024 + 3072 does not fit
    with pytest.raises(ValueError, match="--tis-cap"):
        train.parse_config(["--tis-cap", "-1"])
    cfg = train.parse_config(["--aug", "--estimator", "aapo"])  # the mission command: the paper run on a GPU
    assert (cfg.engine, cfg.device, cfg.bf16, cfg.grad_ckpt, cfg.logp_from_hidden) == ("vllm", "cuda", True, True, True)
    assert cfg.micro_batch_tokens == 32768 and cfg.model == "Qwen/Qwen2.5-Math-1.5B" and train.model_len(cfg) == 4096
    assert cfg.preset == "paper" and cfg.gpu_memory_utilization == 0.7 and cfg.vllm_sleep_level == 2
    assert train.parse_config(["--preset", "1.5b"]) == train.replace(train.parse_config([]), preset="1.5b")  # alias
    assert train.parse_config(["--micro-batch-tokens", "0"]).micro_batch_tokens == 0  # flags win
    with pytest.raises(ValueError, match="expected tiny, tiny-chain or paper"):
        train.parse_config(["--preset", "7b"])


def test_paper_run_without_cuda_stops_at_once_with_the_tiny_command(monkeypatch):
    """On a machine without CUDA the mission command says so before any download, and how to run the tiny preset."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "load_model_and_tokenizer", lambda *a: pytest.fail("got past the device check"))
    tiny_command = r"needs a CUDA GPU.*python train.py --preset tiny --aug --estimator aapo"
    with pytest.raises(train.CannotRun, match=tiny_command):
        train.main(["--aug", "--estimator", "aapo", "--out", "unused"])
    with pytest.raises(train.BadValue, match="--device cuda: no CUDA device"):
        train.pick_device(train.parse_config(["--preset", "tiny", "--device", "cuda"]))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)  # vLLM not installed
    monkeypatch.setattr(train.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(train.CannotRun, match="--engine vllm needs vLLM"):
        train.pick_device(train.parse_config(["--preset", "tiny", "--engine", "vllm"]))


# ----------------------------------------------------------------------------------------------------------------------
# Token-budget micro-batches


def test_token_budget_batches_by_hand():
    lengths = [(3, 5), (3, 1), (2, 7), (4, 2), (10, 30), (1, 0)]
    # sorted by (response, prompt): 5 (1,0->1), 1 (3,1), 3 (4,2), 0 (3,5), 2 (2,7), 4 (10,30); budget 24:
    # [5] 1x(1+1)=2; +1 -> 2x(3+1)=8; +3 -> 3x(4+2)=18; +0 -> 4x(4+5)=36 > 24: close.
    # [0] 1x8; +2 -> 2x(3+7)=20; +4 -> 3x(10+30) > 24: close. [4] alone, over the budget (cannot be split).
    assert train.token_budget_batches(lengths, 24) == [[5, 1, 3], [0, 2], [4]]
    assert train.token_budget_batches(lengths, 10**6) == [[5, 1, 3, 0, 2, 4]]
    assert train.token_budget_batches(lengths, 1) == [[5], [1], [3], [0], [2], [4]]
    assert train.token_budget_batches([], 8) == []


def test_token_budget_width_is_what_trim_leaves():
    lengths = [(3, 5), (3, 1), (2, 7), (4, 2), (6, 3), (1, 1)]
    prompts = [[7] * p for p, _ in lengths]
    responses = [[9] * r for _, r in lengths]
    input_ids, attn, resp_mask = train.pad_batch(prompts, responses, pad_id=0)
    for batch in train.token_budget_batches(lengths, 20):
        ids, _, _ = train.trim(torch.tensor(batch), input_ids, attn, resp_mask)
        width = max(lengths[i][0] for i in batch) + max(lengths[i][1] for i in batch)
        assert ids.shape == (len(batch), width) and ids.numel() <= 20
    batches = train.micro_batches(torch.arange(2, 6), lengths, size=3, budget=20)
    assert sorted(i for b in batches for i in b.tolist()) == [2, 3, 4, 5]
    assert [b.tolist() for b in train.micro_batches(torch.arange(2, 6), lengths, size=3, budget=0)] == [[2, 3, 4], [5]]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_token_budget_micro_batches_give_the_mini_batch_gradient(agg):
    g = torch.Generator().manual_seed(0)
    N, T = 6, 5
    resp_lens = [5, 1, 3, 4, 2, 5]
    mask = (torch.arange(T)[None, :] < torch.tensor(resp_lens)[:, None]).float()  # (N, T)
    logp = (-torch.rand(N, T, generator=g) * 3).requires_grad_()
    old_logp, adv = logp.detach() + 0.1 * torch.randn(N, T, generator=g), torch.randn(N, generator=g)
    n_tokens, n_seqs = mask.sum().item(), N
    full, _ = train.policy_loss(logp, old_logp, adv, mask, "ppo", agg=agg, n_tokens=n_tokens, n_seqs=n_seqs, max_len=T)
    (grad_full,) = torch.autograd.grad(full, logp)
    total = 0.0
    batches = train.token_budget_batches([(2, r) for r in resp_lens], 14)
    assert len(batches) > 1 and sorted(i for b in batches for i in b) == list(range(N))
    for b in batches:
        rows = torch.tensor(b)
        part, _ = train.policy_loss(logp[rows], old_logp[rows], adv[rows], mask[rows], "ppo", agg=agg,
                                    n_tokens=n_tokens, n_seqs=n_seqs, max_len=T)  # fmt: skip
        total = total + part
    (grad_micro,) = torch.autograd.grad(total, logp)
    assert torch.allclose(total, full, atol=1e-6) and torch.allclose(grad_micro, grad_full, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# TIS (Yao et al. 2025)


def test_tis_weight_and_loss_by_hand():
    old_logp, engine_logp = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -0.5]])
    w, truncated = train.tis_weight(old_logp, engine_logp, cap=1.5)
    # exp(-1 + 1.5) = 1.6487 -> truncated to 1.5; exp(-2 + 0.5) = 0.22313 kept
    assert torch.allclose(w, torch.tensor([[1.5, math.exp(-1.5)]])) and truncated.tolist() == [[True, False]]
    mask = torch.ones(1, 2)

    # reinforce, A = 2: loss = -(2 * -1 * 1.5 + 2 * -2 * 0.22313) / 2 = 1.946260; d loss / d logp = -A w / 2
    logp = old_logp.clone().requires_grad_()
    loss, _ = train.policy_loss(logp, old_logp, torch.tensor([2.0]), mask, "reinforce", is_weight=w)
    loss.backward()
    assert loss.item() == pytest.approx((3 + 4 * math.exp(-1.5)) / 2, abs=1e-6)
    assert torch.allclose(logp.grad, torch.tensor([[-1.5, -math.exp(-1.5)]]))

    # ppo at ratio 1, A = -1 (dual-clip inactive): obj = -w, loss = (1.5 + 0.22313) / 2
    loss, _ = train.policy_loss(old_logp.clone(), old_logp, torch.tensor([-1.0]), mask, "ppo", is_weight=w)
    assert loss.item() == pytest.approx((1.5 + math.exp(-1.5)) / 2, abs=1e-6)

    # no weight == weight 1 (the default keeps the old behaviour); the entropy bonus is not reweighted
    args = (old_logp.clone(), old_logp, torch.tensor([-1.0]), mask, "ppo")
    assert train.policy_loss(*args)[0].item() == train.policy_loss(*args, is_weight=torch.ones(1, 2))[0].item() == 1.0
    entropy = torch.tensor([[0.5, 0.3]])
    with_bonus = train.policy_loss(*args, entropy=entropy, entropy_coef=0.1, is_weight=w)[0]
    without = train.policy_loss(*args, is_weight=w)[0]
    assert (with_bonus - without).item() == pytest.approx(-0.1 * 0.4, abs=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# eval.py's vLLM engine


def test_eval_builds_engine_vllm(monkeypatch, tiny_world):
    world, model = tiny_world
    fake = install(monkeypatch, model)
    cfg = evaluation.EvalConfig(model=world["model"], engine="vllm", context=256, gpu_memory_utilization=0.5)
    evaluation.make_vllm_engine(cfg)
    (llm,) = fake.LLM.instances
    assert llm.model_path == world["model"] and llm.kwargs["tokenizer"] == world["model"]
    assert {k: llm.kwargs[k] for k in ("dtype", "max_model_len", "gpu_memory_utilization", "enable_sleep_mode")} == {
        "dtype": "bfloat16", "max_model_len": 256, "gpu_memory_utilization": 0.5, "enable_sleep_mode": False
    }  # fmt: skip
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(RuntimeError, match=r"--engine vllm: .*pip install -e '\.\[gpu\]'"):
        evaluation.make_vllm_engine(cfg)
