"""Rules that join options, named by the `CheckedWith` markers of `config.fields` (and a
few value checks named by `CheckedBy`). Each takes the whole config (or the one value) and
raises a UserError naming the option; `rlhfkit.validate` runs them before torch is
imported. `check_options` (at the end) walks every marker that reads no data file: each
command's entry function calls it first, so a config built in Python is checked as the
command line's is, with the same one-line errors, and no loop re-checks a range by hand.

Plain Python: no torch, no transformers.
"""

from __future__ import annotations

import importlib
import os
import sys
import typing
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config.base import parse_rm_spec, parse_weights
from rlhfkit.config.fields import (
    CheckedBy,
    CheckedWith,
    Marker,
    Range,
    coerce,
    field_markers,
    field_types,
)
from rlhfkit.errors import UserError

# --- the reward: --rm / --combine / --weights / --rule-reward ----------------------------


def one_reward(cfg: Any) -> None:
    """Exactly one reward: --rm (one or more) or --rule-reward."""
    if cfg.rule_reward and cfg.rm:
        raise UserError("--rm and --rule-reward both given: the reward is one of them")
    if not cfg.rule_reward and not cfg.rm:
        raise UserError(
            "no reward given: pass --rm NAME=DIR or NAME=URL (repeatable) or --rule-reward "
            "(gold, length or count:TEXT), one of them"
        )


def rm_names(cfg: Any) -> list[str]:
    """The names of the --rm reward models, in order."""
    return [parse_rm_spec(spec)[0] for spec in cfg.rm]


def reward_models(cfg: Any) -> None:
    """The --rm names fit --combine: distinct; one RM for 'single'; the RMs --weights names
    for 'weighted-sum'; --helpfulness-rm and --safety-rm for 'llama2'."""
    if not cfg.rm:
        return
    names = rm_names(cfg)
    if len(set(names)) != len(names):
        raise UserError(f"--rm: reward model names must be distinct, got {names}")
    given = ", ".join(names)
    if cfg.combine == "single" and len(names) > 1:
        raise UserError(
            f"--combine single scores with one reward model, got {len(names)} ({given}): "
            "give one --rm, or combine them with --combine weighted-sum or llama2"
        )
    if cfg.combine == "weighted-sum" and cfg.weights:
        unknown = [n for n in parse_weights(cfg.weights) if n not in names]
        if unknown:
            raise UserError(
                f"--weights {cfg.weights}: no --rm named {', '.join(map(repr, unknown))} "
                f"(the reward models given: {given})"
            )
    if cfg.combine == "llama2":
        for flag, name in (
            ("--helpfulness-rm", cfg.helpfulness_rm),
            ("--safety-rm", cfg.safety_rm),
        ):
            if name not in names:
                raise UserError(
                    f"--combine llama2 needs a helpfulness and a safety reward model: no --rm "
                    f"named {name!r} ({flag}); the reward models given: {given} "
                    f"(e.g. --rm {name}=DIR)"
                )


# --- ppo -----------------------------------------------------------------------------------


def full_distribution(cfg: Any) -> None:
    """PPO samples from the policy's full distribution: no --top-k / --top-p."""
    unfiltered(cfg.top_k, cfg.top_p)


def unfiltered(top_k: int, top_p: float) -> None:
    """Refuse top-k / top-p sampling in PPO (`loops.ppo.rollout.check_unfiltered` says why)."""
    if top_k or top_p < 1.0:
        raise UserError(
            f"ppo samples from the policy's full distribution (--top-k 0 --top-p 1), not "
            f"--top-k {top_k} --top-p {top_p}: its log-probs, ratio and KL are of that "
            "distribution. Sharpen sampling with --temperature instead, or sample with top-k / "
            "top-p in `rlhfkit rs`, which trains on the samples, not on their log-probs"
        )


