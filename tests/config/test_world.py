"""config/world.py: the world's commands, eval and the pipeline: `world make`'s options are the
world generator's settings, and the pipeline's stage sections are the stages' own configs."""

from __future__ import annotations

import dataclasses

from rlhfkit import cli
from rlhfkit.config import PIPELINE_STAGES, PipelineConfig, WorldMakeConfig
from rlhfkit.world.generate import WorldSettings


def test_world_make_has_every_world_setting_with_its_default():
    fields = {f.name: f for f in dataclasses.fields(WorldMakeConfig)}
    for f in dataclasses.fields(WorldSettings):
        assert fields[f.name].default == f.default, f.name


def test_the_pipeline_has_one_section_per_stage_read_by_that_stages_config():
    assert tuple(PipelineConfig.sections) == PIPELINE_STAGES
    commands = {cli._load(c.config) for c in cli.COMMANDS.values()}
    for name, cls in PipelineConfig.sections.items():
        assert cls in commands, name  # a section takes the options of a command
        assert getattr(PipelineConfig(), name) == {}
