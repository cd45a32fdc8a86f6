"""Fused per-token log-prob and entropy over a large vocabulary, forward and backward, in one pass per row.

For one token with logits z over V ids, temperature T and target id y (reference/README.md section 4):

    s = z / T,   p = softmax(s),   LSE = log sum_j exp(s_j)
    log p_y = s_y - LSE
    H       = -sum_j p_j log p_j = LSE - E_p[s]            (E_p[s] = sum_j p_j s_j)

Gradients, with upstream g_lp = dL/dlog p_y and g_H = dL/dH:

    d log p_y / d z_j = (1[j = y] - p_j) / T
    d H / d z_j       = -p_j (s_j - E_p[s]) / T
    dz_j = [ g_lp (1[j = y] - p_j) - g_H p_j (s_j - E_p[s]) ] / T

One pass: the forward streams the V logits of a row once, keeping the max m, l = sum e^{s-m} and
b = sum e^{s-m} (s-m) (online softmax, arXiv:1805.02867 Alg. 3): LSE = m + log l, E_p[s] = m + b/l, H = log l - b/l.
The backward reads the logits once more with only LSE and E_p[s] per row (8 bytes) and writes dz (eager PyTorch
materialises fp32 [N, V] copies: upcast, log-softmax, probabilities, product).
Padded vocabularies: ids >= vocab_limit (Qwen2.5: 151,665 valid of 151,936 rows) count as -inf: p = 0, dz = 0.
"""

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton wheel here (macOS, Windows): the kernels become plain functions that never run
    triton = tl = type("NoTriton", (), {"jit": staticmethod(lambda fn: fn), "constexpr": int})

BLOCK_V = 4096  # columns per step of the streaming loop; tests shrink it to exercise many blocks on a small V
NUM_WARPS = 8  # 256 threads per row: 16 columns each per step


# ----------------------------------------------------------------------------------------------------------------
# PyTorch reference (what CPU tensors use; the tests compare the kernel with it in float64)


