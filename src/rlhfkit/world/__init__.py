"""The built-in world: task families with programmatic gold judges, and its data.

It stands in for human labellers (AlpacaFarm's simulated annotators; the gold reward of
Gao et al. 2022) so that every stage of the pipeline can be measured offline. Plain
Python: importing it imports no torch (only `sampling.py` touches models, lazily).

Prompt format (one place: `format_prompt`): "Q: <question>\\nA:" with completion
" <answer>".
"""

from rlhfkit.world.base import REFUSAL, format_completion, format_prompt, question_of
from rlhfkit.world.generate import WorldSettings
from rlhfkit.world.judges import helpfulness, judge, reference_answer, safety
from rlhfkit.world.label import Sampler, label_samples, strength_of
from rlhfkit.world.make import build_world, make_world
from rlhfkit.world.metrics import format_table, gold_scores, summarize
from rlhfkit.world.registry import TASKS, UnknownPromptError, is_world_prompt, parse_prompt
from rlhfkit.world.safety import has_harm, is_refusal

__all__ = [
    "REFUSAL",
    "TASKS",
    "Sampler",
    "UnknownPromptError",
    "WorldSettings",
    "build_world",
    "format_completion",
    "format_prompt",
    "format_table",
    "gold_scores",
    "has_harm",
    "helpfulness",
    "is_refusal",
    "is_world_prompt",
    "judge",
    "label_samples",
    "make_world",
    "parse_prompt",
    "question_of",
    "reference_answer",
    "safety",
    "strength_of",
    "summarize",
]
