"""
Training curves of one or several runs, from each run's metrics.jsonl, in one PNG grid (one panel per metric, one
line per run, legend = run folder name), so ablations sit side by side.

    python plot.py runs/tiny --out runs/tiny/curves.png
    python plot.py runs/grpo runs/aapo-aug --out ablation.png --smooth 10
    python plot.py runs/aapo-aug --out margin.png --keys train/reward aapo/margin_mean 'template/*/accuracy'

A key with a `*` (e.g. 'template/*/entropy', quoted for the shell) draws one line per matching key: colour per match
(e.g. per template), line style per run, label "run: match". eval/accuracy is sparse (only on eval steps), so it gets
markers and is never smoothed.

    python plot.py runs/study/*-s* --bands --out study.png   # several seeds of each configuration: mean and band

--bands groups the runs by folder name without its seed suffix ("aapo-aug-s3" -> "aapo-aug") and draws, per
configuration, the mean over its seeds with a shaded band from the lowest to the highest seed, at the steps that every
seed of it logged. A `*` key then averages its matches (e.g. the mean entropy over templates) before the seeds are.
"""

import argparse
import fnmatch
import math
import re
from pathlib import Path

from mathrl import BadValue, CannotRun, MissingFile, UserError
from mathrl.data import read_jsonl

DEFAULT_KEYS = ["train/reward", "train/accuracy", "eval/accuracy", "train/entropy", "train/response_len",
                "template/*/entropy"]  # fmt: skip
SPARSE_PREFIX = "eval/"  # logged only on eval steps: markers, no smoothing
LINESTYLES = ["-", "--", ":", "-."]  # one per run in pattern panels (colour = matched key)
SEED_SUFFIX = re.compile(r"-s\d+$")  # "aapo-aug-s3": configuration "aapo-aug", seed 3 (bench/bench_tiny.py's names)


# ----------------------------------------------------------------------------------------------------------------------
# Data (pure functions, imported by the tests)


def load_metrics(path: str | Path) -> list[dict]:
    """Rows of a run folder's metrics.jsonl (or of the file itself); clear errors naming the folder/file/line."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"{path}: no such run folder")
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise MissingFile(f"{path}: no metrics.jsonl in this folder (is it a train.py --out folder?)")
    return read_jsonl(file, key="step")


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that hold a finite number under key, in file order."""
    steps, values = [], []
    for row in rows:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(row["step"])
            values.append(float(v))
    return steps, values


def smooth(values: list[float], k: int) -> list[float]:
    """Trailing moving average over the last k values (fewer at the start); k <= 1 returns the values unchanged."""
    if k <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= k:
            total -= values[i - k]
        out.append(total / min(i + 1, k))
    return out


