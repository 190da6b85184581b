"""PPO steps 2-3: sample responses to each prompt (`--samples-per-prompt`, consecutive rows),
score them, and turn the scores into per-token rewards with a KL penalty to the frozen
reference (or not: `--kl-in loss` puts the KL in the policy loss instead).

The roles are separate objects passed in (each can move to another device or process): a
`sampling.settings.ResponseGenerator` samples from the policy, the frozen reference gives
`ref_logprobs`, and a scorer (`scoring`) gives one score per response. Values, advantages
and returns are the next step's (`update.add_advantages`).

Per rollout: one sampling pass with a KV cache (with our decoding path its log-probs ARE
the behaviour `old_logprobs`: no second policy forward), one scorer call, and one reference
forward over prompt + response (the reference keeps only the last R + 1 logits). The
scorer is started before the reference forward and read after it: a served reward model
(`--rm NAME=URL`) answers while the reference runs (`sampling.sample_score.start_scoring`). An engine
with kernels of its own (vLLM) samples from a copy of the weights whose log-probs differ from
the trainer's by float noise (more in bf16): there one policy forward gives the behaviour
log-probs, and the gap |engine - trainer| is logged (`behaviour_logprobs`).

A scorer is anything with
    score(prompts: list[str], responses: list[str], safety: list[bool]) -> (B,) tensor
(or an object with a `.scores` (B,) tensor, as `scoring.RewardScorer` returns), and may
also have `score_tokens(prompt_ids, prompt_mask, response_ids, response_mask,
policy_tokenizer, safety)`, which is used when present (no decode / re-encode); with
conversational prompts it also gets their messages as `prompts=` (`score_generation`).

`Rollout.raw_scores` is the combined score BEFORE any whitening (a `--combine llama2`
reward is whitened by its combiner, mean 0 in every batch: logged, it would say nothing).
The score that enters the reward is the scorer's output (whitened where the combiner
whitens), then shaped (Huang et al. 2024, "N+ implementation details"): an optional
penalty for responses that never produced EOS (subtracted from, or replacing, the
score), then optional whitening over the batch (over all processes under torchrun),
then optional clipping to [-c, c]. The KL penalty is per token
(`ops.kl.kl_penalized_rewards`): rewards_t = -kl_coef * KL_t, plus the score at the last
response token; with `--kl-in loss` the rewards are the score at the last token alone
(the KL per token is still measured and logged, `kl`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.config.checks import unfiltered
from rlhfkit.config.rl import estimator_options
from rlhfkit.data.records import PromptRecord
from rlhfkit.errors import UserError
from rlhfkit.logging import sync_time
from rlhfkit.models.forward import policy_logits
from rlhfkit.models.load import autocast_context
from rlhfkit.ops.kl import KL_ESTIMATORS, kl_penalized_rewards
from rlhfkit.ops.logprobs import logprob_temperature, response_logprobs
from rlhfkit.ops.masking import global_whiten
from rlhfkit.sampling.generator import GenerationSettings, ResponseGenerator
from rlhfkit.sampling.sample_score import encode_prompts, start_scoring
from rlhfkit.types import Rollout


def check_unfiltered(top_k: int, top_p: float) -> None:
    """Refuse top-k / top-p sampling in PPO (UserError, exit 2).

    The behaviour log-probs are the sampler's over the FULL vocabulary (`models.generate`),
    as are the update's and the reference's (`ops.logprobs.response_logprobs`); a filtered
    sampler draws from another distribution, so the first ratio would not be 1 and the
    clipped objective would be off-policy by the mass the filter removed. Using the filtered
    log-probs everywhere does not fix it: the reference filtered by its own logits can give
    a sampled token probability 0 (infinite KL), and the filter's support moves with every
    update, a step no gradient sees."""
    unfiltered(top_k, top_p)


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
    engine_logprobs: bool = False  # --vllm-logprobs: keep the engine's (off-policy by the gap)
    packed: frozenset[str] = frozenset()  # roles ("policy", "reference") run padding-free
    kl_in: str = "reward"  # "loss": no KL penalty in the rewards (the update adds k3)
    samples_per_prompt: int = 1  # responses per prompt, in consecutive rows

    @property
    def logprob_temperature(self) -> float:
        """The temperature of every log-prob (sampling, reference, training): greedy -> 1."""
        return logprob_temperature(self.temperature)

    def __post_init__(self) -> None:
        check_unfiltered(self.top_k, self.top_p)
        if self.kl_estimator not in KL_ESTIMATORS:
            raise UserError(f"unknown KL estimator {self.kl_estimator!r}: k1, k2 or k3")
        if self.missing_eos_mode not in ("add", "replace"):
            raise UserError(
                f"missing_eos_mode must be add or replace, not {self.missing_eos_mode!r}"
            )
        if self.score_norm not in ("none", "whiten"):
            raise UserError(f"score_norm must be none or whiten, not {self.score_norm!r}")
        if self.kl_in not in ("reward", "loss"):
            raise UserError(f"kl_in must be reward or loss, not {self.kl_in!r}")

    @classmethod
    def from_config(cls, cfg: Any) -> RolloutSettings:
        """The rollout options of a `PPOConfig` (estimator defaults resolved)."""
        kl_in, _, samples_per_prompt = estimator_options(cfg)
        return cls(
            kl_in=kl_in,
            samples_per_prompt=samples_per_prompt,
            max_new_tokens=cfg.max_new_tokens,
            max_prompt_len=cfg.max_prompt_len,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            kl_estimator=cfg.kl_estimator,
            missing_eos_penalty=cfg.missing_eos_penalty,
            missing_eos_mode=cfg.missing_eos_mode,
            score_norm=cfg.score_norm,
            score_clip=cfg.score_clip,
            bf16=cfg.bf16,
            stop_at_eos=not cfg.ignore_eos,
            engine_logprobs=getattr(cfg, "vllm_logprobs", False),
        )

    @property
    def generation(self) -> GenerationSettings:
        """What the generation engine needs of these settings."""
        return GenerationSettings.of(self)


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


@torch.no_grad()  # behaviour log-probs are constants of the PPO ratio
def behaviour_logprobs(
    generator: ResponseGenerator, gen: Any, settings: RolloutSettings
) -> tuple[torch.Tensor, dict[str, float]]:
    """(B, R) behaviour log-probs of a generation (0 at padding), and the engine's gap stats.

    Our decoding path (`exact_logprobs`) returns the training forward's numbers: used as
    they are. Another engine (vLLM) runs its own kernels on its own copy of the weights, so
    its sampling log-probs are not exactly the policy's: the ratio of the first PPO epoch
    would not start at 1. One policy forward over prompt + response gives the on-policy
    ones (NeMo-RL's choice), and `{name}/logprob_gap_mean` / `_max` (|engine - trainer| over
    response tokens) say how far the engine is. `settings.engine_logprobs` keeps the
    engine's instead: one forward fewer, off-policy by that gap (no gap is measured then).
    """
    sampled = gen.logprobs.float()
    if getattr(generator, "exact_logprobs", True) or settings.engine_logprobs:
        return sampled, {}
    mask, seq = gen.response_mask, gen.sequences
    with autocast_context(mask.device, settings.bf16):
        logits = policy_logits(
            generator.model, seq, gen.attention_mask, mask.shape[1], "policy" in settings.packed
        )
    trainer = response_logprobs(
        logits, seq, gen.prompt_ids.shape[1], settings.logprob_temperature
    ).masked_fill(~mask, 0.0)
    gap = (trainer - sampled).abs().masked_fill(~mask, 0.0)  # (B, R)
    name = getattr(generator, "name", "engine")
    return trainer, {
        f"{name}/logprob_gap_mean": float(gap.sum() / mask.sum().clamp(min=1)),
        f"{name}/logprob_gap_max": float(gap.max()) if gap.numel() else 0.0,
    }


@torch.no_grad()
def collect_rollout(
    generator: ResponseGenerator,
    reference: torch.nn.Module,
    scorer: Any,
    prompts: Sequence[PromptRecord | str],
    *,
    tokenizer: Any,
    settings: RolloutSettings,
    kl_coef: float,
    rng: torch.Generator | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
) -> Rollout:
    """Sample `settings.samples_per_prompt` responses to each prompt (consecutive rows),
    score them, and compute the reference log-probs and the per-token rewards (module
    docstring).

    `prompts`: records (text + safety tag) or plain strings (safety False); `prompt_ids`:
    their token ids if already encoded. Everything returned lives on the policy's device.
    """
    if prompt_ids is None:
        prompt_ids = encode_prompts(prompts, tokenizer, settings.max_prompt_len)
    n = settings.samples_per_prompt
    if n > 1:  # each prompt n times in a row: its group
        prompts = [p for p in prompts for _ in range(n)]
        prompt_ids = [ids for ids in prompt_ids for _ in range(n)]
    texts = [p if isinstance(p, str) else p.prompt for p in prompts]
    t0 = sync_time(generator.device)
    gen = generator.generate(prompt_ids, settings.generation, rng)
    device = gen.response_ids.device
    logprobs, engine_stats = behaviour_logprobs(generator, gen, settings)
    t1 = sync_time(device)

    safety = torch.tensor([bool(getattr(p, "safety", False)) for p in prompts], device=device)
    scoring = start_scoring(scorer, gen, prompts, safety, tokenizer)  # served RMs: in flight
    t2 = sync_time(device)

    mask, seq = gen.response_mask, gen.sequences
    with autocast_context(device, settings.bf16):
        ref_logits = policy_logits(
            reference, seq, gen.attention_mask, mask.shape[1], "reference" in settings.packed
        )
    ref_logprobs = response_logprobs(
        ref_logits, seq, gen.prompt_ids.shape[1], settings.logprob_temperature
    ).masked_fill(~mask, 0.0)
    del ref_logits
    t3 = sync_time(device)
    result = scoring()  # served RMs answered while the reference ran
    # the reward starts from the scorer's output (whitened by a whitening combiner);
    # raw_scores keep the combined score before that whitening: what the logs show
    scores = shape_scores(result.scores, gen.ended, settings)
    t4 = sync_time(device)

    penalty = kl_coef if settings.kl_in == "reward" else 0.0
    rewards, kl = kl_penalized_rewards(
        scores, logprobs, ref_logprobs, mask, penalty, settings.kl_estimator
    )
    return Rollout(
        prompt_ids=gen.prompt_ids,
        prompt_mask=gen.prompt_mask,
        response_ids=gen.response_ids,
        response_mask=mask,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        raw_scores=result.unwhitened,
        scores=scores,
        kl=kl,
        rewards=rewards,
        ended=gen.ended,
        safety=safety,
        prompts=texts,
        responses=gen.texts,
        per_rm=result.per_rm,
        kl_coef=float(kl_coef),
        kl_estimator=settings.kl_estimator,
        kl_in=settings.kl_in,
        group_size=n,
        timings={"generate": t1 - t0, "score": t2 - t1 + t4 - t3, "reference": t3 - t2},
        engine_stats=engine_stats,
    )
