"""
Training-step benchmark (BENCHMARKS.md section 2): a random-initialised model of the exact Qwen2.5-Math-1.5B shape
(config only, no weights) runs train.py's own training-phase functions on synthetic token ids of FIXED lengths.

    # H100 / H200, an estimated 2-4 minutes: an eighth of the paper's batch (16 x 8 = 128 sequences, 4 mini-batches,
    # the same micro-batches of 8 x 3,328 tokens, so tokens/s and MFU carry over), grad checkpointing and the
    # hidden-state log-probs on (the paper preset's), plus one generate() call of 256 sequences x 512 new tokens
    # (train.py's gen batch) through the transformers engine
    python bench/bench_train_step.py --model-config qwen2.5-math-1.5b --grad-ckpt --logp-from-hidden --prompts 16 \\
        --mini-batch-prompts 4 --steps 2 --gen-prompts 32 --find-max-batch --json-out bench/train_step.jsonl
    # the paper's full batch (128 x 8 = 1,024 sequences, 4 mini-batches of 256): an estimated 2-3 minutes per step
    python bench/bench_train_step.py --model-config qwen2.5-math-1.5b --grad-ckpt --logp-from-hidden --steps 1
    # CPU smoke run (tiny Qwen2, seconds; timings are only useful as ratios, MFU n/a)
    python bench/bench_train_step.py --tiny --device cpu --gen-prompts 2

--model-config qwen2.5-math-1.5b builds that model's config in code (QWEN_MATH_1P5B; no files needed, e.g. on a bare
GPU machine) with a stand-in for its tokenizer (ids only: 151,665 of them, pad = EOS; decoded text is empty);
a folder (../shared/qwen2.5-math-1.5b-tokenizer) or hub id loads config.json and the real tokenizer instead.

One step, as train.py's loop runs it with more than one update per rollout batch (4 mini-batches):
  logprobs  old log-probs: a no-grad forward over all B*G sequences in micro-batches (train.token_logprobs)
  train     per mini-batch: zero_grad, per micro-batch token_logprobs under bf16 autocast + train.policy_loss (PPO,
            token-mean over the mini-batch via train.aggregate) + backward; clip_grad_norm_; AdamW step
  sync      engine.sleep / wake_up / load_weights (no-ops for the transformers engine: it shares the module)
  generate  (--gen-prompts > 0) engine.TransformersEngine.generate: --gen-prompts x G sequences; the only stop token
            is an LM-head row the sampler can never draw, so every sequence generates exactly --gen-new-tokens
  reward    not measured here: bench/bench_verify.py times the verifier
--warmup-steps steps run first and are not timed (their generation is cut to 8 tokens: kernels and allocator only);
then --steps timed steps, median per phase. Trained tokens = sequences x (prompt + response) per step.

Model FLOPs (MFU counts the model's own work only: no grad-checkpoint recompute, no padding, and causal attention is
counted as full, as PaLM does). PaLM arXiv:2204.02311v5 Appendix B: 6N + 12 L H Q S per token for forward + backward,
where N = parameters that take part in a matmul, L layers, H query heads x Q head dim, S sequence length; 2N + 4LHQS
for the forward alone (Chinchilla arXiv:2203.15556v1 Appendix F: backward = 2 x forward). Here the transformer body
(all but the embedding table and the LM head) runs on all S = P + T tokens while the LM head runs only on the T
response positions (token_logprobs keeps only those), so per sequence:
    F_fwd+bwd = 6 N_body S + 6 N_head T + 12 L (H Q) S^2
N_head = V x d counts once even with tied embeddings (it is the output matmul; the input embedding is a lookup).
MFU = F per step / train time / peak bf16 dense FLOP/s (--peak-tflops; detected for H100 SXM, H200, A100).

Notes on what is measured: fp32 master weights and AdamW, bf16 autocast on CUDA (train.py deviation 7). Generation
runs, exactly as train.py calls the engine, outside autocast: on the fp32 module.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402  train.py's own functions: token_logprobs, policy_loss, aggregate, pad_batch
from mathrl.engine import TransformersEngine  # noqa: E402

# Defaults: the paper's batch (arXiv:2602.03190v1: 128 prompts x 8 samples, 4 mini-batches of 32 prompts) at the
# Qwen2.5-Math-1.5B shape, or a tiny Qwen2 on the CPU. Flags given win over either.
FULL = dict(prompts=128, group_size=8, mini_batch_prompts=32, micro_batch_size=8, prompt_len=256, response_len=3072,
            gen_new_tokens=512, gen_batch_size=256)  # fmt: skip
TINY = dict(prompts=4, group_size=2, mini_batch_prompts=2, micro_batch_size=2, prompt_len=8, response_len=16,
            gen_new_tokens=4, gen_batch_size=4)  # fmt: skip
TINY_MODEL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)  # fmt: skip
# Peak dense bf16 tensor-core FLOP/s (vendor datasheets, without 2:4 sparsity): (name must contain, must not, TFLOP/s)
PEAK_TFLOPS = [(("H100", "HBM3"), ("PCIe", "NVL"), 989.4), (("H100", "SXM"), ("PCIe", "NVL"), 989.4),
               (("H200",), ("NVL",), 989.4), (("A100",), (), 312.0)]  # fmt: skip
WARMUP_GEN_TOKENS = 8  # new tokens of the warm-up generate call
TEMPERATURE = 1.0  # sampling temperature of the log-probs (train.py's default, the paper's)
GRAD_CLIP = 1.0  # max global gradient norm (train.py's default)

# Qwen2.5-Math-1.5B's config.json (huggingface.co/Qwen/Qwen2.5-Math-1.5B, copied in shared/qwen2.5-math-1.5b-tokenizer;
# tests/test_bench_train_step.py compares the two) and its tokenizer's length: 151,665 ids under 151,936 LM-head rows
QWEN_MATH_1P5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0,
                      rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=True, bos_token_id=151643,
                      eos_token_id=151643, sliding_window=4096, max_window_layers=21, use_sliding_window=False)  # fmt: skip
QWEN_TOKEN_IDS = 151665
BUILTIN = "qwen2.5-math-1.5b"  # --model-config value that selects QWEN_MATH_1P5B


class IdsOnlyTokenizer:
    """What this benchmark uses of a tokenizer, for a model whose tokenizer files are absent: its length, the pad and
    EOS ids, and decode (the transformers engine decodes every response; the text is not timed: empty)."""

    def __init__(self, n_ids: int, eos_token_id: int):
        self.n_ids, self.eos_token_id, self.pad_token_id = n_ids, eos_token_id, eos_token_id

    def __len__(self) -> int:
        return self.n_ids

    def decode(self, ids, skip_special_tokens=True) -> str:
        return ""


HEADER = (
    "| date | device | model | B x G seqs | mini / micro | P + T | ckpt | logp from hidden | logprobs s | train s "
    "| trained tok/s | train MFU | gen seqs x tokens | gen s | gen tok/s | train peak GiB | fit | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", help=f"{BUILTIN} (built in code), or a folder / HF id with config.json and the "
                   "tokenizer; not with --tiny")
    p.add_argument("--tiny", action="store_true", help="tiny Qwen2 (hidden 64, 2 layers, vocab 512) and small batch")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--prompts", type=int, help="B: prompts per step [128]")
    p.add_argument("--group-size", type=int, help="G: samples per prompt [8]")
    p.add_argument("--mini-batch-prompts", type=int, help="prompts per optimizer step [32]")
    p.add_argument("--micro-batch-size", type=int, help="sequences per forward/backward [8]")
    p.add_argument("--prompt-len", type=int, help="P: prompt tokens of every sequence [256]")
    p.add_argument("--response-len", type=int, help="T: response tokens of every sequence [3072]")
    p.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing (train.py --grad-ckpt)")
    p.add_argument("--logp-from-hidden", action="store_true", help="chunked LM-head kernel (train.py flag)")
    p.add_argument("--no-bf16", action="store_true", help="no bf16 autocast (fp32 throughout)")
    p.add_argument("--gen-prompts", type=int, default=0, help="prompts of the generation phase (x G seqs); 0 = skip")
    p.add_argument("--gen-new-tokens", type=int, help="tokens generated by every sequence [512]")
    p.add_argument("--gen-batch-size", type=int, help="sequences per generate() call [256, train.py's]")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first")
    p.add_argument("--peak-tflops", type=float, help="GPU peak bf16 dense TFLOP/s (detected: H100 SXM, H200, A100)")
    p.add_argument("--find-max-batch", action="store_true", help="on OOM halve the micro (gen) batch and retry")
    p.add_argument("--json-out", help="append the result as one JSON line to this file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name, value in (TINY if args.tiny else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.tiny == bool(args.model_config):
        p.error(f"give exactly one of --model-config ({BUILTIN} or a folder) and --tiny")
    for name in ("prompts", "group_size", "mini_batch_prompts", "micro_batch_size", "prompt_len", "response_len",
                 "gen_new_tokens", "gen_batch_size", "steps"):  # fmt: skip
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if args.prompts % args.mini_batch_prompts:
        p.error(f"--mini-batch-prompts {args.mini_batch_prompts} must divide --prompts {args.prompts}")
    if args.warmup_steps < 0 or args.gen_prompts < 0:
        p.error("--warmup-steps and --gen-prompts must be >= 0")
    args.micro_batch_size = min(args.micro_batch_size, args.mini_batch_prompts * args.group_size)
    return args


# ----------------------------------------------------------------------------------------------------------------------
# Model FLOPs and MFU


def count_params(model) -> tuple[int, int]:
    """(N_body, N_head): parameters of the transformer body (all but the input embedding and the LM head) and of the
    LM head matrix (V x d; counted even when tied to the input embedding: it is still a matmul on every position)."""
    total = sum(p.numel() for p in model.parameters())  # a tied matrix is counted once here
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    body = total - embed.numel() - (0 if head is embed else head.numel())
    return body, head.numel()


def attention_width(config) -> int:
    """H x Q of PaLM's attention term: query heads x head dim (= hidden size for Qwen2.5-1.5B: 12 x 128)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head_dim


