"""bench/bench_study.py's pure parts: the collapse criterion, a run's summary and the three claims' rules, on
hand-built metrics."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_study import (bootstrap, claim_aapo, claim_augmentation, claim_cache, collapse_step, curve_rows,  # noqa: E402
                         format_table, paired, style_rows, style_table, style_window, summarize_study_run, table,
                         two_grades)  # fmt: skip


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
            "zero_var_first": 0.1, "zero_var_last": 0.5, "length_first": 30.0, "length_last": 20.0,
            "truncated_last": 0.01, "train_acc_last": 0.9, "run_seconds": 600.0}  # fmt: skip


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
    # paired by seed: +1 and -2 points; the interval [-2.0, +1.0] lies within +-3
    assert ("supported: cache ends at 80.5 ± 0.7% vs fresh 81.0 ± 1.4% (paired difference, 95% interval [-2.0, +1.0] "
            "points, equivalence within ±3), with 0.55x") in claim_cache(fresh + cache)
    assert "not supported" in claim_cache(fresh + [dict(r, end=r["end"] + 0.04) for r in cache])  # higher by 3-5 points
    assert "not supported" in claim_cache(fresh + [dict(r, samples=1500) for r in cache])  # 0.75x: not half
    assert "not supported" in claim_cache(fresh + [dict(r, end=0.7) for r in cache])  # learns worse
    rows = table(fresh + cache).splitlines()
    assert len(rows) == 4 and rows[2].startswith("| aapo | 2 | 50.0 ± 0.0 | 81.0 ± 1.4 | 81.0 ± 1.4 | [80.0, 82.0] | 0/2 | 20 ± 0 | 2,000 |")
    assert rows[2].endswith("| 30.0 ± 0.0 → 20.0 ± 0.0 | 1.0 ± 0.0 | 90.0 ± 0.0 | 10 (10-10) |")


def test_bootstrap_and_pairing_by_seed():
    assert bootstrap([0.5, 0.5, 0.5]) == (0.5, 0.5)
    lo, hi = bootstrap([0.0, 1.0])  # resamples of two values: means 0, 0.5 or 1 (1/4, 1/2, 1/4)
    assert (lo, hi) == (0.0, 1.0)
    lo, hi = bootstrap([0.60, 0.62, 0.64, 0.66, 0.68])
    assert 0.60 < lo < 0.64 < hi < 0.68 and bootstrap([0.60, 0.62, 0.64, 0.66, 0.68]) == (lo, hi)  # a fixed RNG
    results = [_result("aapo", 1, 0.8), _result("aapo", 2, 0.7), _result("grpo", 2, 0.6), _result("grpo", 1, 0.75),
               _result("grpo", 3, 0.1)]  # fmt: skip
    assert paired(results, "aapo", "grpo") == pytest.approx([0.05, 0.1])  # seeds 1, 2; seed 3 has no aapo run


def test_augmentation_needs_the_paired_interval_above_zero():
    """More no-augmentation runs collapse, but augmentation ends higher on one seed and lower on the other: the
    interval of the paired difference holds 0, so the claim is not supported."""
    plain = [_result("grpo", 1, 0.70, collapse=120), _result("grpo", 2, 0.72)]
    aug = [_result("grpo-aug", 1, 0.80), _result("grpo-aug", 2, 0.62)]
    assert "not supported" in claim_augmentation(plain + aug) and "[-10.0, +10.0]" in claim_augmentation(plain + aug)


def test_style_shares_from_dumped_samples():
    def sample(step, problem, response):
        return {"step": step, "prompt": f"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{problem}\nOne step"
                f"<|im_end|>\n<|im_start|>assistant\nStep 1: ", "response": response}  # fmt: skip

    p = "47+38-21+19=?"
    samples = [sample(10, p, "47+38=85\nStep 2: 85-21=64"), sample(10, p, "47+38+19=104"), sample(20, p, "47+38: 7+8=15"),
               sample(20, p, "104"), sample(30, "12+34+50=?", "12+34+50=96")]  # fmt: skip
    rows = style_rows(samples)
    assert rows[0] == {"step": 10, "style/chain": 0.5, "style/split": 0.5, "style/column": 0.0, "style/other": 0.0}
    assert rows[1]["style/column"] == 0.5 and rows[1]["style/other"] == 0.5 and rows[2]["style/split"] == 1.0
    assert style_window(rows, last=False) == {"chain": 0.25, "split": 0.25, "column": 0.25, "other": 0.25}  # steps <= 20
    assert style_window(rows, last=True) == {"chain": 0.0, "split": 0.5, "column": 0.25, "other": 0.25}  # steps 20, 30
    results = [dict(_result("grpo", 1, 0.7), styles_first={"chain": 0.5, "split": 0.5}, styles_last={"column": 1.0})]
    assert style_table(results).splitlines()[2] == "| grpo | 50 → 0 | 50 → 0 | 0 → 100 | 0 → 0 | 0 → 0 |"


def test_boxed_share_counts_the_evaluation_templates_samples_only():
    """answer/boxed: the share of chain-boxed responses holding a \\boxed{}, per step where chain-boxed was sampled
    (the long run's held-out collapse was the box disappearing, docs/study-chain.md); other templates do not count."""
    def sample(step, template, response):
        return {"step": step, "template": template, "response": response,
                "prompt": "<|im_start|>user\n12+34+50=?<|im_end|>\n<|im_start|>assistant\n"}  # fmt: skip

    samples = [sample(10, "chain-boxed", "12+34+50=96. \\boxed{96}"), sample(10, "chain-boxed", "so 96}"),
               sample(10, "chain-hash", "12+34+50=96. #### 96"), sample(20, "chain-boxed", "so 96}"),
               sample(30, "chain-list", "12+34+50=96\nAnswer: 96")]  # fmt: skip
    rows = style_rows(samples)
    assert [r.get("answer/boxed") for r in rows] == [0.5, 0.0, None]  # step 30 sampled no chain-boxed prompt
    assert rows[0]["style/split"] == 2 / 3  # styles still count every sample
    assert style_window(rows, last=False)["boxed"] == 0.25  # mean over the steps that measured it (10, 20)
    assert style_window(rows, last=True)["boxed"] == 0.0  # steps 20 and 30: only step 20 measured it


def test_a_seed_whose_warm_start_ends_below_the_floor_gets_no_runs(tmp_path, monkeypatch):
    """WARM_FLOOR: seed 2's warm start (dev 0.10 < 0.5 x 0.3) is reported and left out; seed 1's (0.35) gets every
    configuration's run; with no usable seed at all the study stops with a clear message."""
    import json

    import bench_study
    from mathrl import tiny

    devs, ran = {1: 0.35, 2: 0.10}, []

    def fake_build(cache, seed, preset):  # the warm start's done file, as tiny.prepare writes it
        world = tiny.world_dir(cache, tiny.WORLDS[preset], seed)
        world.mkdir(parents=True)
        (world / "done").write_text(json.dumps({"dev_accuracy": devs[seed], "seconds": 1.0}))
        (world / "train.jsonl").write_text('{"problem": "1+2+3=?", "answer": "6"}\n' * 16)
        return 1.0

    def fake_run(config, seed, out, cache, preset, flags, *args, **kwargs):
        ran.append((config, seed))
        raise RuntimeError("stop after scheduling")  # the table needs real runs; scheduling is what is tested here

    monkeypatch.setattr(bench_study, "build_warm_start", fake_build)
    monkeypatch.setattr(bench_study, "run", fake_run)
    with pytest.raises(RuntimeError, match="stop after scheduling"):
        bench_study.main(["--preset", "tiny-chain", "--seeds", "1", "2", "--configs", "grpo,aapo", "--train-size", "16",
                          "--out", str(tmp_path / "a")])  # fmt: skip
    assert sorted(ran) == [("aapo", 1), ("grpo", 1)]
    devs[3] = 0.0
    with pytest.raises(SystemExit, match="no run to tabulate"):
        bench_study.main(["--preset", "tiny-chain", "--seeds", "3", "--out", str(tmp_path / "b")])


def test_two_grades_tell_a_lost_box_from_a_wrong_sum():
    """format_check's grading: an unboxed right answer counts for the training reward's reading only; a boxed wrong
    one for neither (the chain long run's collapse was the first kind, docs/study-chain.md)."""
    import eval as evaluation

    records = [{"response": "12+34=46, 46+50=96. \\boxed{96}", "gold": "96"},  # right, boxed
               {"response": "12+34=46, 46+50=96, so 96}", "gold": "96"},  # right, no box
               {"response": "12+34=46, 46+50=97. \\boxed{97}", "gold": "96"},  # wrong, boxed
               {"response": "12+34=46, 46+50", "gold": "96"}]  # truncated: the last number is 50  # fmt: skip
    evaluation.grade_records(records, workers=0)
    assert two_grades(records) == {"boxed": 0.25, "any_format": 0.5, "has_box": 0.5}
    f = lambda start, end: {"start": dict.fromkeys(("boxed", "any_format", "has_box"), start),  # noqa: E731
                            "end": dict.fromkeys(("boxed", "any_format", "has_box"), end)}  # fmt: skip
    results = [dict(_result("grpo", 1, 0.1), format=f(0.4, 0.1)), dict(_result("grpo", 2, 0.2), format=f(0.2, 0.4))]
    assert format_table(results).splitlines()[2] == "| grpo | 30.0 → 25.0 | 30.0 → 25.0 | 30.0 → 25.0 |"


def _finished_run(folder: Path, acc: list[float]) -> None:
    """A finished tiny-preset run folder as train.py and bench_study.run leave it."""
    import json

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"prompts_per_step": 16, "group_size": 8}))
    rows = [{**r, "train/truncated": 0.0} if "train/reward" in r else r for r in _rows(acc)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "bench_seconds.txt").write_text("12.5")


