"""
GRPO / Dr. GRPO / AAPO reinforcement learning for math reasoning, with prompt augmentation, in one file.

Each step samples G responses for each of B prompts, rewards them with a verifier (accuracy + the template's format
score), turns the rewards into group-relative advantages and takes a few clipped policy-gradient steps.

    # the paper recipe ("DAPO w/ prompt aug" of arXiv:2602.03190v1 on Qwen2.5-Math-1.5B), one 80 GB GPU, vLLM rollouts
    python train.py --aug --out runs/aug
    python train.py --aug --estimator aapo --out runs/aapo-aug   # AAPO advantages (arXiv:2505.14264v2)
    python train.py --estimator drgrpo --out runs/drgrpo         # Dr. GRPO (arXiv:2503.20783v1)
    # a tiny model on a generated arithmetic task: RL visibly learns in a few minutes on a laptop CPU
    python train.py --preset tiny --aug --estimator aapo --out runs/tiny
    python plot.py runs/tiny --out runs/tiny/curves.png
    torchrun --nproc_per_node 2 train.py --preset tiny --out runs/tiny-ddp   # data parallel (DDP): 2 ranks, one batch
    torchrun --nproc_per_node 8 train.py --aug --gpu-memory-utilization 0.3 --out runs/aug-8gpu  # 8 GPUs
    # continue a killed run exactly where its last checkpoint left it
    python train.py --preset tiny --aug --estimator aapo --out runs/tiny --resume

Flags: `python train.py --help` (one per Config field). Outputs in --out (outputs.py; docs/metrics.md): metrics.jsonl,
samples.jsonl, config.json, checkpoint-<step>/ (HF model + trainer_state.pt: optimizer, step, RNG states, AAPO cache).

Deviations from the papers:
 1) --engine vllm (the paper preset) samples with vLLM in the trainer's process (each rank's, under torchrun), colocated
    with it (engine_vllm.py; AAPO's reference on the same engine); --engine transformers (the tiny preset) uses Hugging
    Face `generate` on the training module itself (engine.py). Both sample the same distribution (temperature 1,
    top_p 1, stop at EOS, padded vocab ids masked).
 2) One process on one GPU (memory plan at GPU_PRESET), or torchrun data parallel (DDP, docs/multi-gpu.md); the paper
    ran verl (FSDP) on 8 GPUs. The batch arithmetic (128 x 8, 4 mini-batches of 32 prompts, token-mean over each
    mini-batch) is the same for any number of ranks.
 3) When a rollout batch gets a single optimizer step (ppo_epochs x mini-batches = 1), the old log-probs are the
    detached log-probs of the training forward pass instead of a separate pass: the same numbers, one pass fewer.
 4) DAPO dynamic sampling (off by default; arXiv:2503.14476v1 Eq. 11) refills at most --dynamic-sampling-rounds
    rounds per step (DAPO: until full), then masks the dead groups left; "dead" follows the estimator (mathrl/dynamic.py).
 5) AAPO (arXiv:2505.14264v2) defaults to its own loss (REINFORCE, no ratio or clip) and advantage eps (1e-4) but
    runs inside the prompt-augmentation recipe (lr 1e-6, 128 x 8, 4 mini-batches), not AAPO's G = 6 / 96 completions.
    `--aapo-ref cache` (reuse per-prompt reference rewards) is this project's addition; `fresh` is the paper's.
 6) Grading is verify.py (a project-written grader with the papers' protocol: last \\boxed{}, then "the answer is",
    then the last number; 5 s limit), not the papers' math_grader code.
 7) Mixed precision is fp32 master weights with bf16 autocast on CUDA (verl's FSDP mixed precision); CPU is fp32.
"""

import argparse
import contextlib
import copy
import importlib.util
import inspect
import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

import eval as evaluation
from mathrl import BadValue, CannotRun, UserError
from mathrl.batching import micro_batches, token_budget_batches, trim  # noqa: F401 (token_budget_batches: tests)
from mathrl.data import clean_rows, load_eval_rows, read_rows
from mathrl.distributed import (all_cat, all_items, all_strided, all_sum, barrier, close_distributed, ddp,
                                init_distributed, print0, rank, rank_share, world_size)  # fmt: skip
from mathrl.dynamic import (METRICS, dead_groups, dynamic_metrics, gather, refill_rows, refill_size, refill_template,
                            select_slots)  # fmt: skip
from mathrl.outputs import Trackers, checkpoints, dump_samples, log_step, prepare_out, restore_state, save_checkpoint
from mathrl.grading import grade_batch
from mathrl.templates import (ALL_TEMPLATES, CHAIN_DEFAULT_TEMPLATE, DEFAULT_TEMPLATE, TEMPLATE_SETS,
                              TINY_DEFAULT_TEMPLATE, draw_template, format_score, render)  # fmt: skip

# Axis legend for shape comments: B prompts per step, G samples per prompt, T response tokens, V vocabulary.
# A flat batch of sequences is (B*G, ...); P+T is prompt + response length of a padded sequence.