def flops_per_sequence(n_body: int, n_head: int, layers: int, attn_width: int, P: int, T: int, backward=True) -> int:
    """Model FLOPs of one sequence of P prompt + T response tokens, PaLM arXiv:2204.02311v5 Appendix B:
    fwd+bwd = 6 N_body S + 6 N_head T + 12 L (H Q) S^2 with S = P + T (the LM head runs on the T response positions);
    forward alone is a third of it (2N per token forward, 4N backward: Chinchilla arXiv:2203.15556v1 Appendix F)."""
    S = P + T
    fwd_bwd = 6 * n_body * S + 6 * n_head * T + 12 * layers * attn_width * S * S
    return fwd_bwd if backward else fwd_bwd // 3


def peak_tflops_for(device_name: str) -> float | None:
    """Peak dense bf16 TFLOP/s from the device name (torch.cuda.get_device_name), or None when not in the table."""
    for must, must_not, tflops in PEAK_TFLOPS:
        if all(m in device_name for m in must) and not any(m in device_name for m in must_not):
            return tflops
    return None


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak (None without a peak, e.g. on the CPU)."""
    return None if peak_tflops is None else flops / seconds / (peak_tflops * 1e12)


# ----------------------------------------------------------------------------------------------------------------------
# Set-up: model, tokenizer, synthetic batch


def build_model(args, device: torch.device):
    """Random-initialised fp32 model (config only, no weights) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    if args.tiny:
        from mathrl import tiny  # the project's character-level tokenizer, built in code

        tokenizer = tiny.build_tokenizer()
        config = Qwen2Config(**TINY_MODEL, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    elif args.model_config == BUILTIN:
        config = Qwen2Config(**QWEN_MATH_1P5B)
        tokenizer = IdsOnlyTokenizer(QWEN_TOKEN_IDS, config.eos_token_id)
    else:
        try:
            config = AutoConfig.from_pretrained(args.model_config)
            tokenizer = AutoTokenizer.from_pretrained(args.model_config)
        except Exception as e:  # noqa: BLE001
            raise SystemExit(f"--model-config {args.model_config!r}: cannot load config + tokenizer ({e})") from None
    longest = args.prompt_len + max(args.response_len, args.gen_new_tokens if args.gen_prompts else 0)
    if longest > config.max_position_embeddings:
        raise SystemExit(f"--prompt-len + --response-len/--gen-new-tokens = {longest} tokens exceeds the config's "
                         f"max_position_embeddings {config.max_position_embeddings}")  # fmt: skip
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # as train.load_model_and_tokenizer
    torch.manual_seed(args.seed)
    with device:  # SETUP: initialise on the device directly (a 1.5B CPU init takes long)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # fp32 master weights
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()  # as train.load_model_and_tokenizer
    return model, tokenizer


def token_ids_below(model, tokenizer) -> int:
    """Ids the tokenizer can produce: Qwen2.5 has 151,665 of them under a 151,936-row LM head (padded rows)."""
    return min(len(tokenizer), model.config.vocab_size)


def synthetic_batch(n_seqs: int, P: int, T: int, limit: int, seed: int):
    """input_ids (N, P+T), attention_mask (N, P+T), response mask (N, T) from random ids < limit, via train.pad_batch
    (every sequence has exactly P prompt and T response tokens, so nothing is padded)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, limit, (n_seqs, P + T), generator=gen)  # (N, P+T)
    return train.pad_batch(ids[:, :P].tolist(), ids[:, P:].tolist(), pad_id=0)


# ----------------------------------------------------------------------------------------------------------------------
# Phases (each mirrors train.py's loop)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def logprobs_phase(model, input_ids, attn, T, micro, limit, autocast, from_hidden):
    """Old log-probs and entropies (N, T) on the CPU, no grad, micro-batch by micro-batch (train.py's old-logp pass)."""
    N = input_ids.shape[0]
    old_logp, entropy = torch.zeros(N, T), torch.zeros(N, T)  # (N, T) each
    with torch.no_grad(), autocast:
        for s in range(0, N, micro):
            ids, am = input_ids[s : s + micro], attn[s : s + micro]  # (n, P+T) each
            lp, ent = train.token_logprobs(model, ids, am, T, TEMPERATURE, limit, from_hidden)  # (n, T) each
            old_logp[s : s + micro], entropy[s : s + micro] = lp.float().cpu(), ent.float().cpu()
    return old_logp, entropy


def train_phase(model, optimizer, batch, old_logp, adv, mini_seqs, micro, limit, autocast, from_hidden, device):
    """Policy update (train.py's): per mini-batch zero_grad, per micro-batch forward + PPO loss + backward, then
    clip_grad_norm_ and AdamW. Returns (optimizer steps, mean grad norm)."""
    input_ids, attn, loss_mask = batch
    N, T = loss_mask.shape
    grad_norms = []
    model.train()
    for mb_start in range(0, N, mini_seqs):
        mb = torch.arange(mb_start, mb_start + mini_seqs)  # sequences of this mini-batch
        n_tokens, n_seqs = loss_mask[mb].sum().item(), int((loss_mask[mb].sum(-1) > 0).sum())
        optimizer.zero_grad(set_to_none=True)
        for rows in [mb[s : s + micro] for s in range(0, mini_seqs, micro)]:
            with autocast:
                logp, _ = train.token_logprobs(model, input_ids[rows], attn[rows], T, TEMPERATURE, limit, from_hidden)
            loss, _ = train.policy_loss(
                logp.float(), old_logp[rows].to(device), adv[rows].to(device), loss_mask[rows].to(device), kind="ppo",
                agg="token-mean", n_tokens=n_tokens, n_seqs=n_seqs, max_len=T,
            )  # fmt: skip
            loss.backward()
            loss.item()  # train.py logs every micro-batch loss (a device sync)
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP).item())
        optimizer.step()
    model.eval()
    return len(grad_norms), sum(grad_norms) / len(grad_norms)


