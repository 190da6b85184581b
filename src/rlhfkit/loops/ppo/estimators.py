"""PPO step 4, one function per `--estimator`: the rollout grown by `advantages` (B, R) and
`returns` (B, R) (and `values`, for gae alone).

- gae: the value model's values, then GAE (`update.add_advantages`);
- rloo: R_i = the sequence reward (score - kl_coef x summed KL when the KL is in the
  reward), A_i = R_i - the mean of the other responses to the same prompt;
- grpo: A_i = (R_i - group mean) / (group std + 1e-4); dr-grpo: A_i = R_i - group mean;
- reinforce++: per-token rewards (the KL penalty as PPO's), returns to go, whitened over
  the whole batch (all processes); reinforce++-baseline: the group's mean score is taken
  off each response's score first.

The math is `ops.advantages`; here it is applied to a rollout. Per-response advantages are
repeated on every response token (0 at padding), so that one policy loss serves all. A
group is `rollout.group_size` consecutive rows (the responses to one prompt); groups never
straddle processes, so the group estimators need no communication. `--whiten-advantages`
and `--whiten-rewards` are GAE's: REINFORCE++ always whitens, the group estimators never
do (as their papers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from rlhfkit.logging import sync_time
from rlhfkit.loops.ppo.update import UpdateSettings, add_advantages
from rlhfkit.ops.advantages import (
    discounted_returns,
    group_advantages,
    group_mean,
    rloo_advantages,
)
from rlhfkit.ops.masking import global_whiten
from rlhfkit.types import Rollout


def _per_token(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, R): x_i on every valid token of row i, 0 at padding."""
    return torch.where(mask, x.unsqueeze(1).to(torch.float32), 0.0)


def _sequence_rewards(rollout: Rollout) -> torch.Tensor:
    """(B,) R_i = the sum of row i's per-token rewards: its score, minus kl_coef x its summed
    KL when the KL is in the reward (TRL RLOO's sequence reward)."""
    return rollout.rewards.sum(1)


def _with(rollout: Rollout, t0: float, advantages, returns) -> Rollout:
    timings = {**rollout.timings, "advantages": sync_time(rollout.device) - t0}
    return replace(rollout, advantages=advantages, returns=returns, timings=timings)


def gae(value_model: torch.nn.Module | None, rollout: Rollout, s: UpdateSettings) -> Rollout:
    """PPO's: values from the value model, GAE advantages and returns (`add_advantages`)."""
    if value_model is None:
        raise ValueError("the gae estimator needs a value model")
    return add_advantages(value_model, rollout, s)


def rloo(value_model: None, rollout: Rollout, s: UpdateSettings) -> Rollout:
    """RLOO (Ahmadian et al. 2024): A_i = R_i - mean_{j != i} R_j; returns hold R_i."""
    t0 = sync_time(rollout.device)
    rewards = _sequence_rewards(rollout)  # (B,)
    advantages = rloo_advantages(rewards, rollout.group_size)
    mask = rollout.response_mask
    return _with(rollout, t0, _per_token(advantages, mask), _per_token(rewards, mask))


def grpo(value_model: None, rollout: Rollout, s: UpdateSettings) -> Rollout:
    """GRPO (Shao et al. 2024): A_i = (R_i - group mean) / (group std + 1e-4)."""
    return _group(rollout, scale=True)


def dr_grpo(value_model: None, rollout: Rollout, s: UpdateSettings) -> Rollout:
    """Dr. GRPO (Liu et al. 2025): A_i = R_i - group mean (no std: no difficulty bias)."""
    return _group(rollout, scale=False)


def _group(rollout: Rollout, scale: bool) -> Rollout:
    t0 = sync_time(rollout.device)
    rewards = _sequence_rewards(rollout)  # (B,): the score when the KL is in the loss
    advantages = group_advantages(rewards, rollout.group_size, scale=scale)
    mask = rollout.response_mask
    return _with(rollout, t0, _per_token(advantages, mask), _per_token(rewards, mask))


def reinforce_pp(value_model: None, rollout: Rollout, s: UpdateSettings) -> Rollout:
    """REINFORCE++ (Hu 2025): returns to go of the per-token rewards (gamma), whitened
    over every response token of the batch (all processes)."""
    t0 = sync_time(rollout.device)
    mask = rollout.response_mask
    returns = discounted_returns(rollout.rewards, mask, s.gamma)
    return _with(rollout, t0, global_whiten(returns, mask), returns)


def reinforce_pp_baseline(value_model: None, rollout: Rollout, s: UpdateSettings) -> Rollout:
    """REINFORCE++-baseline: as reinforce++, with each response's score minus its group's
    mean score (the reward at its last token lowered by that mean)."""
    t0 = sync_time(rollout.device)
    mask, scores = rollout.response_mask, rollout.scores.float()
    baseline = group_mean(scores, rollout.group_size)  # (B,)
    returns = discounted_returns(rollout.rewards, mask, s.gamma, baseline=baseline)
    return _with(rollout, t0, global_whiten(returns, mask), returns)


ESTIMATORS: dict[str, Callable[[torch.nn.Module | None, Rollout, UpdateSettings], Rollout]] = {
    "gae": gae,
    "rloo": rloo,
    "grpo": grpo,
    "dr-grpo": dr_grpo,
    "reinforce++": reinforce_pp,
    "reinforce++-baseline": reinforce_pp_baseline,
}


def estimate_advantages(
    value_model: torch.nn.Module | None, rollout: Rollout, s: UpdateSettings
) -> Rollout:
    """Step 4: `ESTIMATORS[s.estimator]` on the rollout."""
    return ESTIMATORS[s.estimator](value_model, rollout, s)
