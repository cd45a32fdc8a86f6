"""
Load widths of the log-prob + entropy kernels as compiled for an NVIDIA GPU, from their PTX: the forward and both
backward variants, bf16 logits, specialised as a launch on Qwen2.5's logits specialises them (Triton marks integer
arguments that are multiples of 16 and 16-byte-aligned pointers: V = 151,936 and the strides of (B, T+1, V) logits
are; vocab_limit = 151,665 is odd and is not). Compiles with triton.compile(ASTSource(...), target=GPUTarget(...)),
which needs no GPU.

A logits load should be 16 bytes wide (ld.global.v4.b32: 8 bf16 per thread); 2-byte loads (ld.global.b16) mean the
mask defeated Triton's alignment analysis. The forward keeps one 2-byte load: the target logit s_y.

    python bench/kernel_loads.py              # sm_90 (H100 / H200); exit 1 if a kernel has 2-byte logits loads
    python bench/kernel_loads.py --arch 100   # another architecture
"""

import argparse
import collections
import importlib
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TYPES = {"logits_ptr": "*bf16", "grad_logits_ptr": "*bf16", "targets_ptr": "*i64", "stride_b": "i64",
         "stride_t": "i64", "n_t": "i32", "vocab_size": "i32", "vocab_limit": "i32", "inv_temperature": "fp32",
         "HAS_GRAD_ENTROPY": "constexpr", "BLOCK_V": "constexpr"}  # fmt: skip  (other *_ptr: fp32 row values)
ALIGNED = {"logits_ptr", "grad_logits_ptr", "targets_ptr", "stride_b", "stride_t", "vocab_size"}  # multiples of 16
VARIANTS = [("_logprob_entropy_fwd_kernel", {}), ("_logprob_entropy_bwd_kernel", {"HAS_GRAD_ENTROPY": True}),
            ("_logprob_entropy_bwd_kernel", {"HAS_GRAD_ENTROPY": False})]  # fmt: skip


def load_widths(arch: int = 90) -> list[dict]:
    """One record per kernel variant: name, constexprs, the PTX target and the count of each ld.global form."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    le = importlib.import_module("mathrl.kernels.logprob_entropy")
    records = []
    for name, extra in VARIANTS:
        fn = getattr(le, name)
        signature = {a: TYPES.get(a, "*fp32") for a in fn.arg_names}
        constexprs = {"BLOCK_V": le.BLOCK_V, **extra}
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in fn.arg_names if a in ALIGNED}
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": le.NUM_WARPS})
        ptx = compiled.asm["ptx"]
        target = re.search(r"\.target (\S+)", ptx)
        loads = collections.Counter(re.findall(r"ld\.global[.a-z0-9]*", ptx))
        records.append({"kernel": name, "constexprs": constexprs, "target": target and target[1],
                        "cubin_bytes": len(compiled.asm.get("cubin", b"")), "loads": dict(loads)})  # fmt: skip
    return records


def wide(record: dict) -> bool:
    """The logits are read with 16-byte loads, and at most one 2-byte load is left (the forward's s_y)."""
    loads = record["loads"]
    return loads.get("ld.global.v4.b32", 0) >= 2 and loads.get("ld.global.b16", 0) <= 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100 / H200)")
    args = parser.parse_args()
    records = load_widths(args.arch)
    for r in records:
        r["wide"] = wide(r)
        print(json.dumps(r), flush=True)
    sys.exit(0 if all(r["wide"] for r in records) else 1)


if __name__ == "__main__":
    main()