def logprob_entropy_ref(logits, targets, temperature=1.0, vocab_limit=None):
    """log p_y and H(p) per row with plain PyTorch ops: (*, V) logits and (*) targets -> two (*) tensors.

    Computes in float32 (float64 if the logits are float64). Padded ids are sliced away, which is the same as -inf.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    s = logits[..., :vocab_limit].to(dtype) / temperature  # (*, V') temperature before the softmax
    logp_all = torch.log_softmax(s, dim=-1)  # (*, V')
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (*)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (*) H = -sum p log p
    return logp, entropy


# ----------------------------------------------------------------------------------------------------------------
# Triton kernels: one program per row, streaming over V in BLOCK_V columns


@triton.jit
def _logprob_entropy_fwd_kernel(
    logits_ptr,  # *fp32|bf16|fp16 [N, V] or [B, T, V] (N = B*T): logits z, columns contiguous
    targets_ptr,  # *int64 [N]: target id y per row, 0 <= y < vocab_limit (checked on the host)
    logp_ptr,  # *fp32 [N] out: log p_y
    entropy_ptr,  # *fp32 [N] out: H(p)
    lse_ptr,  # *fp32 [N] out: LSE(s), saved for backward
    mean_s_ptr,  # *fp32 [N] out: E_p[s], saved for backward
    stride_b,  # elements between logits[b] and logits[b + 1] (0 for a 2-D input)
    stride_t,  # elements between logits[b, t] and logits[b, t + 1]
    n_t,  # T, rows per b (N for a 2-D input)
    vocab_size,  # V, columns per row: the load mask (V % 16 == 0 lets Triton issue 16-byte loads)
    vocab_limit,  # number of valid ids; columns >= it count as -inf
    inv_temperature,  # 1 / T: s = z / T is applied before the softmax
    BLOCK_V: tl.constexpr,  # columns per step
):
    # int64 row offsets: they overflow int32 past 14,000 rows of a 151,936-wide vocabulary. Row (b, t) of a strided
    # [B, T, V] view, so that a slice such as logits[:, :-1] is read in place, not copied first.
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (row // n_t) * stride_b + (row % n_t) * stride_t

    # 1. target logit s_y; it also seeds the running max, so m is finite from the start (no -inf - -inf = nan)
    y = tl.load(targets_ptr + row)
    s_y = tl.load(row_ptr + y).to(tl.float32) * inv_temperature
    m = s_y
    l = tl.zeros([BLOCK_V], dtype=tl.float32)  # per-lane partial sums in fp32 (even for bf16 logits),
    b = tl.zeros([BLOCK_V], dtype=tl.float32)  # reduced across lanes once, after the loop

    # 2. one streaming pass: online max m, l = sum e^{s-m}, b = sum e^{s-m} (s-m) (arXiv:1805.02867 Alg. 3); b is
    #    relative to m: H = log l - b/l subtracts no large numbers. Load mask: V, not vocab_limit (16-byte loads).
    for start in range(0, vocab_limit, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < vocab_limit
        s = tl.load(row_ptr + offs, mask=offs < vocab_size, other=0.0).to(tl.float32) * inv_temperature
        s = tl.where(valid, s, -float("inf"))  # padded and out-of-row columns: p = 0
        m_new = tl.maximum(m, tl.max(s, axis=0))  # the only cross-lane reduction inside the loop
        alpha = tl.exp(m - m_new)  # rescales the sums so far to the new max
        e = tl.exp(s - m_new)  # 0 on padded columns (s = -inf); their s - m_new is zeroed below: 0 * inf = nan
        b = alpha * (b + (m - m_new) * l) + e * tl.where(valid, s - m_new, 0.0)  # old terms shifted to m_new
        l = alpha * l + e
        m = m_new

    # 3. outputs: LSE = m + log l, E_p[s] = m + b/l, H = LSE - E_p[s] = log l - b/l, log p_y = s_y - LSE
    l_sum, b_sum = tl.sum(l, axis=0), tl.sum(b, axis=0)
    lse = m + tl.log(l_sum)
    tl.store(logp_ptr + row, s_y - lse)
    tl.store(entropy_ptr + row, tl.log(l_sum) - b_sum / l_sum)
    tl.store(lse_ptr + row, lse)
    tl.store(mean_s_ptr + row, m + b_sum / l_sum)


@triton.jit
def _logprob_entropy_bwd_kernel(
    logits_ptr,  # *fp32|bf16|fp16 [N, V] or [B, T, V]: the forward's logits z
    targets_ptr,  # *int64 [N]: target id y per row
    lse_ptr,  # *fp32 [N]: LSE(s) from the forward
    mean_s_ptr,  # *fp32 [N]: E_p[s] from the forward
    grad_logp_ptr,  # *fp32 [N]: upstream g_lp
    grad_entropy_ptr,  # *fp32 [N]: upstream g_H (not read when HAS_GRAD_ENTROPY is False)
    grad_logits_ptr,  # *logits' dtype [N, V] out, contiguous: dz; may be the logits (each block is read first)
    stride_b,  # elements between logits[b] and logits[b + 1], as in the forward
    stride_t,  # elements between logits[b, t] and logits[b, t + 1]
    n_t,  # T, rows per b
    vocab_size,  # V: columns written; those >= vocab_limit get 0
    vocab_limit,  # number of valid ids
    inv_temperature,  # 1 / T
    HAS_GRAD_ENTROPY: tl.constexpr,  # False when H's upstream gradient is absent or zero: skip that term
    BLOCK_V: tl.constexpr,  # columns per step
):
    row = tl.program_id(0).to(tl.int64)  # int64 offsets, as in the forward
    row_ptr = logits_ptr + (row // n_t) * stride_b + (row % n_t) * stride_t
    grad_row_ptr = grad_logits_ptr + row * vocab_size

    # 1. per-row scalars; the 1/T of the chain rule is folded into the upstream gradients
    y = tl.load(targets_ptr + row)
    lse = tl.load(lse_ptr + row)
    mean_s = tl.load(mean_s_ptr + row)
    g_lp = tl.load(grad_logp_ptr + row) * inv_temperature
    if HAS_GRAD_ENTROPY:
        g_h = tl.load(grad_entropy_ptr + row) * inv_temperature

    # 2. one pass: recompute p from the saved LSE, write dz = g_lp (1[j=y] - p) - g_H p (s - E_p[s])
    for start in range(0, vocab_size, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        valid = offs < vocab_limit
        s = tl.load(row_ptr + offs, mask=offs < vocab_size, other=0.0).to(tl.float32) * inv_temperature  # as forward
        p = tl.exp(tl.where(valid, s - lse, -float("inf")))  # padded columns: p = 0, so dz = 0
        dz = g_lp * (tl.where(offs == y, 1.0, 0.0) - p)
        if HAS_GRAD_ENTROPY:
            dz -= g_h * p * (s - mean_s)
        tl.store(grad_row_ptr + offs, dz.to(grad_logits_ptr.dtype.element_ty), mask=offs < vocab_size)


# ----------------------------------------------------------------------------------------------------------------
# Host wrappers: check shapes, allocate outputs, launch


def _row_layout(logits):
    """(stride_b, stride_t, T) that place row r = b*T + t of (N, V) or (B, T, V) logits; 2-D is read as (1, N, V)."""
    assert logits.ndim in (2, 3) and logits.stride(-1) == 1
    return (0, logits.stride(0), logits.shape[0]) if logits.ndim == 2 else (*logits.stride()[:2], logits.shape[1])


def _forward(logits, targets, inv_temperature, vocab_limit):
    """(N, V) or (B, T, V) logits, (N,) int64 targets -> logp, entropy, lse, mean_s: four fp32 (N,) tensors."""
    n_rows = targets.shape[0]
    logp, entropy, lse, mean_s = (torch.empty(n_rows, dtype=torch.float32, device=logits.device) for _ in range(4))
    if n_rows > 0:
        _logprob_entropy_fwd_kernel[(n_rows,)](
            logits, targets, logp, entropy, lse, mean_s, *_row_layout(logits), logits.shape[-1], vocab_limit,
            inv_temperature, BLOCK_V=BLOCK_V, num_warps=NUM_WARPS,
        )  # fmt: skip
    return logp, entropy, lse, mean_s


def _backward(logits, targets, lse, mean_s, grad_logp, grad_entropy, inv_temperature, vocab_limit, out=None):
    """Contiguous dL/dlogits in the logits' dtype (grad_entropy None: no entropy term); out=logits writes in place."""
    n_rows, vocab_size = targets.shape[0], logits.shape[-1]
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device) if out is None else out
    assert out.is_contiguous() and out.shape == logits.shape
    grad_logp = torch.zeros_like(lse) if grad_logp is None else grad_logp.float().contiguous()
    has_grad_entropy = grad_entropy is not None
    grad_entropy = grad_logp if grad_entropy is None else grad_entropy.float().contiguous()  # unread placeholder
    if n_rows > 0:
        _logprob_entropy_bwd_kernel[(n_rows,)](
            logits, targets, lse, mean_s, grad_logp, grad_entropy, out, *_row_layout(logits), vocab_size,
            vocab_limit, inv_temperature, HAS_GRAD_ENTROPY=has_grad_entropy, BLOCK_V=BLOCK_V, num_warps=NUM_WARPS,
        )  # fmt: skip
    return out


