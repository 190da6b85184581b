"""Rejection sampling, the selection half (pure functions of the saved samples): which
response each prompt is fine-tuned on, the numbers of a round, and the max/median plot.

Keep rules, picked by name from KEEP_RULES:
- "best": per prompt, the best of this round's K samples (ties: the lowest index);
- "best-of-all-rounds": per prompt, the best sample of any round so far (Llama 2; ties:
  the earliest round, then the lowest index). Earlier rounds' samples keep the scores
  they were drawn with: the reward is fixed and never whitened, so they compare as they are.

With `kl_coef` (--kl-coef, beta > 0) both rules rank the candidates by
r(x, y) + beta log pi(y | x) instead of r(x, y): the candidate most likely under the
KL-regularised optimum pi*(y | x) ~ pi(y | x) exp(r(x, y) / beta) (the policy PPO's
objective r - beta KL aims at, Korbak et al. 2022), with pi the policy that drew it. Where
the reward cannot tell candidates apart (a small RM scores " 5" and " 4" alike), the one
the policy believes wins, instead of a random one; where it can (a refusal, filler), the
reward still decides. `add_greedy` adds the policy's greedy response to the candidates
(`with_greedy`; its index among them is K).

Either rule records each kept sample's `gap`: its reward minus the median reward of the
samples it was chosen from. `min_gap` filters on it (`--min-gap`): where the K samples
score within noise of each other the "best" is a random sample, and fine-tuning on it
only teaches the policy its own sampling distribution (on the built-in world, best
samples with gap < 0.2 were no better by the gold judges than the average sample; with
gap >= 0.5 they were). 0 keeps every prompt, as Llama 2 does.

A kept sample that hit --max-new-tokens before EOS (`Kept.ended` False) is dropped by
`drop_truncated` (the prompt is not trained on this round; `truncated_dropped` in the
round's stats): SFT on it would append an EOS the policy never produced, and teach it to
stop mid-answer. The keep rule still ranks every sample, truncated ones included, so a
prompt whose best sample is truncated is dropped rather than trained on a lesser one.
With `--keep-truncated` they are kept and trained WITHOUT EOS (`loop.encode_kept`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean, median
from typing import Any

from rlhfkit.data.ranking import best_of_k, max_and_median_at_k
from rlhfkit.sampling.sample_score import gold_metrics  # {} unless the prompts are the world's


@dataclass(frozen=True)
class Kept:
    """The response one prompt is fine-tuned on, and where it came from."""

    prompt: str
    completion: str
    score: float
    round: int  # 1-based round that drew it
    index: int  # its index among that round's K samples
    safety: bool = False
    tokens: int = 0
    gap: float = 0.0  # score minus the median score of the samples it was chosen from
    ended: bool = True  # the response produced EOS (False: cut at --max-new-tokens)
    prompt_messages: list[dict[str, str]] | None = None  # a conversational prompt's messages
    logprob: float | None = None  # log pi(y|x) under the policy that drew it (--kl-coef)

    @property
    def messages(self) -> list[dict[str, str]] | None:
        """A conversational sample as SFT `messages`: the prompt's, then the response as
        the assistant turn (None for a plain prompt)."""
        if self.prompt_messages is None:
            return None
        return [*self.prompt_messages, {"role": "assistant", "content": self.completion}]

    def to_json(self) -> dict[str, Any]:
        """SFT format ({"prompt", "completion"}, or {"messages"} for a conversational
        prompt) plus where it came from."""
        sft = (
            {"prompt": self.prompt, "completion": self.completion}
            if self.messages is None
            else {"messages": self.messages}
        )
        return {
            **sft,
            "score": self.score,
            "round": self.round,
            "index": self.index,
            "safety": self.safety,
            "gap": self.gap,
            "ended": self.ended,
            **({} if self.logprob is None else {"logprob": self.logprob}),
        }


def _ended(rec: Any, i: int) -> bool:
    """Whether sample i of `rec` produced EOS (records without the field: True)."""
    ended = getattr(rec, "ended", None)
    return bool(ended[i]) if ended else True


def _kept(rec: Any, round_index: int, i: int, pool: Sequence[float]) -> Kept:
    tokens = rec.response_tokens[i] if rec.response_tokens else 0
    gap = rec.scores[i] - median(pool)
    logprobs = getattr(rec, "logprobs", None)
    return Kept(
        prompt=rec.prompt,
        completion=rec.responses[i],
        score=rec.scores[i],
        round=round_index,
        index=i,
        safety=rec.safety,
        tokens=tokens,
        gap=gap,
        ended=_ended(rec, i),
        prompt_messages=getattr(rec, "messages", None),
        logprob=logprobs[i] if logprobs else None,
    )


def ranking_values(rec: Any, kl_coef: float = 0.0) -> list[float]:
    """What the keep rules maximise over a record's candidates: r(x, y), or with
    `kl_coef` beta > 0, r(x, y) + beta log pi(y | x) (module docstring)."""
    if kl_coef < 0:  # kept (pure function): beta < 0 would silently favour unlikely samples
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef == 0:
        return list(rec.scores)
    logprobs = getattr(rec, "logprobs", None)
    if not logprobs or len(logprobs) != len(rec.scores):
        raise ValueError(f"kl_coef > 0 needs every candidate's log-prob ({rec.prompt[:40]!r})")
    return [r + kl_coef * lp for r, lp in zip(rec.scores, logprobs, strict=True)]


def keep_best(history: Sequence[Sequence[Any]], kl_coef: float = 0.0) -> list[Kept]:
    """Per prompt, the best candidate of the latest round by `ranking_values` (ties: the
    lowest index).

    `history[r][p]`: round r+1's `SampleRecord` of prompt p (same prompts every round).
    """
    r = len(history)
    return [
        _kept(rec, r, best_of_k(ranking_values(rec, kl_coef)), rec.scores) for rec in history[-1]
    ]


def keep_best_of_all_rounds(history: Sequence[Sequence[Any]], kl_coef: float = 0.0) -> list[Kept]:
    """Per prompt, the best candidate of every round so far by `ranking_values` (Llama 2);
    ties: the earliest round, then the lowest index. Earlier rounds keep the scores (and
    log-probs) they were drawn with."""
    out = []
    for p, rec in enumerate(history[-1]):
        # round-major order, so best_of_k's lowest-index tie rule means "earliest round"
        pool = [(r + 1, i) for r, rnd in enumerate(history) for i in range(len(rnd[p].scores))]
        if any(rnd[p].prompt != rec.prompt for rnd in history):
            raise ValueError(f"prompt {p} differs between rounds")
        values = [v for rnd in history for v in ranking_values(rnd[p], kl_coef)]
        scores = [history[r - 1][p].scores[i] for r, i in pool]
        r, i = pool[best_of_k(values)]
        out.append(_kept(history[r - 1][p], r, i, scores))
    return out


def _joined(a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
    """Two per-response lists end to end ([] if either is missing)."""
    return [*a, *b] if a and b else []


def with_greedy(records: Sequence[Any], greedy: Sequence[Any]) -> list[Any]:
    """Each prompt's candidates: its K samples, then its greedy response (index K), as
    records of the same type (`greedy`: one record of one response per prompt)."""
    if len(records) != len(greedy):
        raise ValueError(f"{len(records)} sample records but {len(greedy)} greedy ones")
    out = []
    for rec, g in zip(records, greedy, strict=True):
        if g.prompt != rec.prompt or len(g.responses) != 1:
            raise ValueError(f"the greedy record of {rec.prompt[:40]!r} does not match it")
        merged = dataclasses.replace(
            rec,
            responses=rec.responses + g.responses,
            scores=rec.scores + g.scores,
            response_tokens=_joined(rec.response_tokens, g.response_tokens),
            per_rm={n: v + g.per_rm[n] for n, v in rec.per_rm.items() if n in g.per_rm},
            ended=_joined(rec.ended, g.ended),
            logprobs=_joined(rec.logprobs, g.logprobs),
        )
        out.append(dataclasses.replace(merged, best=best_of_k(merged.scores)))
    return out


def confident(kept: Sequence[Kept], min_gap: float) -> list[Kept]:
    """The kept samples whose reward beats their pool's median by at least `min_gap`
    (module docstring); `min_gap` 0 keeps all of them (with --kl-coef a kept sample's
    reward can be below its pool's median)."""
    if min_gap < 0:  # kept (pure function): it would silently keep below-median samples
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    return list(kept) if min_gap == 0 else [k for k in kept if k.gap >= min_gap]


def drop_truncated(kept: Sequence[Kept]) -> list[Kept]:
    """The kept samples that produced EOS (module docstring): a sample cut at
    --max-new-tokens is not fine-tuned on."""
    return [k for k in kept if k.ended]


KEEP_RULES: dict[str, Callable[[Sequence[Sequence[Any]], float], list[Kept]]] = {
    "best": keep_best,
    "best-of-all-rounds": keep_best_of_all_rounds,
}


def samples_gold(records: Sequence[Any]) -> dict[str, Any]:
    """`gold_metrics` of every response of `records` ({} unless the prompts are the
    world's)."""
    flat = [(rec, i) for rec in records for i in range(len(rec.responses))]
    return gold_metrics(
        [rec.prompt for rec, _ in flat],
        [rec.responses[i] for rec, i in flat],
        [rec.safety for rec, _ in flat],
        [rec.response_tokens[i] for rec, i in flat],
    )


def greedy_stats(greedy: Sequence[Any], kept: Sequence[Kept], k: int) -> dict[str, Any]:
    """With --add-greedy: how many kept responses are the greedy one (index `k`), the
    greedy responses' mean reward, and their gold metrics on the world's prompts."""
    stats: dict[str, Any] = {
        "kept_greedy": sum(x.index == k for x in kept),
        "mean_reward_greedy": fmean(g.scores[0] for g in greedy),
    }
    gold = samples_gold(greedy)
    if gold:
        stats["gold_greedy"] = gold
    return stats


def max_median_curve(records: Sequence[Any]) -> list[dict[str, float]]:
    """[{"k", "max", "median"}] for k = 1 .. K: the max and the median reward among a
    prompt's first k samples, averaged over prompts (Llama 2 Figure 7)."""
    rows = [max_and_median_at_k(rec.scores) for rec in records]
    return [
        {
            "k": k + 1,
            "max": fmean(r[k][1] for r in rows),
            "median": fmean(r[k][2] for r in rows),
        }
        for k in range(min(len(r) for r in rows))
    ]


def round_stats(records: Sequence[Any], kept: Sequence[Kept], round_index: int) -> dict[str, Any]:
    """The numbers of one round: mean reward of all samples vs the kept ones, the
    max/median curve, lengths, the share of samples cut before EOS (`truncated_rate_all`)
    and of kept ones trained without EOS (`kept_truncated`, with --keep-truncated), per-RM
    means, and gold metrics on the world's prompts."""
    scores = [s for rec in records for s in rec.scores]
    curve = max_median_curve(records)
    stats: dict[str, Any] = {
        "round": round_index,
        "prompts": len(records),
        "k": len(records[0].scores),
        "mean_reward_all": fmean(scores),
        "mean_reward_kept": fmean(k.score for k in kept),
        "mean_reward_best_of_round": curve[-1]["max"],
        "kept_from_earlier_rounds": sum(k.round != round_index for k in kept),
        "mean_response_tokens_all": fmean(t for rec in records for t in rec.response_tokens),
        "mean_response_tokens_kept": fmean(k.tokens for k in kept),
        "truncated_rate_all": fmean(
            not _ended(rec, i) for rec in records for i in range(len(rec.responses))
        ),
        "kept_truncated": sum(not k.ended for k in kept),
        "max_median_at_k": curve,
    }
    names = sorted(records[0].per_rm)
    if names:
        stats["per_rm_all"] = {n: fmean(s for rec in records for s in rec.per_rm[n]) for n in names}
    gold_all = samples_gold(records)
    if gold_all:
        stats["gold_all"] = gold_all
        stats["gold_kept"] = gold_metrics(
            [k.prompt for k in kept],
            [k.completion for k in kept],
            [k.safety for k in kept],
            [k.tokens for k in kept],
        )
    return stats
