"""Rollouts for PPO: generate -> score -> reference log-probs -> values -> per-token rewards.

The roles are separate objects passed in (DESIGN "roles are separate objects"): the
policy samples, the frozen reference gives `ref_logprobs`, the value model gives `values`,
and a scorer gives one score per response. Moving one role to another device or process
(e.g. generation to a dedicated engine) touches this file only.

Per rollout: one sampling pass with a KV cache (its log-probs ARE the behaviour
`old_logprobs`: no second policy forward), one reference forward and one value forward
over prompt + response (the reference keeps only the last R + 1 logits), one scorer call.

A scorer is anything with
    score(prompts: list[str], responses: list[str], safety: list[bool]) -> (B,) tensor
(or an object with a `.scores` (B,) tensor, as `scoring.RewardScorer` returns), and may
also have `score_tokens(prompt_ids, prompt_mask, response_ids, response_mask,
policy_tokenizer, safety)`, which is used when present (no decode / re-encode).

Scores are shaped before they enter the reward (Huang et al. 2024, "N+ implementation
details"): an optional penalty for responses that never produced EOS (subtracted from,
or replacing, the score), then optional whitening over the batch (over all processes
under torchrun), then optional clipping to [-c, c]. The KL penalty is per token
(`ops.kl.kl_penalized_rewards`): rewards_t = -kl_coef * KL_t, plus the score at the last
response token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch

from rlhfkit.data.records import PromptRecord
from rlhfkit.data.tokenize import encode_prompt
from rlhfkit.errors import UserError
from rlhfkit.models.generate import decode_responses, sample
from rlhfkit.models.load import autocast_context
from rlhfkit.models.wrap import unwrap
from rlhfkit.ops.kl import KL_ESTIMATORS, kl_penalized_rewards
from rlhfkit.ops.logprobs import response_logprobs


class Scorer(Protocol):
    """The reward role: one score per (prompt, response)."""

    def score(
        self, prompts: list[str], responses: list[str], safety: list[bool]
    ) -> Any:  # (B,) tensor, or an object with `.scores` (B,)
        ...


# ---------------------------------------------------------------------------------------
# The rollout
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutSettings:
    """How responses are sampled and how scores become per-token rewards."""

    max_new_tokens: int = 32
    max_prompt_len: int = 128
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    kl_estimator: str = "k1"
    missing_eos_penalty: float | None = None
    missing_eos_mode: str = "add"  # "add": score - penalty; "replace": score = -penalty
    score_norm: str = "none"  # "none" | "whiten" (over the batch, all processes)
    score_clip: float | None = None
    bf16: bool = False
    stop_at_eos: bool = True  # False: exactly max_new_tokens per row (EOS is a token)

    @property
    def logprob_temperature(self) -> float:
        """The temperature of every log-prob (sampling, reference, training): greedy -> 1."""
        return self.temperature if self.temperature > 0 else 1.0

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise UserError(f"unknown KL estimator {self.kl_estimator!r}: k1, k2 or k3")
        if self.missing_eos_mode not in ("add", "replace"):
            raise UserError(
                f"missing_eos_mode must be add or replace, not {self.missing_eos_mode!r}"
            )
        if self.score_norm not in ("none", "whiten"):
            raise UserError(f"score_norm must be none or whiten, not {self.score_norm!r}")


@dataclass
class Rollout:
    """One batch of experience. Masks are bool, True = real token. P: prompt width
    (left-padded), R: longest response (right-padded)."""

    prompt_ids: torch.Tensor  # (B, P) long
    prompt_mask: torch.Tensor  # (B, P) bool
    response_ids: torch.Tensor  # (B, R) long, pad after EOS
    response_mask: torch.Tensor  # (B, R) bool, True up to and including EOS
    logprobs: torch.Tensor  # (B, R) float32, behaviour log-probs from sampling; 0 at padding
    ref_logprobs: torch.Tensor  # (B, R) float32, under the frozen reference; 0 at padding
    values: torch.Tensor  # (B, R) float32, V(prompt + response[:t]); 0 at padding
    raw_scores: torch.Tensor  # (B,) float32, the scorer's output
    scores: torch.Tensor  # (B,) float32, after EOS penalty / normalisation / clipping
    kl: torch.Tensor  # (B, R) float32, the KL estimator per token; 0 at padding
    rewards: torch.Tensor  # (B, R) float32, -kl_coef * kl + score at the last token
    ended: torch.Tensor  # (B,) bool, the response produced EOS
    safety: torch.Tensor  # (B,) bool, prompt tagged possibly unsafe
    prompts: list[str] = field(default_factory=list)  # B prompt texts
    responses: list[str] = field(default_factory=list)  # B decoded responses (no EOS/pad)
    per_rm: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) raw score
    kl_coef: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    @property
    def sequences(self) -> torch.Tensor:
        """(B, P + R) prompt then response ids."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + R) bool."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def prompt_len(self) -> int:
        return self.prompt_ids.shape[1]

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: tokens per response, EOS included."""
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]


def shape_scores(raw: torch.Tensor, ended: torch.Tensor, s: RolloutSettings) -> torch.Tensor:
    """(B,) raw scores -> (B,) scores that enter the reward: EOS penalty, norm, clip."""
    scores = raw.float()
    if s.missing_eos_penalty is not None:
        penalty = float(s.missing_eos_penalty)
        penalised = (
            scores - penalty if s.missing_eos_mode == "add" else torch.full_like(scores, -penalty)
        )
        scores = torch.where(ended, scores, penalised)
    if s.score_norm == "whiten":
        scores = global_whiten(scores)
    if s.score_clip is not None:
        scores = scores.clamp(-s.score_clip, s.score_clip)
    return scores


@torch.no_grad()
def collect_rollout(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    value_model: torch.nn.Module | None,
    scorer: Any,
    prompts: Sequence[PromptRecord | str],
    *,
    tokenizer: Any,
    settings: RolloutSettings,
    kl_coef: float,
    generator: torch.Generator | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> Rollout:
    """Sample a response to each prompt and compute everything PPO needs (see module doc).

    `prompts`: records (text + safety tag) or plain strings (safety False); `prompt_ids`:
    their token ids if already encoded. `value_model` None gives values 0 (evaluation).
    Everything returned lives on the policy's device.
    """
    policy, reference = unwrap(policy), unwrap(reference)
    device = next(policy.parameters()).device
    texts = [_text(p) for p in prompts]
    safety = torch.tensor([bool(getattr(p, "safety", False)) for p in prompts], device=device)
    if prompt_ids is None:
        prompt_ids = encode_prompts(prompts, tokenizer, settings.max_prompt_len)
    temp = settings.logprob_temperature
    timings: dict[str, float] = {}

    t0 = sync_time(device)
    with autocast_context(device, settings.bf16):
        gen = sample(
            policy,
            prompt_ids,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_k=settings.top_k,
            top_p=settings.top_p,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            generator=generator,
            stop_at_eos=settings.stop_at_eos,
        )
    responses = decode_responses(tokenizer, gen)
    t1 = sync_time(device)
    timings["generate"] = t1 - t0

    raw, per_rm = score_generation(scorer, gen, texts, responses, safety, tokenizer)
    scores = shape_scores(raw, gen.ended, settings)
    t2 = sync_time(device)
    timings["score"] = t2 - t1

    mask = gen.response_mask
    seq, attn = gen.sequences, gen.attention_mask
    P, R = gen.prompt_ids.shape[1], gen.response_ids.shape[1]
    with autocast_context(device, settings.bf16):
        ref_logits = policy_logits(reference, seq, attn, R)
    ref_logprobs = response_logprobs(ref_logits, seq, P, temp).masked_fill(~mask, 0.0)
    del ref_logits
    t3 = sync_time(device)
    timings["reference"] = t3 - t2

    if value_model is not None:
        with autocast_context(device, settings.bf16):
            values = response_values(unwrap(value_model), seq, attn, P)
        values = values.masked_fill(~mask, 0.0)
    else:
        values = torch.zeros_like(gen.logprobs)
    timings["value"] = sync_time(device) - t3

    logprobs = gen.logprobs.float()
    rewards, kl = kl_penalized_rewards(
        scores, logprobs, ref_logprobs, mask, kl_coef, settings.kl_estimator
    )
    return Rollout(
        prompt_ids=gen.prompt_ids,
        prompt_mask=gen.prompt_mask,
        response_ids=gen.response_ids,
        response_mask=mask,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        raw_scores=raw,
        scores=scores,
        kl=kl,
        rewards=rewards,
        ended=gen.ended,
        safety=safety,
        prompts=texts,
        responses=responses,
        per_rm=per_rm,
        kl_coef=float(kl_coef),
        timings=timings,
    )


def tensor_fields(rollout: Rollout) -> list[str]:
    """Names of the per-row tensor fields (what minibatches slice)."""
    return [f.name for f in fields(rollout) if isinstance(getattr(rollout, f.name), torch.Tensor)]
