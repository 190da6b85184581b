"""Writing checkpoints and model folders, atomically: nothing is lost.

Every folder is written under a temporary sibling and renamed into place, so a kill at any
moment leaves either the old or the new complete folder, never a half-written one.
Model weights are plain Hugging Face folders (safetensors: `save_hf`, `export_hf`); a
resumable checkpoint (`save_checkpoint`) adds the loop state, `trainer_state.pt`
(optimizers, schedulers, RNG; read back with `weights_only=True`, so no arbitrary
unpickling) and `trainer_state.json` (step, epoch, data position, KL controller...).

One checkpoint folder (`save_checkpoint`):
    <role>/config.json, *.safetensors     each role's model, a plain HF folder (at the top
                                          when the only role is "model"); a LoRA model's
                                          merged, + lora_state.safetensors (+ adapter/)
    trainer_state.pt, trainer_state.json  the loop state
    COMPLETE                              written last: the folder is whole
Reading it back, and the run folder's layout (where checkpoints go): `models/resume.py`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from rlhfkit import __version__
from rlhfkit.files import atomic_dir, fsync_dir, to_json
from rlhfkit.models.load import quiet_progress
from rlhfkit.models.lora import adapter_state_dict, has_lora, merged_state_dict, save_adapter
from rlhfkit.models.run_folder import CHECKPOINTS, COMPLETE, STATE_JSON
from rlhfkit.models.wrap import unwrap

STATE_PT = "trainer_state.pt"
ADAPTER_DIR = "adapter"  # --save-adapter: the PEFT adapter beside the merged model
LORA_STATE = "lora_state.safetensors"  # a LoRA checkpoint's trained tensors (resume)
_ROLE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------
# Hugging Face folders
# ---------------------------------------------------------------------------------------


def write_hf(
    model: torch.nn.Module,
    tokenizer: Any,
    folder: Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """`save_pretrained` (+ the tokenizer); `state_dict`: the weights to write instead of
    the module's own (a sharded model's, gathered). A LoRA model (models/lora.py) is
    written merged: a plain model."""
    model = unwrap(model)
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained)")
    if has_lora(model):
        state_dict = merged_state_dict(model, state_dict)
    with quiet_progress():
        model.save_pretrained(folder, **({"state_dict": dict(state_dict)} if state_dict else {}))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def write_state_json(path: Path, data: Any) -> None:
    """Sorted, indented JSON; NaN and infinities as null (`files.to_json`)."""
    path.write_text(to_json(data, indent=2, sort_keys=True) + "\n")


def _write_extra(folder: Path, extra_json: Mapping[str, Mapping[str, Any]] | None) -> None:
    for name, data in (extra_json or {}).items():
        if Path(name).name != name or name in ("config.json", "generation_config.json"):
            raise ValueError(f"extra_json file name {name!r} must be a plain, new file name")
        write_state_json(folder / name, data)


def save_hf(
    model: torch.nn.Module,
    tokenizer: Any,
    path: str | Path,
    extra_json: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Write `model` (+ tokenizer) as a Hugging Face folder, atomically.

    `from_pretrained(path)` gives the same logits. `extra_json` maps file names to dicts
    written as JSON inside the folder (e.g. {"rlhfkit.json": {...resolved config...}}).
    Returns the final path.
    """
    final = Path(path)
    with atomic_dir(final) as tmp:
        write_hf(model, tokenizer, tmp)
        _write_extra(tmp, extra_json)
    return final


_HF_WEIGHTS = ("*.safetensors", "*.safetensors.index.json")


def export_hf(
    model: torch.nn.Module,
    tokenizer: Any,
    folder: str | Path,
    extra_json: Mapping[str, Mapping[str, Any]] | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    adapter: bool = False,
) -> Path:
    """Write the HF files of `model` (+ tokenizer) INTO an existing folder, e.g. a run folder.

    Unlike `save_hf`, the folder's other contents (run.json, checkpoints/, logs) stay. The
    files are written in full to a temporary subfolder first, then each is moved in with
    an atomic rename, config.json last: a kill leaves every file either old or new, and a
    folder whose config.json is new has all its new weights. Weight files of an earlier
    export that the new one does not have (other shard counts) are removed. A LoRA model
    is written merged (a plain model); `adapter`: its PEFT adapter folder too,
    `folder/adapter/`.
    """
    dest = Path(folder)
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f".tmp-export-{os.getpid()}"
    with atomic_dir(staging) as tmp:
        write_hf(model, tokenizer, tmp, state_dict)
        _write_extra(tmp, extra_json)
        if adapter:
            save_adapter(unwrap(model), tmp / ADAPTER_DIR, state_dict)
    try:
        new = {p.name for p in staging.iterdir()}
        stale = [p for pat in _HF_WEIGHTS for p in dest.glob(pat) if p.name not in new]
        order = sorted(new, key=lambda n: n == "config.json")  # config.json last
        for name in order:
            if (staging / name).is_dir():  # the adapter folder: replaced whole
                shutil.rmtree(dest / name, ignore_errors=True)
            os.replace(staging / name, dest / name)
        fsync_dir(dest)
        for p in stale:
            p.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------------------
# Resumable checkpoints: models + optimizers + schedulers + RNG + loop state
# ---------------------------------------------------------------------------------------


def role_dir(root: Path, role: str, roles: Mapping[str, Any]) -> Path:
    # One role called "model": HF files at the top, so the checkpoint loads with from_pretrained.
    return root if list(roles) == ["model"] else root / role


def rng_state() -> dict[str, Any]:
    """RNG states as tuples, ints and tensors only, so that weights_only=True reads them."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    tokenizer: Any,
    optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
    schedulers: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    adapter: bool = False,
) -> Path:
    """Write one resumable checkpoint folder, atomically (rank 0 only).

    Each model is an HF folder `path/<role>/` (or `path/` itself when the only role is
    "model"; a LoRA model merged, its trained tensors also in `LORA_STATE`); optimizer,
    scheduler, RNG and `generators` states go to `trainer_state.pt`, and `state`
    (JSON-serialisable: step, epoch, data position, KL coefficient...) to
    `trainer_state.json`. A `COMPLETE` marker is written last, before the rename.
    """
    if not models:
        raise ValueError("save_checkpoint needs at least one model")
    for role in models:
        if not _ROLE_RE.match(role) or role in (CHECKPOINTS,):
            raise ValueError(f"bad role name {role!r}")
    state = dict(state or {})
    try:
        state_text = json.dumps(state, indent=2, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"checkpoint state must be JSON-serialisable: {e}") from e
    trainer_state = {
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
        "rng": rng_state(),
    }
    final = Path(path)
    with atomic_dir(final) as tmp:
        for role, model in models.items():
            folder = role_dir(tmp, role, models)
            write_hf(model, tokenizer, folder)
            if has_lora(model):  # what resumes: the base weights are frozen (--model's)
                save_file(adapter_state_dict(unwrap(model)), str(folder / LORA_STATE))
                if adapter:  # --save-adapter: the PEFT adapter folder too
                    save_adapter(unwrap(model), folder / ADAPTER_DIR)
        torch.save(trainer_state, tmp / STATE_PT)
        meta = {"rlhfkit_version": __version__, "roles": list(models), "saved": time.time()}
        write_state_json(tmp / STATE_JSON, {"meta": meta, "state": json.loads(state_text)})
        (tmp / COMPLETE).write_text("")
    return final