# ----------------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class Config:
    # run
    out: str = "runs/default"  # output folder: metrics.jsonl, samples.jsonl, config.json, checkpoint-<step>/
    preset: str = "paper"  # paper = the papers' recipe on one GPU (GPU_PRESET; old name 1.5b) | tiny, tiny-chain = CPU
    seed: int = 42  # seed of data order, template draws, sampling and init (--preset tiny: also its warm start)
    resume: bool = False  # continue from the latest checkpoint in --out (exactly: same metrics on CPU)
    overwrite: bool = False  # start over in an --out that already holds a run
    device: str = "auto"  # cuda | cpu | auto
    bf16: bool = True  # bf16 autocast on CUDA with fp32 master weights (the paper's precision); CPU stays fp32
    grad_ckpt: bool = False  # gradient checkpointing (memory for compute)
    # model
    model: str = "Qwen/Qwen2.5-Math-1.5B"  # policy init: HF hub id or local dir (arXiv:2602.03190v1 main run)
    tokenizer: str = ""  # tokenizer id or dir; empty = --model's
    # data
    train_data: str = "hkust-nlp/SimpleRL-Zoo-Data"  # .jsonl/.parquet file, folder of them, or HF dataset name
    train_subset: str = "simplelr_qwen_level3to5"  # HF dataset config (MATH level 3-5, 8,523 problems)
    train_split: str = "train"  # HF dataset split
    problem_field: str = "problem"  # field holding the question (falls back to "question" when absent)
    answer_field: str = "answer"  # field holding the gold answer (a string, number or list of accepted answers)
    max_prompt_tokens: int = 1024  # longer prompts (with the longest template) are filtered out, as in the paper
    # templates (prompt augmentation, arXiv:2602.03190v1 Sec. 3)
    aug: bool = False  # one random template per prompt (whole group), re-drawn every epoch
    templates: str = "all"  # comma-separated names for --aug; "all" = the 13 paper templates (tiny: the 4 tiny ones)
    template: str = DEFAULT_TEMPLATE  # the single template without --aug
    use_format: bool = True  # reward = accuracy + format score; --no-use-format: accuracy only
    reward_timeout: float = 5.0  # seconds per verification (over the limit scores 0), as the paper
    reward_workers: int = 0  # grading processes (0 = one per CPU core, 1 = in-process)
    # rollout
    engine: str = "transformers"  # rollout engine: transformers (HF generate on the trainer's module) | vllm (GPU)
    prompts_per_step: int = 128  # B: prompts per rollout batch
    group_size: int = 8  # G: samples per prompt
    max_new_tokens: int = 3072  # response budget; longer responses are cut (truncated)
    temperature: float = 1.0  # sampling temperature (also used for the trainer's log-probs)
    top_p: float = 1.0  # nucleus sampling; 1 = off, as the paper (keeps trainer and sampler distributions equal)
    gen_batch_size: int = 256  # sequences per generate() call of the transformers engine
    # vllm engine (engine_vllm.py; memory plan at GPU_PRESET)
    gpu_memory_utilization: float = 0.45  # share of the GPU's memory the policy engine holds while awake
    vllm_sleep_level: int = 2  # while training: 2 = engine weights dropped, re-pushed on wake | 1 = parked in CPU RAM
    max_model_len: int = 0  # engine context; 0 = max(max_prompt_tokens + max_new_tokens, eval_context)
    # advantage
    estimator: str = "grpo"  # grpo (arXiv:2402.03300v3) | drgrpo (arXiv:2503.20783v1) | aapo (arXiv:2505.14264v2)
    std_eps: float = 1e-6  # GRPO: A = (r - mean) / (std + eps), eps of the prompt-aug recipe
    aapo_std: bool = True  # AAPO: divide by the group std (main runs); --no-aapo-std as its 7B runs
    aapo_std_eps: float = 1e-4  # AAPO: eps of its code
    aapo_delta_low: float = 0.2  # AAPO: margin clip below, clip(r - r_ref, -delta_low, delta_high)
    aapo_delta_high: float = 0.28  # AAPO: margin clip above
    aapo_ref: str = "fresh"  # AAPO reference rewards: fresh (G new reference samples every step, the paper) | cache
    dynamic_sampling: bool = False  # DAPO dynamic sampling: dead groups out of the loss (arXiv:2503.14476v1 Eq. 11)
    dynamic_sampling_rounds: int = 0  # R: up to R rounds of fresh prompts a step until B live groups (DAPO Alg. 1)
    dynamic_sampling_metric: str = "advantage"  # dead: all advantages 0 | reward: equal rewards | accuracy: DAPO's
    overlong: str = "keep"  # truncated responses: keep | zero (reward 0) | mask (out of the loss, DAPO Sec. 3.4)
    # loss
    loss: str = "auto"  # ppo (clipped surrogate) | reinforce (AAPO's) | auto = ppo for grpo/drgrpo, reinforce for aapo
    clip_eps_low: float = 0.2  # PPO lower clip, ratio >= 1 - eps_low (arXiv:1707.06347v2)
    clip_eps_high: float = 0.28  # upper clip, DAPO "clip-higher" (arXiv:2503.14476v1 Eq. 10)
    dual_clip: float = 3.0  # dual-clip c for A < 0 (arXiv:1912.09729v3 Eq. 5); 0 = off
    log_ratio_clamp: float = 20.0  # clamp of log(pi / pi_old) before exp, as verl
    agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm (Dr. GRPO)
    kl_coef: float = 0.0  # k3 KL to the initial policy (loads a reference model when > 0); the recipe: 0
    entropy_coef: float = 0.0  # entropy bonus; the recipe: 0
    logp_from_hidden: bool = False  # log-probs from hidden states with the chunked LM-head kernel (no T x V logits)
    tis_cap: float = 0.0  # truncated importance sampling: loss x min(pi_old / pi_engine, C), Yao et al. 2025; 0 = off
    # optim
    lr: float = 1e-6  # AdamW learning rate (peak), no warm-up
    lr_schedule: str = "constant"  # constant (the papers) | cosine: lr x (1 + cos(pi x step / steps)) / 2, to 0 at the end
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    weight_decay: float = 0.01  # AdamW weight decay
    grad_clip: float = 1.0  # max global gradient norm
    mini_batch_prompts: int = 32  # prompts per optimizer step (128 / 32 = 4 steps per rollout batch)
    ppo_epochs: int = 1  # passes over each rollout batch
    micro_batch_size: int = 8  # sequences per forward/backward pass (gradient accumulation; no effect on the math)
    micro_batch_tokens: int = 0  # micro-batches by token budget (rows x padded width <= N) instead; 0 = off
    # schedule
    epochs: int = 60  # passes over the training data (66 steps/epoch x 60 = 3,960 steps in the paper)
    max_steps: int = 0  # stop after this many steps (0 = epochs x steps per epoch)
    # eval (greedy, default template; eval.py's protocol and grader)
    eval_every: int = 20  # evaluate every N steps (and before the first and after the last); 0 = never
    eval_data: str = ""  # held-out .jsonl/.parquet/HF dataset (problem/answer fields); empty = eval.py benchmarks
    eval_benchmarks: str = "math500"  # eval.py benchmark names (comma-separated) when --eval-data is empty
    eval_data_dir: str = ""  # folder of <benchmark>.jsonl for those; empty = eval.py's HF dataset
    eval_limit: int = 0  # questions per benchmark (0 = all)
    eval_template: str = DEFAULT_TEMPLATE  # template of the evaluation (the paper: qwen-math)
    eval_max_new_tokens: int = 3000  # eval response budget (the paper: 3000)
    eval_context: int = 4096  # eval prompt + response tokens (the paper: 4096)
    # logging
    save_every: int = 20  # checkpoint every N steps (and at the end); 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (0 = all)
    samples_every: int = 20  # dump a few (prompt, response, reward) rows every N steps
    num_samples: int = 4  # rows per dump
    progress: bool = True  # progress bars for generation and evaluation
    wandb_project: str = ""  # log to Weights & Biases under this project when wandb is installed
    tensorboard: bool = False  # also write TensorBoard events to --out/tb when tensorboard is installed


# --preset tiny: a ~0.8M-parameter Qwen2 on two-digit arithmetic (tiny.py); model and data paths are filled in later.
TINY_PRESET = dict(
    template=TINY_DEFAULT_TEMPLATE, eval_template=TINY_DEFAULT_TEMPLATE, templates="tiny", device="cpu",
    prompts_per_step=16, group_size=8, max_new_tokens=40, eval_max_new_tokens=40, eval_context=256,
    max_prompt_tokens=200, gen_batch_size=512, lr=2e-4, lr_schedule="cosine", mini_batch_prompts=16,
    micro_batch_size=128, max_steps=100, epochs=1000, eval_every=10, save_every=20, samples_every=20, reward_workers=1,
    progress=False, weight_decay=0.0,
    model="", train_data="", eval_data="",  # empty: filled with the cached tiny world (tiny.prepare) at start-up
)  # fmt: skip
# One optimizer step per rollout batch (on-policy) and the cosine decay: measured at the end of docs/tiny.md.
# --preset tiny-chain (docs/tiny.md): multi-step sums written out, responses up to 128, token-budget micro-batches
CHAIN_PRESET = dict(TINY_PRESET, template=CHAIN_DEFAULT_TEMPLATE, eval_template=CHAIN_DEFAULT_TEMPLATE, templates="chain",
                    max_new_tokens=128, eval_max_new_tokens=128, eval_context=320, max_steps=200, micro_batch_tokens=4096)  # fmt: skip

# The paper preset (the default; old name 1.5b): one 80 GB GPU. Memory plan (docs/gpu.md; estimates, unmeasured), of
# 79.1 GiB: rollouts 73 GiB (trainer 17.2 GiB fp32 weights + AdamW, policy engine 0.7 x 79.1 = 55.4 GiB: ~1.8M tokens
# of KV cache, also AAPO's reference's, ReferencePolicy); training ~39 GiB while the engine sleeps (level 2).
GPU_PRESET = dict(engine="vllm", device="cuda", bf16=True, grad_ckpt=True, logp_from_hidden=True,
                  micro_batch_tokens=32768, gpu_memory_utilization=0.7)  # fmt: skip


def field_help() -> dict[str, str]:
    """The trailing comment of each Config field (read from this file's source), used as its --help text."""
    pattern = re.compile(r"\s+(\w+): [^=]+=.*?  # (.*)$")
    return {m.group(1): m.group(2) for line in inspect.getsource(Config).splitlines() if (m := pattern.match(line))}


