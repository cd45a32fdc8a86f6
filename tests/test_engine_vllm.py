"""Contract tests of engine_vllm.VLLMEngine: python -m pytest -q tests/test_engine_vllm.py

On CPU (CI) the stand-in `vllm` module of tests/fake_vllm.py is put into sys.modules. It has exactly the API surface
the engine calls (LLM with generate / apply_model / sleep / wake_up / reset_prefix_cache, SamplingParams,
TokensPrompt), accepts only argument names that exist in every supported vLLM release (0.26 .. 0.34), records every
call in order and enforces what real vLLM would do or break on: no generation while asleep, with random (dummy) or
dropped (level 2) weights, or with a prefix cache filled under older weights; no weight writes while the weight
memory is asleep; n = 1 when greedy; one sleep-mode engine per process on a GPU (each point cited in fake_vllm.py).

When `import vllm` works and a GPU is present, the `real_vllm` tests run the same scenarios on the real engine with a
tiny model and check what can be observed: log-probs equal an independent recomputation under the weights the trainer
holds at that moment (so every sync arrived), padded ids never appear, greedy decoding repeats.
"""

import copy
import gc
from functools import partial
import importlib.util
import math
import os
import sys
import types
import weakref

import pytest
import torch

from mathrl import engine_vllm
from mathrl.engine import Completion
from mathrl import CannotRun
from mathrl.engine_vllm import ReferencePolicy, VLLMEngine, frozen_weights, request_seed, version_tuple
from fake_vllm import install
from mathrl.tiny import SETTINGS, build_model, build_tokenizer

SMALL = dict(SETTINGS, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


# ----------------------------------------------------------------------------------------------------------------------
# The stand-in vllm module (tests/fake_vllm.py) and a tiny model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny tied-embedding Qwen2 (padded LM head) saved as a model directory, its tokenizer, and prompts."""
    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, SMALL, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in ["12+3=?", "7-5", "<|im_start|>user\n99+99=?"]]
    return types.SimpleNamespace(path=str(path), tokenizer=tokenizer, model=model, prompts=prompts)


@pytest.fixture
def fake_vllm(monkeypatch, world):
    """The stand-in module (tests/fake_vllm.py) in sys.modules["vllm"] (restored afterwards); returns it."""
    return install(monkeypatch, world.model)


def trainer(world):
    """A fresh copy of the tiny policy and an optimizer whose steps change every weight."""
    model = copy.deepcopy(world.model).train()
    return model, torch.optim.SGD(model.parameters(), lr=0.5)


def optimizer_step(model, optimizer, prompts):
    ids = torch.tensor([prompts[0]])
    loss = model(input_ids=ids).logits.pow(2).mean() + sum(p.pow(2).sum() for p in model.parameters()) * 1e-3
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def assert_engine_holds(llm, model):
    """The weights vLLM generated with are exactly the trainer's current ones."""
    _, _, weights = llm.generations[-1]
    current = dict(model.named_parameters())
    assert weights is not None and set(weights) == set(current)
    for name, p in current.items():
        assert torch.equal(weights[name], p.detach()), f"{name}: vLLM generated with stale weights"


def cycles(log: list) -> list[list]:
    """The call log split at each generate: what happened between two rollouts."""
    out, cur = [], []
    for entry in log:
        if entry == "generate":
            out.append(cur)
            cur = []
        else:
            cur.append(entry)
    return out + [cur]


# ----------------------------------------------------------------------------------------------------------------------
# Construction and sampling parameters


def test_constructor_settings(fake_vllm, world):
    engine = VLLMEngine(world.path, gpu_memory_utilization=0.3, max_model_len=512, seed=7)
    llm = engine.llm
    assert llm.model_path == world.path
    assert llm.kwargs == dict(
        tokenizer=world.path, dtype="bfloat16", seed=7, gpu_memory_utilization=0.3, max_model_len=512,
        enable_prefix_caching=True, enable_sleep_mode=True, logprobs_mode="processed_logprobs",
        generation_config="vllm", load_format="auto", enforce_eager=False,
    )  # fmt: skip
    assert llm.multiprocessing_env == "0", "the engine core must run in this process for the weight sync"
    assert engine.vocab_limit == len(world.tokenizer) < world.model.config.vocab_size
    assert engine.stop_token_ids == [world.tokenizer.eos_token_id]
    assert llm.log == [], "construction alone must not push, sleep or reset anything"


