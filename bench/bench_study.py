"""
A laptop-scale test of three claims on a tiny world: long RL on a small fixed training set, as the prompt-augmentation
paper trains (60 epochs of its data), with and without augmentation, GRPO against AAPO, and AAPO's reference rewards
sampled fresh every step against cached once per (prompt, template). Two worlds (tiny.py): --preset tiny (two-digit
sums, ~20-token answers; the first study, docs/study.md) and --preset tiny-chain (3-5 operand sums written out in one
of three styles, 30-160 tokens; docs/study-chain.md):

    .venv/bin/python bench/bench_study.py --seeds 1 2 --out runs/study          # 10 runs + 2 warm starts, ~1 h on 2 cores
    .venv/bin/python bench/bench_study.py --preset tiny-chain --seeds 1 2 3 4 5 6 --steps 600 --train-size 128 \
        --eval-every 20 --eval-limit 400 --jobs 2 --out runs/study-chain \
        --records bench/study-chain/records                                  # the chain study (resumable, ~12 h)
    .venv/bin/python bench/bench_study.py --seeds 5 --configs grpo --steps 60 --out /tmp/s   # a quick look

It resumes where it stopped: a finished run (its folder holds bench_seconds.txt) is read back, not re-run; an
interrupted run continues from its newest checkpoint (train.py --resume, every --save-every steps); a seed's warm
start in <out>/cache-s<seed> is reused (a new --out starts from empty caches). With --records, each finished run and
warm start also leaves a record there (the run's summary row and the curves the figures plot; the warm start's time
and dev accuracy, and its folder as warm-s<seed>.tar.gz, 3 MB in the chain world), and a run recorded there is never
run again: committed, the records carry the study across machines and sessions that keep nothing of --out. A seed
whose runs are all recorded needs no warm start; one with runs left unpacks its kept warm start (the runs of a seed
share one, and a rebuild need not reproduce it), and a warm start rebuilt for want of one must end at the recorded dev
accuracy or the study stops. --report-only runs nothing and tabulates what is recorded or finished. A record from other study settings
(preset, steps, training set size, evaluation schedule, extra flags) is refused. So the same command can be re-run
across sessions until every run is done; each time it writes the table of the runs finished so far.

The claims, and the rules (fixed before the runs; revised before the chain study: the first study used "more than the
larger seed std" in place of the paired intervals) that turn the numbers into a verdict. An interval is the 95%
percentile bootstrap interval of a mean over seeds (BOOTSTRAP resamples of the seeds, a fixed RNG); a difference
between two configurations is paired by seed (the same seed gives both the same warm start, training set and template
draws):
1. Prompt augmentation (arXiv:2602.03190): without it, entropy falls and training on a fixed dataset collapses after
   long training; with it, training stays stable. Supported if more no-augmentation runs than augmented runs
   collapse (criterion below) and the interval of the end difference (augmented - not) lies above 0; not testable at
   this scale if no run collapses; otherwise not supported.
2. AAPO (arXiv:2505.14264v2): its margin keeps a gradient where GRPO's advantage vanishes (zero-variance groups), so
   it learns faster and ends higher. Compared without augmentation (aapo vs grpo), and with it. Supported if the
   interval of the end difference (aapo - grpo) lies above 0 and AAPO gains 15 points over its start in no more steps
   (mean over seeds); not supported otherwise.
3. This project's `--aapo-ref cache`: learns like `fresh` at about half the rollouts. Supported if the interval of the
   end difference (cache - fresh) lies within +-EQUIVALENT (3 points) and cache generates at most 60% of fresh's
   samples.

Usable warm starts (added 2026-12-05, when seed 4's chain warm start stopped at its step cap with 0.3% dev accuracy,
before any run of that seed; it reads the warm start only): a seed whose warm start ends below WARM_FLOOR (half the
world's sft_target) is reported in the table and left out, with no runs: RL from it would see almost no reward. Pass
more seeds to reach the count wanted.

Collapse (fixed before the runs): a run collapses at the first evaluation that is more than COLLAPSE_DROP (10) points
below the best evaluation so far, if no evaluation within the next RECOVER_STEPS (50) steps (or up to the end of the
run) comes back within RECOVER_WITHIN (5) points of that best.

Per run: held-out accuracy (greedy, the default template, --eval-limit problems) every --eval-every steps; start, best,
end (mean of the last three evaluations); collapse step; steps and samples (policy + AAPO reference) until the
held-out accuracy first gains TARGET_GAIN (15 points) over its start; full-distribution entropy, zero-variance group share, response length,
truncated share and training accuracy, each as the mean of the first and of the last WINDOW steps; with --aug, the
per-template entropy of the last WINDOW steps; in the chain world, the share of each solution style among the sampled
responses that train.py dumps (the first sample of every prompt, every 10 steps) in the first and last WINDOW steps;
run time (the run's own step and evaluation times, summed over its metrics rows, so it survives a resume); in the
chain world, a format check (added after the first runs, outside the verdicts): the warm start and the final checkpoint
graded boxed-only and as the training reward reads answers, which tells held-out accuracy lost to a missing box from
accuracy lost to wrong sums. Each seed's
first --train-size training problems are the fixed training set of every run of that seed.

Writes <out>/<config>-s<seed>/ (train.py run folders), summary.json, table.md (table, claims), curves.png (mean and
min-max band over seeds), template_entropy.png (per-template entropy of the augmented runs) and, in the chain world,
styles.png (style shares over steps, mean over seeds).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import random  # noqa: E402

from bench_tiny import build_warm_start, mean_std, parse_configs, train_run  # noqa: E402
from mathrl import tiny  # noqa: E402
from mathrl.templates import CHAIN_DEFAULT_TEMPLATE  # noqa: E402
from plot import load_metrics, plot, plot_bands, series  # noqa: E402

CONFIGS = {  # name -> train.py flags (on top of --preset tiny and the study's schedule)
    "grpo": ["--estimator", "grpo"],
    "grpo-aug": ["--estimator", "grpo", "--aug"],
    "aapo": ["--estimator", "aapo"],
    "aapo-aug": ["--estimator", "aapo", "--aug"],
    "aapo-cache": ["--estimator", "aapo", "--aapo-ref", "cache"],
}
COLLAPSE_DROP, RECOVER_WITHIN, RECOVER_STEPS = 0.10, 0.05, 50  # the collapse criterion (accuracy fractions, steps)
WARM_FLOOR = 0.5  # a warm start below this fraction of its world's sft_target leaves its seed out of the study
TARGET_GAIN = 0.15  # held-out gain over the run's start whose first crossing measures sample efficiency
WINDOW = 20  # steps averaged for the "first" and "last" values of per-step metrics
BOOTSTRAP, EQUIVALENT = 10_000, 0.03  # resamples per interval; claim 3's equivalence margin (accuracy fraction)
CURVE_KEYS = ["eval/accuracy", "train/accuracy", "train/entropy", "train/zero_var_groups", "train/response_len",
              "train/truncated", "train/adv_abs"]  # what the curves figure can plot (a record keeps these)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Per-run summary and the claims (pure functions, tested in tests/test_bench_study.py)


def collapse_step(steps: list[int], acc: list[float]) -> int | None:
    """The step of the first evaluation more than COLLAPSE_DROP below the best so far from which the run does not
    recover (no evaluation within RECOVER_STEPS steps after it, or up to the end, gets within RECOVER_WITHIN of that
    best); None if the run never collapses."""
    best = acc[0]
    for i, (s, a) in enumerate(zip(steps, acc)):
        if a < best - COLLAPSE_DROP - 1e-9:  # (tolerance: accuracies are fractions, 0.8 - 0.1 > 0.7 in floats)
            later = [b for t, b in zip(steps[i + 1 :], acc[i + 1 :]) if t <= s + RECOVER_STEPS]
            if not any(b >= best - RECOVER_WITHIN - 1e-9 for b in later):
                return s
        best = max(best, a)
    return None


def mean_window(rows: list[dict], key: str, last: bool) -> float | None:
    """Mean of `key` over the first (or last) WINDOW training steps that logged it; None if none did."""
    values = series(rows, key)[1]
    values = values[-WINDOW:] if last else values[:WINDOW]
    return statistics.mean(values) if values else None


def summarize_study_run(rows: list[dict], samples_per_step: int) -> dict:
    """One run's numbers (see the module docstring) from its metrics rows; samples_per_step = B x G policy samples."""
    steps, acc = series(rows, "eval/accuracy")
    if len(acc) < 4:
        raise ValueError(f"{len(acc)} evaluations: need the step-0 one and at least 3 more")
    train_rows = [r for r in rows if "train/reward" in r]
    samples, cum = 0, {0: 0}  # cumulative samples generated (policy + AAPO reference) after each step
    for r in train_rows:
        samples += samples_per_step + r.get("aapo/ref_samples", 0)
        cum[r["step"]] = samples
    reach = next((s for s, a in zip(steps, acc) if a >= acc[0] + TARGET_GAIN), None)
    templates = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("template/") and k.endswith("/entropy")})
    summary = {
        "start": acc[0], "best": max(acc), "end": statistics.mean(acc[-3:]), "last": acc[-1],
        "drop": max(acc) - acc[-1], "collapse": collapse_step(steps, acc),
        "steps_to_target": reach, "samples_to_target": cum.get(reach) if reach is not None else None,
        "samples": samples, "steps": train_rows[-1]["step"] if train_rows else 0,
        "template_entropy_last": {t: mean_window(rows, f"template/{t}/entropy", last=True) for t in templates},
    }  # fmt: skip
    for name, key in [("entropy", "train/entropy"), ("zero_var", "train/zero_var_groups"),
                      ("length", "train/response_len"), ("truncated", "train/truncated"),
                      ("train_acc", "train/accuracy")]:  # fmt: skip
        summary[f"{name}_first"], summary[f"{name}_last"] = mean_window(rows, key, False), mean_window(rows, key, True)
    summary["run_seconds"] = sum(r.get("time/step", 0) + r.get("time/eval", 0) for r in rows)
    return summary


