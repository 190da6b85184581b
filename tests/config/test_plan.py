"""config/plan.py: `rlhfkit plan STAGE` reads exactly the stage's own options plus the plan's,
and checks no file."""

from __future__ import annotations

import dataclasses

from rlhfkit.config import DPOConfig, PPOConfig, PretrainConfig, RMConfig, RSConfig, SFTConfig
from rlhfkit.config.plan import PLAN_CONFIGS, PLAN_STAGES, PlanOptions


def test_each_plan_config_is_its_stage_config_plus_the_plan_options():
    stages = {"pretrain": PretrainConfig, "sft": SFTConfig, "rm": RMConfig, "ppo": PPOConfig,
              "rs": RSConfig, "dpo": DPOConfig}  # fmt: skip
    assert tuple(PLAN_CONFIGS) == PLAN_STAGES == tuple(stages)
    plan = {f.name for f in dataclasses.fields(PlanOptions)}
    for name, cls in PLAN_CONFIGS.items():
        assert issubclass(cls, stages[name]) and cls.stage == name
        own = {f.name for f in dataclasses.fields(stages[name])}
        assert {f.name for f in dataclasses.fields(cls)} == own | plan
        assert cls.reads_files is False  # config.json files only: no data, no weights
