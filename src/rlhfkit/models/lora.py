"""LoRA adapters (PEFT) on a Hugging Face model, behind the training-wrapper seam.

`add_lora(model, opts)` injects rank-r adapters into `model` IN PLACE (PEFT's
`get_peft_model`) and freezes everything else; it returns the same Hugging Face object, so
the loops, `wrap.unwrap`, DDP and FSDP2 see the model they always saw (`.config`,
`generate`, `_no_split_modules`). The `PeftModel` that PEFT builds around it is kept on the
side (`peft_model(model)`) for what only it can do: switch the adapter off
(`adapter_disabled`: the PPO reference is the policy with its adapter off) and write the
adapter folder (`save_adapter`).

- Causal LMs get task "CAUSAL_LM"; reward / value models (a `score` head, no next-token
  head: sequence-classification classes and `models.scalar_head`'s) task "SEQ_CLS", so
  PEFT also trains the one-output head in full (`modules_to_save`).
- Targets: "all-linear" by default, every linear layer of the decoder except the output
  head (GPT-2's `Conv1D` layers included).
- Checkpoints hold the model's own state dict (base weights, adapters, the trained head
  copy) and reload into the same LoRA model; what users read (`checkpoint.export_hf`) is
  the MERGED plain model, `merged_state_dict`: W + (alpha / r) B A, computed from a state
  dict so the training model is untouched (and a sharded model's gathered state works).
- A model that already carries an adapter (`rs`: the next round trains the model of the
  last) has it merged into its weights first, then gets a fresh one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhfkit.errors import UserError
from rlhfkit.models.modules import unwrap

log = logging.getLogger("rlhfkit")

_PEFT_ATTR = "_rlhfkit_peft"  # the PeftModel around an adapted model (not a submodule)


def peft_model(model: torch.nn.Module) -> Any | None:
    """The PeftModel around `model` (a model `add_lora` adapted), else None."""
    return unwrap(model).__dict__.get(_PEFT_ATTR)


def has_lora(model: torch.nn.Module) -> bool:
    return peft_model(model) is not None


def task_type(model: torch.nn.Module) -> str:
    """PEFT's task for a Hugging Face model: SEQ_CLS for a reward/value model, i.e. a
    sequence-classification class, or any model with a `score` (or `classifier`) head,
    PEFT's SEQ_CLS heads, and no next-token head (`models.scalar_head`'s)."""
    if type(model).__name__.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    heads = any(isinstance(getattr(model, n, None), torch.nn.Module) for n in _SEQ_CLS_HEADS)
    no_lm_head = getattr(model, "get_output_embeddings", lambda: None)() is None
    return "SEQ_CLS" if heads and no_lm_head else "CAUSAL_LM"


_SEQ_CLS_HEADS = ("score", "classifier")  # PEFT trains these in full under SEQ_CLS


def add_lora(model: torch.nn.Module, opts: Any) -> torch.nn.Module:
    """Rank `opts.lora_r` adapters on `opts.lora_targets` of `model`, in place; returns
    `model` itself (module docstring). `opts.lora_r == 0`: `model` unchanged."""
    if not opts.lora_r:
        return model
    from peft import LoraConfig, get_peft_model

    if has_lora(model):  # the next round of `rs`: the last adapter becomes part of the base
        model = merge_lora_in_place(model)
    targets = list(opts.lora_targets)
    config = LoraConfig(
        task_type=task_type(model),
        r=opts.lora_r,
        lora_alpha=opts.lora_alpha,
        lora_dropout=opts.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # PEFT sets it itself
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # PEFT on v5
        try:
            peft = get_peft_model(model, config)
        except ValueError as e:  # e.g. no module matches --lora-targets
            raise UserError(f"--lora-targets {' '.join(targets)}: {e}") from None
    inner = peft.get_base_model()
    assert inner is model
    inner.__dict__[_PEFT_ATTR] = peft
    trained, total = count_parameters(inner)
    log.info("lora: training %d of %d parameters (%.2f%%)", trained, total, 100 * trained / total)
    return inner


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trained, all) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_lora_in_place(model: torch.nn.Module) -> torch.nn.Module:
    """Merge `model`'s adapter into its weights and remove the adapter layers (PEFT's
    `merge_and_unload`); returns the plain Hugging Face model (the same object)."""
    peft = peft_model(model)
    inner = peft.merge_and_unload()
    inner.__dict__.pop(_PEFT_ATTR, None)
    return inner


@contextmanager
def adapter_disabled(model: torch.nn.Module) -> Iterator[None]:
    """`model` computes as its base model inside (the adapter layers off)."""
    peft = peft_model(model)
    if peft is None:
        yield
        return
    with peft.disable_adapter():
        yield


class AdapterOff(torch.nn.Module):
    """A frozen role that is `policy` with its adapter switched off: the LoRA PPO reference
    (the base model, with no second copy of its weights). Its parameters are the policy's;
    before `policy` has an adapter, it is simply the policy."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    @property
    def config(self) -> Any:
        return self.policy.config

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.policy.get_input_embeddings()

    def get_output_embeddings(self) -> torch.nn.Module | None:
        return self.policy.get_output_embeddings()

    def forward(self, *args: Any, logits_to_keep: int | None = None, **kwargs: Any) -> Any:
        if logits_to_keep is not None:
            kwargs["logits_to_keep"] = logits_to_keep
        with torch.no_grad(), adapter_disabled(self.policy):
            return self.policy(*args, **kwargs)


