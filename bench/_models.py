"""Shared by the three *_vs_trl.py benchmarks: a user's Hugging Face causal LM folder as the
model under test (`--model DIR`), and TRL's configurations as shipped and as tuned.

`--model DIR` replaces the rlhfkit presets (and the tokenizer trained on the world's corpus)
by an existing causal LM folder (config.json, safetensors, tokenizer), e.g.
SmolLM2-135M-Instruct. Its own tokenizer encodes the built-in world's data, both libraries
load the very same folder (or the reward-model folder built from it, with its tokenizer),
and each script still checks that both sides see the same token sequences.

TRL configurations, by name (the scripts' --configs / --trl-configs):
  trl               as tuned: TRL's config with the pins each script lists (fp32, no
                    gradient checkpointing, ...), so that both sides do the same arithmetic
  trl-shipped       as shipped: TRL's config defaults, except what the comparison needs to
                    run at all (output folder, CPU, step count, batch, learning rate and
                    schedule as on rlhfkit's side, no reports, no saving)
  trl+S             as tuned, with the suspect S back at TRL's default (one at a time)
  trl-shipped-S     as shipped, with the suspect S pinned as in the tuned configuration
Suspects are named groups of the tuned pins (each script's TRL_SUSPECTS), e.g. `bf16`
(TRL's default bf16 autocast) or `ckpt` (its default gradient checkpointing).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

MODEL_HELP = (
    "a Hugging Face causal LM folder (config.json, safetensors, tokenizer) to benchmark "
    "instead of the presets, e.g. /work/models/smollm2-135m-instruct: its own tokenizer "
    "encodes the world's data, both sides load this folder"
)


def add_model_option(parser: argparse.ArgumentParser, replaces: str) -> None:
    """`--model DIR`, replacing the script's `replaces` option (its presets)."""
    parser.add_argument(
        "--model", metavar="DIR", default=None, help=f"{MODEL_HELP} ({replaces} is ignored)"
    )


def check_model_dir(path: str) -> Path:
    """The folder, or exit with one line naming what is missing."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        sys.exit(f"--model {path}: no config.json there (a Hugging Face model folder is needed)")
    if not any(folder.glob("*.safetensors")):
        sys.exit(f"--model {path}: no .safetensors weights there")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        sys.exit(f"--model {path}: no tokenizer (tokenizer.json or tokenizer.model) there")
    return folder


def label(folder: str | Path) -> str:
    """The name a folder goes by in the tables (its last path component)."""
    return Path(folder).name


def _safetensors_params(folder: Path) -> int:
    """Number of weights, read from the safetensors headers (no tensor loaded)."""
    total = 0
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                total += n
    return total


def describe(folder: str | Path, tokenizer: Any) -> str:
    """One line: architecture, size, vocabulary and the special tokens that matter here."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    arch = ",".join(cfg.get("architectures") or [cfg.get("model_type", "?")])
    pad = tokenizer.pad_token
    pad_note = " (= EOS)" if tokenizer.pad_token_id == tokenizer.eos_token_id else ""
    return (
        f"{label(folder)}: {arch}, {text.get('num_hidden_layers')} layers x hidden "
        f"{text.get('hidden_size')}, vocab {text.get('vocab_size')}, "
        f"tied embeddings {text.get('tie_word_embeddings', False)}, "
        f"{_safetensors_params(folder) / 1e6:.1f}M weights; BOS {tokenizer.bos_token!r}, "
        f"EOS {tokenizer.eos_token!r}, pad {pad!r}{pad_note}"
    )


ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def cpu_line() -> str:
    """What decides bf16's cost here: torch's CPU kernels, the CPU's native bf16
    instructions, and any instruction-set caps in the environment (e.g. ONEDNN_MAX_CPU_ISA=AVX2
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 to run as an AVX2-only CPU would)."""
    import torch

    flags: list[str] = []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    caps = " ".join(f"{k}={os.environ[k]}" for k in ISA_CAPS if k in os.environ)
    return (
        f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}; bf16 instructions: "
        f"{'/'.join(native) or 'none'}; instruction-set caps: {caps or 'none'}"
    )


