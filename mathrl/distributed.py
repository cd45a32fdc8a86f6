"""
Data-parallel helpers for train.py under torchrun (PyTorch's own torch.distributed; gloo on CPU, nccl on GPUs).

`torchrun --nproc_per_node N train.py ...`: N data-parallel ranks. Each takes an equal share of every mini-batch
(whole groups), samples it with its own engine, grades it and computes its part of the loss; DDP (PyTorch's
DistributedDataParallel) averages the gradients, so all ranks keep the same weights and AdamW state. DDP holds the
full model, gradients and optimizer on every GPU (1.5B: GPU_PRESET's plan plus DDP's 6.2 GB gradient buckets); when
these do not fit one GPU, FSDP2 (torch.distributed.fsdp.fully_shard) would shard them across ranks: not implemented
(the vLLM weight push would then gather the shards). Without torchrun every helper below is the identity.

With --engine vllm every rank has its own vLLM engine, which joins the group made here (engine_vllm.py, "Under
torchrun"). vLLM then owns sub-groups of it and destroys them, and the default group after them, in its own teardown.
"""

import os
import sys

import torch
import torch.distributed as dist

from mathrl import BadValue

_CREATED = {"group": False}  # whether init_distributed created the default process group (vLLM makes one of its own)


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """SETUP: (rank, world size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl with rank r on
    GPU LOCAL_RANK, or gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():  # torch.cuda.set_device would fail with "invalid device ordinal"
            raise BadValue(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}, and "
                             "torchrun --nproc_per_node needs one per rank")  # fmt: skip
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _CREATED["group"] = True
    return rank(), world, device


def close_distributed() -> None:
    """TEARDOWN: destroy the process group init_distributed created, and only that one: a group vLLM created for
    itself (one process) is vLLM's to destroy (destroying it from here makes vLLM's own teardown fail at exit)."""
    if _CREATED["group"] and dist.is_initialized():
        _close_vllm_groups()
        if dist.is_initialized():  # vLLM's teardown destroys it too
            dist.destroy_process_group()
        _CREATED["group"] = False


def _close_vllm_groups() -> None:
    """Run vLLM's distributed teardown now, while the default group is alive (when vLLM is loaded at all).

    vLLM engines built under torchrun made sub-groups of the default group; their teardown (when an engine is collected,
    at the latest at exit) destroys those and then the default group, and raises "Invalid process group specified" on
    the first sub-group when the default group is already gone (torch destroys all groups with it). Run here first, it
    destroys them in vLLM's order and leaves nothing for the engines' own teardown at exit, which then skips.
    """
    state = sys.modules.get("vllm.distributed.parallel_state")
    if state is not None:
        state.destroy_model_parallel()  # vLLM's TP/PP/DP/... groups
        state.destroy_distributed_environment()  # its world group, then the default group


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    dist.barrier() if dist.is_initialized() else None


def print0(*args) -> None:
    """Print on rank 0 only."""
    if rank() == 0:
        print(*args, flush=True)


def rank_share(B: int, mini: int, rank: int, world: int) -> list[int]:
    """Positions (among a step's B prompts) of this rank's prompts: the rank-th of `world` equal slices of every
    mini-batch of `mini` prompts, so every optimizer step sees all ranks' slices and no group straddles two ranks."""
    per = mini // world
    return [m + rank * per + j for m in range(0, B, mini) for j in range(per)]


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over ranks (x itself in one process)."""
    if world_size() == 1:
        return x
    y = x.detach().to("cuda" if dist.get_backend() == "nccl" else "cpu", copy=True)
    dist.all_reduce(y)
    return y.to(x.device)


def all_objects(obj) -> list:
    """[rank 0's obj, rank 1's obj, ...] of a picklable obj ([obj] in one process)."""
    parts = [obj] * world_size()
    dist.all_gather_object(parts, obj) if len(parts) > 1 else None
    return parts


def all_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x concatenated along dim 0, rank after rank (x itself in one process)."""
    return torch.cat(all_objects(x))


def all_items(items: list) -> list:
    """Every rank's list items in one list, rank after rank (items itself in one process)."""
    return [item for part in all_objects(items) for item in part]


def all_strided(items: list, n: int) -> list:
    """The n items of a list sharded as items[rank::world] (rank r holds items r, r + world, ...), gathered back into
    their order: item i is item i // world of rank i % world."""
    parts, world = all_objects(items), world_size()
    return [parts[i % world][i // world] for i in range(n)]


def ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """SETUP: module under torchrun wrapped in DDP (gradients kept in DDP's all-reduce buckets: no second copy), else
    module itself."""
    if world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, ids, gradient_as_bucket_view=True)
