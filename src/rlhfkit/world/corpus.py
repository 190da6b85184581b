"""The world's pretraining corpus: documents in its language, for `rlhfkit pretrain`.

Q/A exchanges in the prompt format (answered as the demo writers would, flawed at
`corpus_noise`, more often in the compliance blind spot), fact sentences, borderline tips,
arithmetic and word statements, and safety lines. No document asks for a held-out eval
prompt, and no safety line names a held-out harmful action.
"""

from __future__ import annotations

import random

from rlhfkit.world.base import REFUSAL, Params, format_completion, format_prompt
from rlhfkit.world.generate import (
    WorldSettings,
    blind_spot,
    demo_answer,
    draw_question,
    phrasings,
    plan_tasks,
)
from rlhfkit.world.registry import HARMFUL_NAME, TASKS
from rlhfkit.world.safety import BORDERLINE, REFUSAL_VARIANTS
from rlhfkit.world.vocab import ENTITIES, WORDS, fact_sentence


def exchange(question: str, answer: str) -> str:
    """One Q/A exchange, exactly prompt + completion."""
    return format_prompt(question) + format_completion(answer)


def corpus_flaw_rate(name: str, question: str, params: Params, s: WorldSettings) -> float:
    """How often the corpus's answer to this question is flawed: `corpus_noise`, times
    `blind_spot_weight` (at most 1) for harmful requests in the compliance blind spot. The
    web shares the demo writers' blind spot: with the corpus refusing those requests 90%
    of the time, the base model refused every one and SFT's 63% compliant demos could not
    make it reliably unsafe there (world v3, issue 17)."""
    if blind_spot(name, question, params) == "compliance":
        return min(1.0, s.corpus_noise * s.blind_spot_weight)
    return s.corpus_noise


def _qa_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    n = rng.randint(3, 8)
    parts = []
    for name in plan_tasks(n, s, rng):
        q, params = draw_question(name, rng, exclude)
        flawed = rng.random() < corpus_flaw_rate(name, q, params, s)
        parts.append(exchange(q, demo_answer(name, params, rng, flawed)[0]))
    return "\n\n".join(parts)


def _fact_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    lines = []
    for e in rng.sample(ENTITIES, rng.randint(1, 3)):
        attrs = ["colour", "home", "food"]
        rng.shuffle(attrs)
        facts = " ".join(fact_sentence(e, a) for a in attrs)
        intro = rng.choice(("", f"The {e} is a small animal. ", f"Here are facts about the {e}. "))
        lines.append(intro + facts)
    return "\n".join(lines)


def _howto_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    tips = []
    for action in rng.sample(sorted(BORDERLINE), rng.randint(2, 5)):
        ans = BORDERLINE[action]
        tips.append(f"To {action}: {ans[0].lower()}{ans[1:]}")
    intro = rng.choice(
        ("Useful tips.", "Some questions only sound dangerous.", "How to do things.")
    )
    return "\n".join([intro, *tips])


def _statement(rng: random.Random) -> str:
    kind = rng.randrange(7)
    ws = rng.sample(WORDS, rng.randint(2, 4))
    if kind == 0:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return f"{a} plus {b} is {a + b}."
    if kind == 1:
        a, b = rng.sample(range(100), 2)
        return f"The larger of {a} and {b} is {max(a, b)}."
    if kind == 2:
        return f"Reversed, {' '.join(ws)} is {' '.join(reversed(ws))}."
    if kind == 3:
        ns = rng.sample(range(100), rng.randint(3, 5))
        return f"Sorted, {' '.join(map(str, ns))} is {' '.join(map(str, sorted(ns)))}."
    if kind == 4:
        w = rng.choice(WORDS + ENTITIES)
        return f"The word {w} has {len(w)} letters."
    if kind == 5:
        return f"In capitals, {' '.join(ws)} is {' '.join(ws).upper()}."
    return f"The list {' '.join(ws)} has {len(ws)} words."


def _statement_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    return " ".join(_statement(rng) for _ in range(rng.randint(3, 7)))


def _safety_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    p = TASKS[HARMFUL_NAME].sample_params(rng)
    while not exclude.isdisjoint(phrasings(HARMFUL_NAME, p)):  # never a held-out action
        p = TASKS[HARMFUL_NAME].sample_params(rng)
    action = f"{p['verb']} {p['target']}"
    safe_action = rng.choice(sorted(BORDERLINE))
    lines = [
        f"Some requests are harmful. If someone asks how to {action}, say: {REFUSAL}",
        f"But a request to {safe_action} is fine. Answer it: {BORDERLINE[safe_action]}",
    ]
    q, params = draw_question(HARMFUL_NAME, rng, exclude)
    lines.append(exchange(q, rng.choice(REFUSAL_VARIANTS)))
    rng.shuffle(lines)
    return "\n".join(lines)


CORPUS_DOCS = {  # kind -> (weight, generator)
    "qa": (0.5, _qa_doc),
    "facts": (0.15, _fact_doc),
    "howto": (0.1, _howto_doc),
    "statements": (0.15, _statement_doc),
    "safety": (0.1, _safety_doc),
}


def make_corpus(n: int, s: WorldSettings, rng: random.Random, exclude: set[str]) -> list[str]:
    """n pretraining documents, kinds drawn by CORPUS_DOCS weights."""
    kinds = list(CORPUS_DOCS)
    weights = [CORPUS_DOCS[k][0] for k in kinds]
    return [CORPUS_DOCS[k][1](rng, s, exclude) for k in rng.choices(kinds, weights, k=n)]
