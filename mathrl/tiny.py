"""
The tiny CPU world behind `python train.py --preset tiny`: a ~0.8M-parameter Qwen2 model, a character-level tokenizer
built in code, a generated two-digit arithmetic task, and a brief supervised warm start, so that RL can be watched
end to end on a laptop CPU in a few minutes. Nothing is downloaded.

    prepare(cache_dir, seed) -> {"model": dir, "train": jsonl, "eval": jsonl}   # what train.py --preset tiny uses

- Tokenizer: a Qwen2Tokenizer with one token per character (byte-level, no merges), the ChatML specials
  (<|im_start|>, <|im_end|> = EOS, <|endoftext|> = pad), and single tokens for the words and tags of the tiny
  templates (system/user/assistant, <think>, </answer>, \\boxed{, "The final answer is:") so sequences stay short.
  Saved with save_pretrained; AutoTokenizer reloads it to the same ids (a test checks the round trip).
- Task: "47+38=?" or "74-38=?" (two-digit operands, no negative results). The worked solution spells the digit
  steps ("7+8=15, 4+3+1=8.") then the answer in the template's format. Train and held-out problems are disjoint.
- Warm start: next-token cross-entropy on worked solutions in all four TINY_TEMPLATES formats (response tokens
  only), stopped as soon as greedy accuracy on 100 dev problems reaches sft_target (0.5): rewards are not all zero,
  and RL has room to climb (the tiny model reaches ~0.8-0.9 with more training). The result is cached
  under cache_dir/<hash of every setting>, written to a temp dir and renamed (atomic: parallel runs cannot see a
  half-written model).
"""

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from mathrl.templates import CHAIN_DEFAULT_TEMPLATE, CHAIN_TEMPLATES, TINY_DEFAULT_TEMPLATE, TINY_TEMPLATES, render

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORD_TOKENS = ["system", "user", "assistant", "<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "The final answer is:"]

# Every setting that changes the warm-started model; the cache key hashes this dict (plus the tokenizer's vocab).
SETTINGS = dict(
    hidden_size=128,  # model width
    num_hidden_layers=4,  # transformer blocks
    num_attention_heads=4,  # query heads
    num_key_value_heads=2,  # grouped-query attention, as Qwen2
    intermediate_size=384,  # SwiGLU width
    max_position_embeddings=256,  # prompt + response tokens
    n_train=4000,  # training problems
    n_eval=1200,  # held-out problems: one greedy evaluation's standard error is <= 1.45 points (at 50%)
    n_dev=300,  # problems (disjoint from both) that decide when the warm start stops (standard error <= 2.9 points)
    sft_steps=1000,  # at most this many warm-start optimizer steps
    sft_target=0.5,  # stop once greedy accuracy on the dev problems reaches this: rewards are not all zero, far from solved
    sft_check_every=25,  # dev evaluations every N warm-start steps while far below the target ...
    sft_check_fine=5,  # ... and every N steps once within sft_fine_margin of it, so the stop lands close to the target
    sft_fine_margin=0.25,  # (accuracy rises from ~0.1 to ~0.9 within about 100 steps: a coarse check overshoots)
    sft_batch=64,  # sequences per warm-start step
    sft_lr=3e-3,  # AdamW learning rate of the warm start (linear warm-up, then constant)
    sft_warmup=40,  # warm-up steps
    version=2,  # bump when the task or the solution format changes
)

# The chain world (train.py --preset tiny-chain): the same model family on multi-step arithmetic written as a
# scratchpad in one of three styles, so that length, truncation and a choice of solution style exist (docs/tiny.md).
CHAIN_SETTINGS = dict(
    SETTINGS,
    task="chain",  # "47+38-21+19=?": 3 to 5 two-digit operands, running values in 0..999
    operands=(3, 5),  # fewest and most operands of a problem
    styles={"column": 0.6, "chain": 0.25, "split": 0.15},  # the warm start's mix of solution styles (see chain_work)
    max_position_embeddings=320,  # prompt (~50) + the longest worked solution (~200) tokens
    n_train=4000,
    sft_steps=3000,
    sft_target=0.3,  # greedy dev accuracy at which the warm start stops: far below what the styles allow
    sft_check_every=50,
    sft_check_fine=10,
    sft_fine_margin=0.1,
    version=1,
)
WORLDS = {"tiny": SETTINGS, "tiny-chain": CHAIN_SETTINGS}  # train.py's --preset -> the world's settings
STYLES = ("chain", "split", "column")  # the chain world's solution styles (chain_work)
CHAIN_WORDS = ["Step", "Answer:", "####"]  # single tokens for the chain templates' words
CHAIN_MAX_NEW_TOKENS = 128  # response tokens (train.py's tiny-chain preset): the longest column solutions are cut


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer and model config


def build_tokenizer(words: list[str] = WORD_TOKENS):
    """A character-level Qwen2Tokenizer: byte-level BPE with the 256 byte symbols as its vocabulary and no merges (so
    every character is one token), the ChatML specials, and the tiny templates' tags as single added tokens.

    Why a Qwen2Tokenizer and not a plain WordLevel one: transformers >= 5 loads any folder whose config.json says
    model_type "qwen2" with Qwen2Tokenizer, whatever tokenizer_config.json declares; a different tokenizer would be
    silently re-read with Qwen2's pre-tokenizer after save/load (different ids, a model that looks untrained)."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in words])  # kept when decoding
    return tok


def build_config(tokenizer, settings: dict = SETTINGS):
    """A tiny Qwen2 config. The LM head is padded to a multiple of 16 rows, like Qwen2.5's 151,936-row head over
    151,665 tokenizer ids, so the padded-vocab path (vocab_limit) is exercised on CPU too."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=-(-len(tokenizer) // 16) * 16,
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_hidden_layers"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_key_value_heads"],
        max_position_embeddings=settings["max_position_embeddings"],
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )


