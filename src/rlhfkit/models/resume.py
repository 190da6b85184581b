"""Reading checkpoints back, and the run folder they live in: what `--resume` needs.

`load_checkpoint` restores a `save_checkpoint` folder (`models/checkpoint.py`) into models,
optimizers, schedulers and the RNGs built as for the saved run. `latest_checkpoint` finds
the one to resume from, `prune_checkpoints` keeps the newest few, and `prepare_output_dir`
decides, before anything is written, whether `--out` is new, resumed or overwritten.

Layout of a run:
    run_dir/run.json                      marks the folder as an rlhfkit run
    run_dir/checkpoints/step-000123/      one resumable checkpoint (COMPLETE marker inside)
    run_dir/epoch-2/                      one at an epoch's end (SFT, RM), also resumable
    run_dir/config.json, *.safetensors    the final model, a plain HF folder (`export_hf`)
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from rlhfkit import __version__
from rlhfkit.errors import OutputExistsError, UserError
from rlhfkit.models.checkpoint import (
    CHECKPOINTS,
    COMPLETE,
    LORA_STATE,
    STATE_JSON,
    STATE_PT,
    role_dir,
    write_state_json,
)
from rlhfkit.models.load import load_state_like
from rlhfkit.models.lora import has_lora, load_adapter_state
from rlhfkit.models.wrap import unwrap

log = logging.getLogger("rlhfkit")

RUN_MARKER = "run.json"
_STEP_RE = re.compile(r"^step-(\d+)$")
_EPOCH_RE = re.compile(r"^epoch-(\d+)$")


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


# ---------------------------------------------------------------------------------------
# The run folder: where checkpoints go, the latest one, pruning, --out itself
# ---------------------------------------------------------------------------------------


def step_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of optimizer step `step` goes: run_dir/checkpoints/step-000123."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def epoch_dir(run_dir: str | Path, epoch: int) -> Path:
    """Where the checkpoint at the end of epoch `epoch` (1-based) goes: run_dir/epoch-2."""
    return Path(run_dir) / f"epoch-{epoch}"


def _complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and child.is_dir() and (child / COMPLETE).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def _saved_step(folder: Path) -> int | None:
    """The optimizer step a checkpoint was saved at (None: not a complete checkpoint)."""
    if not (folder / COMPLETE).is_file() or not (folder / STATE_JSON).is_file():
        return None
    step = json.loads((folder / STATE_JSON).read_text())["state"].get("step")
    if step is None and (m := _STEP_RE.match(folder.name)):
        step = int(m.group(1))  # a step folder's name is its step when the state has none
    return step


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the most optimizer steps, `checkpoints/step-N/` or
    `epoch-N/`, ignoring temporary and incomplete folders (no `COMPLETE` marker).

    On a tie the epoch folder wins: saved after its epoch's end-of-epoch work, it is the
    further of the two (a step folder of the same step would redo that work on resume).
    """
    root = Path(run_dir)
    ranked = []  # ((step, is an epoch folder, number in the name), folder)
    for folder in [*root.glob(f"{CHECKPOINTS}/step-*"), *root.glob("epoch-*")]:
        m = _STEP_RE.match(folder.name) or _EPOCH_RE.match(folder.name)
        if m and (step := _saved_step(folder)) is not None:
            is_epoch = folder.name.startswith("epoch-")
            ranked.append(((step, is_epoch, int(m.group(1))), folder))
    return max(ranked, key=lambda r: r[0])[1] if ranked else None


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest complete checkpoints (<= 0 keeps all).

    Incomplete step folders older than the newest complete one go too. Returns what was
    deleted.
    """
    found = _complete_checkpoints(run_dir)
    if keep_last <= 0 or not found:
        return []
    doomed = [p for _, p in found[:-keep_last]]
    newest = found[-1][0]
    root = Path(run_dir) / CHECKPOINTS
    for child in root.iterdir():
        m = _STEP_RE.match(child.name)
        if m and int(m.group(1)) < newest and not (child / COMPLETE).is_file():
            doomed.append(child)
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def prepare_output_dir(
    out: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    command: str | None = None,
    checkpointed: bool = True,
) -> None:
    """Create `out` for a run, refusing to clobber anything silently.

    - new or empty folder: created, `run.json` written;
    - a previous rlhfkit run (has `run.json`): needs `resume` (kept; a run without a
      checkpoint starts fresh, with a note) or `overwrite` (deleted and recreated);
    - any other non-empty folder: refused, even with `overwrite` (we only delete our own).

    `checkpointed=False`: the command resumes from folders of its own, not from
    `latest_checkpoint(out)` (`rs`: its `round-N/`), so the note would be wrong there.
    """
    if resume and overwrite:
        raise UserError("pass --resume or --overwrite, not both")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file: --out must be a folder")
    is_run = (folder / RUN_MARKER).is_file()
    non_empty = folder.is_dir() and any(folder.iterdir())
    if non_empty and not is_run:
        raise OutputExistsError(
            f"{folder} is not empty and holds no rlhfkit run (no {RUN_MARKER}): "
            "refusing to write into or delete it; choose a new or empty --out"
        )
    if non_empty and not resume and not overwrite:
        raise OutputExistsError(
            f"{folder} holds another run: pass --resume to continue it or --overwrite to replace it"
        )
    if non_empty and overwrite:
        shutil.rmtree(folder)
    if resume and checkpointed and latest_checkpoint(folder) is None:
        log.warning("note: %s has no checkpoint to resume from: starting fresh", folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / RUN_MARKER
    info = json.loads(marker.read_text()) if marker.is_file() else {}
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if info:
        info.setdefault("resumed", []).append(now)
    else:
        info = {
            "rlhfkit_version": __version__,
            "command": command if command is not None else " ".join(sys.argv),
            "created": now,
        }
    write_state_json(marker, info)
