"""KL estimators, KL-penalised per-token rewards, and KL coefficient controllers.

Per-token estimators of KL(pi || pi_ref) from samples y_t ~ pi (J. Schulman,
"Approximating KL divergence", 2020). With log r = logp_ref(y_t) - logp(y_t):

    k1 = -log r        = logp - logp_ref                 unbiased, can be negative
    k2 = (log r)^2 / 2                                   biased, low variance, >= 0
    k3 = (r - 1) - log r                                 unbiased, low variance, >= 0

InstructGPT's penalty is k1 (beta * log(pi_RL / pi_SFT) per token), the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = logp - logp_ref, elementwise (any shape)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 * (logp - logp_ref)^2, elementwise (any shape)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(logp_ref - logp) - 1 - (logp_ref - logp) >= 0, elementwise (any shape).

    Written as expm1(x) - x, exact for small x where exp(x) - 1 - x would cancel; the
    clamp only guards the last rounding so that k3 >= 0 holds bit for bit.
    """
    log_ratio = ref_logprobs - logprobs
    return (torch.expm1(log_ratio) - log_ratio).clamp_min(0.0)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: a KL penalty at every response token, the score at the last.

    scores: (B,) one reward-model score per sequence. logprobs, ref_logprobs: (B, R)
    log-probs of the sampled response tokens under the policy and the frozen reference.
    response_mask: (B, R) bool, True = response token (rows may differ in length).
    Returns ``(rewards, kl)``, both (B, R) and 0 at padding:

        kl[b, t]      = KL_ESTIMATORS[estimator](logprobs, ref_logprobs)[b, t]   (valid t)
        rewards[b, t] = -kl_coef * kl[b, t] + [t == last_b] * scores[b]

    where last_b is the last valid position of row b (InstructGPT: r_theta added at the
    final token). A row with no valid token gets no reward at all.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}"
        )
    if response_mask.dtype != torch.bool:
        raise TypeError(f"response_mask must be bool, got {response_mask.dtype}")
    if not (logprobs.shape == ref_logprobs.shape == response_mask.shape):
        raise ValueError("logprobs, ref_logprobs and response_mask must have one shape (B, R)")
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(
            f"scores must be (B,) = {tuple(logprobs.shape[:1])}, got {tuple(scores.shape)}"
        )

    zeros = torch.zeros_like(logprobs)
    # Padding is zeroed before the estimator so that junk there cannot reach a gradient.
    logprobs = torch.where(response_mask, logprobs, zeros)
    ref_logprobs = torch.where(response_mask, ref_logprobs, zeros)
    kl = torch.where(response_mask, KL_ESTIMATORS[estimator](logprobs, ref_logprobs), zeros)
    rewards = -kl_coef * kl  # (B, R)

    positions = torch.arange(response_mask.shape[1], device=response_mask.device)  # (R,)
    last = torch.where(response_mask, positions, -1).amax(dim=1)  # (B,), -1 for an empty row
    is_last = positions.unsqueeze(0) == last.unsqueeze(1)  # (B, R), all False for -1
    rewards = rewards + torch.where(is_last, scores.unsqueeze(1).to(rewards.dtype), zeros)
    return rewards, kl


class FixedKLController:
    """A constant KL coefficient beta (InstructGPT: 0.02; Llama 2: 0.01 / 0.005)."""

    def __init__(self, kl_coef: float) -> None:
        # Kept though --kl-coef declares its range: a negative beta silently turns the
        # penalty into a bonus for drifting from the reference.
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No change; returns the coefficient."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Steers the measured KL towards ``target`` (Ziegler et al. 2019, section 2.2).

    After a batch of ``n_steps`` samples whose mean KL was ``current_kl``:

        e    = clip(current_kl / target - 1, -0.2, 0.2)
        beta = beta * (1 + e * n_steps / horizon)

    so beta grows while KL is above target and shrinks below it, by at most 20% of
    n_steps / horizon per update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        # Kept though the options declare their ranges: beta < 0 rewards drift, target 0
        # divides by zero and horizon <= 0 steers the wrong way, all without an error.
        if init_kl_coef < 0 or target <= 0 or horizon <= 0:
            raise ValueError(
                f"need init_kl_coef >= 0, target > 0, horizon > 0; "
                f"got {init_kl_coef}, {target}, {horizon}"
            )
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Apply one proportional step and return the new coefficient."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restores everything saved; a resumed run continues the saved controller."""
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))
