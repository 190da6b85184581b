"""Processes under torchrun: who this process is, its device, and the few collectives the
loops use (sums over processes, a barrier). One process without torchrun: every helper is
then the identity, so single-process code paths need no special case.

NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rlhfkit.errors import UserError


def pick_device(spec: str = "auto") -> torch.device:
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.

    Under torchrun, 'auto' and 'cuda' pick `cuda:$LOCAL_RANK` so that each process gets
    its own GPU.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec not in ("auto", "cuda") and not spec.startswith("cuda:"):
        raise UserError(f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        if spec == "auto":
            return torch.device("cpu")
        raise UserError(f"device {spec!r} asked for, but CUDA is not available here")
    count = torch.cuda.device_count()
    if spec.startswith("cuda:"):
        index_str = spec.split(":", 1)[1]
        if not index_str.isdigit():
            raise UserError(f"bad device {spec!r}: expected 'cuda:N' with N a number")
        index = int(index_str)
    else:
        index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= count:
        raise UserError(f"device cuda:{index} asked for, but only {count} CUDA device(s) exist")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Dist:
    """Where this process stands under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_spec: str = "auto") -> tuple[Dist, torch.device]:
    """Initialise torch.distributed when launched by torchrun; pick this rank's device.

    NCCL on CUDA, gloo on CPU. Without torchrun's environment, a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_spec)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(x: float | int, d: Dist, device: torch.device) -> float:
    """Sum a Python number over processes (identity for one process)."""
    if not d.enabled:
        return float(x)
    t = torch.tensor([float(x)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def world_size() -> int:
    """Processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group (0 without torch.distributed)."""
    return dist.get_rank() if world_size() > 1 else 0


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """A copy of `x` summed over every process (`x` itself in one process)."""
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x
