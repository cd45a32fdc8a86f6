#!/usr/bin/env bash
# The prepared GPU check (BENCHMARKS.md sections 1 and 2), for a bare H100 / H200 machine with only torch, Triton and
# transformers installed: no vLLM, no shared/ folder, nothing of this repository installed. From the repository root:
#
#     bash bench/gpu_check.sh [OUT]          # OUT: results folder, default bench/gpu_check/<UTC date and time>
#
# Under 10 minutes in all (stage limits 60 + 300 + 200 s), every result in OUT:
#   env.txt           device, driver, torch / Triton / transformers versions, the command
#   kernel_loads.txt  load widths of the kernels compiled for this GPU's architecture (bench/kernel_loads.py)
#   kernels.md        the kernel table at the real shapes: bf16 logits of V = 151,936 (151,665 valid ids), N = 4,096,
#                     8,192 and 32,768, and the hidden-state path (H = 1,536, fp32 inputs under bf16 autocast) at N =
#                     8,192 and 32,768, against eager and torch.compile (bench/bench_kernels.py; kernels.log has
#                     the rows as they complete, should the stage hit its limit)
#   train_step.*      one training step of the exact Qwen2.5-Math-1.5B shape (config built in code, random init),
#                     the paper preset's settings (bf16 autocast, grad checkpointing, --logp-from-hidden), 8 prompts x
#                     8 samples of 256 + 512 tokens in 4 mini-batches, plus one transformers-engine generate() of
#                     32 sequences x 128 tokens (bench/bench_train_step.py)
#   status.txt        each stage's exit code (124: over its time limit)
# Whoever runs it commits OUT with the command. Without CUDA it stops after the PTX stage with a clear message.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench/gpu_check/$(date -u +%Y%m%d-%H%M)}
PY=${PYTHON:-$(command -v python || command -v python3)}
mkdir -p "$OUT"
: > "$OUT/status.txt"

stage() {  # stage NAME LIMIT_SECONDS LOG COMMAND...: run with a time limit, record the exit code, never stop the script
    local name=$1 limit=$2 log=$3
    shift 3
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" > "$log" 2>&1
    local rc=$?
    echo "$name $rc" >> "$OUT/status.txt"
    tail -n 25 "$log"
    return $rc
}

{
    echo "command: bash bench/gpu_check.sh $*"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "git: $(git rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
    if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    else echo "nvidia-smi: not available"; fi
    "$PY" -c "import platform, torch, triton, transformers
print('python', platform.python_version(), '| torch', torch.__version__, '(CUDA', torch.version.cuda, ') | triton',
      triton.__version__, '| transformers', transformers.__version__)
print('cuda available:', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

ARCH=$("$PY" -c "import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
print(c[0] * 10 + c[1])" 2>/dev/null || echo 90)
stage kernel_loads 60 "$OUT/kernel_loads.txt" "$PY" bench/kernel_loads.py --arch "$ARCH"

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): the kernel table and the training step" \
         "time a GPU and cannot run. The load widths above need none (results in $OUT)." | tee -a "$OUT/status.txt"
    exit 2
fi

stage kernels 300 "$OUT/kernels.log" "$PY" bench/bench_kernels.py --temperatures 1.0 --out "$OUT/kernels.md"
stage train_step 200 "$OUT/train_step.log" "$PY" bench/bench_train_step.py --model-config qwen2.5-math-1.5b \
    --grad-ckpt --logp-from-hidden --prompts 8 --group-size 8 --mini-batch-prompts 2 --micro-batch-size 8 \
    --prompt-len 256 --response-len 512 --steps 1 --warmup-steps 1 --gen-prompts 4 --gen-new-tokens 128 \
    --find-max-batch --json-out "$OUT/train_step.jsonl"
echo "== done: $OUT"
cat "$OUT/status.txt"