def build_model(tokenizer, settings: dict = SETTINGS, seed: int = 0):
    """A randomly initialised tiny Qwen2ForCausalLM (fp32)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(build_config(tokenizer, settings))


# ----------------------------------------------------------------------------------------------------------------------
# Task


def make_problems(n_train: int, n_eval: int, seed: int = 0, n_dev: int = 0) -> tuple[list[dict], ...]:
    """Disjoint train / held-out (/ dev) lists of {"problem", "answer"}: a+b or a-b (a >= b), two-digit operands."""
    rng = random.Random(f"tiny-task/{seed}")
    seen, rows = set(), []
    while len(rows) < n_train + n_eval + n_dev:
        a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        problem = f"{a}{op}{b}=?"
        if problem not in seen:
            seen.add(problem)
            rows.append({"problem": problem, "answer": str(a + b if op == "+" else a - b)})
    train, held_out, dev = rows[:n_train], rows[n_train : n_train + n_eval], rows[n_train + n_eval :]
    return (train, held_out, dev) if n_dev else (train, held_out)


def worked_steps(problem: str) -> str:
    """The digit-by-digit reasoning of a problem: "7+8=15, 4+3+1=8." or "14-8=6, 7-1-3=3." (borrow spelled out)."""
    op = "+" if "+" in problem else "-"
    a, b = (int(x) for x in problem.rstrip("=?").split(op))
    (a1, a0), (b1, b0) = divmod(a, 10), divmod(b, 10)
    if op == "+":
        carry = (a0 + b0) // 10
        tens = f"{a1}+{b1}+{carry}={a1 + b1 + carry}" if carry else f"{a1}+{b1}={a1 + b1}"
        return f"{a0}+{b0}={a0 + b0}, {tens}."
    borrow = int(a0 < b0)
    units = f"{a0 + 10 * borrow}-{b0}={a0 + 10 * borrow - b0}"
    tens = f"{a1}-1-{b1}={a1 - 1 - b1}" if borrow else f"{a1}-{b1}={a1 - b1}"
    return f"{units}, {tens}."


def worked_solution(problem: str, answer: str, template: str) -> str:
    """The response (after the template's prefill) in the format the template asks for."""
    steps = worked_steps(problem)
    if template == "tiny-think":
        return f"{steps}</think><answer>\\boxed{{{answer}}}</answer>"
    if template == "tiny-final":
        return f"{steps} The final answer is: \\boxed{{{answer}}}"
    if template in ("tiny-boxed", "tiny-step"):
        return f"{steps} \\boxed{{{answer}}}"
    raise ValueError(f"no worked-solution format for template {template!r}")


# ----------------------------------------------------------------------------------------------------------------------
# The chain world's task: several operations, three ways to write them out


def make_chain_problems(n_train: int, n_eval: int, seed: int = 0, n_dev: int = 0, operands=(3, 5)) -> tuple:
    """Disjoint train / held-out (/ dev) lists of {"problem", "answer"}: "47+38-21+19=?", operands-many two-digit
    numbers joined by + or -, evaluated left to right; a - that would go below 0 becomes a +."""
    rng = random.Random(f"tiny-chain/{seed}")
    seen, rows = set(), []
    while len(rows) < n_train + n_eval + n_dev:
        value = rng.randint(10, 99)
        text = str(value)
        for _ in range(rng.randint(*operands) - 1):
            b, op = rng.randint(10, 99), rng.choice("+-")
            op = "+" if op == "-" and value < b else op
            value, text = value + b if op == "+" else value - b, f"{text}{op}{b}"
        if text not in seen:
            seen.add(text)
            rows.append({"problem": f"{text}=?", "answer": str(value)})
    train, held_out, dev = rows[:n_train], rows[n_train : n_train + n_eval], rows[n_train + n_eval :]
    return (train, held_out, dev) if n_dev else (train, held_out)


def chain_terms(problem: str) -> list[int]:
    """"47+38-21=?" -> [47, 38, -21]."""
    return [int(t) for t in re.findall(r"[+-]?\d+", problem.rstrip("=?"))]


def column_steps(a: int, b: int) -> str:
    """One operation a + b (b >= 0) or a - |b| (b < 0) worked by columns, units first, carries and borrows spelled
    out: 485+38 -> "5+8=13, 8+3+1=12, 4+1=5"; 123-45 -> "13-5=8, 12-1-4=7, 1-1=0". a < 1000, |b| < 100."""
    (a2, a1, a0), (b1, b0) = (a // 100, a // 10 % 10, a % 10), (abs(b) // 10, abs(b) % 10)
    if b >= 0:
        s0 = a0 + b0
        s1 = a1 + b1 + s0 // 10
        steps = [f"{a0}+{b0}={s0}", f"{a1}+{b1}+1={s1}" if s0 >= 10 else f"{a1}+{b1}={s1}"]
        return ", ".join(steps + ([f"{a2}+1={a2 + 1}"] if a2 and s1 >= 10 else []))
    borrow0, borrow1 = a0 < b0, a1 - (a0 < b0) < b1
    steps = [f"{a0 + 10 * borrow0}-{b0}={a0 + 10 * borrow0 - b0}",
             f"{a1 + 10 * borrow1}{'-1' if borrow0 else ''}-{b1}={a1 + 10 * borrow1 - borrow0 - b1}"]  # fmt: skip
    return ", ".join(steps + ([f"{a2}-1={a2 - 1}"] if borrow1 else []))


def chain_work(problem: str, style: str) -> list[str]:
    """The scratchpad of a problem as a list of steps, in one of three styles (all exact, different lengths):
    chain  (short)  one operation per step, left to right: ["47+38=85", "85-21=64", "64+19=83"]
    split  (shortest) add the added terms in one go, then the subtracted ones, then subtract: ["47+38+19=104",
           "104-21=83"] (one step when nothing is subtracted): fewer steps, each harder
    column (long)   each operation by columns: ["47+38: 7+8=15, 4+3+1=8, so 85", ...]: longest, each step easiest
    """
    terms = chain_terms(problem)
    if style == "split":
        plus, minus = [t for t in terms if t > 0], [-t for t in terms if t < 0]
        steps = [f"{'+'.join(map(str, plus))}={sum(plus)}"]
        if len(minus) > 1:
            steps.append(f"{'+'.join(map(str, minus))}={sum(minus)}")
        return steps + ([f"{sum(plus)}-{sum(minus)}={sum(terms)}"] if minus else [])
    steps, value = [], terms[0]
    for b in terms[1:]:
        head = f"{value}{'+' if b >= 0 else '-'}{abs(b)}"
        if style == "chain":
            steps.append(f"{head}={value + b}")
        elif style == "column":
            steps.append(f"{head}: {column_steps(value, b)}, so {value + b}")
        else:
            raise ValueError(f"unknown solution style {style!r}: expected chain, split or column")
        value += b
    return steps


def chain_solution(problem: str, answer: str, template: str, style: str) -> str:
    """The response (after the template's prefill): the steps of `style` laid out and answered as `template` asks."""
    steps = chain_work(problem, style)
    if template == "chain-list":  # prefill "Step 1: "
        return "".join(f"\nStep {i + 1}: {s}" if i else s for i, s in enumerate(steps)) + f"\nAnswer: {answer}"
    work = "; ".join(steps) + "."
    if template == "chain-think":  # prefill "<think>"
        return f"{work}</think><answer>\\boxed{{{answer}}}</answer>"
    if template == "chain-final":
        return f"{work} The final answer is: \\boxed{{{answer}}}"
    if template == "chain-hash":
        return f"{work}\n#### {answer}"
    if template == "chain-boxed":
        return f"{work} \\boxed{{{answer}}}"
    raise ValueError(f"no worked-solution format for template {template!r}")


def chain_style(problem: str, response: str) -> str:
    """Which style a response (after the prefill) starts in: "column", "chain", "split", or "other" (none of their
    first steps' left-hand sides). Where split's first step is also chain's ("47+38-21": both begin 47+38=), it counts
    as chain."""
    heads = {style: chain_work(problem, style)[0].split(":" if style == "column" else "=")[0] for style in STYLES}
    for style, mark in (("column", ":"), ("chain", "="), ("split", "=")):
        if response.startswith(heads[style] + mark):
            return style
    return "other"


# ----------------------------------------------------------------------------------------------------------------------
# A world's pieces, by its settings ("task" absent: the two-digit world of --preset tiny)


def is_chain(settings: dict) -> bool:
    return settings.get("task") == "chain"


def world_words(settings: dict) -> list[str]:
    return WORD_TOKENS + CHAIN_WORDS if is_chain(settings) else WORD_TOKENS


def world_templates(settings: dict) -> tuple[list[str], str]:
    """(the templates the warm start learns, the template of its dev check and of train.py's evaluation)."""
    if is_chain(settings):
        return list(CHAIN_TEMPLATES), CHAIN_DEFAULT_TEMPLATE
    return list(TINY_TEMPLATES), TINY_DEFAULT_TEMPLATE


def world_problems(settings: dict, seed: int) -> tuple[list[dict], list[dict], list[dict]]:
    n = (settings["n_train"], settings["n_eval"], seed, settings["n_dev"])
    return make_chain_problems(*n, operands=settings["operands"]) if is_chain(settings) else make_problems(*n)


def world_solution(settings: dict, row: dict, template: str, rng: random.Random) -> str:
    """A worked solution for the warm start; in the chain world its style is drawn from settings["styles"]."""
    if not is_chain(settings):
        return worked_solution(row["problem"], row["answer"], template)
    style = rng.choices(list(settings["styles"]), weights=list(settings["styles"].values()))[0]
    return chain_solution(row["problem"], row["answer"], template, style)


# ----------------------------------------------------------------------------------------------------------------------
# Warm start (supervised) and cache


def sft_batch(tokenizer, rows: list[dict], rng: random.Random, size: int, settings: dict = SETTINGS):
    """(input_ids, labels), both (N, L): prompt + worked solution + EOS, right-padded; labels -100 except on the
    response tokens, so only the response is learned (the prompt is given at RL time). A random template each."""
    seqs, names = [], world_templates(settings)[0]
    for row in rng.sample(rows, size):
        template = rng.choice(names)
        prompt = tokenizer.encode(render(template, row["problem"]), add_special_tokens=False)
        response = tokenizer.encode(world_solution(settings, row, template, rng), add_special_tokens=False)
        seqs.append((prompt, response + [tokenizer.eos_token_id]))
    width = max(len(p) + len(r) for p, r in seqs)
    input_ids = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)  # (N, L)
    labels = torch.full((size, width), -100, dtype=torch.long)  # (N, L)
    for i, (p, r) in enumerate(seqs):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
    return input_ids, labels


def dev_accuracy(model, tokenizer, rows: list[dict], max_new_tokens: int = 40, template=TINY_DEFAULT_TEMPLATE) -> float:
    """Greedy accuracy with the world's default template (the one train.py evaluates with), graded by verify.py."""
    from mathrl.engine import TransformersEngine
    from mathrl.verify import grade

    engine = TransformersEngine(model, tokenizer, batch_size=len(rows))
    prompts = [tokenizer.encode(render(template, r["problem"]), add_special_tokens=False) for r in rows]
    completions = engine.generate(prompts, 1, max_new_tokens, temperature=0.0)
    return sum(grade(c[0].text, r["answer"]) for c, r in zip(completions, rows)) / len(rows)


def warm_start(model, tokenizer, rows: list[dict], dev: list[dict], settings: dict, seed: int, log=print) -> float:
    """AdamW steps of next-token cross-entropy on worked solutions (all tiny templates), in place, until the greedy
    dev accuracy reaches sft_target or sft_steps. Returns that accuracy.

    Stopping on accuracy rather than after a fixed count keeps the start point the same for every seed and machine:
    the accuracy curve is steep (from ~10% to ~90% within about 100 steps, its timing different for every seed and
    every CPU's rounding), so a fixed count lands anywhere on it. The check runs every sft_check_every steps while
    the accuracy is far below the target, then every sft_check_fine steps, so the stop overshoots by little."""
    rng = random.Random(f"tiny-sft/{seed}")
    dev_args = dict(max_new_tokens=CHAIN_MAX_NEW_TOKENS, template=CHAIN_DEFAULT_TEMPLATE) if is_chain(settings) else {}
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["sft_lr"], betas=(0.9, 0.98), weight_decay=0.0)
    acc, near = 0.0, False
    for step in range(1, settings["sft_steps"] + 1):
        model.train()
        for group in opt.param_groups:
            group["lr"] = settings["sft_lr"] * min(1.0, step / settings["sft_warmup"])
        input_ids, labels = sft_batch(tokenizer, rows, rng, settings["sft_batch"], settings)
        loss = model(input_ids=input_ids, labels=labels).loss  # HF shifts labels by one internally
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        near = near or acc >= settings["sft_target"] - settings["sft_fine_margin"]  # fine checks from then on
        if step % settings["sft_check_fine" if near else "sft_check_every"] == 0:
            acc = dev_accuracy(model.eval(), tokenizer, dev, **dev_args)
            log(f"warm start step {step:4d} | loss {loss.item():.3f} | dev accuracy {acc:.2f}")
            if acc >= settings["sft_target"]:
                break
    model.eval()
    return acc


