"""
Dynamic sampling with refill (mathrl/dynamic.py, DAPO arXiv:2503.14476v1 Sec. 3.2 Eq. 11, Algorithm 1) on hand-made
rewards: which groups are dead under each metric (the AAPO case, the format-only case), the refill draw, its size, the
slot order, the surplus and the cap fallback; then tiny runs with refill (slow).

    python -m pytest -q tests/test_dynamic.py -m "not slow"   # < 1 s
    python -m pytest -q tests/test_dynamic.py                 # + the tiny runs, a few minutes on 2 cores
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # torchrun runs this file as a script (no conftest)

import train  # noqa: E402
from mathrl.dynamic import dead_groups, dead_kinds, dynamic_metrics, gather, refill_rows, refill_size, select_slots


def res_of(reward, accuracy):
    return {"reward": torch.tensor(reward, dtype=torch.float64), "accuracy": torch.tensor(accuracy, dtype=torch.float64)}


# Four groups of G = 4 (accuracy 0/1 + a format score in [0, 1]):
#   0: mixed accuracy                       -> live under every metric
#   1: all correct, format all 1            -> rewards all 2.0
#   2: all wrong, format differs            -> accuracy equal, rewards differ (format-only signal)
#   3: all wrong, format all 0              -> rewards all 0.0
ACC = [[1, 0, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
REWARD = [[2.0, 0.5, 2.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.5, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]


def test_dead_groups_reward_and_accuracy_format_only_case():
    res = res_of(REWARD, ACC)
    # the format-only group 2: kept under `reward` (its rewards differ), dropped under `accuracy` (DAPO's literal rule)
    assert dead_groups(res, "reward").tolist() == [False, True, False, True]
    assert dead_groups(res, "accuracy").tolist() == [False, True, True, True]
    # grpo / drgrpo (no reference): `advantage` is `reward`, and the advantages of the dead groups are indeed 0
    assert dead_groups(res, "advantage").tolist() == [False, True, False, True]
    adv = train.compute_advantages(res["reward"], "grpo")
    assert (adv[[1, 3]] == 0).all() and (adv[[0, 2]] != 0).all(dim=1).all()


def test_dead_groups_aapo_case():
    """AAPO (arXiv:2505.14264v2 Eq. 7): A~ = A + clip(r - r_ref, -0.2, 0.28). Group 1's rewards are all 2.0 but one
    reference reward is 1.0, so its margin is clip(1.0) = 0.28 on that sample: kept under `advantage`, dropped under
    `reward`. Group 3 (rewards 0, references 0): margin 0 everywhere, dead under both."""
    res = res_of(REWARD, ACC)
    ref = torch.tensor([[0.0] * 4, [2.0, 1.0, 2.0, 2.0], [1.0] * 4, [0.0] * 4], dtype=torch.float64)
    assert dead_groups(res, "advantage", ref).tolist() == [False, False, False, True]
    assert dead_groups(res, "reward", ref).tolist() == [False, True, False, True]
    adv = train.compute_advantages(res["reward"], "aapo", ref_rewards=ref)
    assert adv[1].tolist() == pytest.approx([0.0, 0.28, 0.0, 0.0]) and (adv[3] == 0).all()  # the hand-computed case
    # a margin inside the clip but not zero also keeps the group; a reference equal to the rewards does not
    ref[1] = torch.tensor([2.0, 2.0, 1.9, 2.0])
    assert dead_groups(res, "advantage", ref)[1].item() is False
    ref[1] = 2.0
    assert dead_groups(res, "advantage", ref)[1].item() is True


def test_dead_groups_rejects_unknown_metric():
    with pytest.raises(ValueError, match="metric"):
        dead_groups(res_of(REWARD, ACC), "variance")


def test_dead_kinds():
    res = res_of(REWARD, ACC)
    assert dead_kinds(res["accuracy"], dead_groups(res, "accuracy")) == {"all_correct": 1, "all_wrong": 2, "other": 0}
    # mixed accuracy but equal rewards (a wrong answer with a better format can tie with a right one: 1 + 0 = 0 + 1)
    acc, reward = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert dead_kinds(acc, dead_groups({"reward": reward, "accuracy": acc}, "reward")) == {
        "all_correct": 0, "all_wrong": 0, "other": 1}  # fmt: skip


def test_refill_size():
    assert refill_size(0, 16, 16, 16) == 0  # full: no round
    assert refill_size(4, 12, 16, 16) == 6  # live rate 12/16: 4 / 0.75 = 5.33 -> 6, not one group at a time
    assert refill_size(1, 15, 16, 16) == 2  # 1 / (15/16) = 1.07 -> 2
    assert refill_size(8, 8, 16, 16) == 16  # rate 1/2: 16, at the cap
    assert refill_size(12, 4, 16, 16) == 16  # 48 wanted, one generation batch at most
    assert refill_size(5, 0, 16, 16) == 16  # no live group seen yet: a full batch
    assert refill_size(3, 20, 20, 16) == 3  # all live so far: the shortfall itself


def test_refill_rows_stream():
    used = {0, 2, 4, 6}
    a = refill_rows(7, 3, 1, 0, 1, 20, used, 5)
    assert a == refill_rows(7, 3, 1, 0, 1, 20, used, 5)  # a function of its key alone
    pool = [i for i in range(20) if i not in used]
    assert a == random.Random("refill/7/3/1/0").sample(pool, 5)  # the documented stream
    assert not set(a) & used and len(set(a)) == 5
    assert refill_rows(7, 3, 2, 0, 1, 20, used, 5) != a and refill_rows(7, 4, 1, 0, 1, 20, used, 5) != a
    # two ranks draw from disjoint rows (i % world == rank), so no row is drawn twice in a step
    r0, r1 = (refill_rows(7, 3, 1, r, 2, 20, used, 8) for r in (0, 1))
    assert all(i % 2 == 0 for i in r0) and all(i % 2 == 1 for i in r1)
    assert len(r0) == 6 and not set(r0) & used  # rank 0's pool: 8, 10, ..., 18 (0-6 used): fewer than asked
    assert refill_rows(7, 3, 1, 0, 1, 4, {0, 1, 2, 3}, 5) == []  # nothing left


def test_select_slots_ordering_and_surplus():
    dead0 = torch.tensor([False, True, False, True])  # round 0: slots 1 and 3 dead
    dead1 = torch.tensor([True, False])  # round 1: position 1 live
    dead2 = torch.tensor([False, False, True])  # round 2: positions 0 and 1 live
    slots, surplus = select_slots([dead0, dead1, dead2])
    # round 0's live groups keep their slots; its dead slots take the refills in (round, position) order
    assert slots == [(0, 0), (1, 1), (0, 2), (2, 0)] and surplus == 1  # (2, 1) is discarded
    assert select_slots([torch.tensor([False, False])]) == ([(0, 0), (0, 1)], 0)


def test_select_slots_cap_fallback():
    """Not enough live groups after the last round: the slots left keep their dead round-0 group (masked)."""
    dead0 = torch.tensor([True, True, False, True])
    slots, surplus = select_slots([dead0, torch.tensor([True, False]), torch.tensor([True])])
    assert slots == [(1, 1), (0, 1), (0, 2), (0, 3)] and surplus == 0
    assert gather([dead0, torch.tensor([True, False]), torch.tensor([True])], slots).tolist() == [False, True, False, True]


def test_gather():
    parts = [{"r": torch.tensor([[1.0, 1.0], [2.0, 2.0]])}, {"r": torch.tensor([[3.0, 3.0]])}]
    assert gather(parts, [(0, 0), (1, 0)])["r"].tolist() == [[1.0, 1.0], [3.0, 3.0]]
    assert gather([["a", "b"], ["c"]], [(1, 0), (0, 1)]) == ["c", "b"]
    assert gather(parts, [(0, 0), (0, 1)]) is parts[0]  # no refill: round 0 as generated


def test_dynamic_metrics_by_hand():
    """One process: two rounds of 2 prompts, one dead slot left, 3 of 4 generated groups dead."""
    acc = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    rounds = [dict(idx=[5, 6], res={"accuracy": acc}, dead=torch.tensor([True, False]), gen_tokens=40, t_gen=1.0,
                   t_reward=0.5),
              dict(idx=[7, 8], res={"accuracy": torch.tensor([[0.0, 0.0], [1.0, 1.0]])}, dead=torch.tensor([True, True]),
                   gen_tokens=30, t_gen=2.0, t_reward=1.0)]  # fmt: skip
    loss_mask = torch.ones(4, 5)  # (N, T) 20 trained tokens
    m = dynamic_metrics(rounds, torch.tensor([True, False]), 0, 1, loss_mask)
    assert m == {"dynamic/rounds": 2, "dynamic/kept_fraction": 0.5, "dynamic/dead_all_correct": 2.0,
                 "dynamic/dead_all_wrong": 1.0, "dynamic/dead_other": 0.0, "dynamic/surplus": 0.0,
                 "dynamic/cap_hit": 1.0, "dynamic/prompts": 4.0, "dynamic/gen_per_trained_token": 3.5,
                 "time/refill": 3.0}  # fmt: skip
    assert dynamic_metrics(rounds, torch.tensor([False, False]), 1, 1, loss_mask)["dynamic/cap_hit"] == 0.0


def test_rollout_seed_rounds_distinct():
    seeds = {train.rollout_seed(42, s, k, r, n) % 2**32 for s in range(50) for k in range(2) for r in range(8)
             for n in range(16)}  # fmt: skip
    assert len(seeds) == 50 * 2 * 8 * 16  # distinct even in the low 32 bits torch's CPU generator keeps
    assert train.rollout_seed(42, 3, 1, 2, 0) == train.rollout_seed(42, 3, 1, 2)  # round 0: the old seed


def test_config_rounds_checks():
    with pytest.raises(train.BadValue, match="needs --dynamic-sampling"):
        train.parse_config(["--preset", "tiny", "--dynamic-sampling-rounds", "2"])
    with pytest.raises(train.BadValue, match="0 to 15"):
        train.parse_config(["--preset", "tiny", "--dynamic-sampling", "--dynamic-sampling-rounds", "16"])
    with pytest.raises(train.BadValue, match="dynamic-sampling-metric"):
        train.parse_config(["--preset", "tiny", "--dynamic-sampling-metric", "std"])
    cfg = train.parse_config(["--preset", "tiny", "--dynamic-sampling", "--dynamic-sampling-rounds", "3"])
    assert (cfg.dynamic_sampling_rounds, cfg.dynamic_sampling_metric) == (3, "advantage")


# ----------------------------------------------------------------------------------------------------------------------
# Tiny runs (slow): refill on a real run and its resume, a constant reward that hits the cap, two gloo ranks of which
# one refills. Small steps: 8 prompts x 4 samples (GRPO: a group is dead when its 4 rewards agree).

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--preset", "tiny", "--prompts-per-step", "8", "--group-size", "4", "--mini-batch-prompts", "8",
         "--eval-limit", "16", "--reward-timeout", "60", "--samples-every", "0", "--lr-schedule", "constant",
         "--dynamic-sampling"]  # fmt: skip
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run_train(*flags):
    proc = subprocess.run([sys.executable, "train.py", *flags], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"train.py {' '.join(flags)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_tiny_refill_run_and_resume(tmp_path):
    """GRPO with --aug, up to 3 refill rounds: some step needs a second round, every step trains once on B = 8 slots,
    and a run stopped at step 2 and resumed repeats the uninterrupted one's metrics (time/ and perf/ aside)."""
    flags = [*SMALL, "--aug", "--dynamic-sampling-rounds", "3", "--eval-every", "2", "--save-every", "2"]
    run_train(*flags, "--max-steps", "4", "--out", str(tmp_path / "a"))
    rows = [r for r in read_metrics(tmp_path / "a") if "dynamic/rounds" in r]
    assert len(rows) == 4 and max(r["dynamic/rounds"] for r in rows) > 1
    for r in rows:
        assert r["train/updates"] == 1 and 1 <= r["dynamic/rounds"] <= 4 and r["dynamic/prompts"] >= 8
        assert (r["dynamic/rounds"] > 1) == (r["dynamic/prompts"] > 8) and r["dynamic/gen_per_trained_token"] >= 1
        assert r["dynamic/kept_fraction"] == 1.0 or r["dynamic/cap_hit"] == 1.0  # full, or the cap said why not
    run_train(*flags, "--max-steps", "2", "--out", str(tmp_path / "b"))
    run_train(*flags, "--max-steps", "4", "--out", str(tmp_path / "b"), "--resume")
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))}  # noqa: E731
    assert [strip(r) for r in read_metrics(tmp_path / "b")] == [strip(r) for r in read_metrics(tmp_path / "a")]


