"""Multi-GPU and multi-node training through torchrun and DistributedDataParallel.

    torchrun --nproc_per_node 8 meta_train.py --config vox2 --out runs/vox2 --set data.root=/data/vox2
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 meta_train.py ...

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them everything runs in one process. NCCL on GPUs, gloo on
CPU (the tests run two CPU processes). D's per-video matrix W is kept out of DDP: its gradient is sparse (only
the batch's rows), and it is averaged here by gathering those rows from every process, so a VoxCeleb2-sized
W (145k x 512) is never all-reduced densely.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Whether init_distributed created the process group (and so shutdown_distributed destroys it).
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Joins the torchrun process group (or reuses one the caller made); returns this process's info and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        info.owns_group = True
    return info, device


def shutdown_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, info: DistInfo, device: torch.device, ignore: tuple[str, ...] = ()) -> nn.Module:
    """DDP-wraps ``module`` in a distributed run, leaving the named parameters out of gradient sync."""
    if not info.enabled:
        return module
    if ignore:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, list(ignore))
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def average_sparse_grad(weight: torch.Tensor) -> None:
    """Averages a sparse row gradient across processes by gathering the rows each touched (padded gathers)."""
    grad = weight.grad.coalesce()
    indices, values = grad.indices()[0], grad.values()
    counts = [torch.zeros(1, dtype=torch.long, device=indices.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([indices.numel()], device=indices.device))
    most = int(max(c.item() for c in counts))
    pad = most - indices.numel()
    padded_i = torch.cat([indices, indices.new_zeros(pad)])
    padded_v = torch.cat([values, values.new_zeros(pad, values.shape[1])])
    all_i = [torch.empty_like(padded_i) for _ in counts]
    all_v = [torch.empty_like(padded_v) for _ in counts]
    dist.all_gather(all_i, padded_i)
    dist.all_gather(all_v, padded_v)
    rows = torch.cat([i[:int(c.item())] for i, c in zip(all_i, counts)])
    vals = torch.cat([v[:int(c.item())] for v, c in zip(all_v, counts)]) / len(counts)
    weight.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), vals, grad.shape, check_invariants=True).coalesce()


def broadcast_parameters(module: nn.Module) -> None:
    """Makes every process start from rank 0's values of parameters that DDP does not sync (W)."""
    for p in module.parameters():
        dist.broadcast(p.data, src=0)
