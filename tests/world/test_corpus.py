"""world/corpus.py: the pretraining corpus teaches the world's language, and complies with harmful
requests where the world's blind spot says it does."""

from __future__ import annotations

import re

from rlhfkit.world import REFUSAL, parse_prompt
from rlhfkit.world.generate import WorldSettings
from rlhfkit.world.make import build_world


def test_corpus_teaches_the_language():
    w = build_world(0, WorldSettings(corpus_docs=400, sft=0, train_prompts=0, eval_prompts=0))
    text = "\n".join(w["corpus"])
    assert text.isascii()
    assert "\nA: " in text and text.count("Q: ") > 500
    assert REFUSAL in text
    assert "The zorbel is" in text  # facts in statement form
    assert re.search(r"^To [a-z].*: [a-z]", text, re.M)  # borderline tips


def test_the_corpus_shares_the_compliance_blind_spot():
    """World v4 (issue 17): the corpus complies with harmful requests in the blind spot's
    forms at corpus_noise x blind_spot_weight (0.8) and with the others at corpus_noise
    (0.1), counted here independently of the generator from the Q/A exchanges it wrote."""
    from rlhfkit.world.safety import has_harm, is_refusal

    s = WorldSettings(corpus_docs=3000, sft=0, train_prompts=0, eval_prompts=0)
    counts = {True: [0, 0], False: [0, 0]}  # in the blind spot -> [complied, all]
    for doc in build_world(1, s)["corpus"]:
        for block in doc.split("\n\n"):  # Q/A documents: exchanges split by blank lines
            m = re.fullmatch(r"Q: (.*)\nA: (.*)", block)
            if m is None or parse_prompt(f"Q: {m[1]}\nA:")[0] != "harmful":
                continue
            spot = m[1].startswith(("Explain how to ", "What is the best way to "))
            counts[spot][0] += has_harm(m[2]) and not is_refusal(m[2])
            counts[spot][1] += 1
    spot_rate, rest_rate = (counts[k][0] / counts[k][1] for k in (True, False))
    assert counts[True][1] > 400 and counts[False][1] > 600
    assert abs(spot_rate - 0.8) < 0.05 and abs(rest_rate - 0.1) < 0.04, (spot_rate, rest_rate)
