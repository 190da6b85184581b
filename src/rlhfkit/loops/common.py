"""Plumbing every training loop shares: seeding, devices, torchrun, optimizer, schedule,
one optimizer step, and the deterministic data order that makes resume exact.

Distributed training follows one rule: the global order of examples depends only on the
seed and the epoch, never on the number of processes. Rank r of W takes its slice of each
global batch, and gradients are summed over tokens and divided by the global token count,
so W processes x batch b step exactly like 1 process x batch W*b.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from rlhfkit.distributed import Dist


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------


def build_optimizer(
    model: torch.nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, norms or 1-d gains)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel updates all parameters at once instead of one Python loop per tensor.
    fused = all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in decay + no_decay
    )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


def lr_factor(step: int, *, schedule: str, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then
    cosine or linear decay to `min_ratio` at `total`, or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1 - min_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, warmup: int, total: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        return lr_factor(step, schedule=schedule, warmup=warmup, total=total, min_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    max_grad_norm: float,
) -> float:
    """Clip, step, advance the schedule, zero the grads. Returns the pre-clip grad norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# ---------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The global order of example indices in one epoch: a function of (seed, epoch) only."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def global_batches(
    order: Sequence[int], global_batch: int, drop_last: bool = False
) -> list[list[int]]:
    """Cut an epoch's order into optimizer steps of `global_batch` examples."""
    steps = [list(order[i : i + global_batch]) for i in range(0, len(order), global_batch)]
    if drop_last and steps and len(steps[-1]) < global_batch:
        steps.pop()
    return steps


def rank_micro_batches(step_indices: Sequence[int], d: Dist, micro: int) -> Iterator[list[int]]:
    """This rank's micro-batches of one optimizer step.

    The step's examples are split into contiguous, equal-as-possible slices per rank,
    each cut into micro-batches of at most `micro` examples.
    """
    n = len(step_indices)
    lo = (n * d.rank) // d.world_size
    hi = (n * (d.rank + 1)) // d.world_size
    mine = list(step_indices[lo:hi])
    for i in range(0, len(mine), micro):
        yield mine[i : i + micro]
