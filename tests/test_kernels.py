"""Tests for kernels/: the fused log-prob + entropy Triton kernels against a float64 PyTorch reference.

On a CPU the real Triton kernels run through the Triton interpreter (TRITON_INTERPRET=1, set here before Triton
is imported); on a CUDA machine they run compiled. Shapes stay small because the interpreter is slow.
Triton decides at import time whether its functions are interpreted. When an earlier test module has already
imported Triton (transformers' generate does), this file re-runs itself in a fresh process (test_fresh_process).
Run: .venv/bin/python -m pytest -q tests/test_kernels.py
"""

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPO = Path(__file__).resolve().parents[1]


def _load_kernel_module():
    """kernels/logprob_entropy.py with kernels built for this machine, and whether they can run in this process."""
    if DEVICE == "cuda":
        return importlib.import_module("mathrl.kernels.logprob_entropy"), True
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # read by @triton.jit when a module defining kernels is executed
    try:
        import triton.language as tl
        from triton.runtime.jit import JITFunction

        runnable = not isinstance(tl.sum, JITFunction)  # False: Triton was imported before, not interpreted
        module = importlib.import_module("mathrl.kernels.logprob_entropy")
        if runnable and isinstance(module._logprob_entropy_fwd_kernel, JITFunction):
            module = importlib.reload(module)  # imported earlier by another test module, built for a GPU
    finally:  # restore it (a fixture sets it again during each test): later modules' subprocesses inherit it
        os.environ.pop("TRITON_INTERPRET") if previous is None else os.environ.__setitem__("TRITON_INTERPRET", previous)
    return module, runnable


# importlib: `kernels.logprob_entropy` as an attribute of the package is the function, not the module
le, RUNNABLE_HERE = _load_kernel_module()
from mathrl.kernels import (  # noqa: E402  (after the interpreter switch above)
    logprob_entropy,
    logprob_entropy_from_hidden,
    logprob_entropy_from_hidden_ref,
    logprob_entropy_ref,
)


def test_fresh_process():
    """Runs this file in a new process when Triton was imported here before the interpreter could be switched on."""
    if RUNNABLE_HERE:
        pytest.skip("the kernel tests run in this process")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)), "-k", "not sm90"]
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"


# (dtype, atol, rtol) for values and gradients against float64, for the Triton kernel (values are always fp32)
TOLERANCES = {torch.float32: (2e-5, 2e-5), torch.bfloat16: (2e-5, 2e-5), torch.float16: (2e-5, 2e-5)}
GRAD_TOLERANCES = {torch.float32: (1e-6, 1e-5), torch.bfloat16: (1e-5, 8e-3), torch.float16: (1e-6, 1e-3)}


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch, request):
    """128-column blocks, so that a vocabulary of a few hundred ids spans many blocks of the online softmax."""
    if not RUNNABLE_HERE and "sm90" not in request.node.name and request.node.name != "test_fresh_process":
        pytest.skip("Triton was imported before the interpreter switch: test_fresh_process runs this file anew")
    monkeypatch.setattr(le, "BLOCK_V", 128)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton's language functions check it while a kernel runs


def assert_close(actual, expected, atol, rtol, what):
    """assert_close that prints the max and mean absolute difference on failure."""
    diff = (actual.double() - expected.double()).abs()
    msg = f"{what}: max |diff| {diff.max().item():.3g}, mean {diff.mean().item():.3g} (atol {atol}, rtol {rtol})"
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=msg)


def run_both(logits, targets, temperature, vocab_limit, g_lp, g_h):
    """(logp, entropy, dlogits) from the kernel on `logits`, and from the fp64 reference on the same values."""
    out = []
    for x, use_triton in ((logits, True), (logits.double(), False)):
        x = x.detach().to(DEVICE).requires_grad_()
        logp, entropy = logprob_entropy(x, targets.to(DEVICE), temperature, vocab_limit, use_triton=use_triton)
        loss = (logp * g_lp.to(DEVICE, logp.dtype)).sum() + (entropy * g_h.to(DEVICE, logp.dtype)).sum()
        loss.backward()
        out.append((logp.detach().cpu(), entropy.detach().cpu(), x.grad.cpu()))
    return out


