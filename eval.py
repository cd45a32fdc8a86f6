"""
Evaluate a checkpoint on AIME24, AMC, MATH500, Minerva and OlympiadBench with the papers' protocol.

The protocol of the prompt-augmentation paper (arXiv:2602.03190v1, evaluation setup): the `qwen-math` template,
greedy decoding, at most 3000 new tokens inside a 4096-token context, stop at the model's EOS only (its evaluation
code leaves <|im_end|> off the stop list), bf16, seed 42, and a boxed-answer grader (the last \\boxed{} of the response
is the answer; no box scores 0). It reports each benchmark's accuracy and two averages: macro = the mean of the
benchmark accuracies (the paper's "average"), micro = correct answers / questions over all 1,560 questions.

    # a train.py checkpoint (or any Hugging Face model id) on the five benchmarks: vLLM on a GPU, else transformers
    python eval.py --model runs/aug/checkpoint-2720 --data-dir data/eval --out runs/aug/eval-2720
    # the paper's numbers are the mean of 5 runs; a quick look at 20 questions per benchmark on CPU
    python eval.py --model MODEL --data-dir DATA --runs 5 --out OUT
    python eval.py --model MODEL --data-dir DATA --engine transformers --limit 20 --out OUT
    # every paper template (a per-template accuracy table); sampling with unbiased pass@k
    python eval.py --model MODEL --data-dir DATA --templates all --out OUT
    python eval.py --model MODEL --data-dir DATA --temperature 0.6 --n 16 --pass-k 1,4,16 --out OUT
    # re-grade saved responses (e.g. after a verifier change) without generating
    python eval.py --responses OUT/records.jsonl --data-dir DATA --out OUT-regraded
    # throughput of a random-initialised model of a given shape (config.json + tokenizer in MODEL_DIR)
    python eval.py --model MODEL_DIR --random-init --engine transformers --benchmarks math500 --data-dir DATA --out OUT

Without --data-dir the benchmarks come from the Hugging Face hub (--hf-dataset, needs the `datasets` package).
Outputs under --out: records.jsonl (one line per question and sample: prompt, response, extracted answer, gold,
correct, tokens), summary.json (per-benchmark accuracy, macro, micro, throughput) and results.md (the paper's table
layout). Records are appended as they are produced; rerunning the same command skips every question already done.

train.py's periodic evaluation calls the same functions: load_benchmark -> evaluate -> score -> summarize.
"""

import argparse
import inspect
import json
import math
import os
import re
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mathrl import BadValue, CannotRun, UserError
from mathrl.data import BENCHMARKS, HF_DATASET, load_benchmark, read_jsonl
from mathrl.templates import ALL_TEMPLATES, DEFAULT_TEMPLATE, TEMPLATES, render

