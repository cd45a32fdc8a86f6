"""
Verifier benchmark (BENCHMARKS.md section 3): MATH500 reference solutions graded against their own answers (500 cases,
all must be correct) and against a deranged, i.e. shuffled, answer (500 cases, all must be wrong except where two
problems genuinely share an answer), one process, one case at a time: verifications per second and the worst
single-case latency. math-verify runs on the same 1,000 cases in the same run when it is importable.

    .venv/bin/python bench/bench_verify.py                 # this project's verifier only
    python3 -m venv /tmp/mv && /tmp/mv/bin/pip install math-verify
    /tmp/mv/bin/python bench/bench_verify.py               # side by side with math-verify (verify.py needs only mpmath)

Each verifier runs --repeats times over the 1,000 cases with cold caches (verify's parse cache is cleared before
each pass); the table reports the median pass. Prints markdown rows for bench/RESULTS.md.
"""

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathrl import verify  # noqa: E402


def load_cases(path: Path, seed: int) -> tuple[list, list]:
    """(own cases, shuffled cases): lists of (solution, gold answer, gold is genuinely the same answer)."""
    rows = [json.loads(line) for line in path.open()]
    perm = list(range(len(rows)))
    random.Random(seed).shuffle(perm)
    perm = [j if j != i else (i + 1) % len(rows) for i, j in enumerate(perm)]  # a derangement: never its own answer
    own = [(r["solution"], r["answer"], True) for r in rows]
    shuffled = [
        (r["solution"], rows[j]["answer"], r["answer"].strip() == rows[j]["answer"].strip()) for r, j in zip(rows, perm)
    ]
    return own, shuffled


def run_ours(cases: list, timeout: float) -> tuple[list, list]:
    verify._prepare.cache_clear()
    verdicts, times = [], []
    for solution, gold, _ in cases:
        t0 = time.perf_counter()
        verdicts.append(verify.grade(solution, gold, timeout=timeout))
        times.append(time.perf_counter() - t0)
    return verdicts, times


def run_math_verify(cases: list, timeout: float) -> tuple[list, list]:
    from math_verify import parse, verify as mv_verify

    timeout = max(1, int(timeout))  # math-verify's limits are whole seconds (signal.alarm); a float makes it fail
    verdicts, times = [], []
    for solution, gold, _ in cases:
        t0 = time.perf_counter()
        ok = mv_verify(
            parse("$" + gold + "$", parsing_timeout=timeout),
            parse(solution, parsing_timeout=timeout),
            timeout_seconds=timeout,
        )
        verdicts.append(bool(ok))
        times.append(time.perf_counter() - t0)
    return verdicts, times


def summarise(name: str, fn, own: list, shuffled: list, repeats: int, timeout: float) -> dict:
    fn(own[:5] + shuffled[:5], timeout)  # warm-up: imports and first-call costs are not part of the steady state
    passes = []
    for _ in range(repeats):
        v_own, t_own = fn(own, timeout)
        v_shuf, t_shuf = fn(shuffled, timeout)
        total = sum(t_own) + sum(t_shuf)
        passes.append((total, v_own, v_shuf, max(t_own + t_shuf), sum(t_own), sum(t_shuf)))
    passes.sort(key=lambda p: p[0])
    total, v_own, v_shuf, worst, own_s, shuf_s = passes[len(passes) // 2]
    genuine = sum(c[2] for c in shuffled)
    false_pos = sum(v and not c[2] for v, c in zip(v_shuf, shuffled))
    return {
        "name": name,
        "per_s": (len(own) + len(shuffled)) / total,
        "own_per_s": len(own) / own_s,
        "shuf_per_s": len(shuffled) / shuf_s,
        "worst_ms": 1000 * max(p[3] for p in passes),
        "own_correct": sum(v_own),
        "shuffled_true": sum(v_shuf),
        "genuine": genuine,
        "false_pos": false_pos,
        "wrong_own": [c[1] for v, c in zip(v_own, own) if not v][:10],
        "fp_pairs": [c[1] for v, c in zip(v_shuf, shuffled) if v and not c[2]][:10],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eval" / "math500.jsonl")
    ap.add_argument("--repeats", type=int, default=3, help="passes per verifier; the median pass is reported")
    ap.add_argument("--timeout", type=float, default=5.0, help="per-case time limit given to each verifier")
    ap.add_argument("--seed", type=int, default=0, help="seed of the answer shuffle")
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"bench_verify: {args.data} not found (pass --data path/to/math500.jsonl)")
    own, shuffled = load_cases(args.data, args.seed)
    results = [summarise("verify.py (this repo)", run_ours, own, shuffled, args.repeats, args.timeout)]
    try:
        import math_verify  # noqa: F401

        results.append(summarise("math-verify", run_math_verify, own, shuffled, args.repeats, args.timeout))
    except ImportError:
        print("math-verify is not importable here: its column is skipped (see the docstring for the command)")
    cmd = "python bench/bench_verify.py " + " ".join(sys.argv[1:])
    print(
        f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(
        "| verifier | cases/s (1 process) | own answers /s | shuffled /s | worst case (ms) | own answer correct "
        "| shuffled graded correct (genuinely equal / false positives) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['name']} | {r['per_s']:.0f} | {r['own_per_s']:.0f} | {r['shuf_per_s']:.0f} | {r['worst_ms']:.1f} | "
            f"{r['own_correct']}/{len(own)} | {r['shuffled_true']}/{len(shuffled)} "
            f"({r['genuine']} / {r['false_pos']}) |"
        )
    if len(results) == 2:
        print(
            f"\nthroughput ratio verify.py / math-verify: {results[0]['per_s'] / results[1]['per_s']:.1f}x"
            f"  (command: {cmd})"
        )
    for r in results:
        if r["wrong_own"] or r["fp_pairs"]:
            print(f"{r['name']}: own answers graded wrong {r['wrong_own']}; false positives on {r['fp_pairs']}")


if __name__ == "__main__":
    main()