def parse_config(argv: list[str] | None = None) -> Config:
    """Config from the command line: defaults < preset < flags given. One --flag per field (--no-flag for booleans)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    helps = field_help()
    for f in fields(Config):  # SETUP: a short argparse loop instead of a CLI dependency
        flag, text = "--" + f.name.replace("_", "-"), f"{helps.get(f.name, '')} [default: {f.default}]"
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(flag, type=f.type, default=argparse.SUPPRESS, help=text, metavar=f.type.__name__.upper())
    given = vars(parser.parse_args(argv))
    presets, cfg = {"paper": GPU_PRESET, "1.5b": GPU_PRESET, "tiny": TINY_PRESET, "tiny-chain": CHAIN_PRESET}, Config(**given)
    if cfg.preset not in presets:
        raise BadValue(f"--preset {cfg.preset!r}: expected tiny, tiny-chain or paper (the default; 1.5b is its old name)")
    return check_config(replace(cfg, **{**presets[cfg.preset], **given}))


def check_config(cfg: Config) -> Config:
    """Clear errors for flag values that cannot work."""
    choices = dict(estimator=("grpo", "drgrpo", "aapo"), loss=("auto", "ppo", "reinforce"), aapo_ref=("fresh", "cache"),
                   agg=("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"),
                   overlong=("keep", "zero", "mask"), engine=("transformers", "vllm"), device=("auto", "cpu", "cuda"),
                   lr_schedule=("constant", "cosine"), dynamic_sampling_metric=METRICS,
                   vllm_sleep_level=(1, 2))  # fmt: skip
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise BadValue(f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: expected one of {', '.join(map(str, allowed))}")
    if cfg.group_size < 2:
        raise BadValue(f"--group-size {cfg.group_size}: group-relative advantages need at least 2 samples per prompt")
    if cfg.prompts_per_step % cfg.mini_batch_prompts:
        raise BadValue(f"--mini-batch-prompts {cfg.mini_batch_prompts} must divide --prompts-per-step {cfg.prompts_per_step}")
    positive = ("prompts_per_step", "max_new_tokens", "mini_batch_prompts", "micro_batch_size", "ppo_epochs", "lr")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise BadValue(f"--{name.replace('_', '-')} must be positive (got {getattr(cfg, name)})")
    world = int(os.environ.get("WORLD_SIZE", 1))  # torchrun's rank count (docs/multi-gpu.md)
    if cfg.mini_batch_prompts % world:
        raise BadValue(f"--mini-batch-prompts {cfg.mini_batch_prompts} must be divisible by the {world} ranks of "
                         "torchrun --nproc_per_node: each rank takes an equal share of every mini-batch")  # fmt: skip
    if not 0 <= cfg.dynamic_sampling_rounds <= 15 or (cfg.dynamic_sampling_rounds and not cfg.dynamic_sampling):
        raise BadValue("--dynamic-sampling-rounds: 0 to 15 (rollout_seed's room), and > 0 needs --dynamic-sampling")
    if cfg.tis_cap < 0 or cfg.micro_batch_tokens < 0:
        raise BadValue("--tis-cap and --micro-batch-tokens must be >= 0 (0 = off)")
    if cfg.engine == "vllm":
        model_len(cfg)  # raises when --max-model-len is too short
    if not cfg.preset.startswith("tiny") and not (cfg.model and cfg.train_data):
        raise BadValue("--model and --train-data must not be empty")
    if cfg.temperature <= 0:
        raise BadValue("--temperature must be > 0 for RL rollouts (greedy samples give zero-variance groups)")
    for name in [cfg.template, cfg.eval_template] + (template_names(cfg) if cfg.aug else []):
        if name not in ALL_TEMPLATES:
            raise BadValue(f"unknown template {name!r}; known: {', '.join(ALL_TEMPLATES)}")
    return cfg


def model_len(cfg: Config) -> int:
    """vLLM's max_model_len: --max-model-len, or the longest rollout and evaluation (prompt + response tokens)."""
    need = max(cfg.max_prompt_tokens + cfg.max_new_tokens, cfg.eval_context * (cfg.eval_every > 0))
    if 0 < cfg.max_model_len < need:
        raise BadValue(f"--max-model-len {cfg.max_model_len}: prompts + responses (and --eval-context) need {need}")
    return cfg.max_model_len or need


def loss_kind(cfg: Config) -> str:
    """ALGO: each estimator's paper loss unless --loss says otherwise."""
    return cfg.loss if cfg.loss != "auto" else ("reinforce" if cfg.estimator == "aapo" else "ppo")


# ----------------------------------------------------------------------------------------------------------------------
# Utilities


def lr_at(lr: float, schedule: str, step: int, total_steps: int) -> float:
    """Learning rate of the optimizer steps of rollout batch `step` (0-based) of total_steps: constant, or a cosine
    from lr at step 0 down to 0 after the last step (Loshchilov & Hutter, arXiv:1608.03983v5 Eq. 5, one cycle, no
    restarts). A function of the step alone, so a resumed run continues the same schedule."""
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
    return lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def pick_device(cfg: Config) -> torch.device:
    """SETUP: --device (auto: CUDA if any). Stops before any download without CUDA (paper preset) or vLLM (vllm)."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if name == "cuda" and not torch.cuda.is_available():
        if not cfg.preset.startswith("tiny"):
            raise CannotRun("the paper recipe (Qwen2.5-Math-1.5B, 1,024 responses of <= 3,072 tokens a step) needs a CUDA "
                            "GPU. On a CPU run the tiny preset: python train.py --preset tiny --aug --estimator aapo")
        raise BadValue("--device cuda: no CUDA device is available")
    if cfg.engine == "vllm" and "vllm" not in sys.modules and importlib.util.find_spec("vllm") is None:
        raise CannotRun("--engine vllm needs vLLM: make gpu-setup (pip install -e '.[gpu]'), or --engine transformers")
    return torch.device(name)


# ----------------------------------------------------------------------------------------------------------------------
# Data & templates


def template_names(cfg: Config) -> list[str]:
    """The templates drawn from with --aug ("all": the paper's 13; "tiny": the tiny preset's 4; "chain": tiny-chain's 5)."""
    named = TEMPLATE_SETS.get(cfg.templates)  # a whole set, else a comma-separated list of names
    return list(named) if named is not None else [t.strip() for t in cfg.templates.split(",") if t.strip()]


def filter_long_prompts(rows: list[dict], tokenizer, names: list[str], max_tokens: int) -> tuple[list[dict], int]:
    """Drop rows whose prompt exceeds max_tokens with any of the templates in use (each may be drawn)."""
    longest = [0] * len(rows)
    for name in names:
        ids = tokenizer([render(name, r["problem"]) for r in rows], add_special_tokens=False)["input_ids"]
        longest = [max(a, len(b)) for a, b in zip(longest, ids)]
    kept = [r for r, n in zip(rows, longest) if n <= max_tokens]
    return kept, len(rows) - len(kept)


def train_rows(cfg: Config, tokenizer, names: list[str]) -> tuple[list[dict], int]:
    """SETUP: the usable training rows (problem and answer present, prompt short enough) and the run's step count."""
    raw = read_rows(cfg.train_data, cfg.train_subset, cfg.train_split)
    rows, n_bad = clean_rows(raw, cfg.problem_field, cfg.answer_field, cfg.train_data)
    rows, n_long = filter_long_prompts(rows, tokenizer, names, cfg.max_prompt_tokens)
    if len(rows) < cfg.prompts_per_step:
        raise BadValue(f"{cfg.train_data}: {len(rows)} usable rows, fewer than --prompts-per-step {cfg.prompts_per_step}")
    steps_per_epoch = len(rows) // cfg.prompts_per_step
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or 10**12)
    print0(f"data: {len(raw)} rows, {n_bad} skipped (missing problem/answer), {n_long} filtered (prompt > "
           f"{cfg.max_prompt_tokens} tokens), {len(rows)} used; {steps_per_epoch} steps/epoch, {total_steps} steps")  # fmt: skip
    return rows, total_steps


def batch_indices(step: int, num_rows: int, batch: int, seed: int) -> tuple[int, list[int]]:
    """(epoch, dataset indices) of a step: a fresh permutation per epoch, a function of (seed, step) only, so that a
    resumed run sees exactly the data order of the uninterrupted one. An incomplete last batch is dropped."""
    steps_per_epoch = num_rows // batch
    epoch, k = divmod(step, steps_per_epoch)
    order = list(range(num_rows))
    random.Random(f"data/{seed}/{epoch}").shuffle(order)
    return epoch, order[k * batch : (k + 1) * batch]


def step_prompts(cfg: Config, step: int, rows: list[dict], names: list[str], tokenizer):
    """This rank's B prompts of a step: (epoch, dataset indices, template names, prompt token ids). One template per
    prompt, shared by its whole group; with --aug drawn per (seed, epoch, row) (arXiv:2602.03190v1 Sec. 3)."""
    epoch, idx = batch_indices(step, len(rows), cfg.prompts_per_step, cfg.seed)
    idx = [idx[k] for k in rank_share(cfg.prompts_per_step, cfg.mini_batch_prompts, rank(), world_size())]  # B of them
    tmpl = [draw_template(cfg.seed, epoch, i, names) if cfg.aug else cfg.template for i in idx]  # ALGO: aug
    prompt_ids = [tokenizer.encode(render(t, rows[i]["problem"]), add_special_tokens=False) for t, i in zip(tmpl, idx)]
    return epoch, idx, tmpl, prompt_ids


# ----------------------------------------------------------------------------------------------------------------------
# Model & tokenizer


