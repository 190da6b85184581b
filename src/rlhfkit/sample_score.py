"""Sample, then score: the one path by which responses are drawn from a policy and scored
by a reward, shared by PPO's rollouts and evaluation, rejection sampling, `select` and
`eval`. Generation goes through the `generation` seam; scoring through a scorer (`scoring`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlhfkit.data.records import PromptRecord
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.types import Generation


def _scores_of(result: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(result, torch.Tensor):
        return result, {}
    return result.scores, dict(getattr(result, "per_rm", {}) or {})


def score_generation(
    scorer: Any,
    gen: Generation,
    prompts: list[str],
    safety: torch.Tensor,
    tokenizer: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """((B,) float32 scores, {rm name: (B,) raw score}) of sampled responses, on the
    responses' device: `score_tokens` on the ids when the scorer has it, else `score` on
    the texts (`gen.texts`). safety: (B,) bool."""
    if hasattr(scorer, "score_tokens"):
        result = scorer.score_tokens(
            gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask, tokenizer, safety
        )
    else:
        result = scorer.score(prompts, gen.texts, safety.tolist())
    scores, per_rm = _scores_of(result)
    scores = torch.as_tensor(scores).float().to(gen.response_ids.device)
    if scores.shape != (len(prompts),):
        raise ValueError(
            f"the scorer returned shape {tuple(scores.shape)}, expected ({len(prompts)},)"
        )
    return scores, {k: v.float().to(scores.device) for k, v in per_rm.items()}


def encode_prompts(
    prompts: Sequence[PromptRecord | str], tokenizer: Any, max_prompt_len: int
) -> list[list[int]]:
    """Token ids of each prompt, as SFT saw them (`data.tokenize.encode_prompt`)."""
    return [encode_prompt(_text(p), tokenizer, max_prompt_len) for p in prompts]


def _text(p: PromptRecord | str) -> str:
    return p if isinstance(p, str) else p.prompt
