"""bench/bench_study.py's pure parts: the collapse criterion, a run's summary and the three claims' rules, on
hand-built metrics."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_study import claim_aapo, claim_augmentation, claim_cache, collapse_step, summarize_study_run, table  # noqa: E402


def test_collapse_needs_a_drop_that_does_not_recover():
    steps = [0, 10, 20, 30, 40, 50, 60, 70, 80]
    # best 0.80 at step 10; 0.65 at step 20 is 15 points below; 0.78 at step 30 is back within 5: no collapse there
    assert collapse_step(steps, [0.5, 0.8, 0.65, 0.78, 0.8, 0.8, 0.8, 0.8, 0.8]) is None
    # the same drop, never back above 0.75 within the next 50 steps: collapsed at step 20
    assert collapse_step(steps, [0.5, 0.8, 0.65, 0.74, 0.7, 0.7, 0.74, 0.72, 0.9]) == 20
    # exactly 10 points below is not "more than 10" (no collapse); a last evaluation that drops with nothing after it
    # has not recovered by the end: collapsed
    assert collapse_step(steps[:3], [0.5, 0.8, 0.7]) is None
    assert collapse_step(steps[:3], [0.5, 0.8, 0.69]) == 20
    # recovery counts only within RECOVER_STEPS (50) steps: back at step 80, 60 steps later, is too late
    assert collapse_step(steps, [0.5, 0.8, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.8]) == 20


def _rows(acc: list[float], ref_samples: int = 0, entropy: float = 0.1) -> list[dict]:
    rows = [{"step": 0, "eval/accuracy": acc[0]}]
    for step in range(1, 10 * (len(acc) - 1) + 1):
        row = {"step": step, "train/reward": 1.0, "train/entropy": entropy, "train/zero_var_groups": 0.5,
               "train/response_len": 20.0, "train/accuracy": 0.7, "template/a/entropy": 0.2}  # fmt: skip
        if ref_samples:
            row["aapo/ref_samples"] = ref_samples
        if step % 10 == 0:
            row["eval/accuracy"] = acc[step // 10]
        rows.append(row)
    return rows


def test_summary_hand_computed():
    s = summarize_study_run(_rows([0.5, 0.6, 0.7, 0.8, 0.75], ref_samples=32), samples_per_step=128)
    assert s["start"] == 0.5 and s["best"] == 0.8 and s["last"] == 0.75
    assert s["end"] == pytest.approx((0.7 + 0.8 + 0.75) / 3) and s["drop"] == pytest.approx(0.05)
    assert s["collapse"] is None and s["steps"] == 40
    assert s["steps_to_target"] == 20  # first evaluation >= 0.5 + 0.15
    assert s["samples_to_target"] == 20 * (128 + 32) and s["samples"] == 40 * (128 + 32)
    assert s["entropy_first"] == pytest.approx(0.1) and s["zero_var_last"] == pytest.approx(0.5)
    assert s["template_entropy_last"] == {"a": pytest.approx(0.2)}
    assert summarize_study_run(_rows([0.5, 0.55, 0.6, 0.6]), 128)["steps_to_target"] is None
    with pytest.raises(ValueError, match="3 evaluations"):
        summarize_study_run(_rows([0.5, 0.6, 0.7]), 128)


def _result(config, seed, end, collapse=None, samples=1000, reach=20):
    return {"config": config, "seed": seed, "start": 0.5, "best": end, "end": end, "collapse": collapse,
            "steps_to_target": reach, "samples": samples, "entropy_first": 0.1, "entropy_last": 0.05,
            "zero_var_first": 0.1, "zero_var_last": 0.5, "length_last": 20.0, "train_acc_last": 0.9}  # fmt: skip


def test_claim_rules():
    plain = [_result("grpo", 1, 0.70, collapse=120), _result("grpo", 2, 0.72, collapse=200)]
    aug = [_result("grpo-aug", 1, 0.80), _result("grpo-aug", 2, 0.82)]
    assert "supported: collapsed runs 2/2 without augmentation vs 0/2 with" in claim_augmentation(plain + aug)
    calm = [dict(r, collapse=None) for r in plain]
    assert "not testable at this scale" in claim_augmentation(calm + aug)
    assert "not supported" in claim_augmentation([dict(r, collapse=150) for r in aug] + plain)
    assert claim_augmentation(aug) == "Claim 1 (augmentation against collapse): not run (needs a configuration with and without --aug)."

    grpo = [_result("grpo", 1, 0.70, reach=40), _result("grpo", 2, 0.72, reach=40)]
    better = [_result("aapo", 1, 0.80, reach=20), _result("aapo", 2, 0.82, reach=30)]
    assert "): supported: aapo ends at 81.0 ± 1.4% vs grpo 71.0 ± 1.4%" in claim_aapo(grpo + better)
    within_noise = [_result("aapo", 1, 0.70, reach=20), _result("aapo", 2, 0.73, reach=20)]  # +0.5 points < std
    assert "not supported" in claim_aapo(grpo + within_noise)
    slower = [dict(r, steps_to_target=None) for r in better]  # higher but never gains 15 points
    assert "not supported" in claim_aapo(grpo + slower) and "never" in claim_aapo(grpo + slower)

    fresh = [_result("aapo", 1, 0.80, samples=2000), _result("aapo", 2, 0.82, samples=2000)]
    cache = [_result("aapo-cache", 1, 0.81, samples=1100), _result("aapo-cache", 2, 0.80, samples=1100)]
    assert "supported: cache ends at 80.5 ± 0.7% vs fresh 81.0 ± 1.4%, with 0.55x" in claim_cache(fresh + cache)
    assert "not supported" in claim_cache(fresh + [dict(r, samples=1500) for r in cache])  # 0.75x: not half
    assert "not supported" in claim_cache(fresh + [dict(r, end=0.7) for r in cache])  # learns worse
    rows = table(fresh + cache).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| aapo | 2 | 50.0 ± 0.0 | 81.0 ± 1.4 | 81.0 ± 1.4 | 0/2 | 20 ± 0 | 2,000 |")
