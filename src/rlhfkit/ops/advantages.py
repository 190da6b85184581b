"""Generalised advantage estimation (Schulman et al. 2016) over padded responses.

GAE never normalises: whitening advantages is the caller's choice
(``ops.masking.masked_whiten``), made where it can be seen.
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
