"""What a Hugging Face model folder holds, read from its config.json and the headers of
its safetensors files alone (no torch, no transformers): its kind (causal LM, reward
model), complete weights, positions and head size. `rlhfkit.validate` checks every model
folder of a command with these before torch loads; `models.load` again before it loads
weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rlhfkit.errors import UserError
from rlhfkit.models.gguf_header import is_gguf_path, read_gguf_header

KIND_WORDS = {"causal-lm": "a causal LM", "reward": "a reward model"}


_EPOCH_RE = re.compile(r"^epoch-(\d+)$")


SCORE_HEAD_MARKER = "rlhfkit_score_head"
"""The config.json key of a backbone + score head reward model (models/scalar_head.py)."""


def model_folders(path: str | Path, runs: bool = False) -> list[Path]:
    """The model folders a value stands for: itself, or (`runs`: select's --checkpoints)
    the `epoch-N/` model folders of a run folder, by N."""
    folder = Path(path)
    if not runs or not folder.is_dir():
        return [folder]
    epochs = sorted(
        (int(m.group(1)), c)
        for c in folder.iterdir()
        if (m := _EPOCH_RE.match(c.name)) and (c / "config.json").is_file()
    )
    if epochs:
        return [c for _, c in epochs]
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} holds no epoch-*/ checkpoint and no config.json")
    return [folder]


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
    if isinstance(config.get(SCORE_HEAD_MARKER), dict):  # a family with no seq-cls class
        return "reward", ", ".join(archs) or "a backbone + score head"
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


# --- Sizes -------------------------------------------------------------------------------

POSITION_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "n_ctx",
    "max_sequence_length",
    "seq_length",
)
"""Where a config.json says how many positions its model has (the first one found)."""


def max_positions(folder: str | Path) -> tuple[int, str] | None:
    """(positions, the config.json key that says so) of a model folder; None where its
    config.json names no limit (ALiBi models such as Bloom) or cannot be read. A RoPE
    scaling (yarn, dynamic, linear) past the original length counts. A .gguf file: its
    header's `<architecture>.context_length`."""
    if is_gguf_path(folder):
        header = read_gguf_header(folder)
        n = header.metadata.get(f"{header.architecture}.context_length")
        return (n, f"{header.architecture}.context_length") if isinstance(n, int) else None
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    config = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    key = next((k for k in POSITION_KEYS if isinstance(config.get(k), int)), None)
    if key is None:
        return None
    n = config[key]
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    factor = rope.get("factor") if isinstance(rope, dict) else None
    if kind in ("yarn", "dynamic", "linear") and isinstance(factor, (int, float)) and factor > 1:
        n = max(n, int(rope.get("original_max_position_embeddings", n) * factor))
    return n, key


def head_dim(folder: Path) -> int | None:
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