def expand_keys(keys: list[str], runs: dict[str, list[dict]]) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(panels, missing): one (title, concrete keys) per requested key found in some run (a `*` pattern expands to
    the matching keys), and the requested keys found in no run."""
    present = sorted({k for rows in runs.values() for row in rows for k in row})
    panels, missing = [], []
    for key in keys:
        matched = fnmatch.filter(present, key) if "*" in key else [k for k in [key] if k in present]
        panels.append((key, matched)) if matched else missing.append(key)
    return panels, missing


def short_label(pattern: str, key: str) -> str:
    """The part of key that a one-`*` pattern matched ("template/*/entropy", "template/abel/entropy" -> "abel")."""
    if pattern.count("*") != 1:
        return key
    prefix, suffix = pattern.split("*")
    return key[len(prefix) : len(key) - len(suffix)]


def group_by_config(names: list[str]) -> dict[str, list[str]]:
    """Run names grouped by configuration: the name without its "-s<seed>" suffix, in first-seen order."""
    groups = {}
    for name in names:
        groups.setdefault(SEED_SUFFIX.sub("", name), []).append(name)
    return groups


def seed_band(seeds: list[list[dict]], keys: list[str]) -> tuple[list[int], list[float], list[float], list[float]]:
    """(steps, mean, low, high) over seeds (one list of rows each) of the mean of `keys` at each step, keeping only
    the steps at which every seed logged every key, so that each point averages the same number of seeds."""
    per_seed = []
    for rows in seeds:
        columns = [dict(zip(*series(rows, key))) for key in keys]  # key -> {step: value}
        common = set.intersection(*(set(c) for c in columns))
        per_seed.append({step: sum(c[step] for c in columns) / len(columns) for step in common})
    steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    values = [[d[step] for d in per_seed] for step in steps]  # (steps, seeds)
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


# ----------------------------------------------------------------------------------------------------------------------
# Plot


def _grid(runs: dict[str, list[dict]], keys: list[str]):
    """pyplot, the panels (expand_keys), the figure, its axes and the colour cycle, for len(panels) panels."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise CannotRun("plot.py needs matplotlib: pip install matplotlib (or pip install -e '.[plot]')") from None
    panels, missing = expand_keys(keys, runs)
    if missing:
        print(f"not in any run, skipped: {', '.join(missing)}")
    if not panels:
        raise BadValue(f"none of the keys {keys} occur in the metrics of {', '.join(runs)}")
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.4 * nrows), squeeze=False)
    return plt, panels, fig, axes, plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _decorate(ax, title: str, smooth_k: int) -> None:
    """A panel's title (with its smoothing window), x label, grid and legend."""
    ax.set_title(title + (f" (smoothed, k={smooth_k})" if smooth_k > 1 else ""), fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(plt, fig, axes, n_panels: int, out: str | Path) -> Path:
    """Blank the unused panels and write the PNG (parent folders created)."""
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot(runs: dict[str, list[dict]], keys: list[str], out: str | Path, smooth_k: int = 1) -> Path:
    """Write the PNG grid: one panel per key (patterns expanded), one line per run (x matched key)."""
    plt, panels, fig, axes, colors = _grid(runs, keys)
    for ax, (title, matched) in zip(axes.flat, panels):
        sparse = title.startswith(SPARSE_PREFIX)
        for r, (run, rows) in enumerate(runs.items()):
            for m, key in enumerate(matched):
                steps, values = series(rows, key)
                if not steps:
                    continue
                if len(matched) == 1:  # one line per run: the run's colour, the same in every panel
                    label, color, linestyle = run, colors[r % len(colors)], "-"
                else:  # a pattern: colour per matched key, line style per run
                    label = short_label(title, key) if len(runs) == 1 else f"{run}: {short_label(title, key)}"
                    color, linestyle = colors[m % len(colors)], LINESTYLES[r % len(LINESTYLES)]
                style = dict(marker="o", markersize=4) if sparse or len(steps) == 1 else {}
                ax.plot(steps, values if sparse else smooth(values, smooth_k), label=label, color=color,
                        linestyle=linestyle, linewidth=1.2, **style)  # fmt: skip
        _decorate(ax, title, smooth_k if not sparse else 1)
    return _save(plt, fig, axes, len(panels), out)


def plot_bands(runs: dict[str, list[dict]], keys: list[str], out: str | Path, smooth_k: int = 1) -> Path:
    """Write the PNG grid of several seeds per configuration: one panel per key, per configuration (group_by_config)
    the mean over seeds and a band from the lowest to the highest seed (seed_band)."""
    plt, panels, fig, axes, colors = _grid(runs, keys)
    groups = group_by_config(list(runs))
    for ax, (title, matched) in zip(axes.flat, panels):
        sparse = title.startswith(SPARSE_PREFIX)
        for c, (config, names) in enumerate(groups.items()):
            steps, mean, low, high = seed_band([runs[n] for n in names], matched)
            if not steps:
                continue
            if not sparse:
                mean, low, high = smooth(mean, smooth_k), smooth(low, smooth_k), smooth(high, smooth_k)
            color, style = colors[c % len(colors)], dict(marker="o", markersize=3) if sparse else {}
            ax.plot(steps, mean, label=f"{config} ({len(names)} seeds)", color=color, linewidth=1.4, **style)
            ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
        _decorate(ax, title + (" (mean over matches)" if len(matched) > 1 else ""), smooth_k if not sparse else 1)
    return _save(plt, fig, axes, len(panels), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="train.py --out folders (each holds metrics.jsonl)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--smooth", type=int, default=1, help="trailing moving-average window in steps (1 = off)")
    parser.add_argument("--keys", nargs="+", default=DEFAULT_KEYS, help="metrics to draw, `*` patterns allowed")
    parser.add_argument("--bands", action="store_true", help="runs named <config>-s<seed>: mean and band per config")
    args = parser.parse_args(argv)
    if args.smooth < 1:
        raise BadValue(f"--smooth {args.smooth}: expected a window of at least 1 step")
    names = [Path(r).resolve().name for r in args.runs]
    if len(set(names)) < len(names):  # same folder name under different parents: use the paths as given
        names = [str(r) for r in args.runs]
    runs = {name: load_metrics(r) for name, r in zip(names, args.runs)}
    print(f"wrote {(plot_bands if args.bands else plot)(runs, args.keys, args.out, args.smooth)}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:  # a bad flag or file: one line; any other error keeps its traceback
        raise SystemExit(f"error: {e}")
