"""Plain-module helpers every model file needs: the Hugging Face module under a wrapper
(`unwrap`), and eval mode for a block (`eval_mode`). Torch only, no rlhfkit imports, so
both the training seam (`wrap`) and LoRA (`lora`) use them without importing each other."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.nn.parallel import DistributedDataParallel


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """`model` in eval mode (no dropout) for the block, then every submodule back in the
    mode it was in (not `model.train(flag)`, which would set all of them to the wrapper's
    flag: a fresh wrapper around an eval-mode model is in train mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face module under DDP (`.module`) and torch.compile (`._orig_mod`); an
    FSDP2 module is its own (sharded in place)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model