def test_under_torchrun_the_engine_joins_torchruns_process_group(fake_vllm, world, tmp_path):
    import torch.distributed as dist

    with pytest.raises(RuntimeError, match="joins torchrun's process group, and there is none"):
        VLLMEngine(world.path, external_launcher=True)
    assert fake_vllm.LLM.instances == [], "refused before vLLM was asked (it would try an env:// group of its own)"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)  # torchrun's
    try:
        engine = VLLMEngine(world.path, external_launcher=True)
    finally:
        dist.destroy_process_group()
    assert engine.llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert engine.llm.multiprocessing_env == "0", "vLLM's external launcher asserts the in-process engine core"
    one_process = VLLMEngine(world.path, enable_sleep_mode=False)  # (a second sleep-mode engine would be refused)
    assert "distributed_executor_backend" not in one_process.llm.kwargs  # one process: as before


def test_sampling_parameters_pass_through(fake_vllm, world):
    engine = VLLMEngine(world.path)
    engine.generate(world.prompts, n=4, max_new_tokens=7, temperature=0.7, top_p=0.9, seed=11)
    engine.generate(world.prompts, n=2, max_new_tokens=5)  # the defaults
    (prompts, params, _), (_, default_params, _) = engine.llm.generations
    assert prompts == [{"prompt_token_ids": p} for p in world.prompts]
    V, limit = world.model.config.vocab_size, len(world.tokenizer)
    for sp in params:
        assert {k: v for k, v in sp.kwargs.items() if k != "seed"} == dict(
            n=4, temperature=0.7, top_p=0.9, top_k=0, max_tokens=7, logprobs=0,
            stop_token_ids=[world.tokenizer.eos_token_id], logit_bias={i: -math.inf for i in range(limit, V)},
            detokenize=False,
        )  # fmt: skip
    sample_seeds = [sp.seed + j for sp in params for j in range(sp.n)]  # vLLM seeds sample j with seed + j
    assert len(set(sample_seeds)) == len(sample_seeds), "two (prompt, sample) pairs would share a random stream"
    assert [sp.seed for sp in params] == [request_seed(11, i, 4) for i in range(len(world.prompts))]
    assert all(sp.top_p == 1.0 and sp.temperature == 1.0 and sp.top_k == 0 and sp.seed is None for sp in default_params)


def test_greedy_asks_for_one_sample_and_repeats_it(fake_vllm, world):
    engine = VLLMEngine(world.path)
    out = engine.generate(world.prompts, n=3, max_new_tokens=6, temperature=0.0, seed=5)
    _, params, _ = engine.llm.generations[0]
    assert all(sp.n == 1 and sp.temperature == 0.0 and sp.seed is None for sp in params)
    for group in out:
        assert len(group) == 3 and len({id(c) for c in group}) == 3
        assert all(c == group[0] for c in group)


@pytest.mark.parametrize("stop", ["<|im_end|>", "="])  # EOS (special), and a plain character that text must drop too
def test_outputs_map_to_completions(fake_vllm, world, stop):
    eos = world.tokenizer.convert_tokens_to_ids(stop)
    engine = VLLMEngine(world.path, stop_token_ids=None if stop == "<|im_end|>" else [eos])
    assert engine.stop_token_ids == [eos]
    out = engine.generate(world.prompts, n=4, max_new_tokens=6, seed=3)
    raw = [
        engine.llm._request_output(i, p, sp)
        for i, (p, sp) in enumerate(zip(world.prompts, engine.llm.generations[0][1]))
    ]
    assert len(out) == len(world.prompts) and all(len(g) == 4 for g in out)
    for group, request in zip(out, raw):
        for c, o in zip(group, request.outputs):
            assert isinstance(c, Completion)
            assert c.token_ids == o.token_ids
            assert c.logprobs == [o.logprobs[t][tok].logprob for t, tok in enumerate(o.token_ids)]  # not the decoy
            assert c.finished == (o.finish_reason == "stop") == (c.token_ids[-1] == eos)
            body = c.token_ids[:-1] if c.finished else c.token_ids
            assert c.text == world.tokenizer.decode(body, skip_special_tokens=True)
            assert max(c.token_ids) < len(world.tokenizer)
    flat = [c for g in out for c in g]
    assert any(c.finished for c in flat) and any(not c.finished and len(c.token_ids) == 6 for c in flat)