# ----------------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class EvalConfig:
    # model
    model: str = "Qwen/Qwen2.5-Math-1.5B"  # checkpoint directory written by train.py, or a Hugging Face model id
    tokenizer: str = ""  # tokenizer directory or id; empty: the one saved with --model
    random_init: bool = False  # build --model's architecture from its config.json with random weights (benchmarks)
    engine: str = "auto"  # vllm | transformers | auto (vllm when it is installed and a GPU is present)
    dtype: str = "auto"  # bfloat16 | float16 | float32 | auto (bfloat16 on GPU as in the paper, float32 on CPU)
    batch_size: int = 64  # transformers engine: sequences per generate() batch
    gpu_memory_utilization: float = 0.85  # vllm engine: share of GPU memory it may take
    # data
    benchmarks: str = "aime24,amc,math500,minerva,olympiadbench"  # comma-separated benchmark names
    data_dir: str = ""  # folder of <benchmark>.jsonl files (id, problem, answer, answers); empty: --hf-dataset
    hf_dataset: str = HF_DATASET  # hub dataset with one split per benchmark (data.HF_SPLITS)
    limit: int = 0  # evaluate only the first N questions of each benchmark (0: all)
    # protocol (prompt augmentation arXiv:2602.03190v1: qwen-math, greedy, 3000 new tokens, context 4096, seed 42)
    templates: str = DEFAULT_TEMPLATE  # comma-separated template names, or "all" for the 13 paper templates
    max_new_tokens: int = 3000  # generation budget per response
    context: int = 4096  # prompt + response tokens; the budget shrinks to fit, prompts that fill it are skipped
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling (only with temperature > 0)
    n: int = 1  # samples per question (n > 1 needs temperature > 0); accuracy is then the mean over samples
    pass_k: str = ""  # comma-separated k for unbiased pass@k (Chen et al. arXiv:2107.03374v2 Eq. 1); empty: 1 and n
    runs: int = 1  # independent repetitions, reported as mean and std (the paper: 5 vLLM runs)
    seed: int = 42  # base seed of the generation
    # grading
    responses: str = ""  # JSON Lines of saved responses (id, response[, benchmark, template, run, sample]) to re-grade
    timeout: float = 5.0  # seconds per verification (verify.py; over the limit scores 0)
    workers: int = 0  # grading processes (0: one per CPU core)
    # output
    out: str = "runs/eval"  # output folder: records.jsonl, summary.json, results.md, config.json
    chunk_size: int = 256  # questions per generate() call; results are saved after each chunk
    overwrite: bool = False  # start over even if --out holds results of another configuration
    progress: bool = True  # progress bar


# config fields whose change makes earlier records in --out incomparable (a resume with other values is refused)
LOCKED_FIELDS = (
    "model tokenizer random_init engine dtype max_new_tokens context temperature top_p n seed data_dir hf_dataset"
)


def _field_help() -> dict[str, str]:
    """The trailing comment of each EvalConfig field, read from this file's source, as its --help text."""
    helps = {}
    for line in inspect.getsource(EvalConfig).splitlines():
        match = re.match(r"\s+(\w+): [^=]+=.*?  # (.*)$", line)
        if match:
            helps[match.group(1)] = match.group(2)
    return helps


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    """EvalConfig from the command line: one --flag per field (--no-flag for booleans), help from the comments."""

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    helps = _field_help()
    for f in fields(EvalConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name))
        else:
            parser.add_argument(flag, type=f.type, default=f.default, help=helps.get(f.name))
    return EvalConfig(**vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------------------------------------------------
# Benchmarks (read by mathrl/data.py: load_benchmark)

DISPLAY = {"aime24": "AIME24", "amc": "AMC", "math500": "MATH500", "minerva": "Minerva", "olympiadbench": "Olympiad"}


# ----------------------------------------------------------------------------------------------------------------------
# Model & engine


def resolve_dtype(name: str, device: str):
    """torch dtype for --dtype; auto = bfloat16 on GPU (the paper's protocol), float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def load_tokenizer(cfg: EvalConfig):
    """The tokenizer of --tokenizer, or the one saved with --model."""
    from transformers import AutoTokenizer

    path = cfg.tokenizer or cfg.model
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:  # not found, not reachable, not a tokenizer; other errors keep their traceback
        raise CannotRun(f"cannot load a tokenizer from {path!r} (--tokenizer/--model): {type(e).__name__}: {e}")


def load_model(cfg: EvalConfig, device: str):
    """The causal LM of --model on `device` (random weights from its config with --random-init), in eval mode."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = resolve_dtype(cfg.dtype, device)
    try:
        if cfg.random_init:
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.model), dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype)
    except (OSError, ValueError) as e:  # not found, not reachable, not a causal LM
        raise CannotRun(f"cannot load a model from --model {cfg.model!r}: {type(e).__name__}: {e}") from None
    return model.to(device).eval()