def make_case(n, v, limit, dtype, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, v, generator=gen) * scale).to(dtype)  # (N, V)
    targets = torch.randint(0, limit or v, (n,), generator=gen)  # (N,)
    g_lp, g_h = torch.randn(n, generator=gen), torch.randn(n, generator=gen)  # (N,) upstream gradients
    return logits, targets, g_lp, g_h


# ----------------------------------------------------------------------------------------------------------------
# values and gradients against float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "n, v, limit, temperature",
    [(1, 97, None, 1.0), (5, 1000, None, 0.7), (4, 777, 700, 1.3), (3, 515, 513, 1.0), (2, 300, 1, 0.5)],
)
def test_matches_fp64_reference(n, v, limit, temperature, dtype):
    logits, targets, g_lp, g_h = make_case(n, v, limit, dtype)
    (logp, entropy, grad), (logp64, entropy64, grad64) = run_both(logits, targets, temperature, limit, g_lp, g_h)
    assert logp.dtype == entropy.dtype == torch.float32 and grad.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    assert_close(logp, logp64, atol, rtol, "logp")
    assert_close(entropy, entropy64, atol, rtol, "entropy")
    assert_close(grad, grad64, *GRAD_TOLERANCES[dtype], "dlogits")
    if limit is not None:
        assert (grad[:, limit:] == 0).all(), "padded ids must get exactly zero gradient"
    assert (logp <= 0).all() and (entropy >= -1e-6).all()


def test_one_block_wider_than_vocab(monkeypatch):
    """The production block (4096 columns) on a 1000-wide vocab: one mostly-masked block per row."""
    monkeypatch.setattr(le, "BLOCK_V", 4096)
    logits, targets, g_lp, g_h = make_case(3, 1000, 999, torch.float32, seed=1)
    (logp, entropy, grad), (logp64, entropy64, grad64) = run_both(logits, targets, 0.9, 999, g_lp, g_h)
    assert_close(logp, logp64, 2e-5, 2e-5, "logp")
    assert_close(entropy, entropy64, 2e-5, 2e-5, "entropy")
    assert_close(grad, grad64, 1e-6, 1e-5, "dlogits")


def test_qwen_vocab_production_block(monkeypatch):
    """Qwen2.5's padded LM head (151,936 rows, 151,665 valid ids) in bf16 with the production block size."""
    monkeypatch.setattr(le, "BLOCK_V", 4096)
    logits, targets, g_lp, g_h = make_case(2, 151936, 151665, torch.bfloat16, seed=9)
    targets[1] = 151664  # the last valid id
    (logp, entropy, grad), (logp64, entropy64, grad64) = run_both(logits, targets, 0.7, 151665, g_lp, g_h)
    assert_close(logp, logp64, 1e-4, 2e-5, "logp")
    assert_close(entropy, entropy64, 1e-4, 2e-5, "entropy")
    assert_close(grad, grad64, *GRAD_TOLERANCES[torch.bfloat16], "dlogits")
    assert (grad[:, 151665:] == 0).all()


def test_empty_batch_and_int32_targets():
    logp, entropy = logprob_entropy(
        torch.randn(0, 50, device=DEVICE), torch.zeros(0, dtype=torch.int32), use_triton=True
    )
    assert logp.shape == entropy.shape == (0,)
    logits, targets, _, _ = make_case(3, 200, None, torch.float32, seed=10)
    logp, _ = logprob_entropy(logits.to(DEVICE), targets.int().to(DEVICE), use_triton=True)
    assert_close(logp, logprob_entropy_ref(logits.double(), targets)[0], 2e-5, 2e-5, "logp")


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_bf16_no_worse_than_torch_bf16(temperature):
    """In bf16 the kernel must be no further from fp64 than PyTorch's own bf16 computation (values and grads)."""
    logits, targets, g_lp, g_h = make_case(6, 1001, 1000, torch.bfloat16, seed=2)
    (logp, entropy, grad), (logp64, entropy64, grad64) = run_both(logits, targets, temperature, 1000, g_lp, g_h)
    x = logits.detach().requires_grad_()  # PyTorch computing in bf16 throughout, as an eager trainer would
    logp_all = torch.log_softmax(x[:, :1000] / temperature, dim=-1)  # (N, V') bf16
    logp_t = logp_all.gather(-1, targets[:, None]).squeeze(-1)
    entropy_t = -(logp_all.exp() * logp_all).sum(-1)
    ((logp_t * g_lp.bfloat16()).sum() + (entropy_t * g_h.bfloat16()).sum()).backward()
    for name, ours, torch_bf16, exact in [
        ("logp", logp, logp_t, logp64),
        ("entropy", entropy, entropy_t, entropy64),
        ("dlogits", grad, x.grad, grad64),
    ]:
        err_ours = (ours.double() - exact).abs().max().item()
        err_torch = (torch_bf16.double() - exact).abs().max().item()
        assert err_ours <= err_torch, f"{name}: kernel error {err_ours:.3g} > torch bf16 error {err_torch:.3g}"


