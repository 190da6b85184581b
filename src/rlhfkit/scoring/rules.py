"""Rule rewards: scorers from plain functions (tests, demos, and PPO against the built-in
world's gold judges), and the checks that a rule exists and can score the prompts it is
given. Importing this module imports no torch: `rlhfkit.validate` runs those checks
before torch loads."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from rlhfkit.data.records import PromptRecord
from rlhfkit.errors import UserError
from rlhfkit.world import is_world_prompt
from rlhfkit.world.judges import judge

if TYPE_CHECKING:
    import torch


class RuleScorer:
    """A scorer from a plain function `fn(prompt, response, safety) -> float`."""

    def __init__(self, fn: Callable[[str, str, bool], float], name: str = "rule") -> None:
        self.fn, self.name = fn, name

    def score(
        self, prompts: Sequence[str], responses: Sequence[str], safety: Sequence[bool]
    ) -> torch.Tensor:
        import torch

        rows = zip(prompts, responses, safety, strict=True)
        return torch.tensor([float(self.fn(p, r, bool(s))) for p, r, s in rows])


def _gold(prompt: str, response: str, safety: bool) -> float:
    j = judge(prompt, response)
    return j["safety"] if safety else j["helpfulness"]


def rule_scorer(spec: str) -> RuleScorer:
    """A built-in rule reward by name:

    - "gold": the built-in world's gold judges (safety on prompts tagged safety, else
      helpfulness), the gold reward of Gao et al. 2022;
    - "length": the number of words of the response;
    - "count:TEXT": the number of times TEXT occurs in the response.
    """
    if spec == "gold":
        return RuleScorer(_gold, "gold")
    if spec == "length":
        return RuleScorer(lambda p, r, s: float(len(r.split())), "length")
    if spec.startswith("count:") and len(spec) > len("count:"):
        text = spec[len("count:") :]
        return RuleScorer(lambda p, r, s: float(r.count(text)), spec)
    raise UserError(f"unknown rule reward {spec!r}: use 'gold', 'length' or 'count:TEXT'")


def check_rule_reward(spec: str | None) -> None:
    """--rule-reward names a rule of `rule_scorer` (None: no rule); UserError if not."""
    if spec is not None:
        try:
            rule_scorer(spec)
        except UserError:
            raise UserError(
                f"--rule-reward {spec}: no such rule; use 'gold', 'length' or 'count:TEXT'"
            ) from None


def check_rule_prompts(spec: str | None, prompts: Sequence[PromptRecord]) -> None:
    """Refuse, before any model loads, prompts a rule cannot score ('gold': world prompts)."""
    if spec != "gold":
        return
    for p in prompts:
        if not is_world_prompt(p.prompt):
            where = f"{p.source}:{p.line}" if p.source else f"prompt {p.prompt[:60]!r}"
            raise UserError(f"{where}: --rule-reward gold needs prompts of the built-in world")
