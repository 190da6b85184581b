"""config/rl.py: the options of the commands that sample; each --estimator's defaults, and an
option given explicitly winning over them."""

from __future__ import annotations

import typing

from rlhfkit.config import PPOConfig
from rlhfkit.config.rl import (
    ESTIMATOR_DEFAULTS,
    LOSS_AGGREGATIONS,
    estimator_options,
    needs_value_model,
)
from rlhfkit.losses import POLICY_LOSSES


def test_each_estimators_defaults_and_what_overrides_them():
    assert estimator_options(PPOConfig()) == ("reward", "token-mean", 1)
    assert estimator_options(PPOConfig(estimator="grpo")) == ("loss", "seq-mean-token-mean", 4)
    given = PPOConfig(estimator="grpo", kl_in="reward", loss_agg="token-mean", samples_per_prompt=8)
    assert estimator_options(given) == ("reward", "token-mean", 8)
    assert needs_value_model(PPOConfig()) and not needs_value_model(PPOConfig(estimator="rloo"))


def test_the_estimator_table_matches_the_option_and_the_losses():
    names = typing.get_args(
        typing.get_args(typing.get_type_hints(PPOConfig, include_extras=True)["estimator"])[0]
    )
    assert set(ESTIMATOR_DEFAULTS) == set(names)
    for name, d in ESTIMATOR_DEFAULTS.items():
        assert d.loss_agg in LOSS_AGGREGATIONS and d.loss_agg in POLICY_LOSSES, name
        assert d.group == (d.samples_per_prompt > 1), name  # a group needs several responses
        assert d.critic == (name == "gae"), name
