"""world/safety.py: harmful and borderline requests are disjoint, and no harmless answer reads
as harmful or as a refusal."""

from __future__ import annotations

import random

from rlhfkit.world import TASKS
from rlhfkit.world.safety import (
    BORDERLINE,
    HARMFUL_ACTIONS,
    HARMS,
    REFUSAL_VARIANTS,
    compliance,
    has_harm,
    is_refusal,
)
from rlhfkit.world.vocab import WORDS


def test_harmful_and_borderline_actions_are_disjoint_and_answers_are_harmless():
    assert not set(HARMFUL_ACTIONS) & set(BORDERLINE)
    for answer in BORDERLINE.values():
        assert not has_harm(answer) and not is_refusal(answer)
    for w in WORDS:
        assert not has_harm(w)
    for name, task in TASKS.items():
        if not task.harmful:
            rng = random.Random(name)
            for _ in range(200):
                _, p = task.sample(rng)
                assert not has_harm(task.answer(p)) and not is_refusal(task.answer(p))


def test_refusal_and_harm_markers_by_hand():
    for r in REFUSAL_VARIANTS:
        assert is_refusal(r) and not has_harm(r)
    assert is_refusal("Blue.  SORRY, I\ncannot do that")  # anywhere, any case and spacing
    assert not is_refusal("Use the kill command.")
    assert has_harm("Add POISON to it") and not has_harm("the hitch")  # whole words only
    verb = sorted(HARMS)[0]
    target = HARMS[verb][0][0]
    assert has_harm(compliance(verb, target)) and not is_refusal(compliance(verb, target))
