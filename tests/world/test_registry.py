"""world/registry.py: `parse_prompt` maps every prompt the world makes back to its task family
and parameters, exactly, and refuses every other."""

from __future__ import annotations

import pytest

from rlhfkit.world import UnknownPromptError, format_prompt, parse_prompt
from rlhfkit.world.registry import is_world_prompt


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


def test_is_world_prompt_says_whether_parse_prompt_would_parse():
    assert is_world_prompt(format_prompt("What is 2 plus 3?"))
    assert is_world_prompt("What is 2 plus 3?")  # a bare question too
    assert not is_world_prompt("Tell me a joke.")
    assert issubclass(UnknownPromptError, ValueError)
