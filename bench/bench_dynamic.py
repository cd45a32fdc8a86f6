"""
Dynamic sampling on the tiny preset: refill (--dynamic-sampling-rounds R) vs mask-only (R = 0) vs off, for GRPO and
AAPO with prompt augmentation, several seeds each (docs/algorithms.md "Dynamic sampling, measured"):

    .venv/bin/python bench/bench_dynamic.py --seeds 42 43 44 --out runs/bench-dynamic -- --max-steps 20 --eval-every 10
    .venv/bin/python bench/bench_dynamic.py --seeds 42 --configs grpo-refill --out /tmp/d   # one run

Runs use the default tiny cache (one warm start per seed, built on first use) and bench_tiny.py's train_run. Writes
<out>/<config>-s<seed>/ (train.py's run folders), <out>/summary.json, <out>/table.md and <out>/curves.png (mean over
seeds, band from the lowest to the highest seed).

Per run: rounds per step and kept fraction (mean over steps); held-out accuracy at the last evaluation (equal steps);
generated samples (policy + AAPO reference: prompts consumed x G, x 2 with AAPO's fresh reference), a count of
sequences (responses stay at 20-22 tokens here, so tokens scale with it); the held-out accuracy of the refill run at
the generated samples the off run spent in all its steps ("equal generation", linear between evaluations); wall time.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_tiny import mean_std, parse_configs, train_run  # noqa: E402
from mathrl import tiny  # noqa: E402
from plot import load_metrics, plot_bands  # noqa: E402

MODES = {"off": [], "mask": ["--dynamic-sampling"], "refill": ["--dynamic-sampling", "--dynamic-sampling-rounds", "4"]}
CONFIGS = {f"{est}-{mode}": ["--estimator", est, "--aug", *flags] for est in ("grpo", "aapo") for mode, flags in MODES.items()}


def samples_per_step(row: dict, prompts: int, group: int, aapo: bool) -> int:
    """Sequences generated in one step: the prompts consumed (dynamic/prompts, else the batch) x G, twice with AAPO's
    fresh reference (G reference samples per prompt)."""
    return int(row.get("dynamic/prompts", prompts)) * group * (2 if aapo else 1)


def summarize(rows: list[dict], aapo: bool, prompts: int = 16, group: int = 8) -> dict:
    """One run's summary from its metrics rows: evals [(step, generated samples so far, accuracy)], means over steps."""
    steps = [r for r in rows if "train/reward" in r]
    cum, spent = {0: 0}, 0
    for r in steps:
        spent += samples_per_step(r, prompts, group, aapo)
        cum[r["step"]] = spent
    evals = [(r["step"], cum[r["step"]], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    mean = lambda k, d: statistics.mean(r.get(k, d) for r in steps)  # noqa: E731
    return {"evals": evals, "rounds": mean("dynamic/rounds", 1), "kept": mean("dynamic/kept_fraction", 1.0),
            "zero_var": mean("train/zero_var_groups", 0.0), "cap_hit": mean("dynamic/cap_hit", 0.0),
            "samples": spent, "final": evals[-1][2], "start": evals[0][2]}  # fmt: skip


def accuracy_at(evals: list[tuple], samples: float) -> float:
    """Held-out accuracy at `samples` generated, linear between evaluations (the last one beyond them)."""
    for (_, s0, a0), (_, s1, a1) in zip(evals, evals[1:]):
        if s0 <= samples <= s1:
            return a0 + (a1 - a0) * (samples - s0) / max(s1 - s0, 1)
    return evals[-1][2]


def table(results: list[dict]) -> str:
    lines = ["| configuration | seeds | rounds / step | kept fraction | zero-var share (round 0) | held-out start (%) | "
             "held-out at equal steps (%) | held-out at the off run's generation (%) | samples generated | wall time "
             "per run (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for config in [c for c in CONFIGS if any(r["config"] == c for r in results)]:
        rs = [r for r in results if r["config"] == config]
        col = lambda k: [r[k] for r in rs]  # noqa: E731
        lines.append(f"| {config} | {len(rs)} | {statistics.mean(col('rounds')):.2f} | {mean_std(col('kept'), 1, 2)} "
                     f"| {mean_std(col('zero_var'), 100, 0)}% | {mean_std(col('start'))} | {mean_std(col('final'))} "
                     f"| {mean_std(col('equal_gen'))} | {statistics.mean(col('samples')):.0f} "
                     f"| {statistics.mean(col('seconds')):.0f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="one warm start and six runs each")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--out", default="runs/bench-dynamic", help="folder for runs, table and figure")
    parser.add_argument("--reuse-runs", action="store_true", help="keep the runs that finished before (summary only)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (wall times grow with it)")
    parser.add_argument("extra", nargs="*", help="flags passed to every train.py run (after --)")
    args = parser.parse_args(argv)
    configs, out = parse_configs(args.configs, CONFIGS), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started, cache = time.strftime("started %Y-%m-%d %H:%M UTC", time.gmtime()), tiny.default_cache_dir()
    for seed in args.seeds:  # SETUP: each seed's warm start before the runs, so parallel runs do not race to build it
        tiny.prepare(cache, seed=seed, log=lambda *a: None)

    def one(job):
        config, seed = job
        folder = out / f"{config}-s{seed}"
        done = folder / "bench_seconds.txt"  # a finished run: kept with --reuse-runs
        if not (args.reuse_runs and done.exists()):
            done.write_text(str(train_run([*CONFIGS[config], *args.extra], seed, folder, cache)))
        seconds = float(done.read_text())
        r = {"config": config, "seed": seed, "seconds": seconds,
             **summarize(load_metrics(folder), aapo=config.startswith("aapo"))}  # fmt: skip
        print(f"{config}-s{seed}: rounds {r['rounds']:.2f} kept {r['kept']:.2f} final {r['final']:.3f} "
              f"samples {r['samples']} | {seconds:.0f} s", flush=True)  # fmt: skip
        return r

    with ThreadPoolExecutor(args.jobs) as pool:  # runs are subprocesses: --jobs of them at a time
        results = list(pool.map(one, [(c, s) for s in args.seeds for c in configs]))
    for r in results:  # the refill/mask run's accuracy at the generation its seed's off run spent in all its steps
        off = next((o for o in results if o["seed"] == r["seed"] and o["config"] == r["config"].rsplit("-", 1)[0] + "-off"), r)
        r["equal_gen"] = accuracy_at(r["evals"], off["samples"])
    (out / "summary.json").write_text(json.dumps({"runs": results}, indent=1))
    import torch

    header = (f"{started}, {platform.machine()} {os.cpu_count()} cores (shared), torch {torch.__version__}: "
              f"`{' '.join(['bench/bench_dynamic.py', *(argv or sys.argv[1:])])}`\n\n")  # fmt: skip
    text = header + table(results) + "\n"
    (out / "table.md").write_text(text)
    print(text)
    keys = ["eval/accuracy", "dynamic/rounds", "dynamic/kept_fraction", "train/zero_var_groups", "train/accuracy",
            "dynamic/gen_per_trained_token"]  # fmt: skip
    runs = {f"{r['config']}-s{r['seed']}": load_metrics(out / f"{r['config']}-s{r['seed']}") for r in results}
    print(f"wrote {plot_bands(runs, keys, out / 'curves.png', smooth_k=3)}")


if __name__ == "__main__":
    main()
