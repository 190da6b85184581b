"""world/vocab.py: the world's vocabulary and its fixed facts."""

from __future__ import annotations

import random
import subprocess
import sys

from rlhfkit.world import TASKS
from rlhfkit.world.vocab import ENTITIES, FACTS, WORDS, fact_sentence


def test_facts_are_fixed_and_ascii():
    code = "from rlhfkit.world.vocab import FACTS; print(sorted(FACTS.items())[:3])"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert len(outs) == 1
    for task in TASKS.values():
        q, p = task.sample(random.Random(1))
        assert (q + task.answer(p)).isascii()


def test_fact_sentences_read_the_fact_table():
    entity = next(iter(FACTS))
    facts = FACTS[entity]
    assert fact_sentence(entity, "colour") == f"The {entity} is {facts['colour']}."
    assert fact_sentence(entity, "home") == f"The {entity} lives in the {facts['home']}."
    assert fact_sentence(entity, "food", "honey") == f"The {entity} eats honey."
    assert set(FACTS) == set(ENTITIES) and not set(ENTITIES) & set(WORDS)
