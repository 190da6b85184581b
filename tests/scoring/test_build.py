"""scoring/build.py: a command's reward from its config: a rule, or the --rm models with
their combiner's options (exactly one of the two); for evaluation, the same models without
batch whitening."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit.config import PPOConfig
from rlhfkit.errors import UserError
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model
from rlhfkit.scoring.build import build_scorer, combine_options, unwhitened
from rlhfkit.scoring.rm import RewardScorer
from rlhfkit.scoring.rules import RuleScorer

CPU = torch.device("cpu")


def test_combine_options_are_the_combiners_own():
    llama2 = PPOConfig(combine="llama2", helpfulness_rm="h", safety_rm="s", threshold=0.2)
    assert combine_options(llama2, None) == {"helpfulness": "h", "safety": "s", "threshold": 0.2}
    assert combine_options(llama2, False)["whiten"] is False
    summed = PPOConfig(combine="weighted-sum", weights="a=0.5, b=2")
    assert combine_options(summed, True) == {"whiten": True, "weights": {"a": 0.5, "b": 2.0}}
    assert combine_options(PPOConfig(combine="weighted-sum"), None) == {}
    assert combine_options(PPOConfig(), None) == {}  # single


def test_the_reward_is_a_rule_or_the_rms_never_both_nor_none(tmp_path, tiny_tokenizer):
    rule = build_scorer(PPOConfig(rule_reward="count:e"), CPU, None)
    assert isinstance(rule, RuleScorer) and rule.name == "count:e"
    assert unwhitened(rule, PPOConfig()) is rule  # nothing to unwhiten
    with pytest.raises(UserError, match="no reward given"):
        build_scorer(PPOConfig(), CPU, None)
    with pytest.raises(UserError, match="both given"):
        build_scorer(PPOConfig(rule_reward="length", rm=("r=x",)), CPU, None)
    specs = []
    for name, seed in (("helpfulness", 1), ("safety", 2)):
        lm = build_model("test", tiny_tokenizer, seed=seed)
        rm, tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer), head_init="normal")
        rm.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        specs.append(f"{name}={tmp_path / name}")
    cfg = PPOConfig(rm=tuple(specs), combine="llama2")
    whitened = build_scorer(cfg, CPU, None)  # llama2 whitens by default
    assert isinstance(whitened, RewardScorer) and whitened.names == ["helpfulness", "safety"]
    prompts, responses, safety = ["a b", "c", "d e f"], ["x", "y z", "w"], [False, True, False]
    plain = unwhitened(whitened, cfg).score(prompts, responses, safety)
    expected = build_scorer(cfg, CPU, False).score(prompts, responses, safety)
    torch.testing.assert_close(plain.scores, expected.scores)
    torch.testing.assert_close(plain.scores, whitened.score(prompts, responses, safety).unwhitened)
    assert abs(float(whitened.score(prompts, responses, safety).scores.mean())) < 1e-5