def test_hand_computed():
    """Two ids with logits (0, log 3): p = (1/4, 3/4); and a uniform row over 5 valid ids of 8 (padding ignored)."""
    logits = torch.tensor([[0.0, math.log(3.0), -50.0], [2.0, 2.0, 7.0]])  # (2, 3); row 2's third id is padding
    logp, entropy = logprob_entropy(
        logits.to(DEVICE), torch.tensor([1, 0], device=DEVICE), vocab_limit=2, use_triton=True
    )
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(logp.cpu(), torch.tensor([math.log(0.75), -math.log(2.0)]))
    torch.testing.assert_close(entropy.cpu(), torch.tensor([h1, math.log(2.0)]))
    logits = torch.full((1, 8), 3.0)
    logp, entropy = logprob_entropy(logits.to(DEVICE), torch.tensor([4], device=DEVICE), 0.3, 5, use_triton=True)
    torch.testing.assert_close(logp.cpu(), torch.tensor([-math.log(5.0)]))
    torch.testing.assert_close(entropy.cpu(), torch.tensor([math.log(5.0)]))


def test_extreme_logits():
    """+-1e4 logits, all-equal rows and one-hot rows: finite, and within fp32 rounding of 1e4-sized numbers."""
    v = 300
    gen = torch.Generator().manual_seed(3)
    rows = [
        torch.full((v,), 1e4),  # all equal, large
        torch.full((v,), -1e4),  # all equal, very negative
        torch.where(torch.arange(v) == 7, 1e4, -1e4),  # one-hot
        torch.where(torch.rand(v, generator=gen) < 0.5, 1e4, -1e4),  # half the ids tie at the top
        torch.randn(v, generator=gen) * 1e4,  # spread over +-3e4
    ]
    logits = torch.stack(rows)  # (5, V)
    targets = torch.tensor([0, 299, 7, 100, 5])
    g_lp, g_h = torch.ones(5), torch.full((5,), 0.5)
    for temperature in (1.0, 0.7):
        (logp, entropy, grad), (logp64, entropy64, grad64) = run_both(logits, targets, temperature, None, g_lp, g_h)
        assert torch.isfinite(logp).all() and torch.isfinite(entropy).all() and torch.isfinite(grad).all()
        assert_close(logp, logp64, 5e-3, 1e-6, "logp")  # fp32 spacing at 1e4/0.7 is 1e-3
        assert_close(entropy, entropy64, 1e-5, 1e-5, "entropy")  # H = log l - b/l avoids cancelling 1e4s
        assert_close(grad, grad64, 1e-5, 1e-5, "dlogits")
        torch.testing.assert_close(entropy[:2], torch.full((2,), math.log(v)))


# ----------------------------------------------------------------------------------------------------------------
# gradient shortcuts: masked rows, unused outputs, zero entropy coefficient


@pytest.mark.parametrize("entropy_coef", [None, 0.0, 0.01])
def test_masked_rows_and_skipped_entropy_gradient(entropy_coef):
    """Rows with a zero loss mask get exactly zero gradient; an absent or zero entropy term changes nothing else."""
    logits, targets, _, _ = make_case(6, 400, 390, torch.float32, seed=4)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])  # (N,) e.g. padding tokens of a response batch
    grads = []
    for x, use_triton in ((logits.clone(), True), (logits.double(), False)):
        x = x.to(DEVICE).requires_grad_()
        logp, entropy = logprob_entropy(x, targets.to(DEVICE), 0.8, 390, use_triton=use_triton)
        loss = -(logp * mask.to(DEVICE, logp.dtype)).sum()
        if entropy_coef is not None:
            loss = loss - entropy_coef * (entropy * mask.to(DEVICE, logp.dtype)).sum()
        loss.backward()
        grads.append(x.grad.cpu())
    assert (grads[0][mask == 0] == 0).all() and torch.isfinite(grads[0]).all()
    assert_close(grads[0], grads[1], 1e-6, 1e-5, "dlogits")


