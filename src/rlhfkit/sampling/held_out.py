"""Held-out evaluation: how a policy answers prompts it does not train on, the same way
at every PPO step and every rejection-sampling round. `sample_held_out` is the draw (one
response per prompt, the rng seeded by the run's seed alone, so evaluations compare);
`evaluate_policy` is PPO's summary of it (reward, KL to the reference, lengths, the
world's gold metrics); rejection sampling summarises the same draw per round
(`loops.rejection.rounds.RSRun.evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlhfkit.data.records import PromptRecord
from rlhfkit.sampling.sample_score import (
    Samples,
    encode_prompts,
    gold_metrics,
    sample_and_score,
)
from rlhfkit.sampling.settings import GenerationSettings, ResponseGenerator


@torch.no_grad()
def evaluate_policy(
    generator: ResponseGenerator,
    reference: torch.nn.Module,
    scorer: Any,
    prompts: Sequence[PromptRecord],
    *,
    tokenizer: Any,
    settings: GenerationSettings,
    max_prompt_len: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Reward, KL to the reference and (world prompts) gold metrics of the policy's
    responses to `prompts` (`sample_held_out`; prompts cut to `max_prompt_len` tokens).
    `scorer` should not whiten (means must compare across steps).

    `kl` is the sampler's log-probs against a reference forward, summed per response; with
    greedy decoding it is the log-ratio log pi/pi_ref of the greedy response, not an
    unbiased KL estimate.
    """
    ids = encode_prompts(prompts, tokenizer, max_prompt_len)
    r = sample_held_out(
        generator,
        prompts,
        ids,
        settings,
        batch_size=batch_size,
        seed=seed,
        device=device,
        scorer=scorer,
        tokenizer=tokenizer,
        reference=reference,
    )
    s = r.scores
    out: dict[str, Any] = {
        "score": float(s.mean()),
        "score_std": float(s.std()) if len(s) > 1 else 0.0,
        "kl": float(r.kl.mean()),
        "kl_k3": float(r.kl_k3.mean()),
        "response_length": float(torch.tensor(r.tokens).float().mean()),
        "n": len(s),
    }
    texts, safety = [p.prompt for p in prompts], [p.safety for p in prompts]
    out.update(gold_metrics(texts, r.texts, safety, r.tokens))
    out["samples"] = [
        {"prompt": p.prompt, "response": resp, "score": float(sc)}
        for p, resp, sc in list(zip(prompts, r.texts, s.tolist(), strict=True))[:4]
    ]
    return out


@torch.no_grad()
def sample_held_out(
    generator: ResponseGenerator,
    prompts: Sequence[PromptRecord],
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    scorer: Any,
    tokenizer: Any,
    reference: torch.nn.Module | None = None,
) -> Samples:
    """The draw every held-out evaluation makes (PPO's `evaluate_policy`, rejection
    sampling's per round): one response per prompt, sampled with `settings` (greedy at
    temperature 0) in batches of `batch_size` sequences from an rng on `device` seeded by
    `seed` alone, so that evaluations at different steps or rounds draw alike and compare;
    scored by `scorer`, and with `reference`, their KL to it (`sample_and_score`)."""
    rng = torch.Generator(device=device).manual_seed(seed + 12_345)
    return sample_and_score(
        generator,
        prompts,
        prompt_ids,
        settings,
        rng,
        batch_size=batch_size,
        scorer=scorer,
        tokenizer=tokenizer,
        reference=reference,
    )
