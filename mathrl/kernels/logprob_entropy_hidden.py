"""Log-prob and entropy straight from hidden states: the LM head is applied chunk by chunk, so the [N, V] logits
never exist whole.

    logits_c = hidden_c @ weight.T          (rows c of one chunk, in hidden's dtype)
    (log p_y, H)_c = logprob_entropy(logits_c)     (the fused kernel, logprob_entropy.py)

Backward recomputes each chunk's logits, lets the kernel overwrite them with dL/dlogits_c in place, then
    dL/dhidden_c = dlogits_c @ weight,    dL/dweight += dlogits_c.T @ hidden_c   (fp32 running sum over chunks).
Extra memory: O(chunk_size x V) for one chunk's logits, plus one [V, H] fp32 gradient accumulator in backward.
A weight tied to the input embeddings just receives both gradients (autograd adds them).
"""

import torch

from .logprob_entropy import _backward, _forward, _is_zero, check_inputs, logprob_entropy_ref

CHUNK_SIZE = 2048  # rows per chunk: 2048 x 151,936 bf16 logits = 0.62 GB


def logprob_entropy_from_hidden_ref(hidden, weight, targets, temperature=1.0, vocab_limit=None):
    """PyTorch reference: the whole (N, V) logits at once, then logprob_entropy_ref. Returns two (N,) tensors."""
    logits = hidden @ weight.to(hidden.dtype).T  # (N, V) in hidden's dtype, as an LM head computes it
    return logprob_entropy_ref(logits, targets, temperature, vocab_limit)


def _row_chunks(n_rows, chunk_size):
    """Row slices of at most chunk_size rows (a single empty one when n_rows = 0)."""
    return [slice(start, start + chunk_size) for start in range(0, max(n_rows, 1), chunk_size)]


def _mm(a, b):
    """a @ b with autocast off: the logits recomputed in backward must equal the forward's, in the input dtype."""
    with torch.autocast(a.device.type, enabled=False):
        return a @ b


class LogprobEntropyFromHidden(torch.autograd.Function):
    """(N, H) hidden, (V, H) weight -> (log p_y, H), differentiable w.r.t. hidden and weight."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, vocab_limit, chunk_size):
        weight_c = weight.to(hidden.dtype)  # (V, H) no copy when the dtypes already match
        per_chunk = []  # (logp, entropy, lse, mean_s) per chunk, each (C,)
        for rows in _row_chunks(hidden.shape[0], chunk_size):
            logits = _mm(hidden[rows], weight_c.T)  # (C, V) the only [*, V] tensor alive
            per_chunk.append(_forward(logits, targets[rows], 1.0 / temperature, vocab_limit))
            del logits  # freed before the next chunk's logits are allocated
        logp, entropy, lse, mean_s = (torch.cat(parts) for parts in zip(*per_chunk))  # each (N,)
        ctx.save_for_backward(hidden, weight, targets, lse, mean_s)
        ctx.temperature, ctx.vocab_limit, ctx.chunk_size = temperature, vocab_limit, chunk_size
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse, mean_s = ctx.saved_tensors
        grad_entropy = None if _is_zero(grad_entropy) else grad_entropy
        weight_c = weight.to(hidden.dtype)  # (V, H)
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None  # (N, H)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        for rows in _row_chunks(hidden.shape[0], ctx.chunk_size):
            logits = _mm(hidden[rows], weight_c.T)  # (C, V) recomputed, then overwritten by dL/dlogits
            g_lp = None if grad_logp is None else grad_logp[rows]
            g_h = None if grad_entropy is None else grad_entropy[rows]
            args = (lse[rows], mean_s[rows], g_lp, g_h, 1.0 / ctx.temperature, ctx.vocab_limit)
            dlogits = _backward(logits, targets[rows], *args, out=logits)  # (C, V) written over the logits
            if need_hidden:
                grad_hidden[rows] = _mm(dlogits, weight_c)  # (C, H)
            if need_weight:
                grad_weight += _mm(dlogits.T, hidden[rows]).float()  # (V, H), summed in fp32 across chunks
            del logits, dlogits
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None, None  # targets, temperature, vocab_limit, chunk_size


def logprob_entropy_from_hidden(
    hidden, weight, targets, temperature=1.0, vocab_limit=None, chunk_size=CHUNK_SIZE, use_triton=None
):
    """Per-token log p(target) and entropy of softmax(hidden @ weight.T / T), without the whole [N, V] logits.

    hidden: (N, H) or (*, H); weight: (V, H) LM-head rows (weight is cast to hidden's dtype); targets: (*) ids.
    Under autocast both are cast to its dtype first (gradients flow back to the originals in theirs).
    Returns (logp, entropy), fp32, of targets' shape. Gradients flow to hidden and weight.
    use_triton: as in logprob_entropy (None: Triton for CUDA tensors, the unchunked PyTorch reference otherwise).
    """
    if weight.ndim != 2 or hidden.shape[-1] != weight.shape[1]:
        shapes = f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}"
        raise ValueError(f"{shapes} do not match: expected (*, H) and (V, H)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    vocab_limit = check_inputs((*hidden.shape[:-1], weight.shape[0]), targets, temperature, vocab_limit)
    if torch.is_autocast_enabled(hidden.device.type):  # the LM head in the autocast dtype, as nn.Linear under autocast:
        dtype = torch.get_autocast_dtype(hidden.device.type)  # bf16 x bf16 with fp32 accumulation on tensor cores, not
        hidden, weight = hidden.to(dtype), weight.to(dtype)  # fp32 x fp32 (Qwen2's final hidden states are fp32 there)
    if not (hidden.is_cuda if use_triton is None else use_triton):
        return logprob_entropy_from_hidden_ref(hidden, weight, targets.long(), temperature, vocab_limit)
    flat = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    logp, entropy = LogprobEntropyFromHidden.apply(
        flat, weight, targets.reshape(-1).long().contiguous(), float(temperature), vocab_limit, int(chunk_size)
    )  # fmt: skip
    return logp.view(targets.shape), entropy.view(targets.shape)