def make_vllm_engine(cfg: EvalConfig):
    """The vLLM engine (GPU path): engine_vllm.VLLMEngine, with the same generate() as TransformersEngine. --dtype auto
    is bfloat16 (the paper's protocol; vLLM's own "auto" would run a train.py checkpoint in its saved fp32); no sleep
    mode, as nothing else shares the GPU. The only place eval.py builds one."""
    from mathrl.engine_vllm import VLLMEngine

    try:
        return VLLMEngine(
            cfg.model,
            tokenizer=cfg.tokenizer or cfg.model,
            dtype="bfloat16" if cfg.dtype == "auto" else cfg.dtype,
            seed=cfg.seed,
            max_model_len=cfg.context,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_sleep_mode=False,
        )
    except ImportError as e:
        raise CannotRun(f"--engine vllm: {e}") from None  # its message names the install and the CPU engine


def make_engine(cfg: EvalConfig, tokenizer):
    """The generation engine for --engine (auto: vllm when importable and a GPU is present, else transformers)."""
    import importlib.util

    import torch

    vllm_ok = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None and not cfg.random_init
    if cfg.engine == "vllm" or (cfg.engine == "auto" and vllm_ok):
        return make_vllm_engine(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(cfg, device)
    from mathrl.engine import TransformersEngine

    vocab_limit = len(tokenizer) if len(tokenizer) < model.config.vocab_size else None  # padded rows never sampled
    return TransformersEngine(model, tokenizer, batch_size=cfg.batch_size, vocab_limit=vocab_limit)


# ----------------------------------------------------------------------------------------------------------------------
# Generation & grading


def generate_chunk(
    engine,
    tokenizer,
    rows: list[dict],
    template: str,
    max_new_tokens: int,
    context: int,
    temperature: float,
    top_p: float,
    n: int,
    seed: int,
    run: int,
) -> list[dict]:
    """n ungraded records per row. Each prompt gets min(max_new_tokens, context - prompt tokens) new tokens, so the
    prompt and response always fit the context (vLLM's max_model_len); a prompt that leaves no room is skipped:
    its records have skipped=True, an empty response, and count as wrong."""
    prompts = [render(template, row["problem"]) for row in rows]
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    budgets = [min(max_new_tokens, context - len(ids)) for ids in prompt_ids]
    completions = [None] * len(rows)
    for budget in sorted({b for b in budgets if b > 0}):  # one generate() per distinct budget (one at the defaults)
        index = [i for i, b in enumerate(budgets) if b == budget]
        index.sort(key=lambda i: len(prompt_ids[i]))  # similar lengths batch together: less padding
        outs = engine.generate(
            [prompt_ids[i] for i in index], n=n, max_new_tokens=budget, temperature=temperature, top_p=top_p, seed=seed
        )  # [len(index)][n]
        for i, out in zip(index, outs):
            completions[i] = out
    records = []
    for row, prompt, ids, budget, outs in zip(rows, prompts, prompt_ids, budgets, completions):
        for sample in range(n):
            c = outs[sample] if outs is not None else None
            records.append(
                {
                    "benchmark": row["benchmark"],
                    "id": row["id"],
                    "template": template,
                    "run": run,
                    "sample": sample,
                    "prompt": prompt,
                    "response": c.text if c else "",
                    "gold": row["answers"],
                    "tokens": len(c.token_ids) if c else 0,
                    "prompt_tokens": len(ids),
                    "max_new_tokens": max(budget, 0),
                    "finished": bool(c.finished) if c else False,
                    "skipped": c is None,
                }
            )
    return records


def grade_records(records: list[dict], timeout: float = 5.0, workers: int | None = None) -> list[dict]:
    """Fill "extracted" and "correct" in place with the papers' boxed-answer protocol (verify.py, boxed_only=True):
    the last \\boxed{} of the response against every accepted gold answer; no box, a timeout or an error scores 0."""
    from mathrl.grading import grade_batch
    from mathrl.verify import extract_answer

    todo = [r for r in records if not r.get("skipped")]
    verdicts = grade_batch(
        [r["response"] for r in todo], [r["gold"] for r in todo], boxed_only=True, timeout=timeout, workers=workers
    )
    for record, correct in zip(todo, verdicts):
        record["extracted"] = extract_answer(record["response"], boxed_only=True)
        record["correct"] = bool(correct)
    for record in records:
        if record.get("skipped"):
            record["extracted"], record["correct"] = None, False
    return records


def evaluate(
    engine,
    tokenizer,
    rows: list[dict],
    template: str = DEFAULT_TEMPLATE,
    max_new_tokens: int = 3000,
    context: int = 4096,
    temperature: float = 0.0,
    top_p: float = 1.0,
    n: int = 1,
    seed: int = 42,
    run: int = 0,
    chunk_size: int = 256,
    timeout: float = 5.0,
    workers: int | None = None,
    on_records=None,
    progress: bool = False,
    stats: dict | None = None,
) -> list[dict]:
    """Generate n responses per row with `template` and grade them: one record per (row, sample), in row order.

    rows: from load_benchmark (any mix of benchmarks; train.py passes its held-out rows). Work goes in chunks of
    `chunk_size` rows; after each chunk `on_records(records)` receives its graded records (eval.py appends them to
    records.jsonl, so an interruption loses at most one chunk). `stats` (optional) accumulates seconds spent in
    "generate_s" and "grade_s". With sampling, each chunk draws from its own seed (seed + 1000 * run + chunk).
    """
    if n < 1:
        raise BadValue(f"n = {n}: need at least one sample per question")
    if temperature == 0 and n > 1:
        raise BadValue(f"n = {n} with greedy decoding gives {n} identical samples; set temperature > 0 or n = 1")
    from tqdm import tqdm

    stats = {} if stats is None else stats
    records = []
    with tqdm(total=len(rows), disable=not progress, desc=f"{template} run {run}", unit="q", dynamic_ncols=True) as bar:
        for chunk_index, start in enumerate(range(0, len(rows), chunk_size)):
            chunk = rows[start : start + chunk_size]
            t0 = time.perf_counter()
            new = generate_chunk(
                engine,
                tokenizer,
                chunk,
                template,
                max_new_tokens,
                context,
                temperature,
                top_p,
                n,
                seed + 1000 * run + chunk_index,
                run,
            )
            t1 = time.perf_counter()
            grade_records(new, timeout=timeout, workers=workers)
            stats["generate_s"] = stats.get("generate_s", 0.0) + t1 - t0
            stats["grade_s"] = stats.get("grade_s", 0.0) + time.perf_counter() - t1
            if on_records is not None:
                on_records(new)
            records += new
            bar.update(len(chunk))
    return records


# ----------------------------------------------------------------------------------------------------------------------
# Scoring


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct, Chen et al. arXiv:2107.03374v2 Eq. (1):
    pass@k = 1 - C(n - c, k) / C(n, k), computed as the stable product 1 - prod_{i=n-c+1}^{n} (1 - k / i)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def score(records: list[dict], ks: tuple[int, ...] = (1,)) -> dict[str, dict]:
    """Per-benchmark results (percent) from the records of one template.

    accuracy = mean over questions of (correct samples / samples), i.e. plain accuracy when n = 1 and the unbiased
    pass@1 when n > 1; with several runs, the mean over runs ("std" = sample standard deviation across runs, "runs"
    = per-run values). pass@k per k in `ks` (each k <= samples per question). Also: questions, samples per question,
    skipped prompts, truncated responses (cut at the token budget), and the mean response length in tokens.
    """
    groups: dict[str, dict[int, dict[str, list[bool]]]] = {}  # benchmark -> run -> id -> [correct per sample]
    for r in records:
        groups.setdefault(r["benchmark"], {}).setdefault(r["run"], {}).setdefault(r["id"], []).append(r["correct"])
    results = {}
    for bench in [b for b in BENCHMARKS if b in groups] + sorted(set(groups) - set(BENCHMARKS)):
        runs = groups[bench]
        per_run_acc, per_run_pass = [], {k: [] for k in ks}
        for questions in runs.values():
            per_run_acc.append(100 * statistics.fmean(sum(c) / len(c) for c in questions.values()))
            for k in ks:
                per_run_pass[k].append(100 * statistics.fmean(pass_at_k(len(c), sum(c), k) for c in questions.values()))
        accuracy, std = _mean_std(per_run_acc)
        mine = [r for r in records if r["benchmark"] == bench]
        results[bench] = {
            "accuracy": accuracy,
            "std": std,
            "runs": per_run_acc,
            "questions": len(next(iter(runs.values()))),
            "samples": max(len(c) for q in runs.values() for c in q.values()),
            "pass@k": {str(k): statistics.fmean(v) for k, v in per_run_pass.items()},
            "skipped": sum(bool(r.get("skipped")) for r in mine),
            "truncated": sum(not r.get("finished", True) and not r.get("skipped") for r in mine),
            "mean_tokens": statistics.fmean(r.get("tokens") or 0 for r in mine),
        }
    return results


def summarize(per_benchmark: dict[str, dict]) -> dict:
    """Macro and micro averages of per-benchmark {"accuracy", "questions"[, "runs"]}.

    macro = mean of the benchmark accuracies (each benchmark weighs the same; the papers' "average");
    micro = sum(accuracy_b * questions_b) / sum(questions_b) = correct answers / all questions (AIME's 30 questions
    weigh 30/1560). With per-run values, each run is averaged first, then mean and sample std across runs.
    """
    if not per_benchmark:
        raise ValueError("summarize needs at least one benchmark")
    benches = list(per_benchmark.values())
    total = sum(b["questions"] for b in benches)
    num_runs = min(len(b.get("runs") or [b["accuracy"]]) for b in benches)
    macro_runs, micro_runs = [], []
    for i in range(num_runs):
        accs = [(b.get("runs") or [b["accuracy"]])[i] for b in benches]
        macro_runs.append(statistics.fmean(accs))
        micro_runs.append(sum(a * b["questions"] for a, b in zip(accs, benches)) / total)
    macro, macro_std = _mean_std(macro_runs)
    micro, micro_std = _mean_std(micro_runs)
    return {
        "macro": macro,
        "macro_std": macro_std,
        "micro": micro,
        "micro_std": micro_std,
        "questions": total,
        "macro_runs": macro_runs,
        "micro_runs": micro_runs,
    }


def markdown_table(model: str, results: dict[str, dict], ks: tuple[int, ...] = ()) -> str:
    """The paper's table layout: | model | AIME24 | AMC | MATH500 | Minerva | Olympiad | macro | micro |, one row per
    template (results: template -> {"benchmarks": score(...), **summarize(...)}); "mean ± std" when runs > 1."""
    benches = list(next(iter(results.values()))["benchmarks"])

    def cell(value, std, runs):
        return f"{value:.1f} ± {std:.1f}" if runs > 1 else f"{value:.1f}"

    lines = [
        "| model | " + " | ".join(DISPLAY.get(b, b) for b in benches) + " | macro | micro |",
        "|---" * (len(benches) + 3) + "|",
    ]
    for template, res in results.items():
        label = model if len(results) == 1 else f"{model} [{template}]"
        runs = len(res["macro_runs"])
        cells = [cell(res["benchmarks"][b]["accuracy"], res["benchmarks"][b]["std"], runs) for b in benches]
        cells += [cell(res["macro"], res["macro_std"], runs), cell(res["micro"], res["micro_std"], runs)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for k in ks:  # pass@k rows when sampling several responses per question
        for template, res in results.items():
            accs = [res["benchmarks"][b]["pass@k"][str(k)] for b in benches]
            avg = res["pass@k"][str(k)]
            label = f"pass@{k}" if len(results) == 1 else f"pass@{k} [{template}]"
            lines.append(f"| {label} | " + " | ".join(f"{a:.1f}" for a in accs + [avg["macro"], avg["micro"]]) + " |")
    first = next(iter(results.values()))["benchmarks"]
    counts = "/".join(str(first[b]["questions"]) for b in benches)
    samples = max(v["samples"] for v in first.values())
    lines.append(
        f"\nQuestions per benchmark: {counts}. Accuracy in percent"
        + (f" (mean over {samples} samples per question = pass@1)" if samples > 1 else "")
        + "; macro = mean of the benchmarks, micro = correct / all questions."
    )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# Records on disk (resume) and re-grading


def record_key(r: dict) -> tuple:
    """A question's identity inside one evaluation: (benchmark, template, run, id)."""
    return (r["benchmark"], r["template"], r["run"], r["id"])


def load_records(path: Path, n: int) -> list[dict]:
    """The records already in `path`, keeping only questions with all n samples. A torn last line (a run killed
    mid-write) or an incomplete question is dropped and the file rewritten, so that a rerun redoes exactly those."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records, torn = [], False
    for lineno, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno != len(lines):
                raise BadValue(f"{path} line {lineno}: not valid JSON (only a torn last line is repaired)") from None
            torn = True
    counts: dict[tuple, int] = {}
    for r in records:
        counts[record_key(r)] = counts.get(record_key(r), 0) + 1
    complete = [r for r in records if counts[record_key(r)] == n]
    if torn or len(complete) != len(records):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in complete), encoding="utf-8")
        os.replace(tmp, path)
    return complete


def append_records(path: Path, records: list[dict]) -> None:
    """Append records as JSON Lines and flush them to disk before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def records_from_responses(path: Path, rows_by_bench: dict[str, dict[str, dict]], default_template: str) -> list[dict]:
    """Ungraded records from saved responses: JSON Lines with "id" and "response", and optionally "benchmark",
    "template", "run", "sample", "prompt", "tokens", "finished". Without a "benchmark" field the row belongs to the
    only selected benchmark. Gold answers always come from the benchmark data (so a fixed gold applies too)."""
    records, seen = [], {}
    for lineno, raw in enumerate(read_jsonl(path), 1):
        where = f"{path} line {lineno}"
        if "id" not in raw or not isinstance(raw.get("response"), str):
            raise BadValue(f"{where}: needs an 'id' and a 'response' string")
        bench = raw.get("benchmark")
        if bench is None:
            if len(rows_by_bench) != 1:
                raise BadValue(
                    f"{where}: no 'benchmark' field, and --benchmarks names {len(rows_by_bench)} "
                    "benchmarks; pass a single one or add the field"
                )
            bench = next(iter(rows_by_bench))
        if bench not in rows_by_bench:
            continue  # a benchmark that was not selected
        row = rows_by_bench[bench].get(str(raw["id"]))
        if row is None:
            raise BadValue(f"{where}: id {raw['id']!r} is not a question of {bench}")
        template, run = raw.get("template", default_template), int(raw.get("run", 0))
        key = (bench, template, run, row["id"])
        sample = int(raw.get("sample", seen.get(key, 0)))
        seen[key] = sample + 1
        records.append(
            {
                "benchmark": bench,
                "id": row["id"],
                "template": template,
                "run": run,
                "sample": sample,
                "prompt": raw.get("prompt", render(template, row["problem"]) if template in ALL_TEMPLATES else ""),
                "response": raw["response"],
                "gold": row["answers"],
                "tokens": raw.get("tokens"),
                "prompt_tokens": raw.get("prompt_tokens"),
                "max_new_tokens": raw.get("max_new_tokens"),
                "finished": raw.get("finished", True),
                "skipped": bool(raw.get("skipped", False)),
            }
        )
    keys = [record_key(r) + (r["sample"],) for r in records]
    if len(set(keys)) != len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise BadValue(f"{path}: two responses for the same (benchmark, template, run, id, sample) {duplicate}")
    return records


# ----------------------------------------------------------------------------------------------------------------------
# Main


def parse_list(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise BadValue(f"{flag} is empty")
    return items


def check_config(cfg: EvalConfig) -> tuple[list[str], list[str], tuple[int, ...]]:
    """Validated (benchmarks, templates, pass@k list) of a config; a clear error for each bad flag."""
    benchmarks = parse_list(cfg.benchmarks, "--benchmarks")
    for b in benchmarks:
        if b not in BENCHMARKS:
            raise BadValue(f"--benchmarks: unknown benchmark {b!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    templates = list(TEMPLATES) if cfg.templates == "all" else parse_list(cfg.templates, "--templates")
    for t in templates:
        if t not in ALL_TEMPLATES:
            raise BadValue(f"--templates: unknown template {t!r}; known templates: {', '.join(ALL_TEMPLATES)}")
    if cfg.engine not in ("auto", "vllm", "transformers"):
        raise BadValue(f"--engine {cfg.engine!r}: expected vllm, transformers or auto")
    if cfg.engine == "vllm" and cfg.random_init:
        raise BadValue("--random-init works with --engine transformers only (vLLM loads its weights from disk)")
    if cfg.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise BadValue(f"--dtype {cfg.dtype!r}: expected bfloat16, float16, float32 or auto")
    for name in ("n", "runs", "max_new_tokens", "context", "chunk_size", "batch_size"):
        if getattr(cfg, name) < 1:
            raise BadValue(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(cfg, name)})")
    if cfg.temperature < 0 or not 0 < cfg.top_p <= 1:
        raise BadValue(f"need --temperature >= 0 and 0 < --top-p <= 1 (got {cfg.temperature}, {cfg.top_p})")
    if cfg.temperature == 0 and cfg.n > 1:
        raise BadValue(f"--n {cfg.n} with greedy decoding (--temperature 0) gives identical samples")
    try:
        ks = tuple(sorted({int(k) for k in parse_list(cfg.pass_k, "--pass-k")})) if cfg.pass_k else ()
    except ValueError:
        raise BadValue(f"--pass-k {cfg.pass_k!r}: expected comma-separated integers") from None
    ks = ks or tuple(sorted({1, cfg.n}))
    if ks[0] < 1 or ks[-1] > cfg.n:
        raise BadValue(f"--pass-k {cfg.pass_k!r}: each k must be between 1 and --n {cfg.n}")
    return benchmarks, templates, ks


def prepare_out(cfg: EvalConfig, out: Path) -> None:
    """Create --out, refusing to mix results of a different configuration into it (unless --overwrite)."""
    out.mkdir(parents=True, exist_ok=True)
    config_path, records_path = out / "config.json", out / "records.jsonl"
    if cfg.overwrite:
        records_path.unlink(missing_ok=True)
    elif cfg.responses and records_path.exists():
        raise BadValue(f"{records_path} exists; re-grade into a new --out (or pass --overwrite)")
    elif config_path.exists() and records_path.exists():
        old = json.loads(config_path.read_text())
        changed = [f for f in LOCKED_FIELDS.split() if f in old and old[f] != getattr(cfg, f)]
        if changed:
            diff = ", ".join(f"--{f.replace('_', '-')} {old[f]!r} -> {getattr(cfg, f)!r}" for f in changed)
            raise BadValue(f"{out} holds results of another configuration ({diff}); use a new --out or --overwrite")
    config_path.write_text(json.dumps(asdict(cfg), indent=2) + "\n")


def generate_missing(
    cfg: EvalConfig, rows_by_bench: dict, templates: list[str], records_path: Path, engine, tokenizer, stats: dict
) -> tuple[list[dict], list[dict]]:
    """(all records, records generated now): read records_path, generate every (template, run, question) not in it
    yet, appending each chunk's records as it is graded. The model is only loaded when something is missing."""
    records = load_records(records_path, cfg.n)
    done = {record_key(r) for r in records}
    todo = {
        (t, run): [row for b, rows in rows_by_bench.items() for row in rows if (b, t, run, row["id"]) not in done]
        for run in range(cfg.runs)
        for t in templates
    }
    pending = sum(len(rows) for rows in todo.values())
    print(f"eval: {len(done)} questions already done in {records_path}, {pending} to generate")
    if pending and engine is None:
        tokenizer = tokenizer or load_tokenizer(cfg)
        engine = make_engine(cfg, tokenizer)
    generated = []
    for (template, run), rows in todo.items():
        if rows:
            generated += evaluate(
                engine,
                tokenizer,
                rows,
                template,
                max_new_tokens=cfg.max_new_tokens,
                context=cfg.context,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                n=cfg.n,
                seed=cfg.seed,
                run=run,
                chunk_size=cfg.chunk_size,
                timeout=cfg.timeout,
                workers=cfg.workers or None,
                on_records=lambda new: append_records(records_path, new),
                progress=cfg.progress,
                stats=stats,
            )
    return records + generated, generated


def template_results(records: list[dict], ks: tuple[int, ...] = (1,)) -> dict:
    """score() and summarize() of one template's records: {"benchmarks": {...}, "macro", "micro", ..., "pass@k"}."""
    per_bench = score(records, ks)
    results = {"benchmarks": per_bench, **summarize(per_bench), "pass@k": {}}
    for k in map(str, ks):  # macro and micro of pass@k as well
        avg = summarize({b: {"accuracy": v["pass@k"][k], "questions": v["questions"]} for b, v in per_bench.items()})
        results["pass@k"][k] = {"macro": avg["macro"], "micro": avg["micro"]}
    return results


def run_eval(cfg: EvalConfig, engine=None, tokenizer=None) -> dict:
    """The whole command: load, generate what is missing (or re-grade --responses), score, write the outputs.
    `engine`/`tokenizer` may be passed in (tests, notebooks); otherwise they are built from cfg when needed."""
    benchmarks, templates, ks = check_config(cfg)
    rows_by_bench = {b: load_benchmark(b, cfg.data_dir or None, cfg.hf_dataset, cfg.limit or None) for b in benchmarks}
    out = Path(cfg.out)
    prepare_out(cfg, out)
    records_path = out / "records.jsonl"
    stats = {"generate_s": 0.0, "grade_s": 0.0}
    if cfg.responses:
        by_id = {b: {row["id"]: row for row in rows} for b, rows in rows_by_bench.items()}
        records, generated = records_from_responses(Path(cfg.responses), by_id, templates[0]), []
        if not records:
            raise BadValue(f"{cfg.responses}: no responses for the selected benchmarks ({', '.join(benchmarks)})")
        t0 = time.perf_counter()
        grade_records(records, timeout=cfg.timeout, workers=cfg.workers or None)
        stats["grade_s"] = time.perf_counter() - t0
        append_records(records_path, records)
        templates, runs = list(dict.fromkeys(r["template"] for r in records)), 1 + max(r["run"] for r in records)
    else:
        records, generated = generate_missing(cfg, rows_by_bench, templates, records_path, engine, tokenizer, stats)
        runs = cfg.runs
    # score exactly the selected questions, templates and runs (the folder may hold more from earlier invocations)
    wanted = {(b, row["id"]) for b, rows in rows_by_bench.items() for row in rows}
    selected = [
        r for r in records if (r["benchmark"], r["id"]) in wanted and r["template"] in templates and r["run"] < runs
    ]
    results = {t: template_results([r for r in selected if r["template"] == t], ks) for t in templates}
    summary = {
        "model": cfg.model,
        "config": asdict(cfg),
        "pass_k": list(ks),
        "templates": results,
        "throughput": throughput(generated, stats),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table(Path(cfg.model).name or cfg.model, results, ks if cfg.n > 1 else ())
    (out / "results.md").write_text(table)
    print(table, end="")
    return summary


def throughput(generated: list[dict], stats: dict) -> dict:
    """Speed of this invocation's generation: questions/s and generated tokens/s over the generate() time."""
    questions = len({record_key(r) for r in generated})
    tokens = sum(r["tokens"] or 0 for r in generated)
    seconds = stats.get("generate_s", 0.0)
    return {
        "questions": questions,
        "generated_tokens": tokens,
        "generate_s": seconds,
        "grade_s": stats.get("grade_s", 0.0),
        "questions_per_s": questions / seconds if seconds else None,
        "tokens_per_s": tokens / seconds if seconds else None,
    }


def main(argv: list[str] | None = None) -> None:
    run_eval(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a bad flag, file or row (mathrl.UserError): one line; anything else keeps its traceback
        raise SystemExit(f"eval.py: error: {e}")
