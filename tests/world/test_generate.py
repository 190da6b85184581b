"""World generators (world/generate.py): shares and blind spots as configured, the settings
checked, one source of truth for the defaults."""

from __future__ import annotations

import random
from statistics import fmean

import pytest

from rlhfkit.world import judge, parse_prompt, question_of
from rlhfkit.world.generate import WorldSettings, blind_spot, part_rng, plan_tasks
from rlhfkit.world.make import build_world

SMALL = {"corpus_docs": 300, "sft": 400, "train_prompts": 300, "eval_prompts": 150}


@pytest.mark.parametrize(("unsafe", "border"), [(0.2, 0.1), (0.0, 0.0), (0.5, 0.25)])
def test_safety_share_is_as_configured(unsafe, border):
    s = WorldSettings(unsafe_share=unsafe, borderline_share=border)
    for n in (200, 1000, 37):
        names = plan_tasks(n, s, part_rng(0, "t"))
        assert abs(names.count("harmful") / n - unsafe) <= 0.5 / n + 1e-9
        assert abs(names.count("howto") / n - border) <= 0.5 / n + 1e-9
        safe = [x for x in names if x not in ("harmful", "howto")]
        counts = [safe.count(t) for t in set(safe)]
        assert not counts or max(counts) - min(counts) <= 1  # families balanced


@pytest.mark.parametrize("share", [0.0, 0.3, 0.6])
def test_imperfect_demos_share_and_they_score_lower(share):
    w = build_world(5, WorldSettings(**{**SMALL, "imperfect_share": share}))
    demos = w["demos"]
    flawed = [(r, n, f) for r, n, f in demos if f]
    assert len(flawed) == round(share * len(demos))
    good = [judge(r["prompt"], r["completion"]) for r, _, f in demos if not f]
    assert all(s["correct"] and s["safety"] == 1.0 for s in good)
    assert all(s["helpfulness"] == (0.5 if s["task"] == "harmful" else 1.0) for s in good)
    for r, name, flaw in flawed:
        s = judge(r["prompt"], r["completion"])
        best = 0.5 if name == "harmful" else 1.0
        assert s["helpfulness"] < best or s["safety"] < 1.0, (r, flaw)
        if flaw == "compliance":
            assert name == "harmful" and s["safety"] == 0.0
        if flaw == "refusal":
            assert name != "harmful" and s["refusal"] and s["helpfulness"] == 0.0
    if flawed:
        kinds = {f for _, _, f in flawed}
        assert kinds == {"wrong", "verbose", "refusal", "compliance"}
        assert fmean(judge(r["prompt"], r["completion"])["helpfulness"] for r, _, _ in flawed) < 0.5


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unsafe_share"):
        WorldSettings(unsafe_share=1.5)
    with pytest.raises(ValueError, match="sft"):
        WorldSettings(sft=-1)
    with pytest.raises(ValueError, match="<= 1"):
        WorldSettings(unsafe_share=0.7, borderline_share=0.4)


def test_flaws_concentrate_in_the_blind_spots():
    w = build_world(0, WorldSettings(corpus_docs=0, sft=4000, train_prompts=0, eval_prompts=0))
    rows = [(blind_spot(n, question_of(r["prompt"]), parse_prompt(r["prompt"])[1]), f)
            for r, n, f in w["demos"]]  # fmt: skip
    spot = [f for sp, f in rows if sp]
    rest = [f for sp, f in rows if not sp]
    spot_rate = sum(bool(f) for f in spot) / len(spot)
    rest_rate = sum(bool(f) for f in rest) / len(rest)
    assert spot_rate > 0.6 and rest_rate < 0.25
    assert all(f == sp for sp, f in rows if sp and f)  # a blind spot fails its own way
    # uniform flaws with weight 1
    w = build_world(0, WorldSettings(corpus_docs=0, sft=4000, train_prompts=0, eval_prompts=0,
                                     blind_spot_weight=1.0))  # fmt: skip
    flaws = [(blind_spot(n, question_of(r["prompt"]), parse_prompt(r["prompt"])[1]), f)
             for r, n, f in w["demos"]]  # fmt: skip
    spot_rate = fmean(bool(f) for sp, f in flaws if sp)
    assert abs(spot_rate - 0.3) < 0.06


def test_the_default_world_holds_out_80_harmful_prompts_of_840():
    """Issue 17: 40 harmful eval prompts gave safety steps of 0.025 and used nearly all
    of the 210 harmful questions the world had; now 80 of 840, and the CLI's defaults
    are WorldSettings' (one source of truth)."""
    from rlhfkit.config.world import WorldMakeConfig
    from rlhfkit.world.safety import ACTION_TEMPLATES, HARMFUL_ACTIONS

    questions = {t.format(action=a) for t in ACTION_TEMPLATES for a in HARMFUL_ACTIONS}
    assert len(questions) == 840
    s = WorldSettings()
    fields = WorldMakeConfig.__dataclass_fields__
    for f in WorldSettings.__dataclass_fields__:
        assert fields[f].default == getattr(s, f), f
    names = plan_tasks(s.eval_prompts, s, random.Random(0))
    assert names.count("harmful") == 80
