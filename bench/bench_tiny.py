"""
The tiny preset from scratch, several seeds of every configuration: the README's tiny table and figure.

For each seed, an empty cache folder, so that the seed's warm start is built anew (timed); then the six
configurations (grpo, drgrpo, aapo, each with and without --aug) run one after another as `make tiny` runs, with
`--seed` driving the warm start, the data order, the template draws and the sampling:

    .venv/bin/python bench/bench_tiny.py --seeds 1 2 3 --out runs/bench-tiny       # 18 runs + 3 warm starts
    .venv/bin/python bench/bench_tiny.py --seeds 7 --configs aapo-aug --out /tmp/t  # one run

Writes <out>/<config>-s<seed>/ (train.py's run folders), <out>/summary.json (one row per run), <out>/table.md (the
table below) and <out>/curves.png (plot.py --bands: mean over seeds, band from the lowest to the highest seed).

Per run: start = held-out accuracy at step 0; end = the mean of the last three evaluations (one evaluation is noisy:
1,200 problems give a standard error of up to 1.4 points); gain = end - start; drop = best evaluation - last
evaluation (a run that "broke late" has a large drop); entropy = mean full-distribution entropy of the first and
of the last 10 steps. The table gives mean +- std over seeds and the minimum gain; the pass line checks the preset's
promise: every run gains >= 15 points and ends within 5 points of its best.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plot import load_metrics, plot_bands  # noqa: E402

CONFIGS = {  # name -> train.py flags; names end in -s<seed> on disk (plot.py --bands groups by the rest)
    "grpo": ["--estimator", "grpo"],
    "grpo-aug": ["--estimator", "grpo", "--aug"],
    "drgrpo": ["--estimator", "drgrpo"],
    "drgrpo-aug": ["--estimator", "drgrpo", "--aug"],
    "aapo": ["--estimator", "aapo"],
    "aapo-aug": ["--estimator", "aapo", "--aug"],
}
MIN_GAIN, MAX_DROP = 0.15, 0.05  # the preset's promise (accuracy, as a fraction)


def summarize_run(rows: list[dict], last_k: int = 3, window: int = 10) -> dict:
    """Start, end (mean of the last `last_k` evaluations), gain, best, last, drop (best - last), and the mean entropy
    of the first and last `window` training steps, from one run's metrics rows."""
    evals = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    if len(evals) < last_k + 1:
        raise ValueError(f"{len(evals)} evaluations: need the step-0 one and at least {last_k} more")
    entropy = [r["train/entropy"] for r in rows if "train/entropy" in r]
    end = sum(evals[-last_k:]) / last_k
    return {
        "start": evals[0], "end": end, "gain": end - evals[0], "best": max(evals), "last": evals[-1],
        "drop": max(evals) - evals[-1], "entropy_first": statistics.mean(entropy[:window]),
        "entropy_last": statistics.mean(entropy[-window:]), "steps": rows[-1]["step"],
    }  # fmt: skip


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """"m +- s" (sample std; "m" alone for one value), scaled (accuracy fractions to points)."""
    m = statistics.mean(values) * scale
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def table(results: list[dict]) -> str:
    """Markdown table, one row per configuration (in CONFIGS order), from summary rows {config, seed, ...}."""
    lines = ["| configuration | seeds | start (%) | end (%) | gain (points) | min gain | max drop | entropy first → last "
             "| wall time per run |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for config in [c for c in CONFIGS if any(r["config"] == c for r in results)]:
        rs = [r for r in results if r["config"] == config]
        col = lambda k: [r[k] for r in rs]  # noqa: E731
        lines.append(
            f"| {config} | {len(rs)} | {mean_std(col('start'))} | {mean_std(col('end'))} | {mean_std(col('gain'))} "
            f"| {min(col('gain')) * 100:.1f} | {max(col('drop')) * 100:.1f} "
            f"| {mean_std(col('entropy_first'), 1, 3)} → {mean_std(col('entropy_last'), 1, 3)} "
            f"| {statistics.mean(col('seconds')):.0f} s ({min(col('seconds')):.0f}-{max(col('seconds')):.0f}) |"
        )
    return "\n".join(lines)


def verdict(results: list[dict]) -> str:
    """One line: does every run gain >= MIN_GAIN and end within MAX_DROP of its best?"""
    low = [f"{r['config']}-s{r['seed']}" for r in results if r["gain"] < MIN_GAIN]
    broke = [f"{r['config']}-s{r['seed']}" for r in results if r["drop"] > MAX_DROP]
    ok = not low and not broke
    return (f"{'PASS' if ok else 'FAIL'}: {len(results) - len(low)}/{len(results)} runs gain >= {MIN_GAIN * 100:.0f} "
            f"points, {len(results) - len(broke)}/{len(results)} end within {MAX_DROP * 100:.0f} points of their best"
            + (f"; below: {', '.join(low)}" if low else "") + (f"; late drop: {', '.join(broke)}" if broke else ""))  # fmt: skip


def build_warm_start(cache: Path, seed: int, preset: str = "tiny") -> float:
    """Build the seed's world of `preset` (tiny or tiny-chain) in `cache`, in a subprocess as train.py would; returns
    the seconds its build took, read from the cache (a warm start built earlier reports its own build time)."""
    from mathrl import tiny

    code = f"from mathrl import tiny; tiny.prepare({str(cache)!r}, seed={seed}, settings=tiny.WORLDS[{preset!r}])"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return json.loads((tiny.world_dir(cache, tiny.WORLDS[preset], seed) / "done").read_text())["seconds"]


def parse_configs(text: str, known: dict) -> list[str]:
    """--configs "a,b" as a list, every name one of `known` (else a clear error)."""
    configs = [c.strip() for c in text.split(",") if c.strip()]
    if unknown := [c for c in configs if c not in known]:
        raise SystemExit(f"--configs: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return configs


def seed_cache(out: Path, seed: int, reuse: bool, preset: str = "tiny") -> tuple[Path, float]:
    """<out>/cache-s<seed> holding the seed's warm start, built from an empty folder unless `reuse`; (it, seconds)."""
    cache = out / f"cache-s{seed}"
    if not reuse:
        shutil.rmtree(cache, ignore_errors=True)  # an empty cache: the warm start is built anew
    return cache, build_warm_start(cache, seed, preset)


def train_run(flags: list[str], seed: int, folder: Path, cache: Path, preset: str = "tiny", resume: bool = False) -> float:
    """One `train.py --preset <preset>` run into `folder` (log beside it, <folder>.log) on the seed's cache; its
    seconds. resume: continue from the folder's newest checkpoint if it has one (else start over)."""
    from mathrl.outputs import checkpoints

    again = "--resume" if resume and folder.exists() and checkpoints(folder) else "--overwrite"
    cmd = [sys.executable, "train.py", "--preset", preset, *flags, "--seed", str(seed), "--out", str(folder), again]
    t0 = time.time()
    with open(f"{folder}.log", "a" if again == "--resume" else "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "MATHRL_CACHE": str(cache)}, stdout=log, stderr=log)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); see {folder}.log")
    return time.time() - t0


def run(config: str, seed: int, out: Path, cache: Path, extra: list[str]) -> dict:
    """One configuration's run (its own folder, the seed's cache); its summary row."""
    folder = out / f"{config}-s{seed}"
    seconds = train_run([*CONFIGS[config], *extra], seed, folder, cache)
    return {"config": config, "seed": seed, "seconds": seconds, **summarize_run(load_metrics(folder))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="one warm start and six runs each")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--out", default="runs/bench-tiny", help="folder for runs, caches, table and figure")
    parser.add_argument("--reuse-cache", action="store_true", help="keep <out>/cache-s<seed> if it exists")
    parser.add_argument("extra", nargs="*", help="flags passed to every train.py run (after --)")
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs, CONFIGS)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, results, warm = time.strftime("started %Y-%m-%d %H:%M UTC", time.gmtime()), [], {}
    for seed in args.seeds:
        cache, warm[seed] = seed_cache(out, seed, args.reuse_cache)
        print(f"seed {seed}: warm start {warm[seed]:.0f} s", flush=True)
        for config in configs:
            results.append(run(config, seed, out, cache, args.extra))
            r = results[-1]
            print(f"{config}-s{seed}: start {r['start']:.3f} end {r['end']:.3f} gain {r['gain'] * 100:+.1f} "
                  f"drop {r['drop'] * 100:.1f} | {r['seconds']:.0f} s", flush=True)  # fmt: skip
    (out / "summary.json").write_text(json.dumps({"runs": results, "warm_start_seconds": warm}, indent=1))
    import torch

    header = (f"{started}, {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, Python "
              f"{platform.python_version()}: `{' '.join(['bench/bench_tiny.py', *(argv or sys.argv[1:])])}`\n\n"
              f"Warm starts (seconds, built from an empty cache): "
              + ", ".join(f"seed {s}: {t:.0f}" for s, t in warm.items()) + "\n\n")  # fmt: skip
    text = header + table(results) + "\n\n" + verdict(results) + "\n"
    (out / "table.md").write_text(text)
    print(text)
    keys = ["eval/accuracy", "train/accuracy", "train/entropy", "train/response_len", "train/zero_var_groups"]
    runs = {f"{r['config']}-s{r['seed']}": load_metrics(out / f"{r['config']}-s{r['seed']}") for r in results}
    print(f"wrote {plot_bands(runs, keys, out / 'curves.png', smooth_k=5)}")


if __name__ == "__main__":
    main()