def sync_phase(engine, model) -> None:
    """Weight sync around the update (train.py calls these; no-ops for the shared-module transformers engine)."""
    engine.sleep()
    engine.wake_up()
    engine.load_weights(model)


def free_memory(device: torch.device) -> None:
    """Return cached blocks after an OOM so the retry starts from what is really held (a no-op on the CPU)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def halve_until_fit(run, size: int, find_max: bool, device: torch.device = torch.device("cpu")):
    """run(size) -> result. On a CUDA out-of-memory error retry with size // 2 while find_max and size > 1.
    Returns (result or None when nothing fit, the last size tried, the sizes that ran out of memory)."""
    failed = []
    while True:
        try:
            return run(size), size, failed
        except torch.cuda.OutOfMemoryError:
            failed.append(size)
        free_memory(device)  # outside `except`: the traceback (and the tensors its frames hold) is gone by now
        if not find_max or size == 1:
            return None, size, failed
        size //= 2


def timed(fn, device: torch.device) -> float:
    """Wall seconds of fn() (the device synchronised before and after)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------------
# Benchmarks


def bench_train(args, model, optimizer, tokenizer, device, engine, autocast) -> dict:
    """Warm-up + timed steps of logprobs -> train -> sync at a micro-batch size; medians, tokens and memory."""
    N, P, T = args.prompts * args.group_size, args.prompt_len, args.response_len
    mini_seqs = args.mini_batch_prompts * args.group_size
    n_ids = token_ids_below(model, tokenizer)
    limit = n_ids if n_ids < model.config.vocab_size else None  # token_logprobs' vocab mask, as train.py passes it
    input_ids, attn, resp_mask = synthetic_batch(N, P, T, n_ids, args.seed)  # (N, P+T), (N, P+T), (N, T)
    input_ids, attn = input_ids.to(device), attn.to(device)  # as train.py: the ids live on the device
    loss_mask = resp_mask.float()  # (N, T)
    adv = torch.randn(N, generator=torch.Generator().manual_seed(args.seed))  # (N,) values do not change the timing

    def run(micro: int) -> dict:
        times = {"logprobs": [], "train": [], "sync": []}
        model.eval()  # a retry after an OOM starts as the first try did: eval mode, no gradients held
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(args.warmup_steps + args.steps):
            out = {}

            def logprobs():
                out["old"] = logprobs_phase(model, input_ids, attn, T, micro, limit, autocast, args.logp_from_hidden)

            def update():
                batch, old_logp = (input_ids, attn, loss_mask), out["old"][0]
                out["updates"] = train_phase(model, optimizer, batch, old_logp, adv, mini_seqs, micro, limit, autocast,
                                             args.logp_from_hidden, device)  # fmt: skip

            for name, fn in (("logprobs", logprobs), ("train", update), ("sync", lambda: sync_phase(engine, model))):
                seconds = timed(fn, device)
                if step >= args.warmup_steps:
                    times[name].append(seconds)
        old_logp, entropy = out["old"]
        return {
            **{f"time_{k}_s": statistics.median(v) for k, v in times.items()},
            "optimizer_steps": out["updates"][0],
            "grad_norm": out["updates"][1],
            # mean full-distribution entropy of the last step, token-mean as train.py normalises (train.aggregate)
            "entropy": train.aggregate(entropy, loss_mask, "token-mean").item(),
            "nll_sampled": train.aggregate(-old_logp, loss_mask, "token-mean").item(),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        }

    result, micro, failed = halve_until_fit(run, args.micro_batch_size, args.find_max_batch, device)
    n_body, n_head = count_params(model)
    flops = N * flops_per_sequence(n_body, n_head, model.config.num_hidden_layers, attention_width(model.config), P, T)
    info = {
        "sequences": N, "mini_batch_seqs": mini_seqs, "micro_batch_size": micro, "oom_micro_batch_sizes": failed,
        "fit": result is not None, "token_ids": n_ids, "n_body_params": n_body, "n_head_params": n_head,
        "train_tokens": int(attn.sum().item()), "train_flops": flops, "flops_per_token": flops / (N * (P + T)),
    }  # fmt: skip
    if result is None:
        return info
    info.update(result)
    info["train_tokens_per_s"] = info["train_tokens"] / info["time_train_s"]
    info["logprobs_tokens_per_s"] = info["train_tokens"] / info["time_logprobs_s"]
    info["train_mfu"] = mfu(flops, info["time_train_s"], args.peak_tflops)
    info["logprobs_mfu"] = mfu(flops / 3, info["time_logprobs_s"], args.peak_tflops)
    return info


