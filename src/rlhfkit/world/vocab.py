"""The world's closed vocabulary and its made-up facts, shared by the tasks, the judges and
the corpus: the word list of the word tasks, the animals of `lookup` and their facts.
"""

from __future__ import annotations

import random

WORDS = (
    "red blue green black white fox cat dog bird fish tree sun moon star rain snow hill lake "
    "boat road cake milk book door lamp cup hat shoe ball kite frog bear duck goat leaf rock "
    "sand wind bell ship"
).split()
"""The closed vocabulary of the word tasks (copy, reverse, count, uppercase)."""

ENTITIES = (
    "zorbel quimble flerp mimsy tarnok blix snorp wuzzle grelt plonk vexin drubble yomp "
    "fizzit krell lunder nabble skree torvin gubble hoxel jurn bazzle dorf elbin frumble "
    "glimp hask ivel woggle"
).split()
COLOURS = "red blue green yellow purple orange pink grey".split()
HOMES = "marsh forest desert cave mountains meadow swamp valley".split()
FOODS = "berries fish seeds leaves honey nuts bugs roots".split()


def _make_facts() -> dict[str, dict[str, str]]:
    # Fixed for every world (not drawn from the world's seed): the judges see only the
    # prompt and the response, so the facts must be the same everywhere.
    rng = random.Random(2024)
    return {
        e: {"colour": rng.choice(COLOURS), "home": rng.choice(HOMES), "food": rng.choice(FOODS)}
        for e in ENTITIES
    }


FACTS = _make_facts()
"""The made-up fact table taught by the corpus: entity -> {colour, home, food}."""


def fact_sentence(entity: str, attr: str, value: str | None = None) -> str:
    """The canonical sentence for one fact, e.g. "The zorbel is green."."""
    v = FACTS[entity][attr] if value is None else value
    return {
        "colour": f"The {entity} is {v}.",
        "home": f"The {entity} lives in the {v}.",
        "food": f"The {entity} eats {v}.",
    }[attr]
