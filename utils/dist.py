"""Devices and torch.distributed process groups (torchrun) in one place."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def pick_device(name: str = "") -> torch.device:
    """`name` if given (e.g. 'cpu', 'cuda:1'), else CUDA if available, then MPS, then CPU."""
    if name:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "") -> DistInfo:
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set), else a single process.

    One process per device: CUDA ranks use cuda:LOCAL_RANK with NCCL; CPU ranks use gloo. A second call
    returns the same DistInfo without joining again.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return DistInfo(0, 0, 1, pick_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device in ("", "cuda"):
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device(device or "cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank, local_rank, world, dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    """Minimum over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x