def bench_generate(args, model, tokenizer, device) -> dict:
    """Warm-up + timed generate() calls of --gen-prompts x G sequences, each exactly --gen-new-tokens long."""
    V = model.config.vocab_size
    limit = min(token_ids_below(model, tokenizer), V - 1)  # never sample the last LM-head row ...
    gen = torch.Generator().manual_seed(args.seed + 1)
    prompts = torch.randint(0, limit, (args.gen_prompts, args.prompt_len), generator=gen).tolist()  # B x P ids
    expected = args.gen_prompts * args.group_size * args.gen_new_tokens

    def run(batch_size: int) -> dict:
        engine = TransformersEngine(model, tokenizer, batch_size=batch_size, vocab_limit=limit, stop_token_ids=[V - 1])
        times, peak = [], None  # ... and make it the only stop token: no sequence ends early
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(args.warmup_steps + args.steps):
            warm = step < args.warmup_steps
            new = min(WARMUP_GEN_TOKENS, args.gen_new_tokens) if warm else args.gen_new_tokens
            out = {}
            seconds = timed(lambda: out.update(c=engine.generate(prompts, args.group_size, new, seed=step)), device)
            n_tokens = sum(len(c.token_ids) for group in out["c"] for c in group)
            if n_tokens != args.gen_prompts * args.group_size * new:
                want = f"{len(prompts) * args.group_size} x {new}"
                raise RuntimeError(f"generation stopped early: {n_tokens} tokens, not {want}")
            if not warm:
                times.append(seconds)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
        return {"time_generate_s": statistics.median(times), "gen_peak_mem_gib": peak}

    result, batch_size, failed = halve_until_fit(run, args.gen_batch_size, args.find_max_batch, device)
    info = {"gen_tokens": expected, "gen_batch_size": batch_size, "oom_gen_batch_sizes": failed}
    info["gen_fit"] = result is not None
    if result is not None:
        info.update(result)
        info["gen_tokens_per_s"] = expected / info["time_generate_s"]
    return info