# ----------------------------------------------------------------------------------------------------------------
# Autograd and the public functions


def _is_zero(grad):
    """None or all zeros (an entropy coefficient of 0): the backward can skip the entropy term."""
    return grad is None or not bool(grad.any())  # one host sync per backward, negligible next to the V pass


def check_inputs(logits_shape, targets, temperature, vocab_limit):
    """Validate the arguments shared by both public functions; return vocab_limit (None -> V). Raises ValueError."""
    vocab_size = logits_shape[-1]
    if tuple(targets.shape) != tuple(logits_shape[:-1]):
        raise ValueError(f"targets have shape {tuple(targets.shape)}, expected {tuple(logits_shape[:-1])}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    vocab_limit = vocab_size if vocab_limit is None else int(vocab_limit)
    if not 1 <= vocab_limit <= vocab_size:
        raise ValueError(f"vocab_limit={vocab_limit} must be in [1, {vocab_size}], the number of logit columns")
    if targets.numel() > 0:  # one host sync; an out-of-range id would make the kernel read outside its row
        lo, hi = torch.stack(torch.aminmax(targets.reshape(-1))).tolist()
        if lo < 0 or hi >= vocab_limit:
            bad = lo if lo < 0 else hi
            raise ValueError(f"target id {bad} is out of range 0..{vocab_limit - 1} (vocab_limit={vocab_limit})")
    return vocab_limit


class LogprobEntropy(torch.autograd.Function):
    """(N, V) or (B, T, V) logits -> (log p_y, H) per row, differentiable; saves only LSE and E_p[s] per row."""

    @staticmethod
    def forward(ctx, logits, targets, temperature, vocab_limit):
        logp, entropy, lse, mean_s = _forward(logits, targets, 1.0 / temperature, vocab_limit)
        ctx.save_for_backward(logits, targets, lse, mean_s)
        ctx.inv_temperature, ctx.vocab_limit = 1.0 / temperature, vocab_limit
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not a zero tensor
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        grad_entropy = None if _is_zero(grad_entropy) else grad_entropy
        grad_logits = _backward(*ctx.saved_tensors, grad_logp, grad_entropy, ctx.inv_temperature, ctx.vocab_limit)
        return grad_logits, None, None, None  # targets, temperature, vocab_limit: not differentiable


def logprob_entropy(logits, targets, temperature=1.0, vocab_limit=None, use_triton=None):
    """Per-token log p(target) and full-distribution entropy, both fp32, at temperature T.

    logits: (*, V) fp32/bf16/fp16; targets: (*) integer ids below vocab_limit (ValueError otherwise); ids >= vocab_limit
    are padding, counted as -inf (None: all V are valid). Returns (logp, entropy), each of the leading shape (*).
    use_triton: None picks the Triton kernel for CUDA tensors and the PyTorch reference otherwise; True forces the
    kernel (on a CPU that needs TRITON_INTERPRET=1 set before Triton is imported); False forces the reference.
    """
    vocab_limit = check_inputs(logits.shape, targets, temperature, vocab_limit)
    if not (logits.is_cuda if use_triton is None else use_triton):
        return logprob_entropy_ref(logits, targets.long(), temperature, vocab_limit)
    rows = logits if logits.ndim == 3 else logits.reshape(-1, logits.shape[-1])  # (B, T, V) read in place, or (N, V)
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    flat_targets = targets.reshape(-1).long().contiguous()  # (N,)
    logp, entropy = LogprobEntropy.apply(rows, flat_targets, float(temperature), vocab_limit)
    return logp.view(targets.shape), entropy.view(targets.shape)
