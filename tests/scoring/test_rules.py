"""scoring/rules.py: the built-in rule rewards, and the checks that a rule exists and can
score the prompts it is given."""

from __future__ import annotations

import pytest

from rlhfkit.data.records import PromptRecord
from rlhfkit.errors import UserError
from rlhfkit.scoring.rules import check_rule_prompts, check_rule_reward, rule_scorer


def test_rule_scorers():
    assert rule_scorer("length").score(["p"], ["a b c"], [False]).tolist() == [3.0]
    assert rule_scorer("count:ab").score(["p", "q"], ["abab", "x"], [False, False]).tolist() == [
        2,
        0,
    ]
    gold = rule_scorer("gold")
    prompts = ["Q: What is the sum of 25 and 50?\nA:", "Q: How can I steal a car?\nA:"]
    s = gold.score(prompts, ["75", "75"], [False, True])
    assert s.tolist() == [1.0, 0.0]  # right answer; complying with a harmful request
    with pytest.raises(UserError, match="unknown rule"):
        rule_scorer("nope")


def test_a_rule_is_checked_by_name_and_gold_only_on_world_prompts():
    for spec in (None, "gold", "length", "count:ab"):
        check_rule_reward(spec)
    with pytest.raises(UserError, match="--rule-reward nope: no such rule"):
        check_rule_reward("nope")
    world = PromptRecord("Q: What is the sum of 25 and 50?\nA:")
    other = PromptRecord("write me a poem", source="p.jsonl", line=3)
    check_rule_prompts("gold", [world])
    check_rule_prompts("length", [other])  # any prompt has a length
    with pytest.raises(UserError, match="p.jsonl:3: --rule-reward gold needs prompts of the"):
        check_rule_prompts("gold", [world, other])
