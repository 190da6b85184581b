"""What PPO shows while it runs: per-step rollout metrics (over all processes) and a table
of sample responses. Held-out evaluation is `sampling.held_out.evaluate_policy`."""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.distributed import all_reduce
from rlhfkit.ops.kl import kl_k3
from rlhfkit.ops.masking import masked_sum
from rlhfkit.types import Rollout


def mean_kl(rollout: Rollout) -> float:
    """The batch's KL over all processes: the mean over sequences of the summed per-token
    estimator, the quantity the KL penalty and the adaptive controller use."""
    sums = torch.stack(
        [rollout.kl.sum(1).sum().double(), torch.tensor(float(len(rollout))).double()]
    )
    total, n = all_reduce(sums.to(rollout.device)).tolist()
    return total / n


def rollout_metrics(rollout: Rollout) -> dict[str, Any]:
    """Step metrics of a rollout with advantages, summed over every process with ONE
    all-reduce.

    score/mean, score/std: the combined reward BEFORE batch whitening (`raw_scores`: with
    `--combine llama2` the whitened reward has mean 0 in every batch, so it is not the
    headline; the summary's first/final score are this too); score/shaped_mean: the mean
    score that enters the reward (whitened by the combiner if it whitens, EOS penalty,
    --score-norm, clipping); score/NAME: each RM's raw score.
    kl / kl_k3: per-sequence sums of the per-token estimator, averaged over sequences
    (`mean_kl`); non_score_reward: the mean summed KL penalty (0 with the KL in the loss);
    explained_variance: of the returns by the values (gae only). With groups
    (--samples-per-prompt > 1): score/group_std, the mean within-group std of the scores
    that enter the reward, and groups_without_signal, the share of groups whose scores
    are all equal (their group advantages are 0).
    """
    mask, returns = rollout.response_mask, rollout.returns
    k3 = masked_sum(kl_k3(rollout.logprobs, rollout.ref_logprobs), mask, dim=1)  # (B,)
    kl_seq = rollout.kl.sum(1)  # (B,), already 0 at padding
    # no value model: residual = returns, so explained_variance is left out below
    residual = returns - rollout.values if rollout.values is not None else returns
    raw = rollout.raw_scores.float()
    groups = rollout.scores.float().view(-1, rollout.group_size)  # (G, n)
    group_std = groups.std(1) if rollout.group_size > 1 else groups.new_zeros(len(groups))
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
        torch.tensor(float(len(groups))),
        group_std.sum(),
        (group_std == 0).float().sum(),
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
        "non_score_reward": -rollout.kl_coef * s[4] / n if rollout.kl_in == "reward" else 0.0,
        "response_length": s[6] / n,
        "response_tokens": s[6],
        "eos_rate": s[7] / n,
        "explained_variance": 1.0 - var_res / var_ret if var_ret > 0 else float("nan"),
    }
    if rollout.kl_estimator == "k3":
        metrics.pop("kl_k3")
    if rollout.values is None:
        metrics.pop("explained_variance")
    if rollout.group_size > 1:
        metrics["score/group_std"] = s[13] / s[12]
        metrics["groups_without_signal"] = s[14] / s[12]
    for i, name in enumerate(names):
        metrics[f"score/{name}"] = s[15 + i] / n
    metrics.update({f"time/{k}": v for k, v in rollout.timings.items()})  # s per phase
    metrics.update(rollout.engine_stats)
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
