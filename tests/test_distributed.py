"""
Data-parallel training (torchrun, DDP) on CPU with 2 gloo ranks: one policy update of a fixed global batch split
across 2 ranks gives the loss, gradient norms and parameter update of the same batch in one process; and an end-to-end
`torchrun --nproc_per_node 2 train.py --preset tiny` run, resumed by a single process.

    python -m pytest -q tests/test_distributed.py                 # ~40 s on 2 cores (the tiny warm start is cached)
    python -m pytest -q tests/test_distributed.py -m "not slow"   # without the end-to-end runs
"""

import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # also when torchrun runs this file as the worker script (no conftest then)

from mathrl import tiny  # noqa: E402
import train  # noqa: E402
from mathrl.engine_vllm import request_seed  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

# 4 prompts x 3 samples, mini-batches of 2 prompts (2 optimizer steps, old log-probs fixed), so each rank holds one
# prompt of every mini-batch. SGD (lr 0.1) and no gradient clipping: the update is the gradient itself (AdamW's first
# step, ~lr * sign(g), and clipping would both hide a gradient off by a constant factor).
BASE = dict(prompts_per_step=4, group_size=3, mini_batch_prompts=2, micro_batch_size=2, grad_clip=1e9,
            max_new_tokens=12, device="cpu")  # fmt: skip
CASES = {
    "token-mean": dict(agg="token-mean"),
    "seq-mean-token-mean": dict(agg="seq-mean-token-mean"),
    # micro-batches by token budget: the ranks hold different numbers of micro-batches; log-probs from hidden states
    "token-mean-budget-hidden": dict(agg="token-mean", micro_batch_tokens=40, logp_from_hidden=True),
}