def style_rows(samples: list[dict]) -> list[dict]:
    """The chain world's style shares per dumped step, as metrics rows {"step", "style/<name>": share} (plot.py reads
    them like train.py's), from samples.jsonl rows (the problem is read back from the prompt's user turn); and
    "answer/boxed", the share of the evaluation template's responses that box their answer (where that step has any):
    the held-out grader reads boxed answers only, the training reward also the last number (docs/study-chain.md)."""
    by_step, boxed = {}, {}
    for s in samples:
        problem = s["prompt"].split("<|im_start|>user\n")[1].split("\n")[0].split("<|im_end|>")[0]
        by_step.setdefault(s["step"], []).append(tiny.chain_style(problem, s["response"]))
        if s.get("template") == CHAIN_DEFAULT_TEMPLATE:
            boxed.setdefault(s["step"], []).append("\\boxed{" in s["response"])
    return [{"step": step, **{f"style/{name}": styles.count(name) / len(styles) for name in (*tiny.STYLES, "other")},
             **({"answer/boxed": statistics.mean(boxed[step])} if step in boxed else {})}
            for step, styles in sorted(by_step.items())]  # fmt: skip


def style_window(rows: list[dict], last: bool) -> dict[str, float]:
    """Mean style shares over the first (or last) WINDOW steps' dumps."""
    final = rows[-1]["step"] if rows else 0
    kept = [r for r in rows if (r["step"] > final - WINDOW if last else r["step"] <= WINDOW)]
    keys = dict.fromkeys(k for r in kept for k in r if k != "step")  # in order; answer/boxed only where measured
    return {k.split("/")[1]: statistics.mean(r[k] for r in kept if k in r) for k in keys}


