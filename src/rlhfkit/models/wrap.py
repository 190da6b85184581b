"""How a model is wrapped for training: the one seam between the loops and the engines
that replicate or shard a model across processes.

Loops call `wrap_for_training` on each trained role, `no_sync` around accumulation
micro-batches, `generation_context` around sampling from a trained role, and `unwrap`
wherever they need the Hugging Face module (reading its config, sampling). Checkpoints ask
`is_sharded` / `full_state_dict` (models.sharded). Strategies:

- "ddp": the model as is in one process, `DistributedDataParallel` under torchrun
  (every process holds everything);
- "fsdp2": `torch.distributed.fsdp.fully_shard` on every decoder layer, found from the
  model's `_no_split_modules` (what transformers declares must stay whole), then on the
  root: parameters, gradients and optimizer states are split across processes. With
  `bf16`, `MixedPrecisionPolicy` (bf16 parameters in forward/backward, fp32 gradient
  reduction); with `cpu_offload`, `CPUOffloadPolicy` (pinned memory only where an
  accelerator exists).
LoRA (`lora=` options with `lora_r > 0`, models/lora.py): adapters are injected into the
model in place before it is wrapped, so every strategy above wraps the same Hugging Face
module and `unwrap` returns it as without LoRA (its `.config`, `generate`,
`save_pretrained`); only the adapter and a reward model's head train.
A new strategy changes this file and its tests, not the loops. `unwrap` and `eval_mode`
live in models/modules.py (LoRA needs them too) and are re-exported here with the seam.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    fully_shard,
)
from torch.nn.parallel import DistributedDataParallel

from rlhfkit.distributed import Dist
from rlhfkit.errors import UserError
from rlhfkit.models.modules import eval_mode as eval_mode  # re-exported with the seam
from rlhfkit.models.modules import unwrap

STRATEGIES = ("ddp", "fsdp2")


def wrap_for_training(
    model: torch.nn.Module,
    d: Dist,
    device: torch.device,
    strategy: str = "ddp",
    *,
    bf16: bool = False,
    cpu_offload: bool = False,
    lora: Any = None,
) -> torch.nn.Module:
    """`model` ready for a training loop: itself in one process, else per `strategy`
    (module docstring). FSDP2 shards in place and returns the same module. `lora`: options
    with `lora_r` & co (config.LoraOptions); `lora_r > 0` adds the adapters first."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown --strategy {strategy!r}: choose from {', '.join(STRATEGIES)}")
    if lora is not None and lora.lora_r:
        from rlhfkit.models.lora import add_lora

        model = add_lora(model, lora)
    if strategy == "fsdp2" and d.enabled:
        return shard(model, device, bf16=bf16, cpu_offload=cpu_offload)
    if not d.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(
    model: torch.nn.Module, device: torch.device, *, bf16: bool = False, cpu_offload: bool = False
) -> torch.nn.Module:
    """`fully_shard` each decoder layer (classes named in `_no_split_modules`) and the root.

    Also used for frozen roles (reference, reward models): their parameters are gathered
    for a forward and freed after it, so every process must run the same forwards.
    """
    layer_names = set(getattr(unwrap(model), "_no_split_modules", None) or ())
    if not layer_names:
        raise UserError(
            f"{type(unwrap(model)).__name__} declares no _no_split_modules: FSDP2 cannot tell "
            "its decoder layers; use --strategy ddp"
        )
    kwargs = {}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    model.to(device)
    layers = [m for m in model.modules() if type(m).__name__ in layer_names]
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (transformers' own switch,
    non-reentrant, which works under DDP and FSDP2)."""
    module = unwrap(model)
    if not getattr(module, "supports_gradient_checkpointing", False):
        raise UserError(f"{type(module).__name__} does not support --gradient-checkpointing")
    module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` holds only its shard of the parameters (FSDP2)."""
    return isinstance(unwrap(model), FSDPModule)


def no_sync(model: torch.nn.Module, sync: bool) -> AbstractContextManager:
    """Skip the gradient reduction on accumulation micro-batches (it runs where `sync`)."""
    if sync:
        return nullcontext()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    return model.no_sync() if hasattr(model, "no_sync") else nullcontext()


@contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


@contextmanager
def generation_context(model: torch.nn.Module) -> Iterator[None]:
    """Around sampling from a trained role: a sharded model's parameters are gathered once
    and kept for the whole rollout (no collective per decoding step, so processes whose
    responses end early simply stop), then resharded."""
    module = unwrap(model)
    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    module.set_reshard_after_forward(False)
    try:
        yield
    finally:
        module.set_reshard_after_forward(True)
        module.reshard()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """A sharded model's whole state dict, gathered to CPU on rank 0 (every process must
    call; the others get None). None for a model that is not sharded: its own weights are
    whole. Tied copies (an output layer tied to the embeddings) are left out, as
    `save_pretrained` leaves them out."""
    module = unwrap(model)
    if not isinstance(module, FSDPModule):
        return None
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(module, options=options)
    tied = {n for n, _ in module.named_parameters(remove_duplicate=False)}
    tied -= {n for n, _ in module.named_parameters()}
    return {k: v for k, v in sd.items() if k not in tied} or None