def load_model_and_tokenizer(cfg: Config, device: torch.device):
    """The policy (fp32 master weights) and its tokenizer; a clear error when either cannot be loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.model)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    except (OSError, ValueError) as e:  # not found, not reachable, not a causal LM; other errors keep their traceback
        raise CannotRun(f"cannot load --model {cfg.model!r}: {type(e).__name__}: {e}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.grad_ckpt:
        model.gradient_checkpointing_enable()
    return model.to(device), tokenizer


def vocab_limit(model, tokenizer) -> int | None:
    """Ids >= len(tokenizer) are padded LM-head rows (Qwen2.5: 151,665 ids, 151,936 rows): never sampled."""
    return len(tokenizer) if len(tokenizer) < model.config.vocab_size else None


# ----------------------------------------------------------------------------------------------------------------------
# Rollouts


def make_engine(cfg: Config, model, tokenizer):
    """The rollout engine (engine.py interface) of the policy `model`.

    transformers: HF generate on `model` itself. vllm: an in-process vllm.LLM with --gpu-memory-utilization of the GPU,
    asleep while training, loading "dummy" weights and getting the trainer's pushed at once (no disk read, the resumed
    weights on --resume, the per-step push from step 0). Under torchrun each rank builds its own in torchrun's group
    (external_launcher); vLLM's seed is --seed on every rank (it re-seeds the process RNGs), the rank is in the requests'."""
    if cfg.engine == "transformers":
        from mathrl.engine import TransformersEngine

        return TransformersEngine(model, tokenizer, batch_size=cfg.gen_batch_size, vocab_limit=vocab_limit(model, tokenizer))
    from mathrl.engine_vllm import VLLMEngine

    engine = VLLMEngine(
        cfg.model, tokenizer, dtype="bfloat16" if cfg.bf16 else "float32", seed=cfg.seed, max_model_len=model_len(cfg),
        gpu_memory_utilization=cfg.gpu_memory_utilization, vocab_limit=vocab_limit(model, tokenizer),
        sleep_level=cfg.vllm_sleep_level, load_format="dummy", external_launcher=world_size() > 1,
    )  # fmt: skip
    engine.load_weights(model)  # SETUP: awake, so pushed now (and the prefix cache reset)
    return engine


def rollout_seed(seed: int, step: int, stream: int, rank: int = 0, rnd: int = 0) -> int:
    """Seed of one generate() call: a function of (run seed, step, stream, rank, refill round), so resuming replays the
    same samples; ranks are 2^40 + 2^24 apart, so no two share a seed (+ 2^24: torch's CPU generator keeps only the low
    32 bits), and refill rounds 1-15 of dynamic sampling 2^20 (2^18 steps; round 16 would meet rank 1's round 0)."""
    return (seed * 1_000_003 + step) * 4 + stream + rank * (2**40 + 2**24) + rnd * 2**20  # stream 0 policy, 1 reference


def reference_rollouts(cfg: Config, ref_engine, step: int, prompt_ids: list, keys: list, ref_cache: dict, rnd: int = 0):
    """AAPO's reference samples to grade: G for every prompt with --aapo-ref fresh (the paper), with cache only for the
    (row, template) keys never drawn. Returns (positions b among the B prompts, their [len][G] completions)."""
    ref_rows = [b for b, key in enumerate(keys) if cfg.aapo_ref == "fresh" or key not in ref_cache]
    if cfg.estimator != "aapo" or not ref_rows:  # grpo, drgrpo: no reference; cache: every pair drawn before
        return [], []
    ref_comps = ref_engine.generate([prompt_ids[b] for b in ref_rows], cfg.group_size, cfg.max_new_tokens,
                                    cfg.temperature, cfg.top_p, seed=rollout_seed(cfg.seed, step, 1, rank(), rnd))  # fmt: skip
    return ref_rows, ref_comps


def rollout_round(cfg: Config, engine, ref_engine, tokenizer, step: int, rnd: int, rows, idx, tmpl, ref_cache) -> dict:
    """A step's round on this rank: G samples of each prompt (rows idx, templates tmpl; none allowed), AAPO's reference
    samples, rewards, advantages, dead groups (dynamic.py). Round 0: the step's batch; >= 1: refills, own seeds."""
    prompt_ids = [tokenizer.encode(render(t, rows[i]["problem"]), add_special_tokens=False) for t, i in zip(tmpl, idx)]
    keys, golds, t0 = list(zip(idx, tmpl)), [rows[i]["answer"] for i in idx], time.time()  # keys of AAPO's cache
    comps = engine.generate(prompt_ids, cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                            seed=rollout_seed(cfg.seed, step, 0, rank(), rnd), progress=cfg.progress and rank() == 0) if idx else []  # [B][G] fmt: skip
    ref_rows, ref_comps = reference_rollouts(cfg, ref_engine, step, prompt_ids, keys, ref_cache, rnd)  # AAPO's
    t_gen = time.time() - t0
    res, ref_rewards, ref_stats = step_rewards(cfg, comps, ref_comps, ref_rows, golds, keys, ref_cache)  # (B, G)
    adv = compute_advantages(res["reward"], cfg.estimator, ref_rewards=ref_rewards, std_eps=cfg.std_eps,
                             aapo_std=cfg.aapo_std, aapo_std_eps=cfg.aapo_std_eps, delta_low=cfg.aapo_delta_low,
                             delta_high=cfg.aapo_delta_high)  # (B, G) fmt: skip
    dead = dead_groups(res, cfg.dynamic_sampling_metric, ref_rewards, cfg.aapo_delta_low, cfg.aapo_delta_high)  # (B,)
    gen_tokens = sum(len(c.token_ids) for group in comps + ref_comps for c in group)
    return dict(idx=idx, tmpl=tmpl, prompt_ids=prompt_ids, golds=golds, comps=comps, res=res, ref_rewards=ref_rewards,
                ref_stats=ref_stats, adv=adv, dead=dead, gen_tokens=gen_tokens, t_gen=t_gen, t_reward=time.time() - t0 - t_gen)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Rewards


def score(cfg: Config, completions: list, golds: list, names: list[str]) -> dict[str, torch.Tensor]:
    """Reward, accuracy and format of [B][G] completions, each (B, G); verify.py grades in parallel with time limits
    (grading.py). --overlong zero gives truncated responses 0."""
    B, G = len(completions), len(completions[0]) if completions else cfg.group_size
    if B == 0:  # a refill round without prompts on this rank
        return {k: torch.zeros(0, G, dtype=torch.float64) for k in ("reward", "accuracy", "format", "truncated")}
    flat = [c for group in completions for c in group]
    acc = grade_batch([c.text for c in flat], [g for g in golds for _ in range(G)], timeout=cfg.reward_timeout,
                      workers=cfg.reward_workers or None)  # fmt: skip
    fmt = [format_score(n, c.text) if cfg.use_format else 0.0 for n, group in zip(names, completions) for c in group]
    accuracy, fmt = torch.tensor(acc, dtype=torch.float64).view(B, G), torch.tensor(fmt, dtype=torch.float64).view(B, G)
    res = {"reward": accuracy + fmt, "accuracy": accuracy, "format": fmt}  # ALGO: arXiv:2602.03190v1 Sec. 3 reward
    res["truncated"] = torch.tensor([not c.finished for c in flat], dtype=torch.float64).view(B, G)
    if cfg.overlong == "zero":  # ALGO: DAPO-style overlong penalty, the simplest form (arXiv:2503.14476v1 Sec. 3.4)
        res["reward"] = res["reward"] * (1 - res["truncated"])
    return res


def step_rewards(cfg: Config, comps, ref_comps, ref_rows, golds, keys, ref_cache: dict):
    """score() of the policy's [B][G] and the reference's samples in one parallel batch. Returns the policy's (B, G)
    results, AAPO's (B, G) reference rewards (None for grpo/drgrpo) and its aapo/ref_samples and aapo/cache_size."""
    B, tmpl = len(comps), [t for _, t in keys]
    res = score(cfg, comps + ref_comps, golds + [golds[b] for b in ref_rows], tmpl + [tmpl[b] for b in ref_rows])
    res, ref_res = {k: v[:B] for k, v in res.items()}, {k: v[B:] for k, v in res.items()}
    if cfg.estimator != "aapo":
        return res, None, {}
    if cfg.aapo_ref == "fresh":  # the paper: r_i^ref from this step's i-th reference sample of the same prompt
        n_ref = int(all_sum(torch.tensor(float(len(ref_rows) * cfg.group_size))))  # all ranks' (a round's)
        return res, ref_res["reward"], {"aapo/ref_samples": n_ref, "aapo/cache_size": 0}
    # --aapo-ref cache (this project's): the rewards of the first reference samples of each (row, template), kept all
    # run; every rank gets every rank's new ones, so the cache is the one-process cache
    new_refs = all_items([(keys[b], ref_res["reward"][j].tolist()) for j, b in enumerate(ref_rows)])
    ref_cache.update(new_refs)
    ref_rewards = torch.tensor([ref_cache[key] for key in keys], dtype=torch.float64).view(B, cfg.group_size)  # (B, G)
    return res, ref_rewards, {"aapo/ref_samples": len(new_refs) * cfg.group_size, "aapo/cache_size": len(ref_cache)}


# ----------------------------------------------------------------------------------------------------------------------
# Advantages (GRPO, Dr. GRPO, AAPO)


def group_advantages(rewards: torch.Tensor, scale_by_std: bool, eps: float) -> torch.Tensor:
    """Group-relative advantage: r - mean(r) per group, optionally divided by (std + eps). (B, G) -> (B, G)."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)  # (B, G)
    if scale_by_std:
        adv = adv / (rewards.std(dim=1, keepdim=True) + eps)  # unbiased std over the G samples, as the papers' code
    return adv


def aapo_margin(rewards: torch.Tensor, ref_rewards: torch.Tensor) -> torch.Tensor:
    """AAPO advantage margin ("momentum" in v2), arXiv:2505.14264v2 Eq. (6): M_i = r_i - r_i^ref, paired by index."""
    return rewards - ref_rewards  # (B, G)


def compute_advantages(
    rewards: torch.Tensor,
    estimator: str,
    ref_rewards: torch.Tensor | None = None,
    std_eps: float = 1e-6,
    aapo_std: bool = True,
    aapo_std_eps: float = 1e-4,
    delta_low: float = 0.2,
    delta_high: float = 0.28,
) -> torch.Tensor:
    """Per-sample advantages (B, G) from rewards (B, G); every sample's tokens share its advantage.

    grpo:   A_i = (r_i - mean(r)) / (std(r) + eps)          arXiv:2402.03300v3 Sec. 4.1.2 (outcome supervision)
    drgrpo: A_i = r_i - mean(r)                              arXiv:2503.20783v1 Eq. (3): no std, no length division
    aapo:   A~_i = A_i + clip(r_i - r_i^ref, -d_low, d_high) arXiv:2505.14264v2 Eq. (7); A_i as GRPO (eps 1e-4), or
            r_i - mean(r) with aapo_std=False (its 7B runs). ref_rewards (B, G) come from the frozen initial policy.
    A group whose rewards are all equal gets A = 0 (and, for AAPO, only the clipped margin).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (B, G) with G >= 2, got {tuple(rewards.shape)}")
    if estimator == "grpo":
        return group_advantages(rewards, scale_by_std=True, eps=std_eps)
    if estimator == "drgrpo":
        return group_advantages(rewards, scale_by_std=False, eps=0.0)
    if estimator == "aapo":
        if ref_rewards is None or ref_rewards.shape != rewards.shape:
            raise ValueError("aapo needs ref_rewards shaped like rewards (B, G)")
        base = group_advantages(rewards, scale_by_std=aapo_std, eps=aapo_std_eps)
        return base + aapo_margin(rewards, ref_rewards).clamp(-delta_low, delta_high)  # ALGO: clipped margin
    raise ValueError(f"unknown estimator {estimator!r}; expected grpo, drgrpo or aapo")


# ----------------------------------------------------------------------------------------------------------------------
# Log-probs & entropy


def pad_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """Left-pad prompts to P and right-pad responses to T, as the engine generated them.

    Returns input_ids (N, P+T), attention_mask (N, P+T) and response mask (N, T) (1 on real response tokens).
    """
    P, T, N = max(map(len, prompts)), max(1, max(map(len, responses))), len(prompts)
    input_ids = torch.full((N, P + T), pad_id, dtype=torch.long)  # (N, P+T)
    attention_mask = torch.zeros((N, P + T), dtype=torch.long)  # (N, P+T)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, P - len(p) : P + len(r)] = torch.tensor(p + r, dtype=torch.long)
        attention_mask[i, P - len(p) : P + len(r)] = 1
    return input_ids, attention_mask, attention_mask[:, P:].clone()


def batch_tensors(comps: list, prompt_ids: list, keep: torch.Tensor, adv: torch.Tensor, pad_id: int, device) -> dict:
    """The rollout batch as this rank's tensors (update_policy's `batch`): sequence b*G + g is sample g of prompt b.
    old_logp, entropy and ref_logp start as zeros, filled by old_logprobs() or by the training forward (deviation 3)."""
    responses = [c.token_ids for group in comps for c in group]
    seq_prompts = [p for p, group in zip(prompt_ids, comps) for _ in group]
    input_ids, attn, resp_mask = pad_batch(seq_prompts, responses, pad_id)
    N, T = resp_mask.shape  # N = B*G
    engine_logp = torch.zeros(N, T)  # (N, T) sampling log-probs reported by the engine
    for n, c in enumerate(c for group in comps for c in group):
        engine_logp[n, : len(c.logprobs)] = torch.tensor(c.logprobs)
    seq_lens = [(len(p), len(r)) for p, r in zip(seq_prompts, responses)]  # for --micro-batch-tokens
    return dict(input_ids=input_ids.to(device), attn=attn.to(device), resp_mask=resp_mask, seq_lens=seq_lens,
                loss_mask=resp_mask.float() * keep.view(N, 1), adv=adv.view(N).float(), engine_logp=engine_logp,
                old_logp=torch.zeros(N, T), entropy=torch.zeros(N, T), ref_logp=torch.zeros(N, T))  # (N, T) each


def old_logprobs(cfg: Config, model, ref_model, batch: dict, limit: int | None) -> None:
    """Fill batch's old_logp and entropy (N, T), and ref_logp for the KL, in a no-grad pass over the rollout batch."""
    N, device = batch["resp_mask"].shape[0], batch["input_ids"].device
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16):
        for rows_mb in micro_batches(torch.arange(N), batch["seq_lens"], cfg.micro_batch_size, cfg.micro_batch_tokens):
            ids, am, t = trim(rows_mb, batch["input_ids"], batch["attn"], batch["resp_mask"])
            lp, ent = token_logprobs(model, ids, am, t, cfg.temperature, limit, cfg.logp_from_hidden)
            batch["old_logp"][rows_mb, :t], batch["entropy"][rows_mb, :t] = lp.float().cpu(), ent.float().cpu()
            if cfg.kl_coef > 0:
                lp_ref, _ = token_logprobs(ref_model, ids, am, t, cfg.temperature, limit, cfg.logp_from_hidden)
                batch["ref_logp"][rows_mb, :t] = lp_ref.float().cpu()


