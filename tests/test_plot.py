"""Tests of plot.py on synthetic metrics files: python -m pytest -q tests/test_plot.py"""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from plot import expand_keys, group_by_config, load_metrics, main, seed_band, series, short_label, smooth

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def synthetic_rows(n=6, templates=("tiny-boxed", "tiny-think")):
    """Step 0 holds only eval keys (as train.py logs it); eval again every 3 steps."""
    rows = [{"step": 0, "eval/accuracy": 0.1, "time/eval": 1.0}]
    for s in range(1, n + 1):
        row = {"step": s, "train/reward": 0.1 * s, "train/accuracy": 0.05 * s, "train/entropy": 1.0 / s,
               "train/response_len": 10 + s, "time/step": 0.5}  # fmt: skip
        for i, t in enumerate(templates):
            row[f"template/{t}/entropy"] = 1.0 + i + 0.1 * s
        if s % 3 == 0:
            row["eval/accuracy"] = round(0.1 + 0.1 * s, 6)
        rows.append(row)
    return rows


def test_series_takes_only_rows_with_the_key():
    rows = synthetic_rows(6)
    assert series(rows, "eval/accuracy") == ([0, 3, 6], [0.1, 0.4, 0.7])
    steps, values = series(rows, "train/reward")
    assert steps == [1, 2, 3, 4, 5, 6]
    assert values == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert series(rows, "no/such/key") == ([], [])


def test_series_skips_non_numbers():
    rows = [{"step": 1, "k": 1}, {"step": 2, "k": "x"}, {"step": 3, "k": None}, {"step": 4, "k": float("nan")},
            {"step": 5, "k": True}, {"step": 6, "k": 2.5}]  # fmt: skip
    assert series(rows, "k") == ([1, 6], [1.0, 2.5])


def test_smooth_hand_computed():
    # trailing window k=3: [1], [1,2], [1,2,3], [2,3,4] -> 1, 1.5, 2, 3 ; then [3,4,10] -> 17/3
    assert smooth([1, 2, 3, 4, 10], 3) == pytest.approx([1.0, 1.5, 2.0, 3.0, 17 / 3])
    # k=2: 4, (4+0)/2, (0+8)/2
    assert smooth([4, 0, 8], 2) == pytest.approx([4.0, 2.0, 4.0])
    assert smooth([4, 0, 8], 1) == [4, 0, 8]
    assert smooth([4, 0, 8], 10) == pytest.approx([4.0, 2.0, 4.0])  # window longer than the series: running mean


def test_expand_keys_patterns_and_missing():
    runs = {"a": synthetic_rows(2, ("x", "y")), "b": synthetic_rows(2, ("y", "z"))}
    panels, missing = expand_keys(["train/reward", "template/*/entropy", "aapo/margin_mean"], runs)
    assert panels == [
        ("train/reward", ["train/reward"]),
        ("template/*/entropy", ["template/x/entropy", "template/y/entropy", "template/z/entropy"]),
    ]
    assert missing == ["aapo/margin_mean"]
    assert short_label("template/*/entropy", "template/tiny-think/entropy") == "tiny-think"


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_png_one_run(tmp_path):
    run = write_run(tmp_path / "grpo", synthetic_rows(8))
    out = tmp_path / "plots" / "curves.png"  # the parent folder is created
    main([str(run), "--out", str(out), "--smooth", "3"])
    check_png(out)


def test_png_two_runs_and_custom_keys(tmp_path):
    a = write_run(tmp_path / "grpo", synthetic_rows(8))
    b = write_run(tmp_path / "aapo-aug", synthetic_rows(5, ("tiny-final",)))
    out = tmp_path / "ablation.png"
    main([str(a), str(b), "--out", str(out)])
    check_png(out)
    out2 = tmp_path / "eval.png"
    main([str(a), str(b), "--out", str(out2), "--keys", "eval/accuracy", "template/*/entropy"])
    check_png(out2)


def test_unknown_keys_only_is_an_error(tmp_path):
    run = write_run(tmp_path / "r", synthetic_rows(3))
    with pytest.raises(ValueError, match="none of the keys"):
        main([str(run), "--out", str(tmp_path / "x.png"), "--keys", "nope/a", "nope/*"])


def test_errors_name_folder_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        load_metrics(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no metrics.jsonl"):
        load_metrics(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "train/reward": 0.5}\n\n{"step": 2, "train/reward": \n')
    with pytest.raises(ValueError, match=r"bad/metrics.jsonl line 3: not valid JSON"):
        load_metrics(bad)
    (bad / "metrics.jsonl").write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"line 2: expected a JSON object with a 'step' key"):
        load_metrics(bad)
    with pytest.raises(ValueError, match="--smooth 0"):
        main([str(tmp_path / "bad"), "--out", str(tmp_path / "x.png"), "--smooth", "0"])


def test_command_line_error_is_one_line(tmp_path):
    """The script exits with "error: ..." instead of a traceback."""
    proc = subprocess.run([sys.executable, str(REPO / "plot.py"), str(tmp_path / "nope"), "--out", "x.png"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope'}: no such run folder"


def test_group_by_config_strips_the_seed_suffix_only():
    names = ["aapo-aug-s1", "grpo-s1", "aapo-aug-s2", "grpo-s12", "grpo-sx", "drgrpo"]
    assert group_by_config(names) == {"aapo-aug": ["aapo-aug-s1", "aapo-aug-s2"], "grpo": ["grpo-s1", "grpo-s12"],
                                      "grpo-sx": ["grpo-sx"], "drgrpo": ["drgrpo"]}  # fmt: skip


def test_seed_band_hand_computed():
    # seed A logs eval at 0, 3, 6; seed B at 0, 3 only: the band keeps the common steps 0 and 3
    a = [{"step": 0, "e": 0.2}, {"step": 3, "e": 0.5, "t/x": 1.0, "t/y": 3.0}, {"step": 6, "e": 0.9}]
    b = [{"step": 0, "e": 0.4}, {"step": 3, "e": 0.7, "t/x": 2.0, "t/y": 6.0}]
    steps, mean, low, high = seed_band([a, b], ["e"])
    assert steps == [0, 3]
    assert mean == pytest.approx([0.3, 0.6]) and low == pytest.approx([0.2, 0.5]) and high == pytest.approx([0.4, 0.7])
    # several keys (a pattern's matches) are averaged within a seed first: A (1+3)/2 = 2, B (2+6)/2 = 4
    assert seed_band([a, b], ["t/x", "t/y"]) == ([3], [3.0], [2.0], [4.0])
    assert seed_band([a, b], ["missing"]) == ([], [], [], [])


def test_png_bands(tmp_path):
    runs = [write_run(tmp_path / f"{c}-s{s}", synthetic_rows(6 + s)) for c in ("grpo", "aapo-aug") for s in (1, 2)]
    out = tmp_path / "bands.png"
    main([*map(str, runs), "--bands", "--out", str(out), "--smooth", "2"])
    check_png(out)
