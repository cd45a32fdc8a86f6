"""Tests of bench/bench_train_step.py: the FLOP formula and parameter counts against hand-computed numbers, the OOM
retry, and one CPU run of main() at the tiny shape whose token counts must equal the batch arithmetic.

    .venv/bin/python -m pytest -q tests/test_bench_train_step.py
"""

import importlib.util
import json
import math

import pytest
import torch
from conftest import REPO, shared_path

spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "bench" / "bench_train_step.py")
bts = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bts)


def test_flops_per_sequence_hand_computed():
    # N_body 1000, N_head 500, L 2, H*Q 8, P 3, T 5 (S 8):
    # 6*1000*8 = 48,000 body + 6*500*5 = 15,000 LM head (response positions only) + 12*2*8*8*8 = 12,288 attention
    assert bts.flops_per_sequence(1000, 500, 2, 8, 3, 5) == 75_288
    assert bts.flops_per_sequence(1000, 500, 2, 8, 3, 5, backward=False) == 25_096  # a third: 2N fwd of 6N


def test_count_params_tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(**bts.TINY_MODEL))
    # per layer: q 64*64+64 = 4,160; k, v 64*32+32 = 2,080 each (2 kv heads x 16); o 64*64 = 4,096 (no bias);
    # MLP 3*64*128 = 24,576; 2 RMSNorms 128 -> 37,120; x 2 layers + final norm 64 = 74,304. Head 512*64 (tied).
    assert bts.count_params(model) == (74_304, 32_768)
    assert bts.attention_width(model.config) == 64


def test_real_shape_params_and_flops():
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = shared_path("qwen2.5-math-1.5b-tokenizer")
    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # synthetic ids come from the 151,665 tokenizer ids; generation's only stop token, LM-head row 151,935, is a
    # padded row the engine never samples, so every sequence runs to --gen-new-tokens
    assert bts.token_ids_below(model, tokenizer) == 151_665 < config.vocab_size - 1 == 151_935
    # per layer: q 1536^2+1536, k/v 1536*256+256 each, o 1536^2, MLP 3*1536*8960, norms 2*1536 = 46,797,824;
    # x 28 + final norm 1536 = 1,310,340,608 non-embedding; head 151,936*1536 = 233,373,696 (tied: 1.544B in all)
    n_body, n_head = bts.count_params(model)
    assert (n_body, n_head) == (1_310_340_608, 233_373_696)
    width = bts.attention_width(config)
    assert width == 1536  # 12 heads x 128
    # P 256 + T 3072 = S 3328: 6*N_body*S = 26,164,881,260,544; 6*N_head*T = 4,301,543,964,672;
    # 12*28*1536*S^2 = 5,716,064,600,064 -> 36,182,489,825,280 per sequence, 1.0872e10 per token
    flops = bts.flops_per_sequence(n_body, n_head, config.num_hidden_layers, width, 256, 3072)
    assert flops == 36_182_489_825_280
    assert flops / 3328 == pytest.approx(1.0872e10, rel=1e-4)


def test_peak_tflops_for_device_names():
    assert bts.peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert bts.peak_tflops_for("NVIDIA H200") == 989.4
    assert bts.peak_tflops_for("NVIDIA A100-SXM4-80GB") == 312.0
    assert bts.peak_tflops_for("NVIDIA H100 PCIe") is None  # a different peak: the flag is required
    assert bts.peak_tflops_for("NVIDIA L4") is None
    assert bts.mfu(1e15, 2.0, 1000.0) == pytest.approx(0.5)  # 0.5e15 FLOP/s of a 1e15 peak
    assert bts.mfu(1e15, 2.0, None) is None


def test_halve_until_fit():
    def run(size):
        if size > 3:
            raise torch.cuda.OutOfMemoryError(f"size {size}")
        return size * 10

    assert bts.halve_until_fit(run, 16, find_max=True) == (20, 2, [16, 8, 4])
    assert bts.halve_until_fit(run, 16, find_max=False) == (None, 16, [16])
    assert bts.halve_until_fit(run, 3, find_max=True) == (30, 3, [])