def token_logprobs(model, input_ids, attention_mask, T: int, temperature: float, limit: int | None, from_hidden: bool):
    """Log-prob of each response token and the entropy of the full next-token distribution, both (N, T).

    The last T positions of input_ids (N, P+T) are the response; the logits at positions P-1 .. P+T-2 predict them.
    Both come from kernels/ (Triton on CUDA, the PyTorch reference on CPU) at the sampling temperature.
    from_hidden: run the LM head inside the chunked kernel, so the (N, T, V) logits never exist (large vocabularies).
    """
    from mathrl.kernels import logprob_entropy, logprob_entropy_from_hidden

    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (N, P+T) positions skip the left padding
    targets = input_ids[:, -T:]  # (N, T)
    if from_hidden:
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        hidden = hidden.last_hidden_state[:, -T - 1 : -1]  # (N, T, H)
        return logprob_entropy_from_hidden(hidden, model.lm_head.weight, targets, temperature, vocab_limit=limit)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=T + 1)
    logits = out.logits[:, :-1]  # (N, T, V)
    return logprob_entropy(logits, targets, temperature=temperature, vocab_limit=limit)  # (N, T), (N, T)


class PolicyForward(torch.nn.Module):
    """token_logprobs as a module: DDP (distributed.py) wraps this, so it sees the whole training forward, including
    the from-hidden path that calls model.model and model.lm_head.weight rather than model's own forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, T: int, temperature: float, limit: int | None, from_hidden: bool):
        return token_logprobs(self.model, input_ids, attention_mask, T, temperature, limit, from_hidden)


def policy_forward(model, device: torch.device) -> torch.nn.Module:
    """SETUP: what the training forward goes through: PolicyForward(model), under torchrun wrapped in DDP."""
    return ddp(PolicyForward(model), device)


# ----------------------------------------------------------------------------------------------------------------------
# Loss


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, n_tokens=None, n_seqs=None, max_len=None) -> torch.Tensor:
    """Reduce per-token values x (N, T) over the mask (N, T) to a scalar, normalising once.

    token-mean:              sum(x * mask) / n_tokens                  DAPO arXiv:2503.14476v1 Eq. (8)
    seq-mean-token-mean:     sum_i [sum_t x * mask / |o_i|] / n_seqs   GRPO arXiv:2402.03300v3 Eq. (3)
    seq-mean-token-sum-norm: sum(x * mask) / (n_seqs * max_len)        Dr. GRPO arXiv:2503.20783v1 Sec. 3.2 (constant)
    n_tokens / n_seqs default to this batch's; pass the whole mini-batch's when x is one micro-batch of it, so the sum
    of micro-batch losses equals the mini-batch loss (and across ranks: the global counts).
    """
    mask = mask.to(x.dtype)
    n_tokens = mask.sum() if n_tokens is None else n_tokens
    n_seqs = (mask.sum(-1) > 0).sum() if n_seqs is None else n_seqs
    if mode == "token-mean":
        return (x * mask).sum() / max(n_tokens, 1)
    if mode == "seq-mean-token-mean":
        return ((x * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(n_seqs, 1)
    if mode == "seq-mean-token-sum-norm":
        return (x * mask).sum() / (max(n_seqs, 1) * (max_len or x.shape[1]))
    raise ValueError(f"unknown aggregation {mode!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "ppo",
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip: float = 3.0,
    log_ratio_clamp: float = 20.0,
    agg: str = "token-mean",
    n_tokens=None,
    n_seqs=None,
    max_len=None,
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Loss (a scalar to minimise) and stats from log-probs (N, T), old log-probs (N, T), advantages (N,), mask (N, T).

    ppo:       r_t = pi / pi_old; obj = min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)   PPO arXiv:1707.06347v2 Eq. (7)
               with clip-higher (DAPO arXiv:2503.14476v1 Eq. 10), and for A < 0 obj = max(obj, c A) (dual-clip,
               arXiv:1912.09729v3 Eq. 5), so a huge ratio on a bad token cannot blow up the loss.
    reinforce: obj = A log pi (AAPO arXiv:2505.14264v2 Eq. 8: no ratio, no clip; its "cross-entropy" form).
    Optional: - kl_coef * k3(pi, pi_ref) (arXiv:2402.03300v3 Eq. 4) and + entropy_coef * H. is_weight (N, T), a
    constant: per-token weight of the policy-gradient term (not of the KL or entropy terms), e.g. tis_weight().
    """
    adv = adv.to(logp.dtype)[:, None]  # (N, 1)
    mask = mask.to(logp.dtype)
    stats = {}
    if kind == "ppo":
        ratio = torch.exp((logp - old_logp).clamp(-log_ratio_clamp, log_ratio_clamp))  # (N, T)
        surr = ratio * adv
        surr_clipped = ratio.clamp(1 - eps_low, 1 + eps_high) * adv
        pessimistic = torch.minimum(surr, surr_clipped)  # (N, T)
        obj = pessimistic
        if dual_clip > 0:
            obj = torch.where(adv < 0, torch.maximum(obj, dual_clip * adv), obj)  # ALGO: dual-clip lower bound
        clipped = (surr_clipped < surr) | (obj > pessimistic)  # PPO-clipped or dual-clipped tokens
        stats["clip_frac"] = ((clipped.to(mask.dtype) * mask).sum() / mask.sum().clamp(min=1)).item()
    elif kind == "reinforce":
        obj = adv * logp  # (N, T)
        stats["clip_frac"] = 0.0
    else:
        raise ValueError(f"unknown loss {kind!r}; expected ppo or reinforce")
    if is_weight is not None:
        obj = obj * is_weight  # ALGO: TIS correction of the rollout / trainer mismatch
    if kl_coef > 0:
        log_r = ref_logp - logp
        kl = torch.exp(log_r) - log_r - 1  # k3 estimator of KL(pi || pi_ref), always >= 0
        obj = obj - kl_coef * kl
        stats["kl"] = ((kl.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
    if entropy_coef > 0:
        obj = obj + entropy_coef * entropy
    pg_obj = aggregate(obj, mask, agg, n_tokens, n_seqs, max_len)
    return -pg_obj, stats  # one sign flip: maximise the objective


def tis_weight(old_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TIS weight w = min(pi_old / pi_engine, C) per token (N, T), and where it is truncated (N, T): reweights towards
    the trainer's distribution the samples of an engine whose kernels (bf16 vLLM) differ. Yao et al. 2025, "Your
    Efficient RL Framework Secretly Brings You Off-Policy RL Training" (fengyao.notion.site/off-policy-rl), TIS."""
    ratio = torch.exp(old_logp - engine_logp)  # (N, T); inf on overflow, truncated to C below
    return ratio.clamp(max=cap), ratio > cap


# ----------------------------------------------------------------------------------------------------------------------
# Eval


def run_eval(cfg: Config, engine, tokenizer, rows: list[dict]) -> dict:
    """Greedy accuracy with the eval template, graded exactly as eval.py does (boxed answer, grading.grade_batch).
    Under torchrun each rank evaluates rows rank, rank + world, ...; the records are gathered back into row order."""
    records = evaluation.evaluate(
        engine, tokenizer, rows[rank() :: world_size()], template=cfg.eval_template, context=cfg.eval_context,
        max_new_tokens=cfg.eval_max_new_tokens, temperature=0.0, seed=cfg.seed, timeout=cfg.reward_timeout,
        workers=cfg.reward_workers or None, progress=cfg.progress and rank() == 0,
    )  # fmt: skip
    records = all_strided(records, len(rows))  # one record per row, back in row order
    per_bench = evaluation.score(records)
    metrics = {"eval/accuracy": evaluation.summarize(per_bench)["micro"] / 100}  # question-weighted
    if len(per_bench) > 1:
        metrics.update({f"eval/{b}": r["accuracy"] / 100 for b, r in per_bench.items()})
    metrics["eval/response_len"] = sum(r["tokens"] for r in records) / max(len(records), 1)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Training loop


def update_policy(cfg: Config, forward, optimizer, batch: dict, limit: int | None) -> dict:
    """This rank's update on a rollout batch: --ppo-epochs passes over mini-batches of whole groups (one optimizer step
    each, micro-batches for memory). forward: PolicyForward(model), or DDP of it. batch: this rank's tensors (main's
    names); with one update per batch, old_logp and entropy are filled in place. Returns per-step grad_norms and this
    rank's per-micro-batch losses, clip_fracs and kls."""
    world, kind, device = world_size(), loss_kind(cfg), batch["input_ids"].device
    n_updates = cfg.ppo_epochs * (cfg.prompts_per_step // cfg.mini_batch_prompts)  # the same on every rank
    mini = cfg.mini_batch_prompts // world * cfg.group_size  # this rank's sequences per mini-batch
    loss_mask, old_logp, entropy, engine_logp = (batch[k] for k in ("loss_mask", "old_logp", "entropy", "engine_logp"))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.bf16)
    out = {"grad_norms": [], "losses": [], "clip_fracs": [], "kls": []}
    for _ in range(cfg.ppo_epochs):
        for mb_start in range(0, loss_mask.shape[0], mini):
            mb = torch.arange(mb_start, mb_start + mini)  # this rank's sequences of the mini-batch
            # ALGO: the normalisers n_tokens (token-mean) and n_seqs (seq-mean-token-mean) count the whole mini-batch
            # on all ranks (all-reduce sum), so the loss is the one-process loss, however the ranks split it
            counts = all_sum(torch.stack([loss_mask[mb].sum().double(), (loss_mask[mb].sum(-1) > 0).sum().double()]))
            n_tokens, n_seqs = counts[0].item(), int(counts[1])
            if n_tokens == 0:
                continue  # every sequence masked out (dynamic sampling / overlong): no update, on any rank
            optimizer.zero_grad(set_to_none=True)
            mbs = micro_batches(mb, batch["seq_lens"], cfg.micro_batch_size, cfg.micro_batch_tokens)
            for j, rows_mb in enumerate(mbs):
                ids, am, t = trim(rows_mb, batch["input_ids"], batch["attn"], batch["resp_mask"])
                # SETUP: DDP all-reduces in the last micro-batch's backward only (ranks may hold different numbers)
                sync = j == len(mbs) - 1 or not hasattr(forward, "no_sync")
                with contextlib.nullcontext() if sync else forward.no_sync():
                    with autocast:
                        logp, ent = forward(ids, am, t, cfg.temperature, limit, cfg.logp_from_hidden)
                    logp, ent = logp.float(), ent.float()  # (n, t)
                    if n_updates == 1:  # on-policy: old log-probs are these very numbers (deviation 3)
                        old_logp[rows_mb, :t], entropy[rows_mb, :t] = logp.detach().cpu(), ent.detach().cpu()
                    is_w = None
                    if cfg.tis_cap > 0:  # ALGO: TIS, w = min(pi_old / pi_engine, C) (Yao et al. 2025)
                        is_w = tis_weight(old_logp[rows_mb, :t], engine_logp[rows_mb, :t], cfg.tis_cap)[0].to(device)
                    loss, stats = policy_loss(
                        logp, old_logp[rows_mb, :t].to(device), batch["adv"][rows_mb].to(device),
                        loss_mask[rows_mb, :t].to(device), kind=kind, eps_low=cfg.clip_eps_low,
                        eps_high=cfg.clip_eps_high, dual_clip=cfg.dual_clip, log_ratio_clamp=cfg.log_ratio_clamp,
                        agg=cfg.agg, n_tokens=n_tokens, n_seqs=n_seqs, max_len=cfg.max_new_tokens,
                        entropy=ent if cfg.entropy_coef > 0 else None, entropy_coef=cfg.entropy_coef,
                        ref_logp=batch["ref_logp"][rows_mb, :t].to(device), kl_coef=cfg.kl_coef, is_weight=is_w,
                    )  # fmt: skip
                    # ALGO: `loss` is this rank's part of the global loss (global normaliser), the global loss is the
                    # sum over ranks, and DDP averages gradients (sum / world): hence x world
                    (loss * world).backward()
                out["losses"].append(loss.item())
                out["clip_fracs"].append((stats["clip_frac"], loss_mask[rows_mb].sum().item()))
                out["kls"].append(stats.get("kl", 0.0))
            out["grad_norms"].append(torch.nn.utils.clip_grad_norm_(forward.parameters(), cfg.grad_clip).item())
            optimizer.step()
    return out


def step_metrics(cfg: Config, step: int, epoch: int, lr: float, res: dict, adv, zero_var, batch: dict, upd: dict,
                 tmpl0: list[str], tmpl: list[str], ref_rewards, ref_stats: dict, timing: dict, t_step: float) -> dict:  # fmt: skip
    """A step's metrics (docs/metrics.md) over all ranks: sums and counts all-reduced, (B, G) tensors and template draws
    gathered rank after rank. res, zero_var, ref_rewards, tmpl0: round 0's; adv, batch, tmpl, upd: the trained slots'."""
    G, world = cfg.group_size, world_size()
    entropy, old_logp, engine_logp, loss_mask = (batch[k] for k in ("entropy", "old_logp", "engine_logp", "loss_mask"))
    rmask = batch["resp_mask"].float()  # (N, T)
    ent_sum, logp_sum, logp_diff_sum, n_resp_tokens, n_tokens = all_sum(torch.stack([  # this rank's sums -> all ranks'
        (entropy * rmask).sum(), (old_logp * rmask).sum(), ((engine_logp - old_logp).abs() * rmask).sum(), rmask.sum(),
        batch["attn"].sum().float().cpu()])).tolist()  # fmt: skip
    g = {k: all_cat(v) for k, v in [*res.items(), ("adv", adv), ("zero_var", zero_var.float())]}  # (B*world, G)
    clip_w, clip_fw, loss_sum, kl_sum, n_micro = all_sum(torch.tensor(
        [sum(w for _, w in upd["clip_fracs"]), sum(f * w for f, w in upd["clip_fracs"]), sum(upd["losses"]),
         sum(upd["kls"]), len(upd["kls"])], dtype=torch.float64)).tolist()  # fmt: skip
    grad_norms = upd["grad_norms"]  # the same on every rank (after DDP's all-reduce)
    metrics = {
        "step": step,
        "epoch": epoch,
        "train/reward": g["reward"].mean().item(),
        "train/accuracy": g["accuracy"].mean().item(),
        "train/format": g["format"].mean().item(),
        "train/entropy": ent_sum / max(n_resp_tokens, 1),
        "train/nll_sampled": -logp_sum / max(n_resp_tokens, 1),
        "train/logp_diff": logp_diff_sum / max(n_resp_tokens, 1),
        "train/response_len": n_resp_tokens / (rmask.shape[0] * world),
        "train/truncated": g["truncated"].mean().item(),
        "train/clip_frac": clip_fw / clip_w if clip_w else 0.0,
        "train/zero_var_groups": g["zero_var"].mean().item(),
        "train/grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else 0.0,
        "train/loss": loss_sum / len(grad_norms) if grad_norms else 0.0,  # mean over optimizer steps, all ranks
        "train/adv_abs": g["adv"].abs().mean().item(),
        "train/updates": len(grad_norms),
        "train/lr": lr,
    }
    if cfg.kl_coef > 0:
        metrics["train/kl"] = kl_sum / n_micro
    if cfg.tis_cap > 0:
        truncated = tis_weight(old_logp, engine_logp, cfg.tis_cap)[1].float()  # (N, T)
        n_truncated, n_loss_tokens = all_sum(torch.stack([(truncated * loss_mask).sum(), loss_mask.sum()]))
        metrics["train/tis_clip_frac"] = (n_truncated / n_loss_tokens.clamp(min=1)).item()
    if cfg.estimator == "aapo":
        g_ref = all_cat(ref_rewards)  # (B*world, G)
        margin = aapo_margin(g["reward"], g_ref)
        metrics.update({
            "aapo/ref_reward": g_ref.mean().item(),
            "aapo/margin_mean": margin.mean().item(),
            "aapo/margin_abs": margin.abs().mean().item(),
            "aapo/margin_clipped": ((margin < -cfg.aapo_delta_low) | (margin > cfg.aapo_delta_high)).double().mean().item(),
            **ref_stats,  # aapo/ref_samples, aapo/cache_size
        })  # fmt: skip
    if cfg.aug:
        g_tmpl = all_items(tmpl0)  # rank after rank, as g
        for name in sorted(set(g_tmpl)):
            sel = torch.tensor([t == name for t in g_tmpl])  # (B*world,)
            seq_sel = torch.tensor([t == name for t in tmpl]).repeat_interleave(G)  # (N,) this rank's
            t_ent, t_tokens = all_sum(torch.stack([(entropy[seq_sel] * rmask[seq_sel]).sum(), rmask[seq_sel].sum()]))
            metrics[f"template/{name}/accuracy"] = g["accuracy"][sel].mean().item()
            metrics[f"template/{name}/entropy"] = (t_ent / t_tokens.clamp(min=1)).item()
            metrics[f"template/{name}/prompts"] = int(sel.sum())
    metrics.update(timing, **{"time/step": time.time() - t_step})
    metrics["perf/gen_tokens_per_s"] = n_resp_tokens / max(timing["time/generate"], 1e-9)
    metrics["perf/train_tokens_per_s"] = n_tokens * cfg.ppo_epochs / max(timing["time/train"], 1e-9)
    return metrics


def setup_run(cfg: Config, rank: int, world: int):
    """SETUP: the run folder (--resume, --overwrite), the tiny world (--preset tiny), the config printed and saved.
    Returns cfg (with the tiny world's paths), out, the checkpoint to resume from (or None), templates and run name."""
    out = Path(cfg.out)
    prepare_out(out, cfg.resume, cfg.overwrite, writer=rank == 0)
    if cfg.preset.startswith("tiny"):  # SETUP: the tiny world (warm-started model + data), built once and cached
        from mathrl import tiny

        barrier() if rank > 0 else None  # rank 0 builds it first, the others then read the cache
        tiny_world = tiny.prepare(seed=cfg.seed, settings=tiny.WORLDS[cfg.preset], log=print0)  # one per --seed
        barrier() if rank == 0 else None
        cfg = replace(cfg, model=cfg.model or tiny_world["model"], train_data=cfg.train_data or tiny_world["train"],
                      eval_data=cfg.eval_data or tiny_world["eval"])  # fmt: skip
    barrier()  # rank 0 is done with --overwrite's deletions
    resume_from = (checkpoints(out) or [None])[-1] if cfg.resume else None  # the newest complete checkpoint
    names = template_names(cfg) if cfg.aug else [cfg.template]
    run_name = f"{cfg.estimator}-{loss_kind(cfg)}{'-aug' if cfg.aug else ''}-{cfg.agg}-s{cfg.seed}"
    print0(f"run {run_name}\n| param | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in asdict(cfg).items()))
    print0(f"torchrun: {world} ranks, {cfg.prompts_per_step // world} prompts per rank per step") if world > 1 else None
    if rank == 0:  # SETUP: rank 0 alone writes files (config, metrics, samples, checkpoints) and logs to trackers
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return cfg, out, resume_from, names, run_name


def setup_model(cfg: Config, device: torch.device, resume_from: tuple[int, Path] | None):
    """SETUP: (model, ref_model, tokenizer, engine, ref_engine, optimizer). The policy's initial weights are also
    AAPO's frozen reference and the KL's; on --resume the policy gets the checkpoint's after they are copied."""
    model, tokenizer = load_model_and_tokenizer(cfg, device)
    need_ref = (cfg.estimator == "aapo" and cfg.engine == "transformers") or cfg.kl_coef > 0
    ref_model = copy.deepcopy(model).eval().requires_grad_(False) if need_ref else None  # frozen, before any resume
    engine, ref_engine = make_engine(cfg, model, tokenizer), None
    if cfg.estimator == "aapo" and cfg.engine == "transformers":  # HF generate on the frozen fp32 copy (6.2 GB at 1.5B)
        ref_engine = make_engine(cfg, ref_model, tokenizer)
    elif cfg.estimator == "aapo":  # vllm: the initial weights (host memory, engine dtype) sampled on the policy's own
        from mathrl.engine_vllm import ReferencePolicy, frozen_weights  # engine: one sleep-mode engine per process

        ref_engine = ReferencePolicy(engine, frozen_weights(model, torch.bfloat16 if cfg.bf16 else torch.float32), model)
    if resume_from:
        from transformers import AutoModelForCausalLM

        model.load_state_dict(AutoModelForCausalLM.from_pretrained(resume_from[1], dtype=torch.float32).state_dict())
        engine.load_weights(model)  # no-op for transformers; vllm: the resumed weights, pushed now
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay)
    return model, ref_model, tokenizer, engine, ref_engine, optimizer


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    rank, world, device = init_distributed(pick_device(cfg))  # (0, 1, the device) without torchrun
    cfg, out, resume_from, names, run_name = setup_run(cfg, rank, world)
    seed_everything(cfg.seed)
    model, ref_model, tokenizer, engine, ref_engine, optimizer = setup_model(cfg, device, resume_from)
    limit = vocab_limit(model, tokenizer)
    train_forward = policy_forward(model, device)  # DDP under torchrun; rollouts, eval and old log-probs use `model`
    rows, total_steps = train_rows(cfg, tokenizer, names)
    eval_rows = load_eval_rows(cfg.eval_data, cfg.eval_benchmarks, cfg.eval_data_dir, cfg.eval_limit, cfg.problem_field,
                               cfg.answer_field) if cfg.eval_every > 0 else []  # fmt: skip
    state = restore_state(out, cfg.resume, resume_from, optimizer, writer=rank == 0)  # {} when not resuming
    start, ref_cache = state.get("step", 0), state.get("ref_cache", {})  # ref_cache: (row, template) -> G ref rewards
    trackers = Trackers(cfg, run_name) if rank == 0 else None
    if cfg.eval_every > 0 and start == 0:  # the "before" point of every curve
        t0 = time.time()
        metrics = {"step": 0, **run_eval(cfg, engine, tokenizer, eval_rows), "time/eval": time.time() - t0}
        log_step(out, trackers, metrics, total_steps)

    B, G = cfg.prompts_per_step // world, cfg.group_size  # B: this rank's prompts per step
    n_updates = cfg.ppo_epochs * (cfg.prompts_per_step // cfg.mini_batch_prompts)
    for step in range(start, total_steps):
        t_step, timing = time.time(), {}
        for group in optimizer.param_groups:  # ALGO: --lr-schedule (constant in the papers)
            group["lr"] = lr_at(cfg.lr, cfg.lr_schedule, step, total_steps)

        # ---- rollouts, rewards (AAPO's reference samples graded alongside), advantages: one template per prompt, G samples
        epoch, idx, tmpl, _ = step_prompts(cfg, step, rows, names, tokenizer)  # B of each
        rounds = [rollout_round(cfg, engine, ref_engine, tokenizer, step, 0, rows, idx, tmpl, ref_cache)]
        timing.update({"time/generate": rounds[0]["t_gen"], "time/reward": rounds[0]["t_reward"]})

        # ---- dynamic sampling (DAPO arXiv:2503.14476v1 Eq. 11, Algorithm 1): rounds of fresh prompts until B live groups
        used = set(batch_indices(step, len(rows), cfg.prompts_per_step, cfg.seed)[1])  # the step's rows, all ranks'
        while cfg.dynamic_sampling and len(rounds) <= cfg.dynamic_sampling_rounds:
            live, drawn = sum(int((~r["dead"]).sum()) for r in rounds), sum(len(r["idx"]) for r in rounds)
            if all_sum(torch.tensor(float(max(B - live, 0)))).item() == 0:  # all ranks run a round while one is short
                break
            r_idx = refill_rows(cfg.seed, step, len(rounds), rank, world, len(rows), used, refill_size(B - live, live, drawn, B))
            r_tmpl = [refill_template(cfg.seed, step, len(rounds), i, names) if cfg.aug else cfg.template for i in r_idx]
            used.update(r_idx)
            rounds.append(rollout_round(cfg, engine, ref_engine, tokenizer, step, len(rounds), rows, r_idx, r_tmpl, ref_cache))
        slots, surplus = select_slots([r["dead"] for r in rounds])  # round 0's live groups, then refills in order
        idx, tmpl, prompt_ids, golds, comps, res, adv, dead = (gather([r[k] for r in rounds], slots) for k in (
            "idx", "tmpl", "prompt_ids", "golds", "comps", "res", "adv", "dead"))  # the B slots' ((B, G) / (B,) / B)
        res0 = rounds[0]["res"]  # train/reward, accuracy, zero-variance share, AAPO and template metrics: round 0's
        zero_var = res0["reward"].std(dim=1) == 0  # (B,)
        keep = torch.ones(B, G)  # (B, G) sequences that enter the loss
        if cfg.dynamic_sampling:  # ALGO: the dead groups left (all of them with R = 0) out of the loss (deviation 4)
            keep[dead] = 0
        if cfg.overlong == "mask":  # ALGO: overlong filtering, DAPO Sec. 3.4
            keep = keep * (1 - res["truncated"].float())

        # ---- batch tensors: sequence b*G + g is sample g of prompt b, (B*G, ...) each
        batch = batch_tensors(comps, prompt_ids, keep, adv, tokenizer.pad_token_id, device)

        # ---- old log-probs (and reference log-probs for the KL): needed when the rollout batch gets several updates
        t0 = time.time()
        engine.sleep()  # vLLM frees its GPU memory; no-op for transformers
        if n_updates > 1 or cfg.kl_coef > 0:  # else the training forward's own, detached (deviation 3)
            old_logprobs(cfg, model, ref_model, batch, limit)
        timing["time/logprobs"] = time.time() - t0

        # ---- policy update: mini-batches of whole groups, micro-batches for memory, one normaliser per mini-batch
        t0 = time.time()
        model.train()
        upd = update_policy(cfg, train_forward, optimizer, batch, limit)
        model.eval()
        optimizer.zero_grad(set_to_none=True)  # free the gradients (6.2 GB at 1.5B) before vLLM wakes
        engine.load_weights(model)  # no-op for transformers; vLLM, asleep: recorded, pushed by wake_up
        engine.wake_up()  # vLLM: weights, push, KV cache, prefix cache reset
        timing["time/train"] = time.time() - t0

        # ---- metrics (over all ranks), eval, logging, samples, checkpoint
        done, lr = step + 1, optimizer.param_groups[0]["lr"]
        ref_stats = {k: (sum if k == "aapo/ref_samples" else max)(r["ref_stats"][k] for r in rounds) for k in rounds[0]["ref_stats"]}
        metrics = step_metrics(cfg, done, epoch, lr, res0, adv, zero_var, batch, upd, rounds[0]["tmpl"], tmpl,
                               rounds[0]["ref_rewards"], ref_stats, timing, t_step)  # fmt: skip
        if cfg.dynamic_sampling:
            metrics.update(dynamic_metrics(rounds, dead, surplus, cfg.dynamic_sampling_rounds, batch["loss_mask"]))
        if cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == total_steps):
            t0 = time.time()
            metrics.update(run_eval(cfg, engine, tokenizer, eval_rows))
            metrics["time/eval"] = time.time() - t0
        log_step(out, trackers, metrics, total_steps)
        if rank == 0 and cfg.samples_every > 0 and (done % cfg.samples_every == 0 or done == 1):  # rank 0's prompts
            dump_samples(out / "samples.jsonl", done, rows, idx, tmpl, comps, golds, res, adv, cfg.num_samples)
        if (cfg.save_every > 0 and done % cfg.save_every == 0) or done == total_steps:
            if rank == 0:  # weights, AdamW state and AAPO cache (merged every step) are the same on every rank
                path = save_checkpoint(out, done, model, tokenizer, optimizer, {"ref_cache": ref_cache}, cfg.keep_checkpoints)
                print0(f"saved {path}")
            barrier()  # the others wait for it
    print0(f"done: {total_steps} steps in {out}")
    close_distributed()


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a bad flag, file or row (mathrl.UserError): one line; anything else keeps its traceback
        raise SystemExit(f"error: {e}")
