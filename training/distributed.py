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


def resolve_device(requested: str) -> torch.device:
    """``--device``: "auto" is this process's GPU when there is one (LOCAL_RANK under torchrun), else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: this machine has no CUDA GPU (torch {torch.__version__}, "
                         f"CUDA build {torch.version.cuda or 'none'})")
    return device


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Joins the torchrun process group (or reuses one the caller made); returns this process's info and device.

    On CUDA each process takes GPU LOCAL_RANK and NCCL; on the CPU, gloo (said once, since a GPU box that lands
    here has lost its GPUs: a wrong --device or CUDA_VISIBLE_DEVICES).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    elif info.rank == 0:
        print(f"note: {world_size} processes on the CPU with gloo" +
              (" although CUDA GPUs are visible (--device cpu)" if torch.cuda.is_available() else ""), flush=True)
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


def average_sparse_grad(weight: torch.Tensor, rows: int) -> None:
    """Averages a sparse row gradient across processes by gathering the rows each touched.

    Every process pads its (uncoalesced) gradient to ``rows`` entries with zero rows at index 0, a size known
    without asking the device, so the gathers need no host read; duplicate rows are summed by the optimiser
    (``training.precision.RowAdam``).
    """
    grad = weight.grad
    indices, values = grad._indices()[0], grad._values()
    count = indices.numel()  # sparse metadata: on the host
    if count > rows:
        raise ValueError(f"W's gradient has {count} rows, more than the {rows} a step can touch")
    padded_i = torch.cat([indices, indices.new_zeros(rows - count)])
    padded_v = torch.cat([values, values.new_zeros(rows - count, values.shape[1])])
    world = dist.get_world_size()
    all_i = [torch.empty_like(padded_i) for _ in range(world)]
    all_v = [torch.empty_like(padded_v) for _ in range(world)]
    dist.all_gather(all_i, padded_i)
    dist.all_gather(all_v, padded_v)
    weight.grad = torch.sparse_coo_tensor(torch.cat(all_i).unsqueeze(0), torch.cat(all_v) / world, grad.shape)


def broadcast_parameters(module: nn.Module) -> None:
    """Makes every process start from rank 0's values of parameters that DDP does not sync (W)."""
    for p in module.parameters():
        dist.broadcast(p.data, src=0)
