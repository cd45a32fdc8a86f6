"""DAPO dynamic sampling with refill (arXiv:2503.14476v1 Sec. 3.2 Eq. 11, Algorithm 1): which groups are dead, which
fresh prompts a refill round draws, how many, and which groups fill the step's B slots. Pure functions, but for
dynamic_metrics, which all-reduces its counts; train.py's rollout phase runs the rounds (generation, grading) and the
ranks' agreement. docs/algorithms.md "Dynamic sampling" has the rules and their measurement.

DAPO's constraint 0 < |{o_i : o_i correct}| < G keeps a group only when its accuracy is neither 0 nor 1; here "dead"
follows the estimator by default (`advantage`: every advantage of the group is zero), so that AAPO's groups whose
rewards are all equal but whose paired reference rewards differ (arXiv:2505.14264v2 Eq. 7: a non-zero clipped margin)
stay in the batch. `reward` (all rewards equal, format score included) and `accuracy` (DAPO's literal rule) are the
alternatives.
"""

import math
import random

import torch

from mathrl.distributed import all_sum

METRICS = ("advantage", "reward", "accuracy")


def dead_groups(res: dict, metric: str, ref_rewards: torch.Tensor | None = None, delta_low: float = 0.2,
                delta_high: float = 0.28) -> torch.Tensor:  # fmt: skip
    """(B,) bool: the groups with no learning signal under `metric`, from score()'s (B, G) reward and accuracy.

    accuracy:  all G accuracies equal (DAPO Eq. 11 drops accuracy 0 and 1)
    reward:    all G rewards equal (reward = accuracy + format score; GRPO and Dr. GRPO advantages are then 0)
    advantage: every advantage is 0 under the active estimator: rewards all equal and, with AAPO's ref_rewards (B, G),
               every clipped margin clip(r_i - r_i^ref, -delta_low, delta_high) is 0 too (arXiv:2505.14264v2 Eq. 7).
    "Equal" is std == 0, the test train/zero_var_groups uses, so `reward` without AAPO masks what the old rule did.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown dynamic-sampling metric {metric!r}; expected one of {', '.join(METRICS)}")
    dead = res["accuracy" if metric == "accuracy" else "reward"].std(dim=1) == 0  # (B,)
    if metric == "advantage" and ref_rewards is not None:
        margin = (res["reward"] - ref_rewards).clamp(-delta_low, delta_high)  # (B, G)
        dead = dead & (margin == 0).all(dim=1)
    return dead


def dead_kinds(accuracy: torch.Tensor, dead: torch.Tensor) -> dict[str, int]:
    """Counts of dead groups by kind from (B, G) accuracies and the (B,) dead mask: all correct, all wrong, other
    (mixed accuracy: dead only under --dynamic-sampling-metric reward/advantage by equal rewards, e.g. format-only)."""
    correct, wrong = (accuracy == 1).all(dim=1), (accuracy == 0).all(dim=1)  # (B,)
    return {"all_correct": int((dead & correct).sum()), "all_wrong": int((dead & wrong).sum()),
            "other": int((dead & ~correct & ~wrong).sum())}  # fmt: skip


def refill_size(shortfall: int, live: int, drawn: int, max_prompts: int) -> int:
    """Prompts to draw in a refill round: the shortfall over the live rate seen so far in this step (live / drawn
    groups), so that a round aims to fill the batch at once instead of trickling in one group at a time; at least the
    shortfall, at most max_prompts (one generation batch). 0 when nothing is missing."""
    if shortfall <= 0:
        return 0
    want = math.ceil(shortfall * drawn / live) if live > 0 else max_prompts  # shortfall / (live / drawn)
    return min(max(shortfall, want), max_prompts)


def refill_rows(seed: int, step: int, rnd: int, rank: int, world: int, num_rows: int, used: set[int], n: int) -> list:
    """n dataset rows for refill round `rnd` (>= 1) of `step` on `rank`: drawn without replacement from their own
    stream, random.Random keyed by (seed, step, round, rank), never a row in `used` (the step's own B rows on all ranks
    and those of earlier rounds). Each rank draws from the rows i with i % world == rank, so no two ranks draw the same
    row; the draw depends on nothing else, so a resumed run repeats it. Fewer than n when the pool runs out."""
    pool = [i for i in range(rank, num_rows, world) if i not in used]
    return random.Random(f"refill/{seed}/{step}/{rnd}/{rank}").sample(pool, min(n, len(pool)))


def refill_template(seed: int, step: int, rnd: int, row: int, names: list[str]) -> str:
    """The template of a refill row (--aug): a uniform draw keyed by (seed, step, round, row), its own stream."""
    return random.Random(f"refill-template/{seed}/{step}/{rnd}/{row}").choice(names)


def select_slots(dead: list[torch.Tensor]) -> tuple[list[tuple[int, int]], int]:
    """The step's B slots as (round, position) pairs, from the (n_r,) dead masks of rounds 0, 1, ... (round 0 has B).

    Round 0's live groups keep their slots; its dead slots, in position order, take the live refill groups in
    (round, position) order; slots left over keep their dead round-0 group (masked out of the loss, as without refill).
    Returns the slots and the surplus: live refill groups that found no slot, discarded. A fixed order, independent of
    which generation finished first, so a run repeats bit for bit."""
    live_refill = [(r, p) for r in range(1, len(dead)) for p in range(len(dead[r])) if not dead[r][p]]
    slots, k = [], 0
    for p in range(len(dead[0])):
        if dead[0][p] and k < len(live_refill):
            slots.append(live_refill[k])
            k += 1
        else:
            slots.append((0, p))
    return slots, len(live_refill) - k


def gather(parts: list, slots: list[tuple[int, int]]):
    """parts[r][p] for each (r, p) slot: a list for lists, a stacked tensor (B, ...) for tensors, a dict of those for
    dicts; parts[0] itself when the slots are round 0's in order (no refill: the batch as it was generated)."""
    if slots == [(0, p) for p in range(len(slots))]:
        return parts[0]
    if isinstance(parts[0], dict):
        return {k: gather([part[k] for part in parts], slots) for k in parts[0]}
    items = [parts[r][p] for r, p in slots]
    return torch.stack(items) if isinstance(parts[0], torch.Tensor) else items


