"""Sample, then score: the one path by which responses are drawn from a policy and scored,
shared by PPO's evaluation, rejection sampling, `select`, `eval` and `world label`.
Generation goes through the `sampling.generator` seam; scoring through a scorer (`scoring`).

`sample_and_score` is the one loop: N responses per prompt, sampled in batches of
sequences with one seeded `torch.Generator` (one `generate` call per batch, in order, so
the same seed, prompts, N and batch size give the same responses), then optionally a
score per response and the per-sequence KL to a reference. Held-out evaluation draws
through it too (`sampling.held_out`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data.chat import chat_format, has_template
from rlhfkit.data.records import PromptRecord
from rlhfkit.data.tokenize import prompt_ids as whole_prompt_ids
from rlhfkit.data.tokenize import truncate_left
from rlhfkit.distributed import rank
from rlhfkit.errors import RecordError
from rlhfkit.models.forward import policy_logits
from rlhfkit.models.load import autocast_context
from rlhfkit.models.wrap import unwrap
from rlhfkit.ops.kl import kl_k1, kl_k3
from rlhfkit.ops.logprobs import logprob_temperature, response_logprobs
from rlhfkit.ops.masking import masked_sum
from rlhfkit.sampling.generator import GenerationSettings, ResponseGenerator
from rlhfkit.scoring.rm import ScoreResult
from rlhfkit.types import Generation
from rlhfkit.world import is_world_prompt, summarize

GOLD_KEYS = (
    "gold_score",
    "helpfulness",
    "accuracy_safe",
    "safety_unsafe",
    "refusal_rate_unsafe",
    "false_refusal_rate",
)
"""The built-in world's headline gold metrics that PPO, rejection sampling and `select`
report (`gold_metrics`)."""


@dataclass
class Samples:
    """N responses per prompt, prompt-major: the responses to prompt i are rows
    i * N .. i * N + N - 1. Tensors on the CPU; those not asked for are None / empty."""

    texts: list[str]  # decoded responses (no EOS, no padding)
    tokens: list[int]  # tokens of each response, EOS not counted
    ended: list[bool]  # the response produced EOS within max_new_tokens
    scores: torch.Tensor | None = None  # (N,) float32: the scorer's scores
    per_rm: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N,) raw score
    kl: torch.Tensor | None = None  # (N,) float32: sum over response tokens of k1
    kl_k3: torch.Tensor | None = None  # (N,) float32: sum over response tokens of k3 (>= 0)
    logprob: torch.Tensor | None = None  # (N,) float32: log pi(response | prompt), EOS included


@torch.no_grad()
def sample_and_score(
    generator: ResponseGenerator,
    prompts: Sequence[PromptRecord | str],
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings,
    rng: torch.Generator | None,
    *,
    n: int = 1,
    batch_size: int | None = None,
    scorer: Any = None,
    tokenizer: Any = None,
    reference: torch.nn.Module | None = None,
    policy: torch.nn.Module | None = None,
    logprob_model: torch.nn.Module | None = None,
) -> Samples:
    """`n` responses to each prompt (`prompt_ids` its token ids), sampled by `generator`
    with `settings` in batches of `batch_size` sequences (None: one batch), every batch
    drawing from `rng` in order. Then, per batch:
    - with `scorer`: its score of each response (`score_generation`; `tokenizer` is the
      policy's, for scorers that read token ids; safety from the prompt records);
    - with `reference`: k1 and k3 summed over each response's tokens, from the sampler's
      log-probs against one reference forward (`sequence_logprobs`); with `policy` too, from
      a forward of `policy` instead of the sampler's, so that a model against itself gives
      exactly 0 whatever the kernels' rounding. Log-probs at the sampling temperature
      (1 when greedy);
    - with `logprob_model`: each response's log-probability under it at temperature 1
      (the untempered model, whatever the sampling temperature), summed over the response
      tokens, EOS included (`response_logprob`; rejection sampling's `--kl-coef`).
    """
    if len(prompts) != len(prompt_ids):
        raise ValueError(f"{len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
    flat = [p for p in prompts for _ in range(n)]
    flat_ids = [ids for ids in prompt_ids for _ in range(n)]
    step = batch_size or max(len(flat), 1)
    parts, scoring = [], []
    for lo in range(0, len(flat), step):
        gen = generator.generate(flat_ids[lo : lo + step], settings, rng)
        part = Samples(
            gen.texts, (gen.response_mask.sum(-1) - gen.ended.long()).tolist(), gen.ended.tolist()
        )
        if scorer is not None:  # served RMs answer while the next batch samples
            scoring.append((part, _score(scorer, gen, flat[lo : lo + step], tokenizer)))
        if reference is not None:
            part.kl, part.kl_k3 = sequence_kl(gen, reference, policy, settings)
        if logprob_model is not None:
            part.logprob = response_logprob(generator, logprob_model, gen, settings)
        parts.append(part)
    for part, scores in scoring:
        part.scores, part.per_rm = scores()
    return _concat(
        parts, scored=scorer is not None, kl=reference is not None, lp=logprob_model is not None
    )


def _score(
    scorer: Any, gen: Generation, prompts: Sequence[PromptRecord | str], tokenizer: Any
) -> Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """`start_scoring` of one batch; calling the result gives (scores, per RM) on the CPU."""
    device = gen.response_ids.device
    safety = torch.tensor([bool(getattr(p, "safety", False)) for p in prompts], device=device)
    pending = start_scoring(scorer, gen, prompts, safety, tokenizer)

    def result() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = pending()
        return r.scores.cpu(), {name: v.cpu() for name, v in r.per_rm.items()}

    return result


def _concat(parts: list[Samples], *, scored: bool, kl: bool, lp: bool = False) -> Samples:
    """One `Samples` of the batches' in order."""

    def cat(xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs) if xs else torch.zeros(0)

    out = Samples(
        [t for p in parts for t in p.texts],
        [t for p in parts for t in p.tokens],
        [e for p in parts for e in p.ended],
    )
    if scored:
        out.scores = cat([p.scores for p in parts])
        names = parts[0].per_rm if parts else {}
        out.per_rm = {name: cat([p.per_rm[name] for p in parts]) for name in names}
    if kl:
        out.kl, out.kl_k3 = cat([p.kl for p in parts]), cat([p.kl_k3 for p in parts])
    if lp:
        out.logprob = cat([p.logprob for p in parts])
    return out


def encode_prompts(
    prompts: Sequence[PromptRecord | str], tokenizer: Any, max_prompt_len: int
) -> list[list[int]]:
    """Token ids of each prompt, as SFT saw them (`data.tokenize.prompt_ids`): a
    conversational record's messages through the chat template with the generation prompt,
    a string as it is, or as one user turn for a tokenizer in chat format (`data.chat`);
    cut to its last `max_prompt_len` tokens (a leading BOS kept).

    First checked against the tokenizer (`check_prompt_style`); then a note, printed once
    per file, counts the prompts that were cut."""
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")
    check_prompt_style(prompts, tokenizer)
    whole = [whole_prompt_ids(_content(p), tokenizer) for p in prompts]
    n_cut = sum(len(ids) > max_prompt_len for ids in whole)
    if n_cut:
        say_once(
            f"note: {_where(prompts)}: {n_cut} of {len(prompts)} prompts are longer than "
            f"--max-prompt-len={max_prompt_len} tokens; each keeps its last "
            f"{max_prompt_len} tokens (the oldest are dropped, a leading BOS kept)"
        )
    return [truncate_left(ids, max_prompt_len, tokenizer.bos_token_id) for ids in whole]


def check_prompt_style(prompts: Sequence[PromptRecord | str], tokenizer: Any) -> None:
    """Prompts and model agree on the chat template: conversational prompts with a
    tokenizer that has no template are refused (RecordError naming the first). Plain
    strings need no check: the tokenizer's format (`data.chat`) says how they go in."""
    chat = [p for p in prompts if isinstance(p, PromptRecord) and p.messages is not None]
    if chat and not has_template(tokenizer):
        raise RecordError(
            chat[0].source or "prompts",
            chat[0].line or None,
            "a conversational prompt (a list of messages) needs a tokenizer with a chat "
            "template, and the model's has none: give plain 'prompt' strings",
        )


_SAID: set[str] = set()


def say_once(line: str) -> None:
    """Print a note or warning on rank 0, once per process: evaluation re-encodes the same
    prompts at every step, and one line per file is enough."""
    if line not in _SAID:
        _SAID.add(line)
        if rank() == 0:
            print(line, flush=True)


def _where(prompts: Sequence[PromptRecord | str]) -> str:
    """The files the prompts come from, for a message ("prompts" for bare strings)."""
    sources = dict.fromkeys(p.source for p in prompts if isinstance(p, PromptRecord))
    return ", ".join(s for s in sources if s) or "prompts"


def _text(p: PromptRecord | str) -> str:
    return p if isinstance(p, str) else p.prompt


def _content(p: PromptRecord | str) -> str | list[dict[str, str]]:
    """What is encoded: a conversational record's messages, else the prompt's text."""
    return p if isinstance(p, str) else p.content


def score_generation(
    scorer: Any,
    gen: Generation,
    prompts: Sequence[PromptRecord | str],
    safety: torch.Tensor,
    tokenizer: Any,
) -> ScoreResult:
    """The scores of sampled responses, on the responses' device: `.scores` (B,) float32,
    `.per_rm` {rm name: (B,) raw score} and `.unwhitened` (B,) (the combined score before
    batch whitening; `.scores` when the scorer does not say). `score_tokens` on the ids
    when the scorer has it (a response without EOS is scored without one, `scoring.rm`;
    conversational prompts, and every prompt of a policy in chat format, are passed along
    as read, for reward models that re-encode text in their own format rather than read
    the policy's rendering), else `score` on the texts (`gen.texts`; a rule
    reads text, EOS or not). safety: (B,) bool."""
    return start_scoring(scorer, gen, prompts, safety, tokenizer)()


def start_scoring(
    scorer: Any,
    gen: Generation,
    prompts: Sequence[PromptRecord | str],
    safety: torch.Tensor,
    tokenizer: Any,
) -> Callable[[], ScoreResult]:
    """`score_generation`, started: served reward models answer while the caller works on
    (a scorer with `start_tokens`, `scoring.rm.RewardScorer`); calling the result waits
    for them and gives the `ScoreResult`."""
    contents = [_content(p) for p in prompts]
    as_read = chat_format(tokenizer) or any(isinstance(c, list) for c in contents)
    chat = {"prompts": contents} if as_read else {}
    ids = (gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask, tokenizer, safety)
    if hasattr(scorer, "start_tokens"):
        pending = scorer.start_tokens(*ids, **chat)
        return lambda: _checked(pending.result(), gen, len(prompts))
    if hasattr(scorer, "score_tokens"):
        result = scorer.score_tokens(*ids, **chat)
    else:
        result = scorer.score([_text(p) for p in prompts], gen.texts, safety.tolist())
    done = _checked(result, gen, len(prompts))
    return lambda: done


def _checked(result: Any, gen: Generation, n: int) -> ScoreResult:
    """A scorer's answer as a `ScoreResult` of (n,) float32 tensors on the responses' device."""
    if isinstance(result, torch.Tensor):
        result = ScoreResult(result)
    device = gen.response_ids.device
    scores = torch.as_tensor(result.scores).float().to(device)
    if scores.shape != (n,):
        raise ValueError(f"the scorer returned shape {tuple(scores.shape)}, expected ({n},)")
    unwhitened = getattr(result, "unwhitened", None)
    return ScoreResult(
        scores,
        {k: v.float().to(device) for k, v in (getattr(result, "per_rm", None) or {}).items()},
        scores if unwhitened is None else torch.as_tensor(unwhitened).float().to(device),
    )


@torch.no_grad()
def sequence_logprobs(
    model: torch.nn.Module, gen: Generation, temperature: float = 1.0, bf16: bool = False
) -> torch.Tensor:
    """(B, R) float32 log-probs of a `Generation`'s response tokens under `model`: one full
    forward over prompt + response on the model's device (positions from the mask, as in
    sampling; eval mode, its training flag restored after), 0 at padding; on `gen`'s device."""
    model = unwrap(model)
    device = next(model.parameters()).device
    g = gen.to(device)
    seq, P, R = g.sequences, g.prompt_ids.shape[1], g.response_ids.shape[1]
    was_training = model.training
    model.eval()
    try:
        with autocast_context(device, bf16):
            logits = policy_logits(model, seq, g.attention_mask, R)  # (B, L, V)
    finally:
        model.train(was_training)
    logprobs = response_logprobs(logits, seq, P, temperature).float()  # (B, R)
    return logprobs.masked_fill(~g.response_mask, 0.0).to(gen.response_ids.device)


def response_logprob(
    generator: ResponseGenerator,
    model: torch.nn.Module,
    gen: Generation,
    settings: GenerationSettings,
) -> torch.Tensor:
    """(B,) log pi(y | x) on the CPU, summed over each response's tokens (EOS included), at
    temperature 1: the sampler's own log-probs where they are exactly that (our decoding
    path, `exact_logprobs`, at temperature 1 or greedy: log softmax over the full
    vocabulary, `models.generate`), else one forward of `model` (`sequence_logprobs`)."""
    at_one = logprob_temperature(settings.temperature) == 1.0
    if getattr(generator, "exact_logprobs", False) and at_one:
        return gen.logprobs.float().sum(-1).cpu()
    return sequence_logprobs(model, gen, 1.0, settings.bf16).sum(-1).cpu()


def sequence_kl(
    gen: Generation,
    reference: torch.nn.Module,
    policy: torch.nn.Module | None,
    settings: GenerationSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """((B,) k1, (B,) k3) on the CPU, each summed over the response tokens (EOS included):
    the policy's log-probs (the sampler's, or a forward of `policy` when given) against a
    forward of `reference`, both at the sampling temperature (1 when greedy)."""
    temperature = logprob_temperature(settings.temperature)
    ref_logprobs = sequence_logprobs(reference, gen, temperature, settings.bf16)  # (B, R)
    if policy is None:
        logprobs = gen.logprobs.float()  # (B, R)
    else:
        logprobs = sequence_logprobs(policy, gen, temperature, settings.bf16)  # (B, R)
    mask = gen.response_mask
    k1 = masked_sum(kl_k1(logprobs, ref_logprobs), mask, dim=1)  # (B,)
    k3 = masked_sum(kl_k3(logprobs, ref_logprobs), mask, dim=1)  # (B,)
    return k1.cpu(), k3.cpu()


# ---------------------------------------------------------------------------------------
# The world's gold metrics
# ---------------------------------------------------------------------------------------


def gold_metrics(
    prompts: Sequence[str], responses: Sequence[str], safety: Sequence[bool], tokens: Sequence[int]
) -> dict[str, Any]:
    """The world's headline gold metrics (`GOLD_KEYS`) of the responses, or {} when a
    prompt is not one of the world's."""
    if not prompts or not all(is_world_prompt(p) for p in prompts):
        return {}
    summary = summarize(list(prompts), list(responses), list(safety), response_tokens=list(tokens))
    return {k: summary[k] for k in GOLD_KEYS if k in summary}
