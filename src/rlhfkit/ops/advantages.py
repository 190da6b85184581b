"""Advantages over padded responses: generalised advantage estimation (Schulman et al.
2016) on a value model, and the critic-free estimators' baselines.

- `gae`: PPO's, per token, from per-token rewards and values;
- `rloo_advantages`: RLOO's leave-one-out baseline (Ahmadian et al. 2024), per response;
- `group_advantages`: GRPO's group mean and std (Shao et al. 2024), or Dr. GRPO's group
  mean alone (Liu et al. 2025), per response;
- `discounted_returns`: REINFORCE++'s returns to go (Hu 2025), per token, optionally after
  subtracting a per-response baseline from the reward at the last token (its `-baseline`
  variant: the group's mean score, `group_mean`).

A group is `group_size` consecutive rows: the responses to one prompt. None of these
normalises over the batch: whitening is the caller's choice
(``ops.masking.masked_whiten`` / ``global_whiten``), made where it can be seen.
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns of one episode per row.

    rewards, values: (B, R) per response token; mask: (B, R) bool, True = valid, each
    row's valid tokens a prefix (right padding). Returns ``(advantages, returns)``,
    both (B, R), 0 at padding. For valid t, backwards from each row's last token:

        V_{t+1}  = values[t + 1] if mask[t + 1] else 0     (the episode ends: no bootstrap)
        delta_t  = rewards[t] + gamma * V_{t+1} - values[t]
        A_t      = delta_t + gamma * lam * A_{t+1}          (A past the end = 0)
        returns  = A_t + values[t]

    Padding values and rewards never reach a valid output. A False inside a row acts
    as an episode end (the tokens before it never see the tokens after it).
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError("rewards, values and mask must all be (B, R)")

    zeros = torch.zeros_like(values)
    values = torch.where(mask, values, zeros)  # padding -> 0: it is the "no bootstrap" value
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    batch, length = rewards.shape

    next_value = values.new_zeros(batch)  # (B,)
    next_advantage = values.new_zeros(batch)  # (B,)
    reversed_advantages = []
    for t in reversed(range(length)):
        valid = mask[:, t]  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = torch.where(valid, delta + gamma * lam * next_advantage, 0.0)
        reversed_advantages.append(advantage)
        # Padding carries 0 backwards as both V_{t+1} and A_{t+1}.
        next_value, next_advantage = values[:, t], advantage
    if not reversed_advantages:
        return zeros, zeros
    advantages = torch.stack(reversed_advantages[::-1], dim=1)  # (B, R)
    returns = torch.where(mask, advantages + values, zeros)
    return advantages, returns


def _groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B / n, n): row g holds the n consecutive responses of group g."""
    if x.dim() != 1:
        raise ValueError(f"expected a (B,) tensor, got {tuple(x.shape)}")
    if group_size < 1 or x.shape[0] % group_size:
        raise ValueError(f"{x.shape[0]} rows do not split into groups of {group_size}")
    return x.view(-1, group_size)


def group_mean(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B,): each response's group mean, (1/n) sum_{j in group(i)} r_j."""
    g = _groups(scores, group_size)  # (G, n)
    return g.mean(1, keepdim=True).expand_as(g).reshape(-1)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024), one per response.

    rewards: (B,) sequence rewards R_i (RLOO's: the score minus kl_coef x the summed KL),
    B = G x n with the n responses of a group in consecutive rows; n >= 2. Returns (B,):

        A_i = R_i - 1/(n-1) sum_{j != i, j in group(i)} R_j

    (equivalently n/(n-1) x (R_i - mean of the group)). Each group's A sums to 0.
    """
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 responses per prompt")
    g = _groups(rewards, group_size)  # (G, n)
    baseline = (g.sum(1, keepdim=True) - g) / (group_size - 1)  # (G, n)
    return (g - baseline).reshape(-1)


def group_advantages(
    scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's group-normalised advantages (Shao et al. 2024), one per response.

    scores: (B,) one reward per response, B = G x n with the n responses of a group in
    consecutive rows; n >= 2. With mu_g and sigma_g the mean and the unbiased (Bessel)
    standard deviation of group g's scores, returns (B,):

        A_i = (r_i - mu_g) / (sigma_g + eps)      scale=True   (GRPO; eps as TRL's 1e-4)
        A_i =  r_i - mu_g                         scale=False  (Dr. GRPO; REINFORCE++-baseline)

    A group whose scores are all equal gets A = 0 (no signal either way).
    """
    if group_size < 2:
        raise ValueError("group advantages need at least 2 responses per prompt")
    g = _groups(scores, group_size)  # (G, n)
    centred = g - g.mean(1, keepdim=True)
    if scale:
        centred = centred / (g.std(1, keepdim=True) + eps)  # torch.std: unbiased
    return centred.reshape(-1)


def discounted_returns(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """REINFORCE returns to go (REINFORCE++, Hu 2025), per token.

    rewards: (B, R) per response token (REINFORCE++: -kl_coef x KL_t, plus the score at
    the last token); mask: (B, R) bool, valid tokens a prefix of each row; baseline: (B,)
    or None, subtracted from each row's reward at its last valid token (REINFORCE++-
    baseline: the group's mean score). Returns (B, R), 0 at padding:

        r'_t = rewards_t - [t == last] * baseline
        G_t  = sum_{k >= t, k valid} gamma^(k - t) * r'_k

    i.e. GAE with no value model and lambda = 1.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    if rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError("rewards and mask must both be (B, R)")
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    if baseline is not None:
        positions = torch.arange(mask.shape[1], device=mask.device)  # (R,)
        last = torch.where(mask, positions, -1).amax(1)  # (B,), -1 for an empty row
        is_last = positions.unsqueeze(0) == last.unsqueeze(1)  # (B, R)
        rewards = rewards - torch.where(is_last, baseline.unsqueeze(1).to(rewards.dtype), 0.0)
    running = rewards.new_zeros(rewards.shape[0])  # (B,)
    reversed_returns = []
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t], rewards[:, t] + gamma * running, 0.0)
        reversed_returns.append(running)
    if not reversed_returns:
        return torch.zeros_like(rewards)
    return torch.stack(reversed_returns[::-1], dim=1)  # (B, R)