def test_padded_vocab_id_from_vllm_is_an_error(fake_vllm, world):
    engine = VLLMEngine(world.path)
    engine.llm.ignore_logit_bias = True
    with pytest.raises(RuntimeError, match="padded vocabulary"):
        engine.generate(world.prompts, n=2, max_new_tokens=4, seed=0)


# ----------------------------------------------------------------------------------------------------------------------
# Weight sync, prefix cache, sleep / wake


@pytest.mark.parametrize("order", ["load-after-each-step", "wake-then-load"])
def test_training_loop_syncs_weights_before_every_rollout(fake_vllm, world, order):
    model, optimizer = trainer(world)
    engine = VLLMEngine(world.path, load_format="dummy")
    engine.load_weights(model)
    for step in range(3):
        engine.generate(world.prompts, n=2, max_new_tokens=4, seed=step)
        assert_engine_holds(engine.llm, model)
        engine.sleep()
        for _ in range(2):  # two optimizer steps per rollout batch
            optimizer_step(model, optimizer, world.prompts)
            if order == "load-after-each-step":
                engine.load_weights(model)  # recorded while asleep, pushed by wake_up
        engine.wake_up()
        if order == "wake-then-load":
            engine.load_weights(model)  # awake: pushed at once
    engine.generate(world.prompts, n=2, max_new_tokens=4, seed=9)
    assert_engine_holds(engine.llm, model)
    between = cycles(engine.llm.log)
    assert between[0] == ["push", "reset_prefix_cache"]
    wake = [("sleep", 1), ("wake_up", ("weights",))]
    expected = {
        "load-after-each-step": wake + ["push", ("wake_up", ("kv_cache",)), "reset_prefix_cache"],
        "wake-then-load": wake + [("wake_up", ("kv_cache",)), "reset_prefix_cache", "push", "reset_prefix_cache"],
    }[order]
    assert between[1:4] == [expected] * 3


def test_without_sleep_mode_every_load_pushes_at_once(fake_vllm, world):
    model, optimizer = trainer(world)
    engine = VLLMEngine(world.path, enable_sleep_mode=False)
    engine.generate(world.prompts, n=2, max_new_tokens=4, seed=0)
    engine.sleep()  # no-ops: the engine keeps its memory
    for _ in range(2):
        optimizer_step(model, optimizer, world.prompts)
        engine.load_weights(model)
    engine.wake_up()
    engine.generate(world.prompts, n=2, max_new_tokens=4, seed=1)
    assert_engine_holds(engine.llm, model)
    assert cycles(engine.llm.log)[1] == ["push", "reset_prefix_cache"] * 2
    assert engine.llm.kwargs["enable_sleep_mode"] is False


def test_sleep_level_2_resyncs_the_latest_weights_after_waking(fake_vllm, world):
    model, optimizer = trainer(world)
    engine = VLLMEngine(world.path, sleep_level=2)
    engine.load_weights(model)
    for step in range(2):
        engine.sleep()  # drops vLLM's weights
        optimizer_step(model, optimizer, world.prompts)  # the trainer does NOT call load_weights here
        engine.wake_up()
        engine.generate(world.prompts, n=2, max_new_tokens=4, seed=step)
        assert_engine_holds(engine.llm, model)  # re-pushed from the kept reference, never from disk
    cycle = [("sleep", 2), ("wake_up", ("weights",)), "push", ("wake_up", ("kv_cache",)), "reset_prefix_cache"]
    assert cycles(engine.llm.log) == [["push", "reset_prefix_cache"] + cycle, cycle, []]


def test_sleep_level_2_without_weights_is_an_error(fake_vllm, world):
    engine = VLLMEngine(world.path, sleep_level=2)
    with pytest.raises(RuntimeError, match="load_weights"):
        engine.sleep()
    assert engine.llm.log == [], "nothing may be dropped before the check"


