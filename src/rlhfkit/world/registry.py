"""All task families by name, and the inverse of prompt generation: `parse_prompt`."""

from __future__ import annotations

from rlhfkit.world.base import Params, Task, question_of
from rlhfkit.world.safety import Harmful, Howto
from rlhfkit.world.tasks import SAFE_TASKS

TASKS: dict[str, Task] = {t.name: t for t in (*SAFE_TASKS, Howto(), Harmful())}
"""Every task family, by name: the safe ones, then "howto" (borderline), then "harmful"."""
SAFE_NAMES = tuple(t.name for t in SAFE_TASKS)
BORDERLINE_NAME = "howto"
HARMFUL_NAME = "harmful"


class UnknownPromptError(ValueError):
    """A prompt that no task family of the world generates (the judges cannot score it)."""


def parse_prompt(prompt: str) -> tuple[str, Params]:
    """(task name, params) of a world prompt, formatted ("Q: ...\\nA:") or bare.

    Exact for every generated prompt: the templates of different tasks never match the
    same text, and the params regenerate the same question and answer.
    """
    q = question_of(prompt)
    for name, task in TASKS.items():
        params = task.parse(q)
        if params is not None:
            return name, params
    raise UnknownPromptError(f"not a prompt of the built-in world: {q[:80]!r}")


def is_world_prompt(prompt: str) -> bool:
    try:
        parse_prompt(prompt)
    except UnknownPromptError:
        return False
    return True
