"""The run folder of a command that trains (`--out` of pretrain, sft, rm, ppo, rs): where
its checkpoints go, and whether a command may start, resume or replace the run in it.

Plain Python, no torch: `rlhfkit.validate` applies these rules before anything loads
(`check_output_dir`), and `prepare_output_dir` applies the same ones when it creates the
folder. Reading checkpoints back is `models/resume.py`'s.

Layout of a run:
    run_dir/run.json                      marks the folder as an rlhfkit run
    run_dir/config.yaml                   the resolved options
    run_dir/checkpoints/step-000123/      one resumable checkpoint (COMPLETE marker inside)
    run_dir/epoch-2/                      one at an epoch's end (SFT, RM), also resumable
    run_dir/round-1/                      a round of rejection sampling (its own resume)
    run_dir/config.json, *.safetensors    the final model, a plain HF folder (`export_hf`)

A run that never started holds only what a command writes before its first training
step (`START_UP`: run.json, config.yaml, an empty metrics.jsonl, tracker folders,
pretrain's tokenizer): no checkpoint, no model, no logged metric. The next command reuses
such a folder without --overwrite; `--resume` on it is an error (nothing to resume); a
command that fails before training removes what it wrote (`discard_unstarted`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import time
from pathlib import Path

from rlhfkit import __version__
from rlhfkit.errors import OutputExistsError, UserError

log = logging.getLogger("rlhfkit")

RUN_MARKER = "run.json"
COMPLETE = "COMPLETE"
STATE_JSON = "trainer_state.json"
CHECKPOINTS = "checkpoints"
START_UP = frozenset(
    {RUN_MARKER, "config.yaml", "metrics.jsonl", "tensorboard", "wandb", "mlruns", "tokenizer"}
)
"""What a command writes into --out before its first training step (metrics.jsonl only
while empty): a folder holding nothing else never started."""

_STEP_RE = re.compile(r"^step-(\d+)$")
_EPOCH_RE = re.compile(r"^epoch-(\d+)$")


# ---------------------------------------------------------------------------------------
# Checkpoints in the run folder
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


# ---------------------------------------------------------------------------------------
# --out itself: new, reused, resumed or replaced
# ---------------------------------------------------------------------------------------


def never_started(folder: str | Path) -> bool:
    """`folder` is an rlhfkit run that wrote nothing but its start-up files (`START_UP`)."""
    root = Path(folder)
    if not (root / RUN_MARKER).is_file():
        return False
    for child in root.iterdir():
        if child.name not in START_UP:
            return False
        if child.name == "metrics.jsonl" and (not child.is_file() or child.stat().st_size):
            return False
    return True


def resumable(folder: str | Path, checkpointed: bool = True) -> bool:
    """Whether `--resume` has something to continue in `folder`: a complete checkpoint, or
    (`checkpointed=False`: a command resuming from folders of its own, rs's `round-N/`)
    anything past the start-up files."""
    root = Path(folder)
    if not (root / RUN_MARKER).is_file():
        return False
    if checkpointed:
        return latest_checkpoint(root) is not None
    return not never_started(root)


def check_output_dir(
    out: str | Path, *, resume: bool, overwrite: bool, checkpointed: bool = True
) -> str:
    """What a command may do with its --out, decided before anything is written:
    'new' (missing or empty), 'reuse' (a run that never started), 'resume' or 'overwrite'.
    A UserError naming the folder otherwise:

    - a file, or a non-empty folder that holds no rlhfkit run (we only delete our own);
    - another run, without --resume or --overwrite;
    - --resume with nothing to resume: a missing (mistyped?) or empty folder, a run that
      never started, or one that stopped before its first checkpoint.
    """
    if resume and overwrite:
        raise UserError("pass --resume or --overwrite, not both")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file: --out must be a folder")
    non_empty = folder.is_dir() and any(folder.iterdir())
    if non_empty and not (folder / RUN_MARKER).is_file():
        raise OutputExistsError(
            f"{folder} is not empty and holds no rlhfkit run (no {RUN_MARKER}): "
            "refusing to write into or delete it; choose a new or empty --out"
        )
    if resume:
        if not folder.exists():
            raise UserError(
                f"--resume: {folder} does not exist (a mistyped --out?): nothing to resume"
            )
        if not non_empty:
            raise UserError(f"--resume: {folder} is empty: nothing to resume")
        if never_started(folder):
            raise UserError(
                f"--resume: {folder} holds a run that never started (no checkpoint, model or "
                "logged metric): nothing to resume; run the command without --resume"
            )
        if not resumable(folder, checkpointed):
            raise UserError(
                f"--resume: {folder} has no checkpoint to resume from (the run stopped before "
                "its first; --save-every writes them more often): pass --overwrite to start again"
            )
        return "resume"
    if non_empty and never_started(folder):
        return "reuse"
    if non_empty and not overwrite:
        raise OutputExistsError(
            f"{folder} holds another run: pass --resume to continue it or --overwrite to replace it"
        )
    return "overwrite" if non_empty else "new"


_PREPARED: dict[Path, tuple[Path | None, bool]] = {}
"""Run folders this process prepared for a new run -> (the outermost folder it made for it,
None where the user's empty folder was there before; whether its command resumes from
checkpoints): what `discard_unstarted` may remove after a failed start."""


def prepare_output_dir(
    out: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    command: str | None = None,
    checkpointed: bool = True,
) -> None:
    """Create `out` for a run, by the rules of `check_output_dir`, and mark it (`run.json`).

    A new run gets a new `run.json`; a run that never started is cleared and reused (a
    note says so); --overwrite deletes the earlier run; --resume keeps everything and
    adds the time to run.json's "resumed". `checkpointed=False`: the command resumes from
    folders of its own, not from `latest_checkpoint(out)` (`rs`: its `round-N/`).
    """
    action = check_output_dir(out, resume=resume, overwrite=overwrite, checkpointed=checkpointed)
    folder = Path(out)
    made = _outermost_missing(folder) if action == "new" else folder  # reused: ours anyway
    if action == "overwrite":
        shutil.rmtree(folder)
    elif action == "reuse":
        log.warning("note: %s holds a run that never started: starting it afresh", folder)
        _clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / RUN_MARKER
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if action == "resume":
        info = json.loads(marker.read_text())
        info.setdefault("resumed", []).append(now)
    else:
        info = {
            "rlhfkit_version": __version__,
            "command": command if command is not None else " ".join(sys.argv),
            "created": now,
        }
        _PREPARED[folder] = (made, checkpointed)
    marker.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _clear(folder: Path) -> None:
    """Remove the start-up files of a run that never started (nothing else is there)."""
    for child in folder.iterdir():
        if child.name in START_UP:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def discard_unstarted() -> list[Path]:
    """After a command failed: clear each run folder it prepared where no training state
    followed (`never_started`), and remove the folders it made for it (parents too), not a
    folder of the user's that was there, empty, before. Returns the folders cleared;
    forgets every prepared folder either way."""
    cleared = []
    for folder, (made, _) in _PREPARED.items():
        if folder.is_dir() and never_started(folder):
            _clear(folder)
            cleared.append(folder)
            if made is not None:
                for gone in [folder, *folder.parents]:
                    if any(gone.iterdir()):
                        break
                    gone.rmdir()
                    if gone == made:
                        break
    _PREPARED.clear()
    return cleared


def _outermost_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its parents that does not exist (None: it exists)."""
    missing = None
    for p in [folder, *folder.parents]:
        if p.exists():
            break
        missing = p
    return missing


def unresumable() -> list[Path]:
    """The run folders this process started that hold nothing `--resume` could continue."""
    return [f for f, (_, ckpt) in _PREPARED.items() if f.is_dir() and not resumable(f, ckpt)]


def forget_prepared() -> None:
    """A command finished: its run folders are its results, never to be discarded."""
    _PREPARED.clear()


def resume_flags(folder: str | Path, checkpointed: bool = True) -> dict[str, bool]:
    """How to run a command again into `folder`, where an earlier run of it may have been
    interrupted (the pipeline's stages): --resume where there is something to resume,
    --overwrite where the run stopped before its first checkpoint, neither otherwise (a
    new folder, or a run that never started, which is reused)."""
    root = Path(folder)
    if not (root / RUN_MARKER).is_file() or never_started(root):
        return {"resume": False}
    if resumable(root, checkpointed):
        return {"resume": True}
    return {"resume": False, "overwrite": True}