@pytest.mark.parametrize("level", [1, 2])
def test_level_1_engine_lets_go_of_pushed_weights_level_2_keeps_them(fake_vllm, world, level):
    engine = VLLMEngine(world.path, sleep_level=level)
    frozen = copy.deepcopy(world.model)  # e.g. AAPO's frozen reference, pushed once
    ref = weakref.ref(frozen)
    engine.load_weights(frozen)
    del frozen
    gc.collect()
    assert (ref() is not None) == (level == 2)


@pytest.mark.parametrize("level", [1, 2])
def test_reference_policy_samples_the_initial_weights_on_the_policy_engine(fake_vllm, world, level):
    """AAPO's reference on the policy's own engine: each reference rollout runs on exactly the frozen initial weights
    after a prefix-cache reset, each policy rollout and the state after it on the trainer's current ones."""
    model, optimizer = trainer(world)
    initial = copy.deepcopy(model)
    engine = VLLMEngine(world.path, load_format="dummy", sleep_level=level)
    engine.load_weights(model)
    reference = ReferencePolicy(engine, frozen_weights(model, torch.float32), model)
    for step in range(2):
        engine.generate(world.prompts, n=2, max_new_tokens=4, seed=step)
        assert_engine_holds(engine.llm, model)
        reference.generate(world.prompts, n=2, max_new_tokens=4, seed=100 + step)
        assert_engine_holds(engine.llm, initial)  # the frozen copy, untouched by the optimizer steps
        engine.sleep()
        optimizer_step(model, optimizer, world.prompts)
        engine.load_weights(model)
        engine.wake_up()
        with pytest.raises(AssertionError, match="stale weights"):
            assert_engine_holds(engine.llm, model)  # the last generate was the reference's: the weights differ
    engine.generate(world.prompts, n=2, max_new_tokens=4, seed=9)
    assert_engine_holds(engine.llm, model)
    assert len(fake_vllm.LLM.instances) == 1, "no second engine"
    wake = [("sleep", level), ("wake_up", ("weights",)), "push", ("wake_up", ("kv_cache",)), "reset_prefix_cache"]
    reference_push = ["push", "reset_prefix_cache"]  # before the reference's rollout
    policy_back = ["push", "reset_prefix_cache"]  # after it, before the engine is used again
    assert cycles(engine.llm.log) == [["push", "reset_prefix_cache"], reference_push, policy_back + wake,
                                      reference_push, policy_back + wake, []]  # fmt: skip
    engine.sleep()
    with pytest.raises(RuntimeError, match="wake_up"):
        reference.generate(world.prompts, n=1, max_new_tokens=3)
    assert engine.llm.log[-1] == ("sleep", level), "nothing pushed into a sleeping engine"


