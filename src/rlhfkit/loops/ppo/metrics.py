"""What PPO shows while it runs: per-step rollout metrics (over all processes), a table of
sample responses, and evaluation on held-out prompts (reward, KL, and the built-in world's
gold metrics when the prompts are the world's)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlhfkit.data.records import PromptRecord
from rlhfkit.distributed import all_reduce
from rlhfkit.generation import make_generator
from rlhfkit.loops.ppo.rollout import RolloutSettings, collect_rollout
from rlhfkit.ops.kl import KL_ESTIMATORS, kl_k3
from rlhfkit.ops.masking import masked_sum
from rlhfkit.types import Rollout

GOLD_KEYS = (
    "gold_score",
    "helpfulness",
    "accuracy_safe",
    "safety_unsafe",
    "refusal_rate_unsafe",
    "false_refusal_rate",
)


def mean_kl(rollout: Rollout) -> float:
    """The batch's KL over all processes: the mean over sequences of the summed per-token
    estimator, the quantity the KL penalty and the adaptive controller use."""
    sums = torch.stack([rollout.kl.sum(1).sum().double(), torch.tensor(float(len(rollout))).double()])
    total, n = all_reduce(sums.to(rollout.device)).tolist()
    return total / n


def rollout_metrics(rollout: Rollout) -> dict[str, Any]:
    """Step metrics of a rollout with advantages, summed over every process with ONE
    all-reduce.

    kl / kl_k3: per-sequence sums of the per-token estimator, averaged over sequences
    (`mean_kl`); non_score_reward: the mean summed KL penalty; explained_variance: of the
    returns by the values.
    """
    mask, returns = rollout.response_mask, rollout.returns
    k3 = masked_sum(kl_k3(rollout.logprobs, rollout.ref_logprobs), mask, dim=1)  # (B,)
    kl_seq = rollout.kl.sum(1)  # (B,), already 0 at padding
    residual = returns - rollout.values
    raw = rollout.raw_scores.float()
    names = sorted(rollout.per_rm)
    parts = [
        torch.tensor(float(len(rollout))),
        raw.sum(),
        (raw * raw).sum(),
        rollout.scores.float().sum(),
        kl_seq.sum(),
        k3.sum(),
        mask.sum().float(),
        rollout.ended.float().sum(),
        masked_sum(returns, mask),
        masked_sum(returns * returns, mask),
        masked_sum(residual, mask),
        masked_sum(residual * residual, mask),
        *[rollout.per_rm[n].float().sum() for n in names],
    ]
    s = all_reduce(torch.stack([p.double().to(rollout.device) for p in parts])).tolist()
    n, tokens = s[0], max(s[6], 1.0)
    var_ret = s[9] / tokens - (s[8] / tokens) ** 2
    var_res = s[11] / tokens - (s[10] / tokens) ** 2
    metrics: dict[str, Any] = {
        "score/mean": s[1] / n,
        "score/std": max(s[2] / n - (s[1] / n) ** 2, 0.0) ** 0.5 * (n / max(n - 1, 1)) ** 0.5,
        "score/shaped_mean": s[3] / n,
        "kl": s[4] / n,
        "kl_k3": s[5] / n,
        "kl_coef": rollout.kl_coef,
        "non_score_reward": -rollout.kl_coef * s[4] / n,
        "response_length": s[6] / n,
        "response_tokens": s[6],
        "eos_rate": s[7] / n,
        "explained_variance": 1.0 - var_res / var_ret if var_ret > 0 else float("nan"),
    }
    if rollout.kl_estimator == "k3":
        metrics.pop("kl_k3")
    for i, name in enumerate(names):
        metrics[f"score/{name}"] = s[12 + i] / n
    for k, v in rollout.timings.items():
        metrics[f"time/{k}"] = v
    return metrics


def sample_table(rollout: Rollout, n: int, width: int = 60) -> str:
    """A plain-text table of the first `n` prompts, responses and scores of a rollout."""

    def cut(text: str) -> str:
        text = text.replace("\n", "\\n")
        return text if len(text) <= width else text[: width - 3] + "..."

    rows = [f"| {'prompt':<{width}} | {'response':<{width}} | {'score':>8} |"]
    rows.append(f"|{'-' * (width + 2)}|{'-' * (width + 2)}|{'-' * 10}|")
    for i in range(min(n, len(rollout))):
        score = float(rollout.raw_scores[i])
        eos = "" if bool(rollout.ended[i]) else " (no EOS)"
        rows.append(
            f"| {cut(rollout.prompts[i]):<{width}} | {cut(rollout.responses[i] + eos):<{width}} "
            f"| {score:>8.4f} |"
        )
    return "\n".join(rows)


def gold_metrics(
    prompts: Sequence[str], responses: Sequence[str], safety: Sequence[bool], tokens: Sequence[int]
) -> dict[str, Any]:
    """The world's headline gold metrics, or {} when the world is absent or a prompt is not
    one of its prompts."""
    try:
        from rlhfkit.data.world import is_world_prompt, summarize
    except ImportError:
        return {}
    if not prompts or not all(is_world_prompt(p) for p in prompts):
        return {}
    summary = summarize(list(prompts), list(responses), list(safety), response_tokens=list(tokens))
    return {k: summary[k] for k in GOLD_KEYS if k in summary}


@torch.no_grad()
def evaluate_policy(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    scorer: Any,
    prompts: Sequence[PromptRecord],
    *,
    tokenizer: Any,
    settings: RolloutSettings,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Reward, KL to the reference and (world prompts) gold metrics of the policy's
    responses to `prompts`, sampled with `settings` (greedy at temperature 0) and a
    generator seeded by `seed`, so that evaluations at different steps are comparable.

    With greedy decoding `kl` is the summed log-ratio log pi/pi_ref of the greedy
    response, not an unbiased KL estimate.
    """
    gen = torch.Generator(device=device).manual_seed(seed + 12_345)
    scores, kls, k3s, lengths, responses = [], [], [], [], []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        r = collect_rollout(
            make_generator(policy, tokenizer), reference, scorer, chunk,
            tokenizer=tokenizer, settings=settings, kl_coef=0.0, rng=gen,
        )  # fmt: skip
        mask = r.response_mask
        scores.append(r.raw_scores.float().cpu())
        kls.append(
            KL_ESTIMATORS["k1"](r.logprobs, r.ref_logprobs).masked_fill(~mask, 0).sum(1).cpu()
        )
        k3s.append(masked_sum(kl_k3(r.logprobs, r.ref_logprobs), mask, dim=1).cpu())
        lengths.append((mask.sum(1) - r.ended.long()).cpu())  # EOS not counted
        responses += r.responses
    s = torch.cat(scores)
    out: dict[str, Any] = {
        "score": float(s.mean()),
        "score_std": float(s.std()) if len(s) > 1 else 0.0,
        "kl": float(torch.cat(kls).mean()),
        "kl_k3": float(torch.cat(k3s).mean()),
        "response_length": float(torch.cat(lengths).float().mean()),
        "n": len(s),
    }
    tokens = torch.cat(lengths).tolist()
    out.update(
        gold_metrics([p.prompt for p in prompts], responses, [p.safety for p in prompts], tokens)
    )
    out["samples"] = [
        {"prompt": p.prompt, "response": resp, "score": float(sc)}
        for p, resp, sc in list(zip(prompts, responses, s.tolist(), strict=True))[:4]
    ]
    return out
