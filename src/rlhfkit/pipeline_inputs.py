"""What `rlhfkit pipeline` reads besides the built-in world: the user's model and data
files, checked before anything loads, and the memory plan of the run's stages.

- `--model DIR|FILE.gguf` replaces the pretrained tiny model (checked as every causal LM
  option is, by `validate`); `--preset` then defaults to 'real'.
- `--sft-data`, `--rm-data helpfulness=FILE --rm-data safety=FILE`, `--prompts`,
  `--eval-prompts`: each replaces the world's file for its stages; every record is read
  here, before torch (`check_*`, called by `validate` through the options' CheckedBy), so a
  bad line is `file:line: problem` in a second, not after the SFT stage.
- `print_plans`: `rlhfkit plan` of sft, rm, ppo and rs for the user's model, from its
  config alone, before the first stage.

This module imports no torch (the plan imports it when it runs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfkit.errors import UserError

RM_NAMES = ("helpfulness", "safety")
REAL_PRESETS = ("real", "real-smoke")


def resolve_preset(cfg: Any) -> str:
    """--preset as given; unset: 'real' with --model, else 'default'."""
    return cfg.preset or ("real" if getattr(cfg, "model", None) else "default")


def check_preset(cfg: Any) -> None:
    """A real-model preset needs --model (a CheckedWith rule of --preset: before torch loads,
    and from Python through `config.checks.check_options`)."""
    preset = resolve_preset(cfg)
    if preset in REAL_PRESETS and not cfg.model:
        raise UserError(
            f"--preset {preset} is sized for a pretrained model: give one with "
            "--model DIR|FILE.gguf (the built-in tiny model: --preset quick or default)"
        )


# --- the data options (CheckedBy targets: read before torch loads) --------------------------


def _exists(flag: str, path: str) -> None:
    if not Path(path).exists():
        raise UserError(f"{flag} {path}: no such file or folder")


def parse_rm_data(specs: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """--rm-data values -> {"helpfulness": files, "safety": files}; a bare FILE is
    helpfulness; a safety RM needs a helpfulness one (Llama 2's rule combines the two)."""
    found: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = (name.strip(), path.strip()) if sep else ("helpfulness", spec.strip())
        if name not in RM_NAMES:
            raise UserError(
                f"--rm-data {spec!r}: name the reward model helpfulness or safety "
                "(helpfulness=FILE, safety=FILE; a bare FILE is helpfulness)"
            )
        if not path:
            raise UserError(f"--rm-data {spec!r}: expected NAME=FILE")
        found.setdefault(name, []).append(path)
    if found and "helpfulness" not in found:
        raise UserError(
            "--rm-data: a safety RM needs a helpfulness RM too (add --rm-data helpfulness=FILE): "
            "Llama 2's rule takes the safety RM only on risky prompts"
        )
    return {name: tuple(files) for name, files in found.items()}


def check_rm_data(specs: Sequence[str]) -> None:
    """Every --rm-data file exists and each record is a ranking or a pair (`rlhfkit rm`'s
    formats), else `file:line: problem`."""
    from rlhfkit.data.preferences import read_preferences

    for name, files in parse_rm_data(specs).items():
        for path in files:
            _exists(f"--rm-data {name}=", path)
        read_preferences(list(files))


def check_sft_data(path: str | None) -> None:
    """--sft-data holds SFT records ({"prompt","completion"} or {"messages"})."""
    if path:
        from rlhfkit.data.records import read_sft

        _exists("--sft-data", path)
        read_sft(path)


def _check_prompts(flag: str, path: str | None) -> None:
    if path:
        from rlhfkit.data.records import read_prompts

        _exists(flag, path)
        if not read_prompts(path):
            raise UserError(f"{flag} {path}: no prompts")


def check_prompts(path: str | None) -> None:
    """--prompts holds prompt records ({"prompt","safety"?} or {"messages"})."""
    _check_prompts("--prompts", path)


def check_eval_prompts(path: str | None) -> None:
    """--eval-prompts holds prompt records, as --prompts."""
    _check_prompts("--eval-prompts", path)


# --- the run's model, and the configs its stages will get ----------------------------------

INPUTS = ("model", "sft_data", "rm_data", "prompts", "eval_prompts", "ptx_data")


def inputs_of(cfg: Any) -> dict[str, Any]:
    """The user's model and files a run was started with (recorded in pipeline.json)."""
    return {k: list(v) if isinstance(v, tuple) else v for k in INPUTS if (v := getattr(cfg, k))}


def own_model(given: str, out: Path) -> dict[str, Any]:
    """--model instead of pretraining: a folder as it is; a .gguf converted once into base/
    (every later stage would dequantize it again), the stages then read a plain folder."""
    from rlhfkit.models.gguf_header import is_gguf_path

    why = f"starting from --model {given}"
    if not is_gguf_path(given):
        return {"model": given, "given": given, "skipped": why}
    from rlhfkit.config import ConvertConfig
    from rlhfkit.models.convert import run_convert

    run_convert(ConvertConfig(file=given, out=str(out), overwrite=True))
    return {"model": str(out), "given": given, "skipped": f"{why}, converted to {out}"}


def labelled(label: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """The label stage's ranking files by RM, those that hold rankings. A weak starting
    model can give K samples that tie on the gold judge for every prompt (all wrong, all
    safe): no safety RM then, the reward is the helpfulness RM alone; no helpfulness
    rankings is an error."""
    return {n: (label[n],) for n in RM_NAMES if _has_rankings(n, label[n])}


def _has_rankings(name: str, path: str) -> bool:
    if Path(path).stat().st_size > 0:
        return True
    if name == "safety":
        print("[pipeline] rm: no safety rankings (every prompt's samples tied on the gold "
              "safety judge): no safety RM; the reward is the helpfulness RM alone")  # fmt: skip
        return False
    raise UserError(
        f"{path}: no helpfulness rankings (every prompt's samples tied on the gold judge): "
        "train SFT longer, or raise the label section's k or max_prompts"
    )


def planned_configs(cfg: Any, ptx_data: str | None, options: Callable[..., Any]) -> dict[str, Any]:
    """The configs of sft, rm, ppo and rs as this run will build them, with --model standing
    in for the models earlier stages will write (same architecture and vocabulary): what
    `rlhfkit plan` reads, and what the options are checked on before the first stage."""
    from rlhfkit.config import PPOConfig, RMConfig, RSConfig, SFTConfig

    model = cfg.model
    names = parse_rm_data(cfg.rm_data) or dict.fromkeys(RM_NAMES)
    # The keys the pipeline fixes (a section may not set them), with stand-in values.
    fixed = {"out": "-", "resume": False}
    rl = {**fixed, "policy": model, "prompts": "-", "eval_prompts": "-",
          "rm": tuple(f"{n}={model}" for n in names), "combine": "single"}  # fmt: skip
    no_ptx = {} if ptx_data else {"ptx_coef": 0.0}
    ppo = options("ppo", PPOConfig, {**rl, "ptx_data": ptx_data}, no_ptx)
    if ppo.ptx_coef > 0 and ptx_data is None:
        raise UserError(
            f"pipeline section 'ppo': ptx_coef {ppo.ptx_coef} needs a corpus: give --ptx-data "
            "FILE (with --model the world's corpus is not used)"
        )
    return {
        "sft": options("sft", SFTConfig, {**fixed, "model": model, "data": "-"}),
        "rm": options("rm", RMConfig, {**fixed, "model": model, "data": ("-",)}),
        "ppo": ppo,
        "rs": options("rs", RSConfig, rl),
    }


# --- the memory plan of the run -------------------------------------------------------------


def device_memory(device: str) -> tuple[int, str]:
    """(bytes, what) of the memory the stages run in: the first GPU's, or the host's."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        return torch.cuda.get_device_properties(index).total_memory, "of GPU memory"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "of host memory"


def plan_rows(configs: Mapping[str, Any], device: str) -> list[str]:
    """One line per stage: its roles and the memory it needs per device (`rlhfkit plan`)."""
    import dataclasses

    from rlhfkit.config import PLAN_CONFIGS
    from rlhfkit.plan.command import _gb, make_plan

    capacity, where = device_memory(device)
    plans, lines = {}, []
    for stage, cfg in configs.items():
        plan_cls = PLAN_CONFIGS[stage]
        names = {f.name for f in dataclasses.fields(plan_cls)}
        values = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
        try:
            plans[stage] = make_plan(plan_cls(**values, device_memory=str(capacity)))
        except UserError as e:  # a plan is advice: it never stops the run
            lines.append(f"  {stage:<4} no plan: {e}")
    roles = {stage: ", ".join(r["role"] for r in p["roles"]) for stage, p in plans.items()}
    width = max(map(len, roles.values()), default=0)
    for stage, p in plans.items():
        peak = p["activation_peak"]
        lines.append(
            f"  {stage:<4} {roles[stage]:<{width}}  states {_gb(p['states']):>9} + activations "
            f"{_gb(p['activations'][peak]):>9} ({peak}) = {_gb(p['total_per_device']):>9} "
            f"of {_gb(capacity)} {where}: {'fits' if p['fits'] else 'does NOT fit'}"
        )
    return lines


def print_plans(configs: Mapping[str, Any], model: str, device: str) -> None:
    """The plan of each stage's config (as the pipeline will run it) for --model."""
    print(f"[pipeline] memory per device for {model} (`rlhfkit plan STAGE` for the details; "
          "fp32 weights, reward models counted from the same config):")  # fmt: skip
    for line in plan_rows(configs, device):
        print(line)
    print("", flush=True)