@pytest.mark.parametrize("extra", [["--gen-prompts", "2"], ["--grad-ckpt", "--logp-from-hidden"]])
def test_main_tiny_cpu(tmp_path, capsys, extra):
    out = tmp_path / "r.jsonl"
    argv = ["--tiny", "--device", "cpu", "--prompts", "4", "--group-size", "2", "--mini-batch-prompts", "2",
            "--micro-batch-size", "2", "--prompt-len", "6", "--response-len", "10", "--gen-new-tokens", "5",
            "--steps", "1", "--json-out", str(out), *extra]  # fmt: skip
    r = bts.main(argv)
    assert r["fit"] and r["sequences"] == 8 and r["mini_batch_seqs"] == 4 and r["micro_batch_size"] == 2
    assert r["train_tokens"] == 8 * (6 + 10)  # 4 prompts x 2 samples x (P + T)
    assert r["optimizer_steps"] == 2  # 4 prompts / 2 per mini-batch
    assert r["n_body_params"] == 74_304 and r["n_head_params"] == 32_768
    # per sequence: 6*74,304*16 = 7,133,184 + 6*32,768*10 = 1,966,080 + 12*2*64*16^2 = 393,216 -> 9,492,480; x 8
    assert r["train_flops"] == 75_939_840
    for phase in ("logprobs", "train"):
        assert r[f"time_{phase}_s"] > 0
    assert r["train_tokens_per_s"] == pytest.approx(128 / r["time_train_s"])
    assert r["train_mfu"] is None and r["peak_mem_gib"] is None  # CPU: n/a
    # a random-initialised model is close to uniform over the tokenizer's ids: entropy ~ ln(ids), and the sampled
    # tokens (uniform random ids) cost about as much; a wrong vocab mask (all 512 rows) would give ln 512 = 6.24
    assert r["token_ids"] < 512
    assert abs(r["entropy"] - math.log(r["token_ids"])) < 0.1
    assert abs(r["nll_sampled"] - math.log(r["token_ids"])) < 0.2
    assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
    if "--gen-prompts" in extra:
        assert r["gen_tokens"] == 2 * 2 * 5 and r["time_generate_s"] > 0  # every sequence ran to --gen-new-tokens
        assert r["gen_tokens_per_s"] == pytest.approx(20 / r["time_generate_s"])
    assert json.loads(out.read_text().splitlines()[-1]) == json.loads(json.dumps(r))
    printed = capsys.readouterr().out
    assert "| 4 x 2 = 8 | 4 / 2 | 6 + 10 |" in printed and r["command"] in printed


def test_builtin_qwen_config_is_the_shared_one():
    """--model-config qwen2.5-math-1.5b (built in code, for a GPU machine without shared/) equals the model that
    shared/qwen2.5-math-1.5b-tokenizer/config.json describes: same parameters and shapes, same rope, norm and ids; its
    stand-in tokenizer has the real tokenizer's length and pad / EOS ids."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = shared_path("qwen2.5-math-1.5b-tokenizer")
    args = bts.parse_args(["--model-config", bts.BUILTIN, "--device", "cpu"])
    with torch.device("meta"):
        built, built_tok = bts.build_model(args, torch.device("meta"))
        real = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    real_tok = AutoTokenizer.from_pretrained(folder)
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.named_parameters()}  # noqa: E731
    assert shapes(built) == shapes(real) and len(shapes(built)) == 28 * 12 + 2
    for key in ("rope_parameters", "rope_theta", "rms_norm_eps", "hidden_act", "tie_word_embeddings",
                "max_position_embeddings", "sliding_window", "use_sliding_window", "bos_token_id", "eos_token_id"):  # fmt: skip
        assert getattr(built.config, key, None) == getattr(real.config, key, None), key
    assert len(built_tok) == len(real_tok) == 151_665
    assert built_tok.eos_token_id == real_tok.eos_token_id and built_tok.pad_token_id == real_tok.pad_token_id


def test_builtin_config_runs_without_tokenizer_files(monkeypatch, tmp_path):
    """The --model-config qwen2.5-math-1.5b route end to end (training phases and a generate through the ids-only
    tokenizer), shrunk to the tiny shape so that it runs on a CPU: no file is read, every sequence has its length."""
    monkeypatch.setattr(bts, "QWEN_MATH_1P5B", dict(bts.TINY_MODEL, eos_token_id=511, bos_token_id=511))
    monkeypatch.setattr(bts, "QWEN_TOKEN_IDS", 500)  # 12 padded LM-head rows, as Qwen's 271
    monkeypatch.chdir(tmp_path)  # nothing to find here
    r = bts.main(["--model-config", bts.BUILTIN, "--device", "cpu", "--prompts", "2", "--group-size", "2",
                  "--mini-batch-prompts", "1", "--micro-batch-size", "2", "--prompt-len", "5", "--response-len", "7",
                  "--gen-prompts", "2", "--gen-new-tokens", "4", "--steps", "1", "--logp-from-hidden"])  # fmt: skip
    assert r["fit"] and r["gen_fit"] and r["token_ids"] == 500 and r["train_tokens"] == 4 * (5 + 7)
    assert r["gen_tokens"] == 2 * 2 * 4 and r["model"] == bts.BUILTIN
    assert abs(r["entropy"] - math.log(500)) < 0.1  # the vocab mask at the stand-in tokenizer's 500 ids