def test_entropy_only_gradient():
    logits, targets, _, g_h = make_case(3, 333, None, torch.float32, seed=5)
    grads = []
    for x, use_triton in ((logits.clone(), True), (logits.double(), False)):
        x = x.to(DEVICE).requires_grad_()
        _, entropy = logprob_entropy(x, targets.to(DEVICE), 1.1, use_triton=use_triton)
        (entropy * g_h.to(DEVICE, entropy.dtype)).sum().backward()
        grads.append(x.grad.cpu())
    assert_close(grads[0], grads[1], 1e-6, 1e-5, "dlogits")


def test_strided_slice_is_read_in_place(monkeypatch):
    """logits[:, :-1] of a (B, T+1, V) tensor (how a trainer drops the last position): read in place, no copy."""
    seen = []  # data pointers of the logits that reach the kernel wrapper
    forward = le._forward
    monkeypatch.setattr(le, "_forward", lambda logits, *args: seen.append(logits.data_ptr()) or forward(logits, *args))
    logits, targets, g_lp, _ = make_case(2 * 4, 203, 200, torch.float32, seed=11)
    full = logits.view(2, 4, 203)  # (B, T+1, V)
    sliced, targets = full[:, :-1], targets.view(2, 4)[:, 1:]  # (B, T, V) strides (4V, V, 1), (B, T)
    assert not sliced.is_contiguous()
    grads = []
    for x, use_triton in ((full.clone(), True), (full.double(), False)):
        x = x.to(DEVICE).requires_grad_()
        logp, entropy = logprob_entropy(x[:, :-1], targets.to(DEVICE), 0.9, 200, use_triton=use_triton)
        assert logp.shape == (2, 3) and (not use_triton or seen == [x.data_ptr()])
        ((logp * g_lp[:6].view(2, 3).to(DEVICE, logp.dtype)).sum() + entropy.sum()).backward()
        grads.append((logp.detach().cpu(), entropy.detach().cpu(), x.grad.cpu()))
    for name, a, b in zip(["logp", "entropy", "dlogits"], *grads):
        assert_close(a, b, 2e-5, 2e-5, name)
    assert (grads[0][2][:, -1] == 0).all()


def test_leading_shape_and_cpu_dispatch():
    """(B, T, V) logits give (B, T) outputs; CPU tensors without use_triton take the PyTorch reference."""
    logits, targets, _, _ = make_case(6, 129, None, torch.float32, seed=6)
    logits, targets = logits.view(2, 3, 129).to(DEVICE), targets.view(2, 3).to(DEVICE)
    logp, entropy = logprob_entropy(logits, targets, use_triton=True)
    assert logp.shape == entropy.shape == (2, 3)
    ref_logp, ref_entropy = logprob_entropy_ref(logits.double(), targets)
    assert_close(logp, ref_logp, 2e-5, 2e-5, "logp")
    assert_close(entropy, ref_entropy, 2e-5, 2e-5, "entropy")
    cpu_logp, _ = logprob_entropy(logits.cpu(), targets.cpu())
    assert torch.equal(cpu_logp, logprob_entropy_ref(logits.cpu(), targets.cpu())[0])


# ----------------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("bad", [700, 777, -1])
def test_out_of_range_target_is_an_error(bad):
    logits, targets, _, _ = make_case(4, 777, 700, torch.float32)
    targets[2] = bad
    for use_triton in (True, False):
        with pytest.raises(ValueError, match=rf"target id {bad} .*vocab_limit=700"):
            logprob_entropy(logits, targets, vocab_limit=700, use_triton=use_triton)
    with pytest.raises(ValueError, match=rf"target id {bad}"):
        logprob_entropy_from_hidden(torch.randn(4, 8), torch.randn(777, 8), targets, vocab_limit=700)


