"""Benchmark of the fused log-prob + entropy kernels (kernels/), per BENCHMARKS.md section 1.

Compares, in one process on the same inputs, each after warm-up, the median of --reps timed calls:
  eager     PyTorch: log_softmax(logits.float() / T) + gather, entropy = -(p * logp).sum(-1)
  compiled  the same function under torch.compile
  triton    kernels.logprob_entropy (one streaming pass per row) / logprob_entropy_from_hidden (chunked LM head)
  liger     Liger-Kernel's closest op when importable: cross-entropy with reduction="none" (log-prob only, no
            entropy; T applied by dividing the logits first), fused linear cross-entropy for the hidden path
for the forward and the forward + backward (loss = sum(logp) + sum(entropy)), on what the trainer feeds them:
bf16 logits with the padded vocabulary masked (--vocab-limit, Qwen2.5: 151,665 ids of 151,936 rows), and for the
hidden path fp32 hidden states and an fp32 LM head (fp32 master weights) under bf16 autocast. Columns: time, effective
bandwidth (logits bytes read, plus read and written again in backward, / time) as a fraction of the measured
device-to-device copy bandwidth, and peak extra memory (max_memory_allocated minus the inputs).

GPU (writes the rows for bench/RESULTS.md):  python bench/bench_kernels.py --out bench/RESULTS.md
Block-size sweep of the kernel (GPU):         python bench/bench_kernels.py --sweep
CPU smoke run (small shapes; the kernel runs in the Triton interpreter, so only the reference rows are timings):
                                              python bench/bench_kernels.py
"""

import argparse
import datetime
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: run the kernel on the CPU
    torch.set_num_threads(1)  # a shared, busy CPU: one thread gives steadier ratios than two that wait on each other
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mathrl.kernels import logprob_entropy, logprob_entropy_from_hidden  # noqa: E402

le = importlib.import_module("mathrl.kernels.logprob_entropy")  # the module (its block size), not the function
DEVICE = "cuda" if CUDA else "cpu"
CHECKS = []  # kernel vs eager agreement lines, printed under the table


def eager(logits, targets, temperature, vocab_limit=None):
    """BENCHMARKS.md's eager reference: fp32 log-softmax, gather, entropy = -sum p log p (padded ids sliced off)."""
    logp_all = torch.log_softmax(logits[:, :vocab_limit].float() / temperature, dim=-1)  # (N, V') fp32
    logp = logp_all.gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def eager_hidden(hidden, weight, targets, temperature, vocab_limit=None):
    return eager(hidden @ weight.T, targets, temperature, vocab_limit)  # (N, V) logits materialised whole


def methods(path, compile_ok, vocab_limit=None):
    """name -> fn(inputs, targets, T) -> (logp, entropy or None); inputs = (logits,) or (hidden, weight)."""
    ref = eager if path == "logits" else eager_hidden
    ours = logprob_entropy if path == "logits" else logprob_entropy_from_hidden
    out = {"eager": lambda x, y, t: ref(*x, y, t, vocab_limit),
           "triton": lambda x, y, t: ours(*x, y, t, vocab_limit=vocab_limit, use_triton=True)}  # fmt: skip
    if compile_ok:
        compiled = torch.compile(ref, dynamic=False)
        out["compiled"] = lambda x, y, t: compiled(*x, y, t, vocab_limit)
    try:  # optional column; Liger returns the loss -log p_y per token, so the sign is flipped
        from liger_kernel.transformers.functional import liger_cross_entropy, liger_fused_linear_cross_entropy
    except ImportError:
        return out

    def scaled(x, t):  # Liger takes no temperature: divide first (one more pass when T != 1)
        return x if t == 1 else x / t

    if CUDA and path == "logits":
        ce = liger_cross_entropy
        out["liger (logp only)"] = lambda x, y, t: (-ce(scaled(x[0], t), y, reduction="none"), None)
    elif CUDA:
        linear_ce = liger_fused_linear_cross_entropy
        out["liger (logp only)"] = lambda x, y, t: (-linear_ce(scaled(x[0], t), x[1], y, reduction="none"), None)
    return out


def sync():
    if CUDA:
        torch.cuda.synchronize()