def test_frozen_weights_are_a_copy_in_the_engines_dtype(world):
    model = copy.deepcopy(world.model)
    frozen = frozen_weights(model, torch.bfloat16)
    assert list(frozen) == [name for name, _ in model.named_parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # an optimizer step
    for name, p in world.model.named_parameters():
        assert frozen[name].dtype == torch.bfloat16 and torch.equal(frozen[name], p.detach().to(torch.bfloat16))


def test_a_second_sleep_mode_engine_is_refused_with_vllms_reason(fake_vllm, world):
    first = VLLMEngine(world.path)
    with pytest.raises(CannotRun, match=r"one instance per process.*0\.10\.2.*0\.33\.0"):
        VLLMEngine(world.path)
    assert len(fake_vllm.LLM.instances) == 1, "refused before vLLM was asked"
    other = VLLMEngine(world.path, enable_sleep_mode=False)  # no sleep pool: allowed beside it
    first.load_weights(world.model)
    first.sleep()
    other.generate(world.prompts, n=1, max_new_tokens=3)  # it keeps its memory while the first one sleeps
    # the stand-in fails as vLLM 0.33.0 does when asked directly (vllm/v1/worker/gpu_worker.py line 414)
    with pytest.raises(AssertionError, match="CuMem allocator can only be used for one instance per process"):
        fake_vllm.LLM(world.path, enable_sleep_mode=True)


def test_cpu_platform_allows_several_engines(monkeypatch, world):
    fake = install(monkeypatch, world.model, cpu=True)  # no sleep mode on CPU: no pool to share
    VLLMEngine(world.path), VLLMEngine(world.path)
    assert len(fake.LLM.instances) == 2


@pytest.mark.parametrize("level", [1, 2])
def test_stand_in_sleep_levels_follow_vllm(fake_vllm, world, level):
    """The stand-in itself: level 1 keeps the weights (offloaded), level 2 discards them until a push; generate needs
    both the weights and the KV cache awake (tests/fake_vllm.py docstring, read in vLLM 0.10.2 and 0.33.0)."""
    llm = fake_vllm.LLM(world.path, enable_sleep_mode=True)
    eos = world.tokenizer.eos_token_id
    params = [fake_vllm.SamplingParams(n=1, max_tokens=3, seed=0, logit_bias=None, stop_token_ids=[eos])]

    def generate():
        return llm.generate([fake_vllm.TokensPrompt(prompt_token_ids=world.prompts[0])], params)

    def push():
        llm.apply_model(partial(engine_vllm._load_into, engine_vllm.named_weights(world.model)))

    generate()
    llm.sleep(level=level)
    with pytest.raises(RuntimeError, match="asleep"):
        generate()
    with pytest.raises(RuntimeError, match="while their memory is asleep"):
        push()
    llm.wake_up(tags=["weights"])
    with pytest.raises(RuntimeError, match="kv_cache.*asleep"):
        generate()
    llm.wake_up(tags=["kv_cache"])
    if level == 1:
        generate()  # the offloaded weights are back
    else:
        with pytest.raises(RuntimeError, match="dropped weights"):
            generate()
        push()
        llm.reset_prefix_cache()
        generate()


def test_dummy_weights_need_a_push_and_asleep_engine_refuses(fake_vllm, world):
    engine = VLLMEngine(world.path, load_format="dummy")
    with pytest.raises(RuntimeError, match="load_weights"):
        engine.generate(world.prompts, n=1, max_new_tokens=3)
    engine.load_weights(world.model.state_dict())  # a state dict works too (tied lm_head.weight included)
    engine.sleep()
    with pytest.raises(RuntimeError, match="wake_up"):
        engine.generate(world.prompts, n=1, max_new_tokens=3)
    engine.wake_up()
    engine.generate(world.prompts, n=1, max_new_tokens=3)
    assert_engine_holds(engine.llm, world.model)


def test_weights_missing_a_parameter_are_an_error(fake_vllm, world):
    engine = VLLMEngine(world.path)
    state = dict(world.model.state_dict())
    del state["model.norm.weight"]
    with pytest.raises(RuntimeError, match=r"1 vLLM parameters unchanged.*model\.norm\.weight"):
        engine.load_weights(state)
    with pytest.raises(TypeError, match="state dict"):
        engine.load_weights([("model.norm.weight", torch.ones(3))])


def test_worker_in_another_process_is_an_error(fake_vllm, world):
    fake_vllm.LLM.apply_model = lambda self, fn: [os.getpid() + 1]
    with pytest.raises(RuntimeError, match="VLLM_ENABLE_V1_MULTIPROCESSING"):
        VLLMEngine(world.path)


# ----------------------------------------------------------------------------------------------------------------------
# vLLM's CPU platform (the stand-in's cpu=True; tests/test_vllm_cpu.py runs the real one)


def test_cpu_platform_settings(monkeypatch, world):
    install(monkeypatch, world.model, cpu=True)
    llm = VLLMEngine(world.path, load_format="dummy").llm
    assert llm.kwargs["enable_sleep_mode"] is False, "vLLM's CPU platform refuses sleep mode"
    assert llm.kwargs["enable_chunked_prefill"] is False, "seeded sampling breaks on a split CPU prefill"
    assert llm.kwargs["kv_cache_memory_bytes"] == engine_vllm.CPU_KV_CACHE_BYTES, "a second engine needs a fixed size"


@pytest.mark.parametrize("level", [1, 2])
def test_cpu_platform_keeps_the_phases_without_sleeping(monkeypatch, world, level):
    install(monkeypatch, world.model, cpu=True)  # its LLM raises on sleep/wake and on pushes outside reload_weights
    model, optimizer = trainer(world)
    engine = VLLMEngine(world.path, load_format="dummy", sleep_level=level)
    engine.load_weights(model)
    for step in range(2):
        engine.generate(world.prompts, n=2, max_new_tokens=4, seed=step)
        engine.sleep()
        with pytest.raises(RuntimeError, match="wake_up"):
            engine.generate(world.prompts, n=1, max_new_tokens=3)  # the phase is kept: no rollout while training
        optimizer_step(model, optimizer, world.prompts)
        if level == 1:
            engine.load_weights(model)  # recorded, pushed by wake_up; level 2: the kept reference is re-pushed
        assert "push" not in cycles(engine.llm.log)[-1], "a push while asleep would be reset by nothing"
        engine.wake_up()
    engine.generate(world.prompts, n=2, max_new_tokens=4, seed=9)
    assert_engine_holds(engine.llm, model)
    assert cycles(engine.llm.log) == [["push", "reset_prefix_cache"]] + [["push", "reset_prefix_cache"]] * 2 + [[]]


def test_sharing_layers_are_the_later_owners_of_a_tied_tensor():
    class Layer(torch.nn.Module):  # a vLLM layer: a weight and the quant_method that processed it
        def __init__(self, weight):
            super().__init__()
            self.weight, self.quant_method = weight, object()

    embed = Layer(torch.nn.Parameter(torch.randn(6, 4)))
    other, head = Layer(torch.nn.Parameter(torch.randn(6, 4))), Layer(embed.weight)  # head: tied to the embedding
    norm = torch.nn.LayerNorm(4)  # a weight but no quant_method: nothing to re-process
    model = torch.nn.ModuleDict(dict(embed=embed, other=other, norm=norm, head=head))
    assert engine_vllm._sharing_layers(model) == [head]


# ----------------------------------------------------------------------------------------------------------------------
# Installation, versions, bad arguments


def test_missing_vllm_names_the_fix(monkeypatch, world):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, as when it is not installed
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    with pytest.raises(ImportError, match=r"vLLM \(vllm>=0\.26,<0\.35\).*pip install -e '\.\[gpu\]'"):
        VLLMEngine(world.path)


def test_version_range(fake_vllm, world):
    assert version_tuple("0.10.2") == (0, 10, 2) and version_tuple("0.11.0rc2+cu128") == (0, 11, 0)
    assert version_tuple("1.2") == (1, 2, 0) and version_tuple("dev") == (0, 0, 0)
    fake_vllm.__version__ = "0.25.1"  # below the floor: the V1 sampler's per-request loop (engine_vllm docstring)
    with pytest.warns(UserWarning, match=r"0\.25\.1 is outside the supported range"):
        VLLMEngine(world.path)


def test_bad_arguments(fake_vllm, world):
    with pytest.raises(ValueError, match="sleep_level"):
        VLLMEngine(world.path, sleep_level=3)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngine(world.path, gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="vocab_limit"):
        VLLMEngine(world.path, vocab_limit=10**6)
    engine = VLLMEngine(world.path, max_model_len=8)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(world.prompts, n=1, max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        engine.generate(world.prompts, n=1, max_new_tokens=3, top_p=0.0)
    with pytest.raises(ValueError, match="prompt 0 has 0 tokens"):
        engine.generate([[]], n=1, max_new_tokens=3)
    with pytest.raises(ValueError, match="prompt 1 has 9 tokens.*max_model_len"):
        engine.generate([[5], [5] * 9], n=1, max_new_tokens=3)


# ----------------------------------------------------------------------------------------------------------------------
# The real engine (a GPU with vLLM installed)

real_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="needs vLLM (pip install -e '.[gpu]') and a CUDA GPU",
)


@pytest.fixture(scope="module")
def real_world(tmp_path_factory):
    """A tiny Qwen2 with head_dim 64 (what vLLM's attention kernels support), saved; the trainer's fp32 copy on GPU."""
    path = tmp_path_factory.mktemp("tiny-model-vllm")
    tokenizer = build_tokenizer()
    settings = dict(SETTINGS, hidden_size=128, num_attention_heads=2, num_key_value_heads=2, intermediate_size=256)
    model = build_model(tokenizer, settings, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in ["12+3=?", "7-5", "<|im_start|>user\n99+99=?"]]
    return types.SimpleNamespace(path=str(path), tokenizer=tokenizer, model=model.cuda(), prompts=prompts)


def logp_diff(model, limit: int, prompts, groups, temperature: float) -> float:
    """Mean |engine log-prob - recomputed log-prob| over all sampled tokens; the recomputation uses the trainer's
    weights rounded to bf16 (what vLLM holds), an fp32 forward pass per sequence, no padding."""
    ref = copy.deepcopy(model).to(torch.bfloat16).float().eval()
    diffs = []
    with torch.no_grad():
        for prompt, group in zip(prompts, groups):
            for c in group:
                ids = torch.tensor([prompt + c.token_ids], device="cuda")
                logits = ref(input_ids=ids).logits[0, len(prompt) - 1 : -1].double()  # (T, V)
                logits[:, limit:] = float("-inf")
                logp = torch.log_softmax(logits / (temperature or 1.0), -1)
                logp = logp.gather(-1, torch.tensor(c.token_ids, device="cuda")[:, None]).squeeze(-1)  # (T,)
                diffs.append((torch.tensor(c.logprobs, device="cuda", dtype=torch.float64) - logp).abs())
    return torch.cat(diffs).mean().item()


@real_vllm
@pytest.mark.slow
def test_real_vllm_engine_follows_the_trainer(real_world):
    w = real_world
    limit = len(w.tokenizer)
    engine = VLLMEngine(w.path, gpu_memory_utilization=0.2, max_model_len=256, load_format="dummy", enforce_eager=True)
    engine.load_weights(w.model)
    out = engine.generate(w.prompts, n=4, max_new_tokens=24, temperature=1.0, seed=0)
    assert logp_diff(w.model, limit, w.prompts, out, 1.0) < 0.05
    for c in [c for g in out for c in g]:
        assert (
            len(c.logprobs) == len(c.token_ids) > 0 and max(c.token_ids) < limit and all(lp <= 0 for lp in c.logprobs)
        )
        assert c.finished == (c.token_ids[-1] in engine.stop_token_ids)
        assert c.finished or len(c.token_ids) == 24
        assert c.text == w.tokenizer.decode(c.token_ids[:-1] if c.finished else c.token_ids, skip_special_tokens=True)
    assert [[c.token_ids for c in g] for g in engine.generate(w.prompts, 4, 24, seed=0)] == [
        [c.token_ids for c in g] for g in out
    ], "same seed, same samples"

    old = copy.deepcopy(w.model)
    engine.sleep()
    with torch.no_grad():
        for p in w.model.parameters():  # a large "optimizer step", so that stale weights would show
            p.add_(torch.randn_like(p) * 0.05)
    engine.load_weights(w.model)
    engine.wake_up()
    out = engine.generate(w.prompts, n=4, max_new_tokens=24, temperature=0.7, seed=1)
    new_diff, stale_diff = logp_diff(w.model, limit, w.prompts, out, 0.7), logp_diff(old, limit, w.prompts, out, 0.7)
    assert new_diff < 0.05 and stale_diff > 5 * new_diff, f"diff to trainer {new_diff}, to old weights {stale_diff}"

    greedy = engine.generate(w.prompts, n=2, max_new_tokens=16, temperature=0.0)
    assert all(g[0].token_ids == g[1].token_ids for g in greedy)
    assert logp_diff(w.model, limit, w.prompts, greedy, 0.0) < 0.05
    del engine  # the next test builds a level-2 engine, which must be the only sleep-mode engine
    gc.collect()


@real_vllm
@pytest.mark.slow
def test_real_vllm_sleep_level_2_resyncs(real_world, monkeypatch):
    w = real_world
    monkeypatch.setattr(engine_vllm, "_SLEEPERS", weakref.WeakSet())  # the previous test's engine is gone from use
    engine = VLLMEngine(w.path, gpu_memory_utilization=0.2, max_model_len=256, sleep_level=2, enforce_eager=True)
    engine.load_weights(w.model)
    engine.sleep()
    with torch.no_grad():
        w.model.model.norm.weight.mul_(1.5)
    engine.wake_up()  # no load_weights call: the kept reference is pushed
    out = engine.generate(w.prompts, n=4, max_new_tokens=24, seed=2)
    assert logp_diff(w.model, len(w.tokenizer), w.prompts, out, 1.0) < 0.05
