"""How a model is wrapped for training: the one seam between the loops and the engines
that replicate or shard a model across processes.

Loops call `wrap_for_training` on each trained role, `no_sync` around accumulation
micro-batches, and `unwrap` wherever they need the plain Hugging Face module (saving,
sampling, reading the config). Today: the model as is in one process, DDP under torchrun.
A new strategy (FSDP2, a LoRA adapter) changes this file and its tests, not the loops.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.parallel import DistributedDataParallel

from rlhfkit.distributed import Dist


def wrap_for_training(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    """`model` ready for a training loop: itself in one process, DDP under torchrun."""
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def no_sync(model: torch.nn.Module, sync: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on accumulation micro-batches (it runs where `sync`)."""
    if sync or not hasattr(model, "no_sync"):
        return nullcontext()
    return model.no_sync()