def test_other_bad_arguments():
    logits, targets = torch.randn(3, 50), torch.tensor([1, 2, 3])
    for kwargs, pattern in [
        (dict(temperature=0.0), "temperature"),
        (dict(vocab_limit=51), "vocab_limit=51"),
        (dict(vocab_limit=0), "vocab_limit=0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            logprob_entropy(logits, targets, **kwargs)
    with pytest.raises(ValueError, match="targets have shape"):
        logprob_entropy(logits, targets[:2])
    with pytest.raises(ValueError, match="integer token ids"):
        logprob_entropy(logits, targets.float())
    with pytest.raises(ValueError, match="do not match"):
        logprob_entropy_from_hidden(torch.randn(3, 8), torch.randn(50, 9), targets)


# ----------------------------------------------------------------------------------------------------------------
# chunked LM-head path from hidden states


def hidden_case(n, h, v, dtype, seed=7):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)  # (N, H)
    weight = (torch.randn(v, h, generator=gen) / math.sqrt(h) * 2).to(dtype)  # (V, H)
    targets = torch.randint(0, v - 3, (n,), generator=gen)  # (N,)
    g_lp, g_h = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    return hidden, weight, targets, g_lp, g_h


def hidden_grads(fn, hidden, weight, targets, g_lp, g_h, **kwargs):
    """(logp, entropy, dhidden, dweight) of sum(g_lp logp + g_h H) through fn(hidden, weight, targets, 0.8, V-3)."""
    hidden = hidden.detach().to(DEVICE).requires_grad_()
    weight = weight.detach().to(DEVICE).requires_grad_()
    logp, entropy = fn(hidden, weight, targets.to(DEVICE), 0.8, weight.shape[0] - 3, **kwargs)
    ((logp * g_lp.to(DEVICE, logp.dtype)).sum() + (entropy * g_h.to(DEVICE, logp.dtype)).sum()).backward()
    return [t.detach().cpu() for t in (logp, entropy, hidden.grad, weight.grad)]


def unchunked(hidden, weight, targets, temperature, limit):
    return logprob_entropy(hidden @ weight.T, targets, temperature, limit, use_triton=True)


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 2e-5, 2e-5), (torch.bfloat16, 5e-2, 2e-2)])
def test_hidden_path_chunked(dtype, atol, rtol):
    """7 rows in chunks of 3 (the last one partial) vs the unchunked kernel path and vs float64.

    bf16 tolerances are those of bf16 matmuls (the logits and dhidden are rounded to bf16; dweight is summed over
    chunks in fp32, the unchunked path's matmul rounds once: they differ by about one bf16 step).
    """
    hidden, weight, targets, g_lp, g_h = hidden_case(7, 24, 301, dtype)
    chunked = hidden_grads(
        logprob_entropy_from_hidden, hidden, weight, targets, g_lp, g_h, chunk_size=3, use_triton=True
    )  # fmt: skip
    whole = hidden_grads(unchunked, hidden, weight, targets, g_lp, g_h)
    exact = hidden_grads(logprob_entropy_from_hidden_ref, hidden.double(), weight.double(), targets, g_lp, g_h)
    for name, a, b, c in zip(["logp", "entropy", "dhidden", "dweight"], chunked, whole, exact):
        assert a.dtype == b.dtype
        assert_close(a, b, atol, rtol, f"{name} chunked vs unchunked")
        assert_close(a, c, atol, rtol, f"{name} chunked vs float64")