def merged_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The plain Hugging Face state dict of adapted `model`, adapters merged: for each
    LoRA layer W + scaling * B A (transposed for GPT-2's Conv1D), the trained copy of a
    `modules_to_save` head in place of the original. From `state_dict` (keys as the
    model's own, e.g. gathered from shards) or the model's own; the model is untouched."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    sd = dict(model.state_dict() if state_dict is None else state_dict)
    out: dict[str, torch.Tensor] = {}
    lora_layers, saved = {}, {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            lora_layers[name] = mod
        elif isinstance(mod, ModulesToSaveWrapper):
            saved[name] = mod
    done: set[str] = set()
    with torch.no_grad():
        for name, mod in lora_layers.items():
            p = f"{name}." if name else ""
            (adapter,) = mod.active_adapters
            if adapter not in mod.lora_A:
                raise UserError(f"{name}: LoRA kind {type(mod).__name__} cannot be merged here")
            w = sd[f"{p}base_layer.weight"]
            a, b = sd[f"{p}lora_A.{adapter}.weight"], sd[f"{p}lora_B.{adapter}.weight"]
            delta = (b.float() @ a.float()) * mod.scaling[adapter]
            if getattr(mod, "fan_in_fan_out", False):
                delta = delta.T
            out[f"{p}weight"] = (w.float() + delta).to(w.dtype)
            done.update(
                k for k in sd if k.startswith(p) and ("lora_" in k or k == f"{p}base_layer.weight")
            )
        for name, mod in saved.items():
            p = f"{name}."
            keep = f"{p}modules_to_save.{mod.active_adapter}."
            for k in [k for k in sd if k.startswith(p)]:
                if k.startswith(keep):
                    out[p + k[len(keep) :]] = sd[k]
                done.add(k)
    for k, v in sd.items():
        if k not in done:
            out[k.replace(".base_layer.", ".")] = v
    left = [k for k in out if "lora_" in k or ".modules_to_save." in k or ".original_module." in k]
    if left:
        raise UserError(f"cannot merge the adapter into a plain model: {left[:3]}")
    return out


def save_adapter(
    model: torch.nn.Module,
    folder: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """The PEFT adapter folder of adapted `model` (`adapter_config.json` +
    `adapter_model.safetensors`, read by `peft.PeftModel.from_pretrained(base, folder)`);
    `state_dict`: the model's weights to take it from (a sharded model's, gathered)."""
    peft = peft_model(model)
    if peft is None:
        raise UserError("--save-adapter needs --lora-r > 0")
    kwargs = {}
    if state_dict is not None:  # PeftModel keys: the Hugging Face model's, one level down
        kwargs["state_dict"] = {f"base_model.model.{k}": v for k, v in state_dict.items()}
    peft.save_pretrained(str(folder), **kwargs)


def _is_trained_key(key: str) -> bool:
    return "lora_" in key or ".modules_to_save." in key


def adapter_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA model trains (adapters, the trained copy of a `modules_to_save` head):
    with the base weights it was built from, the whole model (checkpoints)."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if _is_trained_key(k)}


def load_adapter_state(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str = "checkpoint"
) -> None:
    """Copy an `adapter_state_dict` into LoRA `model` in place; the keys must match."""
    own = adapter_state_dict(model)
    if set(own) != set(state):
        raise UserError(
            f"{where}: its LoRA adapter does not match this run's (other --lora-r or "
            "--lora-targets?)"
        )
    params = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
