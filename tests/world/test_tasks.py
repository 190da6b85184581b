"""world/tasks.py: every task family's prompts parse back exactly (templates never overlap);
the world package imports no torch."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from rlhfkit.world import TASKS, format_prompt, parse_prompt


def test_world_package_imports_no_torch():
    code = (
        "import sys, rlhfkit.world, rlhfkit.world.commands, "
        "rlhfkit.world.sampling; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


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
