"""config/stages.py: the training stages' configs: the kind of data file and model folder each
option is checked as (before torch loads), and the stages' own defaults."""

from __future__ import annotations

from rlhfkit.config import DPOConfig, PretrainConfig, RMConfig, RMEvalConfig, ScoreConfig, SFTConfig
from rlhfkit.config.fields import DataFile, ModelFolder, OutputPath, field_markers


def _markers(cls, name):
    return field_markers(cls)[name]


def test_each_stage_reads_its_data_as_its_kind():
    assert DataFile("corpus") in _markers(PretrainConfig, "data")
    for cls in (SFTConfig,):
        assert DataFile("sft") in _markers(cls, "data") and DataFile("sft") in _markers(
            cls, "eval_data"
        )
    for cls in (RMConfig, RMEvalConfig, DPOConfig):  # every record read before torch loads
        assert DataFile("preferences") in _markers(cls, "data")
    for cls in (RMConfig, DPOConfig):
        assert DataFile("preferences") in _markers(cls, "eval_data")
    assert DataFile("normalize") in _markers(RMConfig, "normalize_with")
    assert DataFile("scoring") in _markers(ScoreConfig, "data")


def test_each_stage_loads_the_model_kind_it_needs_and_writes_a_run_folder():
    for cls in (SFTConfig, DPOConfig):
        assert ModelFolder("causal-lm") in _markers(cls, "model")
    # an RM starts from any model folder: a causal LM, or a reward model trained further
    assert ModelFolder("any") in _markers(RMConfig, "model")
    for cls in (PretrainConfig, SFTConfig, RMConfig, DPOConfig):
        assert OutputPath("run") in _markers(cls, "out")
    assert ModelFolder("reward") in _markers(RMEvalConfig, "model")


def test_the_reward_model_defaults_of_the_papers():
    cfg = RMConfig()
    assert cfg.margin == "none" and cfg.normalize_with is None and not cfg.normalize_scale
    assert cfg.head_init == "zeros"  # the RM starts from the LM with a zero head
    assert DPOConfig().loss == "dpo" and DPOConfig().beta == 0.1