# ----------------------------------------------------------------------------------------------------------------------
# Report


def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    props = torch.cuda.get_device_properties(device)
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except (OSError, IndexError):
        driver = "unknown"
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), driver {driver}, CUDA {torch.version.cuda}"


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_row(r: dict) -> str:
    a = r["args"]
    fit = "yes" if r["fit"] else f"OOM at micro {r['oom_micro_batch_sizes']}"
    if r["fit"] and r["oom_micro_batch_sizes"]:
        fit = f"yes at micro {r['micro_batch_size']} (OOM at {r['oom_micro_batch_sizes']})"
    gen = f"{a['gen_prompts'] * a['group_size']} x {a['gen_new_tokens']}" if a["gen_prompts"] else "-"
    cells = [
        r["date"][:10], r["device_short"], r["model"], f"{a['prompts']} x {a['group_size']} = {r['sequences']}",
        f"{r['mini_batch_seqs']} / {r['micro_batch_size']}", f"{a['prompt_len']} + {a['response_len']}",
        "on" if a["grad_ckpt"] else "off", "on" if a["logp_from_hidden"] else "off",
        fmt(r.get("time_logprobs_s"), ".2f"), fmt(r.get("time_train_s"), ".2f"),
        fmt(r.get("train_tokens_per_s"), ".0f"),
        fmt(r.get("train_mfu") and 100 * r["train_mfu"], ".1f") + ("%" if r.get("train_mfu") else ""), gen,
        fmt(r.get("time_generate_s"), ".2f"), fmt(r.get("gen_tokens_per_s"), ".0f"),
        fmt(r.get("peak_mem_gib"), ".1f"), fit, f"`{r['command']}`",
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if device.type == "cuda" and args.peak_tflops is None:
        args.peak_tflops = peak_tflops_for(torch.cuda.get_device_name(device))
        if args.peak_tflops is None:
            raise SystemExit(f"unknown GPU {torch.cuda.get_device_name(device)!r}: pass --peak-tflops (bf16 dense)")
    if device.type == "cpu":
        args.peak_tflops = None  # MFU against a GPU peak means nothing on the CPU
    import transformers

    command = "python bench/bench_train_step.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    env = [
        f"- device: {device_name(device)}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
    ]
    print("\n".join(env), flush=True)
    model, tokenizer = build_model(args, device)
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and not args.no_bf16)
    engine = TransformersEngine(model, tokenizer, batch_size=args.gen_batch_size)  # the sync phase's engine
    # train.Config's optimizer (the values do not change the timing). It stays alive through the generation phase,
    # with its AdamW moments and the last mini-batch's gradients, as in train.py's loop from the second step on.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), weight_decay=0.01)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "device_short": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "model": "tiny Qwen2" if args.tiny else Path(args.model_config).name,
        "torch": torch.__version__, "transformers": transformers.__version__, "command": command,
        "peak_tflops": args.peak_tflops, "args": vars(args),
    }  # fmt: skip
    result.update(bench_train(args, model, optimizer, tokenizer, device, engine, autocast))
    if args.gen_prompts:
        result.update(bench_generate(args, model, tokenizer, device))
    print(f"model: N_body {result['n_body_params']:,} + N_head {result['n_head_params']:,} params; "
          f"{result['flops_per_token']:.4g} model FLOPs per trained token (fwd+bwd), "
          f"{result['train_flops']:.4g} per step")  # fmt: skip
    for phase in ("logprobs", "train", "sync", "generate"):
        if f"time_{phase}_s" in result:
            rate = {"logprobs": "logprobs_tokens_per_s", "train": "train_tokens_per_s", "generate": "gen_tokens_per_s"}
            tps = f", {result[rate[phase]]:.0f} tokens/s" if phase in rate else ""
            print(f"{phase:>9}: {result[f'time_{phase}_s']:.4f} s (median of {args.steps}){tps}")
    print(f"train MFU {fmt(result.get('train_mfu'), '.3f')}, logprobs MFU {fmt(result.get('logprobs_mfu'), '.3f')}, "
          f"peak memory {fmt(result.get('peak_mem_gib'), '.1f')} GiB, fit: {result['fit']}")  # fmt: skip
    print("\n" + HEADER + "\n" + markdown_row(result), flush=True)
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
