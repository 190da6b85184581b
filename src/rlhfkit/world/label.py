"""Simulated labellers: rank K sampled responses per prompt by the gold judges + noise.

For each prompt and each dimension (helpfulness, safety) a simulated annotator orders
the K responses by gold score plus Gumbel noise of scale `noise`. Sorting
score/noise + Gumbel is an exact Plackett-Luce draw with utilities score/noise (the
K-wise Bradley-Terry model): near-ties flip often, big gaps almost never; noise 0 gives
the exact order, ties broken by response index.

Each adjacent pair of a ranking gets a strength from the gold-score gap (Llama 2's four
labels): gap >= 0.5 significantly_better, >= 0.25 better, >= 0.1 slightly_better, else
negligibly_better (thresholds configurable). A pair the noise put in the wrong order
(gold gap <= 0) is negligibly_better: the annotator was unsure.

Choices, documented:
- Empty responses (the policy ended at once) are left out: ranking records forbid them.
- A prompt is skipped for a dimension when its K gold scores are all equal: such a
  ranking would be noise only.
- Helpfulness rankings cover every prompt but the harmful ones, which go to the safety
  file only, as Llama 2 collected its helpfulness and safety preferences apart (adversarial
  prompts in the safety data). With them, the helpfulness RM learned that a refusal beats
  a wrong answer (refusing a harmful request has gold helpfulness 0.5, a wrong answer 0),
  and rejection sampling taught the policy to refuse safe prompts (issue 17, seeds 3-5:
  RS false refusals 8.8 / 11.9 / 3.1% -> 0 / 0 / 0%). The safety file covers the safety-relevant
  prompts, as Llama 2's safety data focuses on adversarial prompts: harmful and
  borderline ones, any prompt where the K safety scores differ, plus a `safety_mix`
  share (default 10%) of the other prompts so the safety RM also sees ordinary answers
  (Llama 2 mixed 10% helpfulness data into its safety RM's training).
- The safety annotator orders by safety first, then helpfulness (Llama 2's guideline:
  among equally safe responses, prefer the better one): its score is
  safety + `safety_tiebreak` x helpfulness (default 0.25). So on a borderline prompt a
  right answer beats a refusal by "better", while refusing a harmful request beats
  complying by "significantly_better".
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from rlhfkit.world.judges import judge
from rlhfkit.world.registry import BORDERLINE_NAME, HARMFUL_NAME

STRENGTHS = ("significantly_better", "better", "slightly_better", "negligibly_better")
DEFAULT_THRESHOLDS = (0.5, 0.25, 0.1)
"""Minimum gold gaps for significantly_better, better and slightly_better."""
SAFETY_TASKS = (HARMFUL_NAME, BORDERLINE_NAME)


class Sampler(Protocol):
    """Anything that draws K responses per prompt (a model, or a stub in tests)."""

    def sample(self, prompts: list[str], k: int) -> list[list[str]]: ...


def strength_of(gap: float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> str:
    """The strength label of a gold-score gap (the better minus the worse response)."""
    for label, t in zip(STRENGTHS, thresholds, strict=False):
        if gap >= t:
            return label
    return STRENGTHS[-1]


def gumbel(rng: random.Random) -> float:
    """A standard Gumbel draw."""
    u = rng.random()
    while u <= 0.0:
        u = rng.random()
    return -math.log(-math.log(u))


def noisy_order(scores: Sequence[float], noise: float, rng: random.Random) -> list[int]:
    """Indices best first by score + noise x Gumbel (a Plackett-Luce draw); exact order
    for noise 0, ties broken by index. Draws K numbers from rng even for noise 0, so the
    stream does not depend on the noise level."""
    noisy = [s + noise * gumbel(rng) for s in scores]
    if noise == 0:
        noisy = list(scores)
    return sorted(range(len(scores)), key=lambda i: (-noisy[i], i))


def ranking_record(
    prompt: str,
    responses: Sequence[str],
    scores: Sequence[float],
    noise: float,
    rng: random.Random,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict:
    """A ranking record {"prompt", "responses", "ranking", "strengths"}."""
    order = noisy_order(scores, noise, rng)
    strengths = [
        strength_of(scores[a] - scores[b], thresholds) if scores[a] > scores[b] else STRENGTHS[-1]
        for a, b in zip(order, order[1:], strict=False)
    ]
    return {
        "prompt": prompt,
        "responses": list(responses),
        "ranking": order,
        "strengths": strengths,
    }


def label_samples(
    prompts: Sequence[str],
    samples: Sequence[Sequence[str]],
    judge_fn: Callable[[str, str], dict] = judge,
    noise: float = 0.0,
    rng: random.Random | None = None,
    k: int | None = None,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    safety_tiebreak: float = 0.25,
    safety_mix: float = 0.1,
) -> tuple[list[dict], list[dict]]:
    """(helpfulness rankings, safety rankings) of K responses per prompt.

    `samples[i]` holds the K responses to `prompts[i]` (K = `k` when given, checked);
    `judge_fn(prompt, response)` returns {"task", "helpfulness", "safety", ...}.
    Rules (skips, which prompts the safety file covers, its tie-break): module docstring.
    """
    if len(prompts) != len(samples):
        raise ValueError(f"{len(prompts)} prompts but {len(samples)} sample lists")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    rng = rng if rng is not None else random.Random(0)
    helpful, safe = [], []
    for prompt, responses in zip(prompts, samples, strict=True):
        if k is not None and len(responses) != k:
            raise ValueError(f"expected {k} responses per prompt, got {len(responses)}")
        if len(responses) < 2:
            raise ValueError("ranking needs at least 2 responses per prompt")
        # Draw the mixing coin for every prompt so the stream is the same whatever is kept.
        mixed = rng.random() < safety_mix
        # An empty response (EOS at once) is no text to rank: ranking records forbid it.
        responses = [r for r in responses if r.strip()]
        if len(responses) < 2:
            continue
        scores = [judge_fn(prompt, r) for r in responses]
        h = [s["helpfulness"] for s in scores]
        s_ = [s["safety"] for s in scores]
        if len(set(h)) > 1 and scores[0]["task"] != HARMFUL_NAME:  # harmful: safety only
            helpful.append(ranking_record(prompt, responses, h, noise, rng, thresholds))
        relevant = scores[0]["task"] in SAFETY_TASKS or len(set(s_)) > 1 or mixed
        key = [a + safety_tiebreak * b for a, b in zip(s_, h, strict=True)]
        if relevant and len(set(key)) > 1:
            safe.append(ranking_record(prompt, responses, key, noise, rng, thresholds))
    return helpful, safe


def label_with_sampler(
    sampler: Sampler, prompts: Sequence[str], k: int, **kwargs
) -> tuple[list[list[str]], list[dict], list[dict]]:
    """(samples, helpfulness rankings, safety rankings) with K samples per prompt from
    `sampler`; kwargs go to `label_samples`."""
    samples = sampler.sample(list(prompts), k)
    helpful, safe = label_samples(prompts, samples, k=k, **kwargs)
    return samples, helpful, safe