def cache_key(settings: dict, seed: int) -> str:
    """Hash of everything that determines the warm-started model and the data files."""
    vocab = SPECIAL_TOKENS + world_words(settings)
    blob = json.dumps({"settings": settings, "seed": seed, "vocab": vocab, "tokenizer": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def world_dir(root: Path, settings: dict, seed: int) -> Path:
    """The folder of one world's warm start and data in the cache `root`."""
    return Path(root) / f"{'tiny-chain' if is_chain(settings) else 'tiny'}-{cache_key(settings, seed)}"


def default_cache_dir() -> Path:
    """$MATHRL_CACHE, else ~/.cache/mathrl."""
    return Path(os.environ.get("MATHRL_CACHE", Path.home() / ".cache" / "mathrl"))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def prepare(cache_dir: str | Path | None = None, seed: int = 42, settings: dict = SETTINGS, log=print) -> dict:
    """The tiny world on disk, built once per (settings, seed): {"model": HF model dir, "train": jsonl, "eval": jsonl}.

    The seed (train.py's --seed) draws the problems, the initial weights and the warm start's batches, so different
    seeds start RL from different models. The first call trains the warm start (one to two minutes on 2 CPU cores);
    later calls return the cached folder.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = world_dir(root, settings, seed)
    paths = {"model": str(final / "model"), "train": str(final / "train.jsonl"), "eval": str(final / "eval.jsonl")}
    if (final / "done").exists():
        log(f"tiny preset: reusing the cached warm start in {final}")
        return paths
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    log(f"tiny preset: building the warm start (cached afterwards in {final})")
    tokenizer = build_tokenizer(world_words(settings))
    train_rows, eval_rows, dev_rows = world_problems(settings, seed)
    model = build_model(tokenizer, settings, seed)
    dev_acc = warm_start(model, tokenizer, train_rows, dev_rows, settings, seed, log)
    if dev_acc < settings["sft_target"]:  # the step cap came first: RL from here sees little or no reward
        log(f"tiny preset: warning: seed {seed}'s warm start stopped at its cap of {settings['sft_steps']} steps with "
            f"dev accuracy {dev_acc:.3f}, below its target {settings['sft_target']}; RL from it may see almost no "
            f"reward (try another --seed)")
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-tiny-"))
    try:
        model.generation_config.do_sample = False
        model.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "model")
        write_jsonl(tmp / "train.jsonl", train_rows)
        write_jsonl(tmp / "eval.jsonl", eval_rows)
        (tmp / "done").write_text(json.dumps({"settings": settings, "seed": seed, "dev_accuracy": dev_acc, "seconds": time.time() - t0}))
        try:
            os.rename(tmp, final)  # atomic; fails if a parallel run got there first, whose copy is just as good
        except OSError:
            if not (final / "done").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"tiny preset: warm start done in {time.time() - t0:.0f}s")
    return paths