def processes() -> int:
    """Processes of this run: torchrun's WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def mini_batches(cfg: Any) -> None:
    """--batch-size splits evenly over the processes, and each process's rollout rows
    split into --num-mini-batches minibatches of at least one row."""
    world = processes()
    if cfg.batch_size % world:
        raise UserError(f"--batch-size {cfg.batch_size} must divide by the {world} processes")
    rows = cfg.batch_size // world
    if not 1 <= cfg.num_mini_batches <= rows:
        raise UserError(
            f"--num-mini-batches {cfg.num_mini_batches} must be between 1 and the prompts per "
            f"process ({rows}: --batch-size {cfg.batch_size} over {world} process(es); a "
            "minibatch holds whole groups of --samples-per-prompt responses)"
        )


def ptx(cfg: Any) -> None:
    """PPO-ptx needs its corpus."""
    if cfg.ptx_coef > 0 and not cfg.ptx_data:
        raise UserError("--ptx-coef > 0 needs --ptx-data (a pretraining corpus)")


def value_init(cfg: Any) -> None:
    """--value-init is 'rm', 'policy', the name of an --rm, or a reward/value model folder."""
    init = cfg.value_init
    if init in ("rm", "policy") or init in rm_names(cfg):
        return
    if not Path(init).exists():
        names = ", ".join(rm_names(cfg)) or "none given"
        raise UserError(
            f"--value-init {init}: not 'rm', 'policy', the name of an --rm ({names}) or a "
            f"model folder ({init} does not exist)"
        )
    from rlhfkit.models.folders import check_model_folder

    try:
        check_model_folder(init, "reward")
    except UserError as e:
        raise UserError(f"--value-init: {e}") from None


# --- rejection sampling, eval, rm ----------------------------------------------------------


def round_temperatures(cfg: Any) -> None:
    """rs --temperature: one value for every round, or one per round."""
    if len(cfg.temperature) not in (1, cfg.rounds):
        raise UserError(
            f"--temperature: give one value or one per round ({cfg.rounds}), "
            f"got {len(cfg.temperature)}"
        )


def baseline_needs_rm(cfg: Any) -> None:
    """eval --baseline: the win rate is judged by reward models."""
    if cfg.baseline and not cfg.rm:
        raise UserError(
            "--baseline needs --rm NAME=DIR: the win rate is judged by the reward model(s)"
        )


def normalize_scale(cfg: Any) -> None:
    if cfg.normalize_scale and not cfg.normalize_with:
        raise UserError("--normalize-scale needs --normalize-with FILE")


def normalize_strategy(cfg: Any) -> None:
    if cfg.normalize_with and cfg.strategy == "fsdp2":
        raise UserError("--normalize-with is not supported with --strategy fsdp2 yet: use ddp")


def save_adapter(cfg: Any) -> None:
    if cfg.save_adapter and not cfg.lora_r:
        raise UserError("--save-adapter needs LoRA: pass --lora-r > 0")


# --- values ------------------------------------------------------------------------------


def margin(spec: str) -> None:
    """--margin: a preset name or 'strength=value,...' (`data.ranking.resolve_margins`)."""
    from rlhfkit.data.ranking import resolve_margins

    try:
        resolve_margins(spec)
    except ValueError as e:
        raise UserError(f"--margin {spec}: {e}") from None


def pipeline_stage(until: str | None) -> None:
    """pipeline --until names a stage."""
    from rlhfkit.config.world import PIPELINE_STAGES

    if until is not None and until not in PIPELINE_STAGES:
        raise UserError(f"--until {until!r}: not a stage; stages are {', '.join(PIPELINE_STAGES)}")


# --- the device --------------------------------------------------------------------------

_GPU_DEVICES = ("/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
"""NVIDIA's driver, ROCm's (AMD) and WSL2's GPU device; with /dev/nvidia*: where none of
them is there on Linux, no CUDA device can be."""
_DEV = Path("/dev")


def cuda_absent() -> str | None:
    """Why CUDA cannot be here, decided without torch (None: it may be). Only on Linux,
    where the driver shows in /proc and /dev; never where a GPU might exist."""
    if not sys.platform.startswith("linux"):
        return None
    if any(Path(p).exists() for p in _GPU_DEVICES) or any(_DEV.glob("nvidia*")):
        return None
    return "no GPU driver on this machine: no /proc/driver/nvidia, /dev/nvidia* or /dev/kfd"


def _cpu_only_torch() -> str | None:
    """Why the installed torch cannot use CUDA, from its version alone ('2.5.1+cpu')."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("torch")
    except PackageNotFoundError:
        return None
    return f"torch {installed} is a CPU-only build" if installed.endswith("+cpu") else None