@pytest.mark.slow
def test_constant_reward_hits_the_cap_without_crashing(tmp_path, monkeypatch):
    """Every reward 0: every group of every round is dead; after the 2 allowed refill rounds (of a full batch each,
    no live group seen) the slots keep their masked round-0 groups, the step skips its update and says so."""
    real = train.step_rewards

    def zero_rewards(cfg, comps, *args):
        res, ref_rewards, stats = real(cfg, comps, *args)
        return {k: torch.zeros_like(v) for k, v in res.items()}, ref_rewards, stats

    monkeypatch.setattr(train, "step_rewards", zero_rewards)
    out = tmp_path / "run"
    train.main([*SMALL, "--dynamic-sampling-rounds", "2", "--max-steps", "2", "--eval-every", "0", "--out", str(out)])
    rows = read_metrics(out)
    assert len(rows) == 2
    for r in rows:
        assert r["dynamic/rounds"] == 3 and r["dynamic/cap_hit"] == 1.0 and r["dynamic/kept_fraction"] == 0.0
        assert r["dynamic/prompts"] == 8 + 8 + 8 and r["dynamic/dead_all_wrong"] == 24 and r["train/updates"] == 0


def worker(out: Path, log: Path) -> None:
    """torchrun entry: train.main with rollout_round patched so that rank 0's groups are always live and rank 1's
    round-0 groups all dead (its refills live): rank 1 alone needs a refill round, rank 0 must run it with no prompt."""
    rank, real = int(os.environ["RANK"]), train.rollout_round

    def one_sided(cfg, engine, ref_engine, tokenizer, step, rnd, rows, idx, tmpl, ref_cache):
        r = real(cfg, engine, ref_engine, tokenizer, step, rnd, rows, idx, tmpl, ref_cache)
        r["dead"] = torch.full((len(idx),), rank == 1 and rnd == 0)  # (B,)
        with open(log / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "round": rnd, "rows": list(idx)}) + "\n")
        return r

    train.rollout_round = one_sided
    torch.set_num_threads(1)
    train.main([*SMALL, "--prompts-per-step", "4", "--mini-batch-prompts", "4", "--dynamic-sampling-rounds", "3",
                "--max-steps", "2", "--eval-every", "0", "--out", str(out)])  # fmt: skip


@pytest.mark.slow
def test_two_ranks_one_refills(tmp_path):
    """2 gloo ranks, 2 prompts each: rank 1 refills, rank 0 does not; both run the same rounds (no hang) and the
    metrics count both ranks."""
    cmd = [*TORCHRUN, "tests/test_dynamic.py", str(tmp_path / "run"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = [[json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [(c["step"], c["round"]) for c in calls[0]] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # the same rounds
    assert [(c["step"], c["round"]) for c in calls[1]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [len(c["rows"]) for c in calls[0]] == [2, 0, 2, 0] and [len(c["rows"]) for c in calls[1]] == [2, 2, 2, 2]
    assert all(i % 2 == 1 for c in calls[1] if c["round"] == 1 for i in c["rows"])  # rank 1's pool: odd rows
    for r in read_metrics(tmp_path / "run"):
        assert r["dynamic/rounds"] == 2 and r["dynamic/prompts"] == 6 and r["dynamic/kept_fraction"] == 1.0
        assert r["dynamic/surplus"] == 0 and r["dynamic/cap_hit"] == 0 and r["train/updates"] == 1


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
