"""Micro-batches for memory: which sequences of a mini-batch go through one forward/backward pass, and the padding
columns they can drop. Plumbing only: the loss is normalised per mini-batch (train.py's aggregate), so however a
mini-batch is split, its loss is the same."""

import torch


def trim(rows: torch.Tensor, input_ids, attention_mask, resp_mask):
    """The sequences `rows` with columns that are padding in all of them removed (left: prompt pad, right: response)."""
    ids, am, rm = input_ids[rows], attention_mask[rows], resp_mask[rows]
    P = input_ids.shape[1] - resp_mask.shape[1]
    left = int((am[:, :P].sum(0) == 0).sum())  # prompt columns padded in every row
    T = max(1, int(rm.sum(-1).max()))
    return ids[:, left : P + T], am[:, left : P + T], T


def token_budget_batches(lengths: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Micro-batches (index lists) with rows x padded width <= budget from (prompt, response) token counts; the width
    is what trim() leaves, longest prompt + longest response. Greedy over the sequences sorted by (response, prompt)
    length; a sequence over the budget goes alone. The order leaves the loss as is (normalised per mini-batch)."""
    batches, cur, p_max, r_max = [], [], 0, 0
    for i in sorted(range(len(lengths)), key=lambda i: (lengths[i][1], lengths[i][0])):
        p, r = lengths[i][0], max(1, lengths[i][1])
        if cur and (len(cur) + 1) * (max(p_max, p) + max(r_max, r)) > budget:
            batches.append(cur)
            cur, p_max, r_max = [], 0, 0
        cur, p_max, r_max = cur + [i], max(p_max, p), max(r_max, r)
    return batches + [cur] if cur else batches


def micro_batches(rows: torch.Tensor, lengths: list[tuple[int, int]], size: int, budget: int) -> list[torch.Tensor]:
    """The sequences `rows` split for memory: by token budget when budget > 0, else `size` rows at a time."""
    if budget <= 0:
        return [rows[s : s + size] for s in range(0, len(rows), size)]
    return [rows[b] for b in token_budget_batches([lengths[i] for i in rows.tolist()], budget)]
