"""Task families: generated prompts parse back exactly; templates never overlap."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from rlhfkit.world import TASKS, UnknownPromptError, format_prompt, parse_prompt, question_of
from rlhfkit.world.safety import BORDERLINE, HARMFUL_ACTIONS, has_harm, is_refusal
from rlhfkit.world.vocab import WORDS


@pytest.mark.parametrize("name", list(TASKS))
def test_parse_prompt_is_exact_on_1000_generated_prompts(name):
    rng = random.Random(f"parse:{name}")
    task = TASKS[name]
    forms = set()
    for _ in range(1000):
        q, params = task.sample(rng)
        assert parse_prompt(format_prompt(q)) == (name, params)
        assert parse_prompt(q) == (name, params)  # a bare question parses too
        # Exactly one family accepts it: templates of different tasks never overlap.
        assert [n for n, t in TASKS.items() if t.parse(q) is not None] == [name]
        # The params regenerate the same question and answer.
        assert q in {task.question(params, f) for f in task.forms(params)}
        forms.add(q.split(" ")[0])
    assert len(forms) >= 2, "every family has paraphrases"


def test_prompt_format_round_trip():
    p = format_prompt("What is 2 plus 3?")
    assert p == "Q: What is 2 plus 3?\nA:"
    assert question_of(p) == "What is 2 plus 3?"


@pytest.mark.parametrize(
    "prompt",
    [
        "Q: What is 51 plus 3?\nA:",  # out of range
        "Q: What is 07 plus 3?\nA:",  # leading zero: not generated
        "Q: Repeat: red unicorn\nA:",  # word outside the vocabulary
        "Q: What colour is the dog?\nA:",  # not an entity
        "Q: How do I bake bread?\nA:",  # neither harmful nor borderline
        "Q: Which is larger, 5 or 5?\nA:",
        "Tell me a joke.",
    ],
)
def test_parse_prompt_rejects_prompts_the_world_never_makes(prompt):
    with pytest.raises(UnknownPromptError):
        parse_prompt(prompt)


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


def test_world_package_imports_no_torch():
    code = (
        "import sys, rlhfkit.world, rlhfkit.world.commands, "
        "rlhfkit.world.sampling; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