def world(work: Path) -> Path:
    """The built-in world (seed 0) in work/world, made once."""
    from rlhfkit.world import make_world

    folder = work / "world"
    if not (folder / "world.json").is_file():
        make_world(folder, seed=0)
    return folder


# ---------------------------------------------------------------------------------------
# TRL as shipped and as tuned
# ---------------------------------------------------------------------------------------


def is_trl_variant(name: str, suspects: dict[str, tuple[str, ...]]) -> bool:
    """Whether `name` is one of the TRL configuration names in the module docstring."""
    if name in ("trl", "trl-shipped"):
        return True
    for prefix in ("trl+", "trl-shipped-"):
        if name.startswith(prefix) and name[len(prefix) :] in suspects:
            return True
    return False


def trl_variant(
    name: str,
    needed: dict[str, Any],
    tuned: dict[str, Any],
    suspects: dict[str, tuple[str, ...]],
) -> dict[str, Any]:
    """The config keyword arguments of a TRL configuration name (module docstring).

    `needed`: what every TRL configuration sets (to run here, and to do the same work);
    `tuned`: the pins on top of it; `suspects`: name -> the tuned keys it covers."""
    if not is_trl_variant(name, suspects):
        raise ValueError(f"unknown TRL configuration {name!r}")
    for keys in suspects.values():
        assert all(k in tuned for k in keys), f"suspect keys {keys} not all in the tuned pins"
    if name == "trl":
        return {**needed, **tuned}
    if name == "trl-shipped":
        return dict(needed)
    if name.startswith("trl+"):
        back = suspects[name[len("trl+") :]]
        return {**needed, **{k: v for k, v in tuned.items() if k not in back}}
    pinned = suspects[name[len("trl-shipped-") :]]
    return {**needed, **{k: tuned[k] for k in pinned}}


def variant_description(name: str, suspects: dict[str, tuple[str, ...]]) -> str:
    """A short description for the tables."""
    if name == "trl":
        return "as tuned"
    if name == "trl-shipped":
        return "as shipped (TRL defaults)"
    if name.startswith("trl+"):
        s = name[len("trl+") :]
        return f"tuned, {'/'.join(suspects[s])} at TRL's default"
    s = name[len("trl-shipped-") :]
    return f"shipped, {'/'.join(suspects[s])} as tuned"


def variant_names_help(suspects: dict[str, tuple[str, ...]]) -> str:
    keys = ", ".join(f"{s} ({'/'.join(k)})" for s, k in suspects.items())
    return (
        "TRL configurations: trl (as tuned), trl-shipped (TRL's defaults), trl+S (tuned with "
        f"suspect S at TRL's default), trl-shipped-S (shipped with S as tuned); suspects: {keys}"
    )


def differs_from_defaults(config: Any, skip: tuple[str, ...] = ("output_dir",)) -> dict:
    """The fields of a TRL config (a dataclass) whose value differs from that class's
    default construction: what a configuration pins, stated from the object itself.
    (The default is built with use_cpu=True, which a machine without a GPU needs for bf16.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = type(config)(output_dir=config.output_dir, use_cpu=True)
    out = {"use_cpu": True} if config.use_cpu else {}
    for f in dataclasses.fields(config):
        if f.name in skip or f.name.startswith("_") or not f.init:
            continue
        mine, theirs = getattr(config, f.name, None), getattr(default, f.name, None)
        if mine != theirs:
            out[f.name] = mine
    return out


def format_settings(settings: dict) -> str:
    """`k=v, ...` sorted by name; enums by their value."""
    shown = {k: v.value if isinstance(v, enum.Enum) else v for k, v in settings.items()}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "(none)"
