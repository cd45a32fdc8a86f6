"""
What train.py writes in --out and reads back on --resume: metrics.jsonl and samples.jsonl (one JSON object per line),
the optional wandb / TensorBoard sinks, and checkpoint-<step>/ folders (a Hugging Face model + tokenizer, loadable by
transformers, vLLM and eval.py, plus trainer_state.pt: optimizer, step, RNG states and whatever else train.py adds).
Rank 0 alone calls the writers under torchrun (docs/multi-gpu.md).
"""

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from mathrl import BadValue
from mathrl.distributed import print0, rank
from mathrl.templates import render


def prepare_out(out: Path, resume: bool, overwrite: bool, writer: bool) -> None:
    """The run folder: an error if it holds a run and neither --resume nor --overwrite is given; with --overwrite (and
    no --resume) the writer (rank 0) deletes the old metrics, samples and checkpoints."""
    if (out / "metrics.jsonl").exists() and not (resume or overwrite):
        raise BadValue(f"{out} already holds a run: pass --resume to continue it or --overwrite to start over")
    if overwrite and not resume and writer:
        for p in [out / "metrics.jsonl", out / "samples.jsonl", *(p for _, p in checkpoints(out))]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def log_step(out: Path, trackers, m: dict, total_steps: int) -> None:
    """A step's metrics m: rank 0 appends them to metrics.jsonl and logs them to the trackers; one printed line."""
    if rank() == 0:
        append_jsonl(out / "metrics.jsonl", m)
        trackers.log(m, m["step"])
    line = f"step {m['step']:5d}"  # step 0 (the eval before training): eval acc only
    if "train/reward" in m:
        line += (f"/{total_steps} | reward {m['train/reward']:.3f} | acc {m['train/accuracy']:.3f}"
                 f" | fmt {m['train/format']:.2f} | len {m['train/response_len']:.1f} | ent {m['train/entropy']:.3f}"
                 f" | clip {m['train/clip_frac']:.3f} | gnorm {m['train/grad_norm']:.3f} | {m['time/step']:.1f}s")  # fmt: skip
    if "train/kl" in m:
        line += f" | kl {m['train/kl']:.4f}"
    if "eval/accuracy" in m:
        line += f" | eval acc {m['eval/accuracy']:.3f}"
    print0(line)


def dump_samples(path: Path, step: int, rows, idx, tmpl, comps, golds, res: dict, adv, n: int) -> None:
    """A few (prompt, response, reward) rows of a step to samples.jsonl: the first sample of the first n prompts.
    rows: the dataset; idx, tmpl, golds: the step's B prompts; comps: their [B][G] completions; res, adv: (B, G)."""
    for b in range(min(n, len(idx))):
        append_jsonl(path, {
            "step": step, "template": tmpl[b], "prompt": render(tmpl[b], rows[idx[b]]["problem"]),
            "response": comps[b][0].text, "gold": golds[b],
            "reward": res["reward"][b, 0].item(), "accuracy": res["accuracy"][b, 0].item(),
            "format": res["format"][b, 0].item(), "advantage": adv[b, 0].item(), "finished": comps[b][0].finished,
        })  # fmt: skip


class Trackers:
    """Optional wandb / TensorBoard sinks of train.py's Config `cfg` (no-ops when not asked for or not installed)."""

    def __init__(self, cfg, run_name: str):
        self.sinks = []
        if cfg.wandb_project:
            try:
                import wandb

                run = wandb.init(project=cfg.wandb_project, name=run_name, config=asdict(cfg), resume="allow")
                self.sinks.append(lambda metrics, step: run.log(metrics, step=step))
            except ImportError:
                print0("wandb is not installed: --wandb-project ignored")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(Path(cfg.out) / "tb"))
                self.sinks.append(lambda m, step: [writer.add_scalar(k, v, step) for k, v in m.items() if _is_num(v)])
            except ImportError:
                print0("tensorboard is not installed: --tensorboard ignored")

    def log(self, metrics: dict, step: int) -> None:
        for sink in self.sinks:
            sink(metrics, step)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def save_checkpoint(out: Path, step: int, model, tokenizer, optimizer, extra: dict, keep: int) -> Path:
    """checkpoint-<step>/: HF model + tokenizer, and trainer_state.pt; written to a temp dir, then renamed (atomic)."""
    final, tmp = out / f"checkpoint-{step}", out / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "rng": rng, **extra}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if keep > 0:
        for old in sorted(checkpoints(out))[:-keep]:
            shutil.rmtree(old[1], ignore_errors=True)
    return final


def checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints in out, as (step, path) sorted by step."""
    found = [(int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*") if (p / "trainer_state.pt").exists()]
    return sorted(found)


def restore_state(out: Path, resume: bool, resume_from: tuple[int, Path] | None, optimizer, writer: bool) -> dict:
    """The trainer_state.pt of checkpoint resume_from ({} when None), with its AdamW and Python / torch RNG states
    restored (the weights are the caller's to load). With --resume the writer (rank 0) drops the metrics and samples
    rows after it: all of them when killed before the first checkpoint."""
    state = {}
    if resume_from:
        state = torch.load(resume_from[1] / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        print0(f"resumed from {resume_from[1]} at step {state['step']}")
    if resume and writer:  # rows after the checkpoint are redone
        for name in ("metrics.jsonl", "samples.jsonl"):
            truncate_jsonl(out / name, state["step"] if resume_from else -1)
    return state


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of metrics/samples files up to last_step: a resumed run rewrites what came after. A line cut
    short by the kill (not valid JSON) is dropped too."""
    if path.exists():
        rows = [(line, _json_or_none(line)) for line in path.read_text().splitlines()]
        path.write_text("".join(line + "\n" for line, row in rows if row is not None and row.get("step", 0) <= last_step))


def _json_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None