def synthetic_data(tokenizer, model) -> dict:
    """The fixed global batch as raw per-sequence lists (each rank pads its own share, as train.py does). Responses
    of prompts 0 and 2 (rank 0) are long, of prompts 1 and 3 (rank 1) short, so the ranks' token counts differ a lot;
    two sequences are out of the loss. old_logp = the model's log-probs + noise: some PPO ratios are clipped."""
    rng, G = random.Random(0), BASE["group_size"]
    vocab = range(len(tiny.SPECIAL_TOKENS), len(tokenizer))
    prompts, responses = [], []
    for b in range(BASE["prompts_per_step"]):
        prompt = [rng.choice(vocab) for _ in range(rng.randint(3, 8))]
        for _ in range(G):
            prompts.append(prompt)
            length = rng.randint(8, 12) if b % 2 == 0 else rng.randint(1, 4)
            responses.append([rng.choice(vocab) for _ in range(length)])
    keep = [0.0 if n in (1, 9) else 1.0 for n in range(len(prompts))]
    adv = [rng.gauss(0, 1) for _ in prompts]
    data = {"prompts": prompts, "responses": responses, "keep": keep, "adv": adv}
    batch = make_batch(data, range(len(prompts)), tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = train.token_logprobs(model, batch["input_ids"], batch["attn"], batch["resp_mask"].shape[1], 1.0,
                                       train.vocab_limit(model, tokenizer), False)  # fmt: skip
    noise = torch.randn(logp.shape, generator=torch.Generator().manual_seed(0))  # (N, T)
    data["old_logp"] = [(logp[n, : len(r)] + 0.3 * noise[n, : len(r)]).tolist() for n, r in enumerate(responses)]
    return data


def make_batch(data: dict, rows, pad_id: int) -> dict:
    """update_policy's batch of the sequences `rows` of the raw data, padded on their own."""
    prompts, responses = [data["prompts"][i] for i in rows], [data["responses"][i] for i in rows]
    input_ids, attn, resp_mask = train.pad_batch(prompts, responses, pad_id)
    N, T = resp_mask.shape
    old_logp = torch.zeros(N, T)  # (N, T)
    for n, i in enumerate(rows if "old_logp" in data else []):
        old_logp[n, : len(responses[n])] = torch.tensor(data["old_logp"][i])
    keep = torch.tensor([data["keep"][i] for i in rows])
    return dict(input_ids=input_ids, attn=attn, resp_mask=resp_mask, loss_mask=resp_mask.float() * keep[:, None],
                adv=torch.tensor([data["adv"][i] for i in rows]), old_logp=old_logp, entropy=torch.zeros(N, T),
                engine_logp=torch.zeros(N, T), ref_logp=torch.zeros(N, T),
                seq_lens=[(len(p), len(r)) for p, r in zip(prompts, responses)])  # fmt: skip


def one_update(cfg, model, tokenizer, batch: dict, device=torch.device("cpu")) -> dict:
    """update_policy through train.policy_forward (DDP under torchrun) with SGD lr 0.1: the summed parameter update,
    the per-step gradient norms and the loss summed over micro-batches and ranks."""
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    forward, limit = train.policy_forward(model, device), train.vocab_limit(model, tokenizer)
    out = train.update_policy(cfg, forward, optimizer, batch, limit)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    loss = train.all_sum(torch.tensor(sum(out["losses"]), dtype=torch.float64)).item()
    return {"delta": delta, "grad_norms": out["grad_norms"], "loss": loss, "micro_batches": len(out["losses"])}


def worker(folder: Path) -> None:
    """torchrun entry (this file as a script): each rank takes its share of every mini-batch and updates with DDP."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    inputs = torch.load(folder / "inputs.pt")
    tokenizer, G, results = tiny.build_tokenizer(), BASE["group_size"], {}
    share = train.rank_share(BASE["prompts_per_step"], BASE["mini_batch_prompts"], rank, world)
    rows = [b * G + g for b in share for g in range(G)]  # this rank's sequences
    for name, case in CASES.items():
        model = tiny.build_model(tokenizer)
        model.load_state_dict(inputs["state"])
        cfg = replace(train.Config(), **BASE, **case)
        results[name] = one_update(cfg, model, tokenizer, make_batch(inputs["data"], rows, tokenizer.pad_token_id))
    torch.save(results, folder / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_rank_share_hand_computed():
    # 8 prompts, mini-batches of 4: rank 0 takes prompts 0-1 and 4-5, rank 1 takes 2-3 and 6-7
    assert train.rank_share(8, 4, 0, 2) == [0, 1, 4, 5]
    assert train.rank_share(8, 4, 1, 2) == [2, 3, 6, 7]
    assert train.rank_share(8, 4, 0, 1) == list(range(8))
    assert sorted(sum((train.rank_share(12, 6, r, 3) for r in range(3)), [])) == list(range(12))


def test_rollout_seed_per_rank():
    assert train.rollout_seed(42, 3, 0) == (42 * 1_000_003 + 3) * 4  # rank 0: the one-process seed
    seeds = {train.rollout_seed(42, s, k, r) for s in range(50) for k in range(3) for r in range(8)}
    assert len(seeds) == 50 * 3 * 8
    # a CPU generator keeps the low 32 bits of a seed: there too, 8 ranks' calls of one step, and vLLM's request seeds
    # of their 16 prompts x 8 samples (engine_vllm.request_seed), all differ
    for s in range(50):
        calls = [train.rollout_seed(42, s, k, r) for k in range(3) for r in range(8)]
        assert len({c % 2**32 for c in calls}) == 3 * 8
        requests = {(request_seed(c, i, 8) + j) % 2**32 for c in calls for i in range(16) for j in range(8)}
        assert len(requests) == 3 * 8 * 16 * 8


def test_close_distributed_leaves_a_group_it_did_not_create(tmp_path, monkeypatch):
    import torch.distributed as dist

    from mathrl import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    distributed.init_distributed(torch.device("cpu"))  # one process: creates no group
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)  # vLLM's
    try:
        distributed.close_distributed()
        assert dist.is_initialized(), "the group made by someone else (vLLM) was destroyed"
    finally:
        dist.destroy_process_group()
    monkeypatch.setattr(distributed, "_CREATED", {"group": True})  # as after init_distributed under torchrun
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store2'}", rank=0, world_size=1)
    distributed.close_distributed()
    assert not dist.is_initialized()


def test_world_size_must_divide_mini_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="--mini-batch-prompts 8 must be divisible by the 3 ranks"):
        train.parse_config(["--preset", "tiny", "--mini-batch-prompts", "8"])
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert train.parse_config(["--preset", "tiny", "--mini-batch-prompts", "8"]).mini_batch_prompts == 8
    assert train.parse_config(["--preset", "1.5b"]).engine == "vllm"  # one vLLM engine per rank (external_launcher)


def test_a_rank_without_a_gpu_is_a_clear_error(monkeypatch):
    from mathrl import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="local rank 1 has no GPU: this node has 1"):
        distributed.init_distributed(torch.device("cuda"))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """(one-process results, [rank 0's, rank 1's]) of every case, from the same initial model and global batch."""
    folder = tmp_path_factory.mktemp("ddp")
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, seed=0)
    data = synthetic_data(tokenizer, model)
    torch.save({"state": model.state_dict(), "data": data}, folder / "inputs.pt")
    proc = subprocess.run([*TORCHRUN, __file__, str(folder)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = {}
    for name, case in CASES.items():
        model = tiny.build_model(tokenizer)
        model.load_state_dict(torch.load(folder / "inputs.pt")["state"])
        cfg = replace(train.Config(), **BASE, **case)
        batch = make_batch(data, range(len(data["prompts"])), tokenizer.pad_token_id)
        single[name] = one_update(cfg, model, tokenizer, batch)
    return single, [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_match_one_process(two_rank_results, name):
    single, ranks = two_rank_results
    ref, r0, r1 = single[name], ranks[0][name], ranks[1][name]
    assert len(ref["grad_norms"]) == 2 and ref["delta"].abs().max() > 1e-3  # two real updates
    # DDP keeps the ranks identical
    assert torch.equal(r0["delta"], r1["delta"]) and r0["grad_norms"] == r1["grad_norms"]
    # fp32 throughout (train.py casts log-probs to fp32), so agreement to float rounding: rtol 1e-5 on the losses and
    # gradient norms, |delta difference| <= 2e-5 x max |delta| on the update (seen: ~1e-7 and ~2e-6)
    diff = (r0["delta"] - ref["delta"]).abs().max().item()
    print(f"{name}: max |delta diff| {diff:.3g} (max |delta| {ref['delta'].abs().max():.3g}), losses {ref['loss']:.6f} "
          f"vs {r0['loss']:.6f}, grad norms {ref['grad_norms']} vs {r0['grad_norms']}")  # fmt: skip
    assert r0["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert r0["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-5)
    assert diff <= 2e-5 * ref["delta"].abs().max().item()


def test_token_budget_case_splits_ranks_unevenly(two_rank_results):
    """The budget case has the ranks run different numbers of micro-batches (DDP syncs once per mini-batch anyway)."""
    _, ranks = two_rank_results
    counts = [r["token-mean-budget-hidden"]["micro_batches"] for r in ranks]
    assert counts[0] != counts[1], counts


# ----------------------------------------------------------------------------------------------------------------------
# End to end: torchrun 2 ranks of train.py --preset tiny, then --resume in one process. AAPO with --aapo-ref cache and
# --aug: the ranks' reference rewards, template draws and metrics are merged.

SMALL = ["--preset", "tiny", "--prompts-per-step", "4", "--group-size", "4", "--mini-batch-prompts", "2",
         "--eval-every", "2", "--save-every", "2", "--eval-limit", "8", "--aug", "--estimator", "aapo",
         "--aapo-ref", "cache"]  # fmt: skip


def metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_ranks_then_resume_one(tmp_path):
    out = tmp_path / "run"
    cmd = [*TORCHRUN, "train.py", *SMALL, "--max-steps", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torchrun: 2 ranks, 2 prompts per rank per step" in proc.stdout
    assert proc.stdout.count("step     2/2 |") == 1  # rank 0 alone prints
    assert metric_steps(out) == [0, 1, 2]  # one line per step (eval at 0), written by rank 0 alone
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[2]["train/updates"] == 2 and "eval/accuracy" in rows[2]
    assert rows[1]["train/response_len"] > 0 and 0 <= rows[1]["train/accuracy"] <= 1
    # 4 new (prompt, template) pairs per step (epoch 0: no repeats), 2 from each rank, in one merged cache
    assert [r["aapo/cache_size"] for r in rows[1:]] == [4, 8] and rows[1]["aapo/ref_samples"] == 4 * 4
    assert all(sum(v for k, v in r.items() if k.endswith("/prompts")) == 4 for r in rows[1:])  # all ranks' templates
    assert len(torch.load(out / "checkpoint-2" / "trainer_state.pt", weights_only=False)["ref_cache"]) == 8

    cmd = [sys.executable, "train.py", *SMALL, "--max-steps", "3", "--out", str(out), "--resume"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "at step 2" in proc.stdout and "torchrun: " not in proc.stdout  # one process
    assert metric_steps(out) == [0, 1, 2, 3]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["aapo/cache_size"] == 12  # the 2-rank cache was found: 8 + 4 new
    assert (out / "checkpoint-3" / "trainer_state.pt").exists()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