def test_curve_rows_keep_what_the_figures_plot_rounded():
    rows = [{"step": 1, "train/entropy": 0.123456789, "train/reward": 1.0, "template/a/entropy": 2.0 / 3,
             "template/a/count": 4, "time/step": 1.5}, {"step": 2, "train/reward": 0.5}]  # fmt: skip
    assert curve_rows(rows) == [{"step": 1, "train/entropy": 0.1235, "template/a/entropy": 0.6667}]


def _no_training(*args, **kwargs):
    raise AssertionError("train.py would run: a finished or recorded run must be read back")


def test_a_finished_run_is_recorded_and_read_back_without_its_folder(tmp_path, monkeypatch):
    """--records: a finished run's record (result row, curves) is written beside the study and is all a later session
    needs; a record of other settings is refused; a run neither recorded nor finished is left alone when not
    run_missing (--report-only)."""
    import shutil

    import bench_study

    out, records, settings = tmp_path / "out", tmp_path / "records", {"steps": 40, "extra": []}
    monkeypatch.setattr(bench_study, "train_run", _no_training)
    _finished_run(out / "grpo-s1", [0.5, 0.6, 0.7, 0.8, 0.75])
    record = bench_study.run("grpo", 1, out, tmp_path / "cache", "tiny", [], records, settings)
    assert record["result"]["end"] == pytest.approx(0.75) and record["result"]["seconds"] == 12.5
    assert [r["eval/accuracy"] for r in record["curves"] if "eval/accuracy" in r] == [0.5, 0.6, 0.7, 0.8, 0.75]
    assert (records / "grpo-s1.json").exists() and not list(records.glob("*.tmp"))
    shutil.rmtree(out)  # a new session: no run folders, no caches
    again = bench_study.run("grpo", 1, out, tmp_path / "cache", "tiny", [], records, settings, run_missing=False)
    assert again["result"] == record["result"] and again["curves"] == record["curves"]
    with pytest.raises(SystemExit, match="another --records folder"):
        bench_study.run("grpo", 1, out, tmp_path / "cache", "tiny", [], records, {"steps": 600, "extra": []})
    assert bench_study.run("aapo", 1, out, tmp_path / "cache", "tiny", [], records, settings, run_missing=False) is None