def dynamic_metrics(rounds: list[dict], dead: torch.Tensor, surplus: int, max_rounds: int, loss_mask) -> dict:
    """Dynamic sampling's metrics over all ranks (docs/metrics.md): rounds are train.py's rollout_round dicts (idx,
    res, dead, gen_tokens, t_gen, t_reward), dead the trained slots' (B,) mask, surplus select_slots', loss_mask (N, T)
    the trained tokens. The cap is hit when dead slots are left after every allowed round (R = 0: any dead group)."""
    kinds = [dead_kinds(r["res"]["accuracy"], r["dead"]) for r in rounds]
    counts = torch.tensor([len(dead) - int(dead.sum()), len(dead), *(sum(k[n] for k in kinds) for n in kinds[0]),
                           surplus, int(bool(dead.any()) and len(rounds) > max_rounds), sum(len(r["idx"]) for r in rounds),
                           sum(r["gen_tokens"] for r in rounds), float(loss_mask.sum())], dtype=torch.float64)  # fmt: skip
    kept, slots, correct, wrong, other, surplus, cap_hit, prompts, gen, trained = all_sum(counts).tolist()
    return {"dynamic/rounds": len(rounds), "dynamic/kept_fraction": kept / slots, "dynamic/dead_all_correct": correct,
            "dynamic/dead_all_wrong": wrong, "dynamic/dead_other": other, "dynamic/surplus": surplus,
            "dynamic/cap_hit": float(cap_hit > 0), "dynamic/prompts": prompts,
            "dynamic/gen_per_trained_token": gen / max(trained, 1),
            "time/refill": sum(r["t_gen"] + r["t_reward"] for r in rounds[1:])}  # fmt: skip
