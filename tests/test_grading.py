"""
Tests of grading.py: grade_batch gives grade()'s verdicts in order over worker processes, kills a worker stuck beyond
any signal's reach, grades an unpicklable gold in-process, and reaps every worker.

    .venv/bin/python -m pytest -q tests/test_grading.py
"""

import json
import os
import time
from pathlib import Path

import pytest
from conftest import shared_path

from mathrl.grading import grade_batch
from mathrl.verify import grade


def _math500() -> list[dict]:
    return [json.loads(line) for line in shared_path("data", "eval", "math500.jsonl").open()]


def _children() -> set[int]:
    """Process ids whose parent is this process (from /proc, so no helper process shows up itself)."""
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # zombies count too: every worker must be reaped
            kids.add(int(stat.parent.name))
    return kids


class _Sleeper:
    """Unpickles as time.sleep(30) in a worker: a stand-in for C-level work no signal can interrupt."""

    def __reduce__(self):
        return (time.sleep, (30,))


def test_grade_batch_order_matches_grade_and_workers_are_reaped():
    rows = _math500()[:40]
    responses = [r["solution"] for r in rows] * 2
    golds = [r["answer"] for r in rows] + [rows[(i + 1) % 40]["answer"] for i in range(40)]
    expected = [grade(r, g) for r, g in zip(responses, golds)]
    assert sum(expected[:40]) == 40
    before = _children()
    assert grade_batch(responses, golds, workers=2) == expected
    assert grade_batch(responses, golds, workers=1) == expected
    assert grade_batch(responses, golds, workers=0) == expected
    assert _children() - before == set()


def test_grade_batch_kills_a_stuck_worker_and_keeps_order():
    before = _children()
    responses = ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}", "\\boxed{5}"]
    golds = ["1", _Sleeper(), "3", "5", lambda: 5]  # a stuck worker, and a gold that cannot be pickled
    assert grade_batch(responses, golds, timeout=0.5, workers=2) == [True, False, True, False, False]
    assert _children() - before == set()


def test_grade_batch_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 responses but 1 gold"):
        grade_batch(["a", "b"], ["1"])
