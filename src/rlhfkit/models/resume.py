"""Reading checkpoints back: what `--resume` needs.

`load_checkpoint` restores a `save_checkpoint` folder (`models/checkpoint.py`) into models,
optimizers, schedulers and the RNGs built as for the saved run. The run folder they live
in (`latest_checkpoint` finds the one to resume from, `prune_checkpoints` keeps the newest
few, `prepare_output_dir` decides whether `--out` is new, reused, resumed or overwritten)
is `models/run_folder.py`'s, torch-free, re-exported here.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from rlhfkit.errors import UserError
from rlhfkit.models.checkpoint import COMPLETE, LORA_STATE, STATE_JSON, STATE_PT, role_dir
from rlhfkit.models.load import load_state_like
from rlhfkit.models.lora import has_lora, load_adapter_state
from rlhfkit.models.run_folder import (  # noqa: F401 (re-exported: the run folder)
    RUN_MARKER,
    epoch_dir,
    latest_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    step_dir,
)
from rlhfkit.models.wrap import unwrap

log = logging.getLogger("rlhfkit")


# ---------------------------------------------------------------------------------------
# One checkpoint: models + optimizers + schedulers + RNG + loop state
# ---------------------------------------------------------------------------------------


def set_rng_state(state: Mapping[str, Any]) -> None:
    """The inverse of `checkpoint.rng_state`."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning(
                "checkpoint has CUDA RNG states for %d devices, here are %d: not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


def _load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Copy the safetensors weights of `folder` into `model` in place. A LoRA model takes
    its trained tensors (adapters, a reward model's head) from `LORA_STATE`: its frozen
    base weights are those it was built from, and the folder's model is the merged one."""
    model = unwrap(model)
    if has_lora(model) or (folder / LORA_STATE).is_file():
        if not has_lora(model) or not (folder / LORA_STATE).is_file():
            raise UserError(
                f"{folder} was written {'with' if not has_lora(model) else 'without'} "
                "--lora-r: resume it with the options it was written with"
            )
        load_adapter_state(model, load_file(str(folder / LORA_STATE)), str(folder))
        return
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder} holds no .safetensors weights")
    loaded: dict[str, torch.Tensor] = {}
    for f in files:
        loaded.update(load_file(str(f)))
    own = dict(model.state_dict(keep_vars=True))
    if set(loaded) - set(own):  # keys renamed on save: let the model's class map them
        loaded = load_state_like(model, folder)
    missing = set(own) - set(loaded)
    # save_pretrained drops tied copies (lm_head.weight tied to the embeddings): fine when
    # the missing tensor is the very same tensor as a loaded one.
    loaded_ptrs = {own[k].data_ptr() for k in loaded if k in own}
    untied = [k for k in missing if own[k].data_ptr() not in loaded_ptrs]
    if untied:
        raise UserError(f"{folder}: weights missing for {sorted(untied)[:5]}")
    with torch.no_grad():
        for key, tensor in loaded.items():
            own[key].copy_(tensor)


def load_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore a `save_checkpoint` folder in place; returns its `state` dict.

    Models, optimizers and schedulers must be built as for the saved run (same roles,
    shapes and parameter groups). RNG states are restored too, so the run continues the
    same random stream.
    """
    root = Path(path)
    if not (root / COMPLETE).is_file() or not (root / STATE_PT).is_file():
        raise UserError(f"{root} is not a complete rlhfkit checkpoint")
    meta = json.loads((root / STATE_JSON).read_text())
    saved_roles = meta["meta"]["roles"]
    if sorted(saved_roles) != sorted(models):
        raise UserError(f"{root} holds roles {saved_roles}, but this run has {sorted(models)}")
    trainer_state = torch.load(root / STATE_PT, map_location="cpu", weights_only=True)
    for role, model in models.items():
        _load_weights(model, role_dir(root, role, models))
    for kind, objects in (("optimizers", optimizers), ("schedulers", schedulers)):
        for name, obj in (objects or {}).items():
            if name not in trainer_state[kind]:
                raise UserError(f"{root}: no state for {kind[:-1]} {name!r}")
            obj.load_state_dict(trainer_state[kind][name])
    for name, gen in (generators or {}).items():
        gen.set_state(trainer_state["generators"][name])
    set_rng_state(trainer_state["rng"])
    return meta["state"]
