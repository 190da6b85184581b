"""Configs of `rlhfkit plan STAGE`: the stage's own options plus the plan's (PlanOptions).

Each `Plan<Stage>Config` is the stage's config class with `PlanOptions` added, so that
`rlhfkit plan ppo --policy X --rm helpfulness=Y --nproc 8 ...` reads exactly the flags that
`rlhfkit ppo` reads (and `rlhfkit plan ppo --help` lists them), and the plan adds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import tyro

from rlhfkit.config.fields import Positive
from rlhfkit.config.rl import PPOConfig, RSConfig
from rlhfkit.config.stages import DPOConfig, PretrainConfig, RMConfig, SFTConfig

PLAN_STAGES = ("pretrain", "sft", "rm", "ppo", "rs", "dpo")


@dataclass(kw_only=True)
class PlanOptions:
    """What `rlhfkit plan` adds to a stage's options."""

    nproc: Positive[int] = 1
    """Processes (devices) the stage will run on, e.g. torchrun --nproc_per_node N."""
    device_memory: str = "80GB"
    """Memory of one device: '80GB' (10^9 bytes), '80GiB' (2^30), or bytes."""
    json: bool = False
    """Print the plan as JSON instead of a table."""

    reads_files: ClassVar[bool] = False
    """A plan reads config.json files only: data options and weights are not checked
    (`rlhfkit.validate`)."""


@dataclass(kw_only=True)
class PlanConfig(PlanOptions):
    """Memory per device of a stage, from its models' config.json files alone (no weights read):
    weights, gradients, optimizer states and activations per role, for --strategy, --bf16,
    --lora-r and --nproc. Usage: rlhfkit plan STAGE [the stage's own options] [--nproc N]
    [--device-memory 80GB] [--json]; STAGE is one of pretrain, sft, rm, ppo, rs, dpo
    (`rlhfkit plan STAGE --help` lists its options)."""

    stage: tyro.conf.Positional[str] = ""
    """pretrain, sft, rm, ppo, rs or dpo."""


@dataclass(kw_only=True)
class PlanPretrainConfig(PlanOptions, PretrainConfig):
    """Memory per device of `rlhfkit pretrain` (from --preset or --model-config; no data read)."""

    stage: ClassVar[str] = "pretrain"


@dataclass(kw_only=True)
class PlanSFTConfig(PlanOptions, SFTConfig):
    """Memory per device of `rlhfkit sft` (from --model's config.json; no weights or data read)."""

    stage: ClassVar[str] = "sft"


@dataclass(kw_only=True)
class PlanRMConfig(PlanOptions, RMConfig):
    """Memory per device of `rlhfkit rm` (from --model's config.json; no weights or data read)."""

    stage: ClassVar[str] = "rm"


@dataclass(kw_only=True)
class PlanPPOConfig(PlanOptions, PPOConfig):
    """Memory per device of `rlhfkit ppo`: policy, reference, value model and reward models
    (from their config.json files; no weights or prompts read)."""

    stage: ClassVar[str] = "ppo"


@dataclass(kw_only=True)
class PlanRSConfig(PlanOptions, RSConfig):
    """Memory per device of `rlhfkit rs` (from --policy's config.json; no weights read)."""

    stage: ClassVar[str] = "rs"


@dataclass(kw_only=True)
class PlanDPOConfig(PlanOptions, DPOConfig):
    """Memory per device of `rlhfkit dpo`: the policy and its frozen reference (from their
    config.json files; no weights or data read)."""

    stage: ClassVar[str] = "dpo"


PLAN_CONFIGS: dict[str, type] = {
    "pretrain": PlanPretrainConfig,
    "sft": PlanSFTConfig,
    "rm": PlanRMConfig,
    "ppo": PlanPPOConfig,
    "rs": PlanRSConfig,
    "dpo": PlanDPOConfig,
}