def median_ms(step, reps, warmup):
    """Median wall time of `step` in ms (CUDA events on a GPU)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        if CUDA:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mib(step):
    """Peak memory allocated by one `step` above what was allocated before it (the inputs), in MiB."""
    if not CUDA:
        return float("nan")
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbs():
    """Device-to-device copy bandwidth (bytes read + bytes written) / time, in GB/s."""
    if not CUDA:
        return float("nan")
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), reps=20, warmup=3)
    return 2 * src.numel() / ms / 1e6


def make_step(fn, inputs, targets, temperature, backward, autocast=False):
    """One call (autocast: under bf16 autocast, as the trainer's forward); with backward, also loss.backward() and
    drop the gradients again."""

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
            logp, entropy = fn(inputs, targets, temperature)
        if backward:
            loss = logp.sum() + (entropy.sum() if entropy is not None else 0.0)
            loss.backward()
            for t in inputs:
                t.grad = None

    return step


def bench_case(path, n, vocab, hidden_size, temperature, args, bw_gbs):
    """Rows (one per method) for one shape: forward and forward + backward time, bandwidth fraction, memory.
    logits: bf16 (N, V), as the LM head returns them under autocast; hidden: fp32 (N, H) hidden states and (V, H)
    head, as the trainer's fp32 master weights hand them over, under bf16 autocast."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    targets = torch.randint(0, args.vocab_limit, (n,), device=DEVICE, generator=gen)
    if path == "logits":
        base = torch.randn(n, vocab, device=DEVICE, dtype=torch.bfloat16, generator=gen) * 2  # (N, V)
        logits_bytes = base.numel() * base.element_size()
    else:
        hidden = torch.randn(n, hidden_size, device=DEVICE, generator=gen)  # (N, H) fp32
        weight = torch.randn(vocab, hidden_size, device=DEVICE, generator=gen) / hidden_size**0.5  # (V, H) fp32
        logits_bytes = None  # a matmul-bound path: no bandwidth column
    fns = methods(path, not args.no_compile, args.vocab_limit)
    if path == "logits":  # the first runs on real hardware: check the kernel against eager on 1024 rows
        few = ((base[:1024],), targets[:1024], temperature)
        with torch.no_grad():
            diffs = [(a - b).abs().max().item() for a, b in zip(fns["eager"](*few), fns["triton"](*few))]
        CHECKS.append(
            f"- check N={n}, T={temperature}: max |triton - eager| logp {diffs[0]:.1e}, entropy {diffs[1]:.1e}"
        )
        print(CHECKS[-1], file=sys.stderr)
    rows = []
    torch._dynamo.reset()  # compile afresh for this shape and temperature: the compiled column's best case
    for name, fn in fns.items():
        label = name if CUDA or name != "triton" else "triton (interpreter, not a timing)"
        row = {"path": path, "N": n, "T": temperature, "method": label}
        for mode, backward in (("fwd", False), ("fwd+bwd", True)):
            if path == "logits":  # Liger writes its gradient into its input: give each method its own copy
                inputs = (base.clone().requires_grad_(backward),)
            else:
                inputs = (hidden.clone().requires_grad_(backward), weight.clone().requires_grad_(backward))
            step = make_step(fn, inputs, targets, temperature, backward, autocast=path != "logits")
            try:
                ms = median_ms(step, args.reps, args.warmup)
                row[f"{mode} ms"] = ms
                row[f"{mode} mem"] = peak_extra_mib(step)
                moved = None if logits_bytes is None else logits_bytes * (3 if backward else 1)
                row[f"{mode} bw"] = float("nan") if moved is None else moved / (ms * 1e-3) / (bw_gbs * 1e9)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as error:  # compiled code may wrap the OOM
                if "out of memory" not in str(error):
                    raise
                row[f"{mode} ms"] = row[f"{mode} mem"] = row[f"{mode} bw"] = "OOM"
            del inputs, step
            if CUDA:
                torch.cuda.empty_cache()
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def fmt(value, spec):
    if isinstance(value, str):
        return value
    return "-" if value != value else format(value, spec)  # nan -> "-"


HEADER = (
    "| path | N | T | method | fwd ms | fwd BW frac | fwd peak extra MiB | fwd+bwd ms | fwd+bwd BW frac "
    "| fwd+bwd peak extra MiB |\n|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r):
    cells = [r["path"], str(r["N"]), str(r["T"]), r["method"]]
    for mode in ("fwd", "fwd+bwd"):
        cells += [fmt(r[f"{mode} ms"], ".3f"), fmt(r[f"{mode} bw"], ".2f"), fmt(r[f"{mode} mem"], ".0f")]
    return "| " + " | ".join(cells) + " |"


def environment_lines(bw_gbs, args):
    import triton

    if CUDA:
        props = torch.cuda.get_device_properties(0)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            driver = subprocess.run(query, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            driver = "unknown"
        device = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), driver {driver}, CUDA {torch.version.cuda}"
    else:
        device = f"CPU only ({platform.processor() or platform.machine()}, {os.cpu_count()} cores): Triton interpreter"
    return [
        f"- device: {device}",
        f"- torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- measured copy bandwidth: {fmt(bw_gbs, '.0f')} GB/s; kernel BLOCK_V={le.BLOCK_V}, num_warps={le.NUM_WARPS}",
        f"- vocabulary: {args.vocab} rows, vocab_limit {args.vocab_limit} (ids above it are padding, masked)",
    ]


def goal_lines(rows, bw_gbs, vocab):
    """The issue's goals at N = 8192, T = 1.0 (GPU only)."""
    pick = {r["method"]: r for r in rows if r["path"] == "logits" and r["N"] == 8192 and r["T"] == 1.0}
    if not CUDA or not {"eager", "triton"} <= set(pick) or isinstance(pick["triton"]["fwd ms"], str):
        return []
    ours, limit_ms = pick["triton"], 8192 * vocab * 2 / (bw_gbs * 1e9) * 1e3
    lines = [f"- forward {ours['fwd ms']:.3f} ms vs bandwidth limit {limit_ms:.3f} ms (goal: within 15%)"]
    for other in ("eager", "compiled"):
        if other in pick and not isinstance(pick[other]["fwd ms"], str):
            lines.append(f"- forward speed-up over {other}: {pick[other]['fwd ms'] / ours['fwd ms']:.1f}x")
    lines.append(f"- forward+backward / forward: {ours['fwd+bwd ms'] / ours['fwd ms']:.2f} (goal: <= 3)")
    return lines


def sweep(args):
    """Forward and forward+backward time of the kernel over block sizes and warp counts (GPU)."""
    n, vocab = 8192, args.vocab
    logits = torch.randn(n, vocab, device=DEVICE, dtype=torch.bfloat16).requires_grad_()
    targets = torch.randint(0, args.vocab_limit, (n,), device=DEVICE)
    fn = methods("logits", False, args.vocab_limit)["triton"]
    print("| BLOCK_V | num_warps | fwd ms | fwd+bwd ms |\n|---|---|---|---|")
    for block in (1024, 2048, 4096, 8192, 16384):
        for warps in (4, 8, 16, 32):
            le.BLOCK_V, le.NUM_WARPS = block, warps
            fwd = median_ms(make_step(fn, (logits.detach(),), targets, 1.0, False), args.reps, args.warmup)
            both = median_ms(make_step(fn, (logits,), targets, 1.0, True), args.reps, args.warmup)
            print(f"| {block} | {warps} | {fwd:.3f} | {both:.3f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", help="tokens for the logits path (GPU default 4096 8192 32768)")
    parser.add_argument("--hidden-n", type=int, nargs="+", help="tokens for the hidden path (GPU default 8192 32768)")
    parser.add_argument("--vocab", type=int, help="vocabulary rows (GPU default 151936, Qwen2.5)")
    parser.add_argument("--vocab-limit", type=int, help="valid ids, the rest padding (GPU default 151665, Qwen2.5)")
    parser.add_argument("--hidden-size", type=int, default=1536, help="H of the hidden path (Qwen2.5-1.5B: 1536)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.7])
    parser.add_argument("--reps", type=int, help="timed calls per measurement (GPU default 20)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block-v", type=int, help="override the kernel's BLOCK_V")
    parser.add_argument("--num-warps", type=int, help="override the kernel's num_warps")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile column")
    parser.add_argument("--sweep", action="store_true", help="only sweep the kernel's block size and warps (GPU)")
    parser.add_argument("--out", type=Path, help="append the environment and the table to this markdown file")
    args = parser.parse_args()
    # CPU defaults stay small: the interpreter executes the kernel in numpy, one program at a time
    args.n = args.n or ([4096, 8192, 32768] if CUDA else [8])
    args.hidden_n = args.hidden_n or ([8192, 32768] if CUDA else [8])
    args.vocab = args.vocab or (151936 if CUDA else 32008)
    args.vocab_limit = args.vocab_limit or (151665 if args.vocab == 151936 else args.vocab - 3)  # odd, as Qwen's
    args.reps = args.reps or (20 if CUDA else 3)
    if not CUDA:
        args.hidden_size = min(args.hidden_size, 64)
    le.BLOCK_V = args.block_v or le.BLOCK_V
    le.NUM_WARPS = args.num_warps or le.NUM_WARPS
    if args.sweep:
        return sweep(args) if CUDA else parser.error("--sweep times the compiled kernel: it needs a CUDA device")
    bw_gbs = copy_bandwidth_gbs()
    env = environment_lines(bw_gbs, args)
    print("\n".join(env) + "\n\n" + HEADER, flush=True)
    rows = []
    for temperature in args.temperatures:
        for n in args.n:
            rows += bench_case("logits", n, args.vocab, None, temperature, args, bw_gbs)
    for n in args.hidden_n:
        rows += bench_case(f"hidden H={args.hidden_size}", n, args.vocab, args.hidden_size, 1.0, args, bw_gbs)
    goals = goal_lines(rows, bw_gbs, args.vocab) + CHECKS
    print("\n" + "\n".join(goals))
    if args.out:
        table = "\n".join([HEADER] + [format_row(r) for r in rows])
        with open(args.out, "a") as f:
            title = f"V = {args.vocab} ({args.vocab_limit} valid), bf16 logits; hidden path fp32 under bf16 autocast"
            f.write(f"\n## Log-prob + entropy kernel, {title}\n\n" + "\n".join(env))
            f.write(f"\n\n{table}\n\n" + "\n".join(goals) + "\n")


if __name__ == "__main__":
    main()
