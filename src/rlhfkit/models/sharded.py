"""Checkpoints that every process writes and reads: one call for plain, DDP and FSDP2 runs.

`write_checkpoint` / `read_checkpoint` are called by ALL processes of a run:
- no model sharded (one process, DDP): rank 0 writes `checkpoint.save_checkpoint`'s folder
  (the others wait); every process reads it (`resume.load_checkpoint`);
- a model sharded (FSDP2): model and optimizer states go through
  `torch.distributed.checkpoint` (DCP) into `dcp/`, each process writing its own shards;
  each process's RNG state into `rng-rank<R>.pt`; rank 0 adds what users read, a plain
  Hugging Face folder per role gathered with a full state dict, and the schedulers and
  loop state. DCP re-shards on load, so a checkpoint written by N processes resumes at
  any number of processes, one included.
The folder is written under a temporary sibling that every process can find, and renamed
into place by rank 0 after everyone finished: a kill leaves the old or the new checkpoint.
(One node: the processes share the file system. Across nodes, `--out` must be shared.)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from rlhfkit import __version__
from rlhfkit.distributed import Dist, barrier
from rlhfkit.errors import UserError
from rlhfkit.files import commit_dir, start_dir
from rlhfkit.models import checkpoint as ckpt
from rlhfkit.models.lora import has_lora, save_adapter
from rlhfkit.models.resume import load_checkpoint, set_rng_state
from rlhfkit.models.wrap import full_state_dict, is_sharded, unwrap

DCP_DIR = "dcp"


def write_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    tokenizer: Any,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any],
    state: Mapping[str, Any],
    dist: Dist,
    adapter: bool = False,
) -> None:
    """One resumable checkpoint at `path`, written by every process (module docstring).
    `adapter`: a LoRA role's PEFT adapter folder too (--save-adapter)."""
    if not any(is_sharded(m) for m in models.values()):
        if dist.is_main:
            plain = {role: unwrap(m) for role, m in models.items()}
            # Looked up on the module at each call, so tests can patch it to kill a run
            # right after a given checkpoint.
            ckpt.save_checkpoint(
                path,
                models=plain,
                tokenizer=tokenizer,
                optimizers=optimizers,
                schedulers=schedulers,
                state=state,
                adapter=adapter,
            )
        barrier(dist)
        return
    if dist.is_main:
        start_dir(path, tag="sharded")
    barrier(dist)
    tmp = Path(path).absolute().parent / f".tmp-{Path(path).name}-sharded"  # start_dir's name
    fulls = {role: full_state_dict(m) for role, m in models.items()}  # collective
    dcp.save(_dcp_state(models, optimizers), checkpoint_id=str(tmp / DCP_DIR))
    torch.save(ckpt.rng_state(), tmp / f"rng-rank{dist.rank}.pt")
    barrier(dist)
    if dist.is_main:
        for role, model in models.items():
            folder = ckpt.role_dir(tmp, role, models)
            ckpt.write_hf(unwrap(model), tokenizer, folder, fulls[role])
            if adapter and has_lora(model):
                save_adapter(unwrap(model), folder / ckpt.ADAPTER_DIR, fulls[role])
        trainer_state = {
            "optimizers": {},  # in dcp/
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "generators": {},
            "rng": ckpt.rng_state(),
        }
        torch.save(trainer_state, tmp / ckpt.STATE_PT)
        meta = {
            "rlhfkit_version": __version__,
            "roles": list(models),
            "saved": time.time(),
            "sharded": True,
            "world_size": dist.world_size,
        }
        ckpt.write_state_json(
            tmp / ckpt.STATE_JSON, {"meta": meta, "state": json.loads(json.dumps(dict(state)))}
        )
        (tmp / ckpt.COMPLETE).write_text("")
        commit_dir(tmp, path)
    barrier(dist)


def read_checkpoint(
    path: str | Path,
    *,
    models: Mapping[str, torch.nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any],
    dist: Dist,
) -> dict[str, Any]:
    """Restore a `write_checkpoint` folder into the run's roles in place (every process);
    returns its loop state."""
    root = Path(path)
    if not (root / DCP_DIR).is_dir():
        if any(is_sharded(m) for m in models.values()):
            raise UserError(
                f"{root} was written without --strategy fsdp2: resume it with --strategy ddp"
            )
        plain = {role: unwrap(m) for role, m in models.items()}
        return load_checkpoint(root, models=plain, optimizers=optimizers, schedulers=schedulers)
    if not (root / ckpt.COMPLETE).is_file():
        raise UserError(f"{root} is not a complete rlhfkit checkpoint")
    meta = json.loads((root / ckpt.STATE_JSON).read_text())
    if sorted(meta["meta"]["roles"]) != sorted(models):
        raise UserError(
            f"{root} holds roles {meta['meta']['roles']}, this run has {sorted(models)}"
        )
    target = _dcp_state(models, optimizers)
    dcp.load(target, checkpoint_id=str(root / DCP_DIR))
    for role, model in models.items():
        opt = optimizers.get(role)
        set_state_dict(
            unwrap(model),
            opt if opt is not None else [],
            model_state_dict=target[role]["model"],
            optim_state_dict=target[role]["optim"],
        )
    trainer_state = torch.load(root / ckpt.STATE_PT, map_location="cpu", weights_only=True)
    for name, sched in schedulers.items():
        sched.load_state_dict(trainer_state["schedulers"][name])
    own = root / f"rng-rank{dist.rank}.pt"
    rng = torch.load(own, weights_only=True) if own.is_file() else trainer_state["rng"]
    set_rng_state(rng)
    return meta["state"]


def _dcp_state(
    models: Mapping[str, torch.nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
) -> dict[str, dict[str, Any]]:
    """{role: {"model": ..., "optim": ...}}: the states DCP saves or loads in place."""
    out = {}
    for role, model in models.items():
        opt = optimizers.get(role)
        msd, osd = get_state_dict(unwrap(model), opt if opt is not None else [])
        out[role] = {"model": msd, "optim": osd}
    return out


def export_model(
    model: torch.nn.Module,
    tokenizer: Any,
    folder: str | Path,
    *,
    dist: Dist,
    extra_json: Mapping[str, Mapping[str, Any]] | None = None,
    adapter: bool = False,
) -> None:
    """`checkpoint.export_hf` of a trained role, called by every process: a sharded
    model's weights are gathered, and rank 0 writes the plain Hugging Face files (a LoRA
    model merged; `adapter`: its PEFT adapter folder too)."""
    full = full_state_dict(model)  # collective when sharded
    if dist.is_main:
        ckpt.export_hf(
            unwrap(model),
            tokenizer,
            folder,
            extra_json=extra_json,
            state_dict=full,
            adapter=adapter,
        )
    barrier(dist)