class MatmulDtypes(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the input dtypes of every matrix product run while it is active."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.matmul):
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("use_triton", [True, False])
def test_hidden_path_lm_head_runs_in_the_autocast_dtype(use_triton):
    """Under bf16 autocast with fp32 hidden states and an fp32 head (fp32 master weights: what the trainer feeds),
    every LM-head product, forward and backward, multiplies bf16 by bf16, as nn.Linear's logits path does; the
    gradients still reach the fp32 tensors in fp32. Before the fix the chunked path ran them in fp32."""
    hidden, weight, targets, g_lp, g_h = hidden_case(7, 24, 301, torch.float32)
    hidden, weight = hidden.to(DEVICE).requires_grad_(), weight.to(DEVICE).requires_grad_()
    with MatmulDtypes() as record, torch.autocast(DEVICE, dtype=torch.bfloat16):
        logp, entropy = logprob_entropy_from_hidden(
            hidden, weight, targets.to(DEVICE), 0.8, 298, chunk_size=3, use_triton=use_triton
        )  # fmt: skip
        ((logp * g_lp.to(DEVICE)).sum() + (entropy * g_h.to(DEVICE)).sum()).backward()
    n_chunks = 3 if use_triton else 1
    assert len(record.seen) >= n_chunks * (2 if use_triton else 1) + 2, record.seen  # forward, backward products
    assert all(dtypes == (torch.bfloat16, torch.bfloat16) for dtypes in record.seen), record.seen
    assert logp.dtype == entropy.dtype == torch.float32
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    exact = hidden_grads(logprob_entropy_from_hidden_ref, hidden.double(), weight.double(), targets, g_lp, g_h)
    for name, a, b in zip(["dhidden", "dweight"], [hidden.grad.cpu(), weight.grad.cpu()], exact[2:]):
        assert_close(a, b, 5e-2, 5e-2, f"{name} under autocast vs float64")  # bf16 logits: bf16 tolerances


def test_hidden_path_weight_tied_to_embeddings():
    """The LM-head weight is also the input embedding: both gradients reach it and add up."""
    v, h, n = 211, 12, 6
    gen = torch.Generator().manual_seed(8)
    emb0 = torch.randn(v, h, generator=gen) * 0.5  # (V, H) tied embedding / LM head
    mix0 = torch.randn(h, h, generator=gen) / math.sqrt(h)  # (H, H) a stand-in for the transformer
    ids, targets = torch.randint(0, v, (n,), generator=gen), torch.randint(0, v, (n,), generator=gen)
    grads = []
    for dtype, use_triton in ((torch.float32, True), (torch.float64, False)):
        emb = emb0.to(DEVICE, dtype).detach().requires_grad_()
        mix = mix0.to(DEVICE, dtype).detach().requires_grad_()
        hidden = torch.tanh(emb[ids.to(DEVICE)] @ mix)  # (N, H)
        logp, entropy = logprob_entropy_from_hidden(
            hidden, emb, targets.to(DEVICE), 1.2, chunk_size=4, use_triton=use_triton
        )  # fmt: skip
        (logp.sum() - 0.1 * entropy.sum()).backward()
        grads.append((emb.grad.cpu(), mix.grad.cpu()))
    assert_close(grads[0][0], grads[1][0], 2e-5, 2e-5, "tied weight grad")
    assert_close(grads[0][1], grads[1][1], 2e-5, 2e-5, "upstream grad")


# ----------------------------------------------------------------------------------------------------------------
# the kernels compile for an H100 (sm_90) even on this CPU-only machine


def test_kernels_compile_for_sm90_with_wide_loads():
    """Compile forward and both backward variants to PTX and a cubin for sm_90 (H100), bf16 logits, specialised as a
    launch on Qwen2.5's padded vocabulary is (bench/kernel_loads.py); the logits are read with 16-byte loads
    (ld.global.v4: 8 bf16 each), not 2-byte ones (ld.global.b16), whatever the odd vocab_limit. A mask on vocab_limit
    instead of the row length V gave 16 ld.global.b16 per thread and block and no v4 load: this test fails then.

    Runs in a fresh process: this one may run Triton in interpreter mode, which cannot compile.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(REPO / "bench" / "kernel_loads.py"), "--arch", "90"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-4000:]  # 1: compiled, but some loads are narrow (asserted below)
    records = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [(r["kernel"], r["constexprs"].get("HAS_GRAD_ENTROPY")) for r in records] == [
        ("_logprob_entropy_fwd_kernel", None), ("_logprob_entropy_bwd_kernel", True),
        ("_logprob_entropy_bwd_kernel", False),
    ]  # fmt: skip
    for r in records:
        what = f"{r['kernel']} {r['constexprs']}: {r['loads']}"
        assert r["target"] == "sm_90a" and r["cubin_bytes"] > 1000, what
        assert r["loads"].get("ld.global.v4.b32", 0) >= 2, f"no 16-byte logits loads: {what}"
        assert r["loads"].get("ld.global.b16", 0) <= 1, f"2-byte logits loads: {what}"  # the forward's s_y only