def bootstrap(values: list[float], n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (resampled with replacement, a fixed RNG)."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def paired(results: list[dict], a: str, b: str, key: str = "end") -> list[float]:
    """a's value minus b's, one per seed that ran both."""
    by_seed = {(r["config"], r["seed"]): r[key] for r in results}
    return [by_seed[(a, s)] - by_seed[(b, s)] for s in sorted({r["seed"] for r in results}) if (a, s) in by_seed and (b, s) in by_seed]


def interval(values: list[float]) -> str:
    lo, hi = bootstrap(values)
    return f"[{lo * 100:+.1f}, {hi * 100:+.1f}]"


def _col(results: list[dict], config: str, key: str) -> list:
    return [r[key] for r in results if r["config"] == config]


def _stats(values: list[float]) -> tuple[float, float]:
    """(mean, sample std; 0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pts(values: list[float]) -> str:
    return mean_std(values) + "%"


def claim_augmentation(results: list[dict]) -> str:
    """Claim 1's verdict sentence (rule in the module docstring), over the estimators run both ways."""
    pairs = [(c, f"{c}-aug") for c in ("grpo", "aapo") if _col(results, c, "end") and _col(results, f"{c}-aug", "end")]
    if not pairs:
        return "Claim 1 (augmentation against collapse): not run (needs a configuration with and without --aug)."
    plain = [r for c, _ in pairs for r in results if r["config"] == c]
    aug = [r for _, c in pairs for r in results if r["config"] == c]
    n_plain, n_aug = sum(r["collapse"] is not None for r in plain), sum(r["collapse"] is not None for r in aug)
    end_plain, end_aug = [r["end"] for r in plain], [r["end"] for r in aug]
    diffs = [d for c, ca in pairs for d in paired(results, ca, c)]
    ent = lambda rs, k: mean_std([r[k] for r in rs], 1, 3)  # noqa: E731
    numbers = (f"collapsed runs {n_plain}/{len(plain)} without augmentation vs {n_aug}/{len(aug)} with; end "
               f"{_pts(end_plain)} vs {_pts(end_aug)} (paired difference, 95% interval {interval(diffs)} points); "
               f"entropy first -> last {WINDOW} steps {ent(plain, 'entropy_first')} -> "
               f"{ent(plain, 'entropy_last')} without vs {ent(aug, 'entropy_first')} -> {ent(aug, 'entropy_last')} with")  # fmt: skip
    if n_plain == 0 and n_aug == 0:
        verdict = "not testable at this scale (no run collapsed)"
    elif n_plain > n_aug and bootstrap(diffs)[0] > 0:
        verdict = "supported"
    else:
        verdict = "not supported"
    return f"Claim 1 (augmentation against collapse): {verdict}: {numbers}."


def claim_aapo(results: list[dict]) -> str:
    """Claim 2's verdict sentence, one clause per pair (aapo vs grpo, aapo-aug vs grpo-aug) that was run."""
    clauses, verdicts = [], []
    for a, g in [("aapo", "grpo"), ("aapo-aug", "grpo-aug")]:
        if not (_col(results, a, "end") and _col(results, g, "end")):
            continue
        diffs = paired(results, a, g)
        reach = {c: [s if s is not None else float("inf") for s in _col(results, c, "steps_to_target")] for c in (a, g)}
        higher = bootstrap(diffs)[0] > 0
        faster = statistics.mean(reach[a]) <= statistics.mean(reach[g])
        verdicts.append(higher and faster)
        fmt = lambda v: "never" if v == float("inf") else f"{v:.0f}"  # noqa: E731
        clauses.append(f"{a} ends at {_pts(_col(results, a, 'end'))} vs {g} {_pts(_col(results, g, 'end'))} (paired "
                       f"difference, 95% interval {interval(diffs)} points), reaches "
                       f"+{TARGET_GAIN * 100:.0f} points at step {fmt(statistics.mean(reach[a]))} vs {fmt(statistics.mean(reach[g]))} "
                       f"(mean over seeds), zero-variance groups over the last {WINDOW} steps "
                       f"{mean_std(_col(results, a, 'zero_var_last'), 100, 0)}% vs {mean_std(_col(results, g, 'zero_var_last'), 100, 0)}%")  # fmt: skip
    if not clauses:
        return "Claim 2 (AAPO learns faster and ends higher than GRPO): not run."
    verdict = "supported" if all(verdicts) else "partly supported" if any(verdicts) else "not supported"
    return f"Claim 2 (AAPO learns faster and ends higher than GRPO): {verdict}: " + "; ".join(clauses) + "."


def claim_cache(results: list[dict]) -> str:
    """Claim 3's verdict sentence: --aapo-ref cache against fresh (both without --aug)."""
    if not (_col(results, "aapo", "end") and _col(results, "aapo-cache", "end")):
        return "Claim 3 (--aapo-ref cache learns like fresh at half the rollouts): not run (needs aapo and aapo-cache)."
    diffs = paired(results, "aapo-cache", "aapo")
    cost = statistics.mean(_col(results, "aapo-cache", "samples")) / statistics.mean(_col(results, "aapo", "samples"))
    lo, hi = bootstrap(diffs)
    ok = -EQUIVALENT <= lo and hi <= EQUIVALENT and cost <= 0.6
    return (f"Claim 3 (--aapo-ref cache learns like fresh at half the rollouts): {'supported' if ok else 'not supported'}: "
            f"cache ends at {_pts(_col(results, 'aapo-cache', 'end'))} vs fresh {_pts(_col(results, 'aapo', 'end'))} "
            f"(paired difference, 95% interval {interval(diffs)} points, equivalence within ±{EQUIVALENT * 100:.0f}), "
            f"with {cost:.2f}x fresh's samples generated ({statistics.mean(_col(results, 'aapo-cache', 'samples')):,.0f} "
            f"vs {statistics.mean(_col(results, 'aapo', 'samples')):,.0f} per run).")  # fmt: skip


def table(results: list[dict]) -> str:
    """Markdown table, one row per configuration (CONFIGS order): mean +- std over seeds."""
    lines = ["| configuration | seeds | start (%) | best (%) | end (%) | end, 95% interval | collapsed | steps to "
             f"+{TARGET_GAIN * 100:.0f} points | samples per run | entropy first → last | zero-var groups first → last (%) "
             "| response length first → last | truncated last (%) | train accuracy last (%) | run time (min) |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---|---|---|---:|---:|---:|"]  # fmt: skip
    for c in [c for c in CONFIGS if _col(results, c, "end")]:
        col = lambda k: _col(results, c, k)  # noqa: E731
        reach = [s for s in col("steps_to_target") if s is not None]
        reached = (mean_std(reach, 1, 0) if reach else "never") + (
            f" ({len(reach)}/{len(col('end'))} runs)" if 0 < len(reach) < len(col("end")) else "")
        lo, hi = bootstrap(col("end"))
        minutes = [t / 60 for t in col("run_seconds")]
        lines.append(
            f"| {c} | {len(col('end'))} | {mean_std(col('start'))} | {mean_std(col('best'))} | {mean_std(col('end'))} "
            f"| [{lo * 100:.1f}, {hi * 100:.1f}] | {sum(s is not None for s in col('collapse'))}/{len(col('end'))} | {reached} "
            f"| {statistics.mean(col('samples')):,.0f} | {mean_std(col('entropy_first'), 1, 3)} → {mean_std(col('entropy_last'), 1, 3)} "
            f"| {mean_std(col('zero_var_first'), 100, 0)} → {mean_std(col('zero_var_last'), 100, 0)} "
            f"| {mean_std(col('length_first'), 1, 1)} → {mean_std(col('length_last'), 1, 1)} "
            f"| {mean_std(col('truncated_last'), 100, 1)} | {mean_std(col('train_acc_last'))} "
            f"| {statistics.mean(minutes):.0f} ({min(minutes):.0f}-{max(minutes):.0f}) |"
        )  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Running it


def fixed_train_set(cache: Path, preset: str, seed: int, size: int) -> Path:
    """The first `size` training problems of the seed's world, as a file of their own."""
    source = tiny.world_dir(cache, tiny.WORLDS[preset], seed) / "train.jsonl"
    rows = source.read_text().splitlines()[:size]
    if len(rows) < size:
        raise ValueError(f"--train-size {size}: {source} holds only {len(rows)} problems")
    path = cache / f"train-{size}.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def study_settings(args: argparse.Namespace) -> dict:
    """What a record shares with the study that wrote it: a record of other settings belongs to another study."""
    return {"preset": args.preset, "steps": args.steps, "train_size": args.train_size, "eval_every": args.eval_every,
            "eval_limit": args.eval_limit, "extra": args.extra}  # fmt: skip


def curve_rows(rows: list[dict]) -> list[dict]:
    """The metrics the figures plot (CURVE_KEYS and the per-template entropy and accuracy), 4 significant digits: what
    a record keeps of a run's metrics.jsonl."""
    def keep(k: str) -> bool:
        return k in CURVE_KEYS or (k.startswith("template/") and k.endswith(("/entropy", "/accuracy")))

    kept = [{k: float(f"{v:.4g}") for k, v in r.items() if keep(k) and isinstance(v, (int, float))} for r in rows]
    return [{"step": r["step"], **k} for r, k in zip(rows, kept) if k]


def write_record(path: Path, record: dict) -> None:
    """Write atomically (a killed study leaves the old record or the new one, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)


def read_record(path: Path, settings: dict) -> dict:
    """A record, refused if another study's settings wrote it."""
    record = json.loads(path.read_text())
    if record["settings"] != settings:
        raise SystemExit(f"{path}: written by a study with {record['settings']}, this one runs {settings}: pass "
                         "another --records folder")  # fmt: skip
    return record


def keep_warm_start(world: Path, archive: Path) -> None:
    """The seed's warm-start folder (model, data, done file) as a .tar.gz record, written atomically, so that the seed's
    runs left for a later session start from this very model: a rebuild need not end at the same weights (seeds 3 and
    5 of the chain world ended at dev 0.65 and 0.30 when rebuilt on 2026-12-06, 0.51 and 0.33 the day before)."""
    tmp = archive.with_name(archive.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(world, arcname=world.name)
    os.replace(tmp, archive)


def restore_warm_start(archive: Path, world: Path) -> None:
    """Unpack a kept warm start where tiny.prepare finds it built; refused if tiny.py now builds another world."""
    with tarfile.open(archive) as tar:
        tops = sorted({m.name.split("/")[0] for m in tar.getmembers()})
        if tops != [world.name]:
            raise SystemExit(f"{archive}: holds {tops}, but this world's warm start is {world.name} (tiny.py changed "
                             "since): delete the seed's records to run it anew")  # fmt: skip
        world.parent.mkdir(parents=True, exist_ok=True)
        tar.extractall(world.parent, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def run(config: str, seed: int, out: Path, cache: Path, preset: str, flags: list[str], records: Path | None = None,
        settings: dict | None = None, run_missing: bool = True) -> dict | None:
    """One configuration's run as a record {settings, result (its summary row), curves, styles}: read back from
    `records` if it is there; else summarised from its finished folder; else run (resumed if interrupted), unless not
    run_missing (then None). Written to `records` when summarised."""
    kept = records / f"{config}-s{seed}.json" if records else None
    if kept and kept.exists():
        return read_record(kept, settings)
    folder = out / f"{config}-s{seed}"
    done = folder / "bench_seconds.txt"  # written once the run has finished
    if not done.exists():
        if not run_missing:
            return None
        seconds = train_run([*CONFIGS[config], *flags], seed, folder, cache, preset, resume=True)
        done.write_text(f"{seconds:.1f}")
    cfg = json.loads((folder / "config.json").read_text())
    rows = load_metrics(folder)
    summary = summarize_study_run(rows, cfg["prompts_per_step"] * cfg["group_size"])
    styles = []
    if preset == "tiny-chain":
        styles = style_rows([json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()])
        summary["styles_first"], summary["styles_last"] = style_window(styles, False), style_window(styles, True)
        summary["format"] = format_check(folder)
    result = {"config": config, "seed": seed, "seconds": float(done.read_text()), **summary}
    record = {"settings": settings, "result": result, "curves": curve_rows(rows), "styles": styles}
    if kept:
        write_record(kept, record)
    return record


def graded_both_ways(model_dir: str | Path, cfg: dict) -> dict:
    """The model's greedy held-out responses, generated as train.py's evaluation does (its config `cfg`: the eval
    template, rows and budgets), graded boxed-only (eval.py's protocol) and as the training reward reads answers (the
    box, else "the answer is", else the last number); and the share of responses holding a box."""
    import eval as evaluation
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mathrl.data import load_eval_rows
    from mathrl.engine import TransformersEngine

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    limit = len(tokenizer) if len(tokenizer) < model.config.vocab_size else None  # as train.py's vocab_limit
    rows = load_eval_rows(cfg["eval_data"], cfg["eval_benchmarks"], cfg["eval_data_dir"], cfg["eval_limit"],
                          cfg["problem_field"], cfg["answer_field"])  # fmt: skip
    records = evaluation.evaluate(
        TransformersEngine(model, tokenizer, batch_size=cfg["gen_batch_size"], vocab_limit=limit), tokenizer, rows,
        template=cfg["eval_template"], context=cfg["eval_context"], max_new_tokens=cfg["eval_max_new_tokens"],
        temperature=0.0, seed=cfg["seed"], timeout=cfg["reward_timeout"], workers=0,
    )  # fmt: skip
    return two_grades(records)


def two_grades(records: list[dict]) -> dict:
    """Shares of eval.py records (response, gold, correct: boxed-only) right boxed-only, right as the training reward
    reads answers, and holding a box."""
    from mathrl.grading import grade_batch

    lenient = grade_batch([r["response"] for r in records], [r["gold"] for r in records], workers=0)
    n = len(records)
    return {"boxed": sum(r["correct"] for r in records) / n, "any_format": sum(lenient) / n,
            "has_box": sum("\\boxed{" in r["response"] for r in records) / n}  # fmt: skip


def format_check(folder: Path) -> dict:
    """A diagnostic added after the first chain runs, outside the verdict rules: the warm start and the run's last
    checkpoint, each graded both ways (graded_both_ways). Its boxed accuracy reproduces the run's first and last
    evaluations; a gap to the any-format accuracy is held-out accuracy lost to the answer format, not to the
    arithmetic. Computed once, kept in <folder>/format_check.json."""
    cached = folder / "format_check.json"
    if not cached.exists():
        cfg = json.loads((folder / "config.json").read_text())
        start, end = graded_both_ways(cfg["model"], cfg), graded_both_ways(folder / f"checkpoint-{cfg['max_steps']}", cfg)
        cached.write_text(json.dumps({"start": start, "end": end}))
    return json.loads(cached.read_text())


def format_table(results: list[dict]) -> str:
    """The format check per configuration, mean over seeds (%): held-out accuracy boxed-only and any-format, and the
    share of responses holding a box, at the warm start and at the end."""
    lines = ["| configuration | boxed-only start → end (%) | any format start → end (%) | holding a box start → end (%) |",
             "|---|---|---|---|"]  # fmt: skip
    for c in [c for c in CONFIGS if _col(results, c, "end")]:
        mean = lambda when, k: statistics.mean(r["format"][when][k] for r in results if r["config"] == c) * 100  # noqa: E731
        lines.append(f"| {c} | " + " | ".join(f"{mean('start', k):.1f} → {mean('end', k):.1f}" for k in ("boxed", "any_format", "has_box")) + " |")
    return "\n".join(lines)


def style_table(results: list[dict]) -> str:
    """The chain world's style shares and boxed-answer share (%) in the first and last WINDOW steps, mean over seeds,
    per configuration."""
    names = (*tiny.STYLES, "other", "boxed")
    lines = ["| configuration | " + " | ".join(f"{n} first → last (%)" for n in names) + " |",
             "|---|" + "---|" * len(names)]  # fmt: skip
    for c in [c for c in CONFIGS if _col(results, c, "end")]:
        share = lambda k, n: statistics.mean(r[k].get(n, 0.0) for r in results if r["config"] == c) * 100  # noqa: E731
        lines.append(f"| {c} | " + " | ".join(f"{share('styles_first', n):.0f} → {share('styles_last', n):.0f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=list(tiny.WORLDS), help="the world (train.py --preset)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="one warm start and one run per config each")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--steps", type=int, default=250, help="RL steps per run (16 prompts each)")
    parser.add_argument("--train-size", type=int, default=64, help="problems in the fixed training set")
    parser.add_argument("--eval-every", type=int, default=10, help="held-out evaluation every N steps")
    parser.add_argument("--eval-limit", type=int, default=600, help="held-out problems per evaluation")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (cores/jobs threads each)")
    parser.add_argument("--out", default="runs/study", help="folder for runs, caches, table and figures (kept: resumes)")
    parser.add_argument("--records", help="folder (commit it) of one small record per finished run and warm start: "
                        "the study goes on from it on a machine that has none of --out")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="run nothing: tabulate what --records and the "
                        "finished runs in --out hold")  # fmt: skip
    parser.add_argument("extra", nargs="*", help="flags passed to every train.py run (after --)")
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs, CONFIGS)
    if args.train_size < 16:
        raise SystemExit(f"--train-size {args.train_size}: need at least 16 (the prompts of one step)")
    out, records, settings = Path(args.out), Path(args.records) if args.records else None, study_settings(args)
    out.mkdir(parents=True, exist_ok=True)
    started, warm, dev, left_out = time.strftime("started %Y-%m-%d %H:%M UTC", time.gmtime()), {}, {}, {}
    chain = args.preset == "tiny-chain"
    if args.jobs > 1:  # each job gets its share of the cores: more threads than cores slows every job several-fold
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.jobs))

    def warm_start(seed: int) -> tuple[int, list[str] | None]:  # the seed's warm start (built once, kept), run flags
        cache, world_settings = out / f"cache-s{seed}", tiny.WORLDS[args.preset]
        kept = records / f"warm-s{seed}.json" if records else None
        known = read_record(kept, settings) if kept and kept.exists() else None
        recorded = records and all((records / f"{c}-s{seed}.json").exists() for c in configs)
        needed = not (args.report_only or (known and recorded))  # a run of this seed is left to run
        world = tiny.world_dir(cache, world_settings, seed)
        archive = records / f"warm-s{seed}.tar.gz" if records else None
        if needed:
            if archive and archive.exists() and not (world / "done").exists():
                restore_warm_start(archive, world)
            build_warm_start(cache, seed, args.preset)  # instant when built before or restored
        done = world / "done"
        if done.exists():
            built = json.loads(done.read_text())
            if known and built["dev_accuracy"] != known["dev_accuracy"]:
                raise SystemExit(f"seed {seed}: its warm start ended at dev accuracy {built['dev_accuracy']} here "
                                 f"and {known['dev_accuracy']} in {kept}: it did not reproduce, and the runs of a seed "
                                 "must share one; delete that seed's records to run it anew")  # fmt: skip
            known = known or {"settings": settings, "seconds": built["seconds"], "dev_accuracy": built["dev_accuracy"]}
            if kept and not kept.exists():
                write_record(kept, known)
            if archive and not archive.exists():
                keep_warm_start(world, archive)
        if known is None:  # --report-only, and this seed's warm start was never built here nor recorded
            left_out[seed] = "not started"
            return seed, None
        warm[seed], dev[seed] = known["seconds"], known["dev_accuracy"]
        if dev[seed] < WARM_FLOOR * world_settings["sft_target"]:
            left_out[seed] = f"warm start below {WARM_FLOOR:.0%} of its target"
            print(f"seed {seed}: warm start {warm[seed]:.0f} s ended at dev accuracy {dev[seed]:.3f}, below "
                  f"{WARM_FLOOR * world_settings['sft_target']:.2f}: left out of the study", flush=True)  # fmt: skip
            return seed, None
        if not needed:
            return seed, []  # every run is recorded (or --report-only): no flags needed
        train = fixed_train_set(cache, args.preset, seed, args.train_size)
        print(f"seed {seed}: warm start {warm[seed]:.0f} s, dev accuracy {dev[seed]:.3f}; fixed training set {train}",
              flush=True)
        return seed, ["--train-data", str(train), "--lr-schedule", "constant", "--max-steps", str(args.steps),
                      "--eval-every", str(args.eval_every), "--eval-limit", str(args.eval_limit), "--save-every", "50",
                      *(["--samples-every", "10", "--num-samples", "16"] if chain else []), *args.extra]  # fmt: skip

    def one(job: tuple[str, int, list[str]]) -> dict | None:
        config, seed, flags = job
        record = run(config, seed, out, out / f"cache-s{seed}", args.preset, flags, records, settings,
                     run_missing=not args.report_only)  # fmt: skip
        if record is not None:
            r = record["result"]
            print(f"{config}-s{seed}: start {r['start']:.3f} best {r['best']:.3f} end {r['end']:.3f} collapse "
                  f"{r['collapse']} | {r['run_seconds']:.0f} s of steps and evaluations", flush=True)  # fmt: skip
        return record

    with ThreadPoolExecutor(args.jobs) as pool:  # warm starts and runs are subprocesses: --jobs of them at a time
        futures = {}  # (config, seed) -> its run, queued as soon as the seed's warm start is ready
        for ready in as_completed([pool.submit(warm_start, s) for s in args.seeds]):
            seed, flags = ready.result()
            if flags is not None:
                futures |= {(c, seed): pool.submit(one, (c, seed, flags)) for c in configs}
        done_runs = {f"{c}-s{s}": futures[c, s].result() for s in args.seeds for c in configs if (c, s) in futures}
    done_runs = {name: record for name, record in done_runs.items() if record is not None}
    results = [record["result"] for record in done_runs.values()]
    if not results:
        raise SystemExit("no run to tabulate: no seed had a usable warm start, or (--report-only) none has finished")
    (out / "summary.json").write_text(json.dumps({"runs": results, "warm_start_seconds": warm,
                                                  "warm_start_dev_accuracy": dev, "left_out": left_out}, indent=1))
    import torch

    epochs = args.steps * 16 / args.train_size
    warm_text = ", ".join(f"seed {s}: {t:.0f}, {dev[s]:.2f}" for s, t in sorted(warm.items()))
    warm_text += "".join(f"; seed {s} left out ({why})" for s, why in sorted(left_out.items()))
    if len(results) < len(args.seeds) * len(configs):
        warm_text += f". {len(results)} of {len(args.seeds) * len(configs)} runs finished so far"
    header = (f"{started}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, Python "
              f"{platform.python_version()}: `{' '.join(['bench/bench_study.py', *(argv or sys.argv[1:])])}`\n\n"
              f"--preset {args.preset}: {args.steps} steps of 16 prompts x 8 samples on a fixed set of {args.train_size} "
              f"problems ({epochs:.0f} epochs), constant lr; held-out: {args.eval_limit} problems every {args.eval_every} "
              f"steps. Warm starts (s, dev accuracy): {warm_text}\n\n")  # fmt: skip
    claims = "\n".join(f"- {f(results)}" for f in (claim_augmentation, claim_aapo, claim_cache))
    text = header + table(results) + "\n\n"
    if chain:  # the style shares and the format check exist in the chain world only
        text += f"{style_table(results)}\n\nHeld-out answers graded two ways (format_check):\n\n{format_table(results)}\n\n"
    text += claims + "\n"
    (out / "table.md").write_text(text)
    print(text)
    runs = {name: record["curves"] for name, record in done_runs.items()}
    keys = CURVE_KEYS[:5] + ["train/truncated" if chain else "train/adv_abs"]
    print(f"wrote {plot_bands(runs, keys, out / 'curves.png', smooth_k=10)}")
    aug = {n: rows for n, rows in runs.items() if "-aug-" in n}
    if aug:
        print(f"wrote {plot(aug, ['template/*/entropy', 'template/*/accuracy'], out / 'template_entropy.png', 10)}")
    if chain:
        styles = {name: record["styles"] for name, record in done_runs.items()}
        keys = [f"style/{s}" for s in (*tiny.STYLES, "other")] + ["answer/boxed"]
        print(f"wrote {plot_bands(styles, keys, out / 'styles.png', smooth_k=3)}")


if __name__ == "__main__":
    main()
