"""Tests of bench/bench_tiny.py's bookkeeping (the run itself is the benchmark): the per-run summary, the table and
the pass line against hand-computed numbers.

    .venv/bin/python -m pytest -q tests/test_bench_tiny.py
"""

import importlib.util

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("bench_tiny", REPO / "bench" / "bench_tiny.py")
bt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bt)


def rows(evals, entropies):
    """Metrics rows as train.py writes them: step 0 holds only the eval; evaluations every 2 steps."""
    out = [{"step": 0, "eval/accuracy": evals[0]}]
    for s, h in enumerate(entropies, 1):
        out.append({"step": s, "train/entropy": h, **({"eval/accuracy": evals[s // 2]} if s % 2 == 0 else {})})
    return out


def test_summarize_run_hand_computed():
    r = bt.summarize_run(rows([0.4, 0.6, 0.8, 0.7, 0.75], [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]), window=2)
    assert r["start"] == 0.4 and r["best"] == 0.8 and r["last"] == 0.75 and r["steps"] == 8
    assert r["end"] == pytest.approx((0.8 + 0.7 + 0.75) / 3)  # the last three evaluations, not the last one
    assert r["gain"] == pytest.approx(0.75 - 0.4)
    assert r["drop"] == pytest.approx(0.05)
    assert r["entropy_first"] == pytest.approx(0.95) and r["entropy_last"] == pytest.approx(0.35)
    with pytest.raises(ValueError, match="3 evaluations"):
        bt.summarize_run(rows([0.4, 0.5, 0.6], [1.0] * 4))


def test_table_and_verdict():
    results = [
        {"config": "grpo", "seed": 1, "start": 0.40, "end": 0.60, "gain": 0.20, "drop": 0.01, "entropy_first": 1.0,
         "entropy_last": 0.5, "seconds": 100.0},
        {"config": "grpo", "seed": 2, "start": 0.50, "end": 0.80, "gain": 0.30, "drop": 0.02, "entropy_first": 0.8,
         "entropy_last": 0.3, "seconds": 120.0},
        {"config": "aapo", "seed": 1, "start": 0.40, "end": 0.50, "gain": 0.10, "drop": 0.08, "entropy_first": 1.0,
         "entropy_last": 0.9, "seconds": 200.0},
    ]  # fmt: skip
    lines = bt.table(results).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| grpo | 2 |") and lines[3].startswith("| aapo | 1 |")  # CONFIGS order
    # grpo gains 20 and 30: mean 25, sample std 7.1; min 20; max drop 2.0; 110 s (100-120)
    assert "| 25.0 ± 7.1 | 20.0 | 2.0 |" in lines[2] and "| 110 s (100-120) |" in lines[2]
    assert "0.900 ± 0.141 → 0.400 ± 0.141" in lines[2]
    verdict = bt.verdict(results)
    assert verdict.startswith("FAIL: 2/3 runs gain >= 15 points, 2/3 end within 5 points")
    assert verdict.endswith("below: aapo-s1; late drop: aapo-s1")
    assert bt.verdict(results[:2]).startswith("PASS")
