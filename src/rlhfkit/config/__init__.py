"""Typed, documented configuration for every command.

Each command has one dataclass. Its field docstrings are the `--help` text (rendered by
tyro), flags are the field names with dashes (`max_steps` -> `--max-steps`), and a YAML
file given with `--config FILE.yaml` sets defaults that flags then override.
`load_yaml_defaults` does that merge; `save_config` writes the resolved config beside an
output. The classes live by stage: `base` (shared options), `stages`, `rl`, `world`.

This module imports no torch: `rlhfkit --help` must answer in well under a second.
"""

from rlhfkit.config.base import (
    ConfigError,
    RewardOptions,
    RunOptions,
    TrainOptions,
    load_yaml_defaults,
    save_config,
    to_dict,
)
from rlhfkit.config.rl import PPOConfig, RSConfig, SelectConfig
from rlhfkit.config.stages import (
    PretrainConfig,
    RMConfig,
    RMEvalConfig,
    ScoreConfig,
    SFTConfig,
)
from rlhfkit.config.world import (
    EvalConfig,
    PipelineConfig,
    ReportConfig,
    StageOptions,
    WorldJudgeConfig,
    WorldLabelConfig,
    WorldMakeConfig,
)

__all__ = [
    "ConfigError",
    "EvalConfig",
    "PPOConfig",
    "PipelineConfig",
    "PretrainConfig",
    "RMConfig",
    "RMEvalConfig",
    "RSConfig",
    "RewardOptions",
    "ReportConfig",
    "RunOptions",
    "SFTConfig",
    "ScoreConfig",
    "SelectConfig",
    "StageOptions",
    "TrainOptions",
    "WorldJudgeConfig",
    "WorldLabelConfig",
    "WorldMakeConfig",
    "load_yaml_defaults",
    "save_config",
    "to_dict",
]