def device(cfg: Any) -> None:
    """--device is 'auto', 'cpu', 'cuda' or 'cuda:N', and CUDA is asked for only where it
    may exist (the final word is torch's, `distributed.pick_device`)."""
    spec = (cfg.device or "auto").strip().lower()
    if spec in ("auto", "cpu"):
        return
    if spec != "cuda" and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise UserError(f"--device {cfg.device}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    why = cuda_absent() or _cpu_only_torch()
    if why is not None:
        raise UserError(f"--device {cfg.device}: CUDA is not available ({why}); use --device cpu")


def estimator(cfg: Any) -> None:
    """UserError for an --estimator with options it cannot use (before any model loads)."""
    from rlhfkit.config.rl import ESTIMATOR_DEFAULTS, estimator_options

    kl_in, loss_agg, n = estimator_options(cfg)
    name, spec = cfg.estimator, ESTIMATOR_DEFAULTS[cfg.estimator]
    if spec.group and n < 2:
        raise UserError(
            f"--estimator {name} compares the responses to one prompt: --samples-per-prompt "
            f"must be >= 2, not {n}"
        )
    if loss_agg == "sequence" and name not in ("rloo", "grpo", "dr-grpo"):
        raise UserError(
            f"--loss-agg sequence needs one advantage per response (rloo, grpo, dr-grpo); "
            f"--estimator {name} has one per token"
        )


# --- every option of a config, without reading a file ------------------------------------


def check_options(cfg: Any) -> None:
    """Raise UserError for the first option of `cfg` outside its declaration: a `Literal`
    option's choices, each number's `Range`, each `CheckedBy` value check, then (for a
    command that runs here, not `reads_files = False`) the `CheckedWith` rules joining
    options. The same checks and messages as `rlhfkit.validate`, less what reads files or
    folders (inputs, data records, --out, positions): the loops read those anyway."""
    cls = type(cfg)
    for name, tp in field_types(cls).items():
        if _is_literal(tp):
            try:
                coerce(tp, getattr(cfg, name))
            except ValueError as e:
                raise UserError(f"{option_flag(name)}: {e}") from None
    found = [(name, m) for name, ms in field_markers(cls).items() for m in ms]
    for name, marker in found:
        check_value(marker, option_flag(name), getattr(cfg, name))
    if getattr(cls, "reads_files", True):
        for _, marker in found:
            if isinstance(marker, CheckedWith):
                load_function(marker.function)(cfg)


def check_value(marker: Marker, flag: str, value: Any) -> None:
    """One option's `Range` (every number of a tuple; None passes) or `CheckedBy` check;
    other markers pass here."""
    if isinstance(marker, Range):
        for x in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(x, (int, float)) and not isinstance(x, bool) and marker.problem(x):
                raise UserError(f"{flag} {marker.problem(x)}")
    elif isinstance(marker, CheckedBy) and value is not None:
        load_function(marker.function)(value)


def option_flag(name: str) -> str:
    """The command-line flag of a config field: max_new_tokens -> --max-new-tokens."""
    return "--" + name.replace("_", "-")


def load_function(ref: str) -> Any:
    """The function a marker names, "module:function"."""
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)


def _is_literal(tp: Any) -> bool:
    """A Literal option, or an optional one (tyro checks them on the command line)."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    args = typing.get_args(tp) if typing.get_origin(tp) is not Literal else ()
    return typing.get_origin(tp) is Literal or any(typing.get_origin(a) is Literal for a in args)
