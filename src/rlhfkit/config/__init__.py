"""Typed, documented configuration for every command.

Each command has one dataclass. Its field docstrings are the `--help` text (rendered by
tyro), flags are the field names with dashes (`max_steps` -> `--max-steps`), and a YAML
file given with `--config FILE.yaml` sets defaults that flags then override.
`load_yaml_defaults` does that merge; `save_config` writes the resolved config beside an
output. What an option may hold (a range, an input file, a model folder of some kind) is
declared on its type (`fields`: `lr: Positive[float]`), shown in `--help` and checked by
`rlhfkit.validate` before any torch import. The classes live by stage: `base` (option
groups that the commands inherit, so flags stay flat), `stages`, `rl` (with the groups of
the commands that sample), `world`.

This module imports no torch: `rlhfkit --help` must answer in well under a second.
"""

from rlhfkit.config.base import (
    ChatOptions,
    ConfigError,
    DeviceOptions,
    EpochOptions,
    OptimizerOptions,
    RemoteCodeOptions,
    RewardOptions,
    RunOptions,
    ScaleOptions,
    TrainOptions,
    load_yaml_defaults,
    save_config,
    to_dict,
)
from rlhfkit.config.convert import ConvertConfig
from rlhfkit.config.plan import (
    PLAN_CONFIGS,
    PLAN_STAGES,
    PlanConfig,
    PlanDPOConfig,
    PlanOptions,
    PlanPPOConfig,
    PlanPretrainConfig,
    PlanRMConfig,
    PlanRSConfig,
    PlanSFTConfig,
)
from rlhfkit.config.rl import (
    LengthOptions,
    PPOConfig,
    RLOptions,
    RSConfig,
    SamplingOptions,
    ScorerOptions,
    SelectConfig,
)
from rlhfkit.config.stages import (
    DPOConfig,
    PretrainConfig,
    RMConfig,
    RMEvalConfig,
    ScoreConfig,
    ServeRMConfig,
    SFTConfig,
)
from rlhfkit.config.world import (
    PIPELINE_STAGES,
    EvalConfig,
    PipelineConfig,
    ReportConfig,
    StageOptions,
    WorldJudgeConfig,
    WorldLabelConfig,
    WorldMakeConfig,
)

__all__ = [
    "PIPELINE_STAGES",
    "PLAN_CONFIGS",
    "PLAN_STAGES",
    "ChatOptions",
    "ConfigError",
    "ConvertConfig",
    "DPOConfig",
    "DeviceOptions",
    "EpochOptions",
    "EvalConfig",
    "LengthOptions",
    "OptimizerOptions",
    "PPOConfig",
    "PipelineConfig",
    "PlanConfig",
    "PlanDPOConfig",
    "PlanOptions",
    "PlanPPOConfig",
    "PlanPretrainConfig",
    "PlanRMConfig",
    "PlanRSConfig",
    "PlanSFTConfig",
    "PretrainConfig",
    "RMConfig",
    "RLOptions",
    "RMEvalConfig",
    "RSConfig",
    "RemoteCodeOptions",
    "RewardOptions",
    "ReportConfig",
    "RunOptions",
    "ScaleOptions",
    "SFTConfig",
    "SamplingOptions",
    "ScoreConfig",
    "ServeRMConfig",
    "ScorerOptions",
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