def test_a_recorded_study_needs_no_warm_start_and_resumes_from_the_kept_one(tmp_path, monkeypatch):
    """A seed whose warm start and runs are all recorded is tabulated without building anything; a run left of a seed
    starts from the kept warm start (unpacked, not rebuilt); a warm start rebuilt for want of a kept one must end where
    the recorded one did (the runs of a seed share one), else a clear stop."""
    import json
    import shutil

    import bench_study
    from mathrl import tiny

    out, records = tmp_path / "out", tmp_path / "records"
    for config, acc in [("grpo", [0.5, 0.6, 0.7, 0.8, 0.75]), ("aapo", [0.5, 0.7, 0.8, 0.85, 0.85])]:
        _finished_run(out / f"{config}-s1", acc)
    argv = ["--seeds", "1", "--configs", "grpo,aapo", "--steps", "40", "--train-size", "16", "--out", str(out),
            "--records", str(records)]  # fmt: skip
    built, trained = [], []

    def fake_build(cache, seed, preset):  # tiny.prepare: reuses a built world, else builds one (dev 0.5, then 0.6)
        world = tiny.world_dir(cache, tiny.WORLDS[preset], seed)
        if not (world / "done").exists():
            built.append(seed)
            world.mkdir(parents=True, exist_ok=True)
            (world / "done").write_text(json.dumps({"dev_accuracy": 0.5 + 0.1 * (len(built) > 1), "seconds": 3.0}))
            (world / "train.jsonl").write_text('{"problem": "1+2=?", "answer": "3"}\n' * 16)
        return 3.0

    def fake_train(flags, seed, folder, cache, preset, resume):  # train.py: the run from the seed's warm start
        trained.append((folder.name, json.loads((tiny.world_dir(cache, tiny.WORLDS[preset], seed) / "done").read_text())))
        _finished_run(folder, [0.5, 0.7, 0.8, 0.85, 0.85])
        return 1.0

    def new_session():  # nothing of --out is left, only the records
        shutil.rmtree(out)

    monkeypatch.setattr(bench_study, "build_warm_start", fake_build)
    monkeypatch.setattr(bench_study, "train_run", _no_training)
    bench_study.main(argv)  # builds seed 1's warm start once, records it and both finished runs
    assert built == [1] and json.loads((records / "warm-s1.json").read_text())["dev_accuracy"] == 0.5
    assert (records / "warm-s1.tar.gz").exists()
    first = (out / "table.md").read_text()
    assert "| grpo | 1 |" in first and "| aapo | 1 |" in first
    new_session()
    bench_study.main(argv)
    assert built == [1]  # nothing rebuilt
    assert (out / "table.md").read_text().split("\n", 1)[1] == first.split("\n", 1)[1]  # the same table (new date)
    new_session()
    (records / "aapo-s1.json").unlink()  # a run left: it starts from the kept warm start, unpacked
    monkeypatch.setattr(bench_study, "train_run", fake_train)
    bench_study.main(argv)
    assert built == [1] and trained == [("aapo-s1", {"dev_accuracy": 0.5, "seconds": 3.0})]
    new_session()
    (records / "aapo-s1.json").unlink()
    (records / "warm-s1.tar.gz").unlink()  # no kept warm start: rebuilt, and here it ends elsewhere (0.6)
    with pytest.raises(SystemExit, match="did not reproduce"):
        bench_study.main(argv)
    assert built == [1, 1]
