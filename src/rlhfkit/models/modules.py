"""Plain-module helpers every model file needs: the Hugging Face module under a wrapper
(`unwrap`), eval mode for a block (`eval_mode`), and the probe that finds the bias feeding
a head (`bias_feeding`). Torch only, no rlhfkit imports, so both the training seam (`wrap`)
and LoRA (`lora`) use them without importing each other."""

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


@torch.no_grad()
def bias_feeding(
    model: torch.nn.Module, head: torch.nn.Linear
) -> tuple[str, torch.nn.Parameter] | None:
    """(name, bias) of the module of `model` whose output `head` reads, if that module adds
    a bias (GPT-2's, OPT's or Pythia's final LayerNorm); None when it has none (Llama's,
    Mistral's or Qwen's RMSNorm). Found by a probe forward, not by model family (reward
    normalisation puts a score shift there, `models.reward.shift_and_scale_scores`)."""
    candidates = {
        name: mod
        for name, mod in model.named_modules()
        if mod is not head
        and isinstance(getattr(mod, "bias", None), torch.nn.Parameter)
        and mod.bias.shape == (head.in_features,)
    }
    outputs: dict[str, torch.Tensor] = {}
    box: dict[str, torch.Tensor] = {}
    handles = [head.register_forward_pre_hook(lambda m, args: box.__setitem__("x", args[0]))]
    for name, mod in candidates.items():
        handles.append(
            mod.register_forward_hook(
                lambda m, i, out, name=name: (
                    outputs.__setitem__(name, out) if isinstance(out, torch.Tensor) else None
                )
            )
        )
    vocab = int(getattr(model.config.get_text_config(), "vocab_size", 0) or 2)
    ids = (torch.arange(1, 9, device=head.weight.device) % vocab)[None]  # (1, 8)
    try:
        with eval_mode(model):
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    x = box["x"]
    for name, out in reversed(list(outputs.items())):  # the last one called first
        if out.numel() == x.numel() and torch.equal(out.reshape(x.shape), x):
            return name, candidates[name].bias
    return None
