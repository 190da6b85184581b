"""Masked reductions over padded token tensors.

Convention: ``mask`` is a bool tensor of the same shape as ``x``, True = valid token.
Padding is excluded with ``torch.where`` rather than ``x * mask``, so padding may hold
anything (even inf or NaN) without leaking into a result or into a gradient of the
valid entries.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padding replaced by 0, after checking the mask (a new tensor)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = valid), got {mask.dtype}")
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != x shape {tuple(x.shape)}")
    return torch.where(mask, x, torch.zeros_like(x))


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of the valid entries of ``x``.

    x, mask: same shape. dim: None sums everything (0-d result); an int reduces that dim.

        masked_sum(x, m) = sum_i [m_i] x_i
    """
    kept = _valid(x, mask)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of the valid entries of ``x``; 0 where there is no valid entry.

    x, mask: same shape. dim: None -> 0-d result; an int reduces that dim.

        masked_mean(x, m) = sum_i [m_i] x_i / max(1, sum_i [m_i])

    The max(1, .) keeps an all-padding micro-batch at 0 rather than NaN.
    """
    total = masked_sum(x, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return total / count.clamp_min(1).to(total.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of ``x`` (0-d).

    x, mask: same shape; over all dims at once:

        mu  = masked_mean(x, m),  n = sum_i [m_i]
        var = sum_i [m_i] (x_i - mu)^2 / n            (biased)
        var = sum_i [m_i] (x_i - mu)^2 / (n - 1)      (unbiased, Bessel; n = 1 gives 0)
    """
    # Zero padding before any nonlinearity, so inf/NaN there cannot reach a gradient.
    x = _valid(x, mask)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum().to(var.dtype)
        var = var * n / (n - 1).clamp_min(1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise the valid entries of ``x`` to mean 0 and (unbiased) std 1; padding -> 0.

    x, mask: same shape; returns x's shape.

        w_i = (x_i - mu) / sqrt(var + eps)          if shift_mean
        w_i = (x_i - mu) / sqrt(var + eps) + mu     otherwise (scale only, keep the mean)

    mu and var are ``masked_mean`` and unbiased ``masked_var`` over all valid entries.
    """
    x = _valid(x, mask)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


@torch.no_grad()
def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """How much of the variance of ``returns`` the value head explains (detached, 0-d).

    values, returns, mask: same shape.

        EV = 1 - Var[returns - values] / Var[returns]     over valid entries

    1 is perfect, 0 is no better than a constant, negative is worse. NaN when the
    returns have zero variance (EV is undefined there).
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    ev = 1 - var_residual / var_returns
    return torch.where(var_returns > 0, ev, torch.full_like(ev, float("nan")))


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) long: index among real tokens, 0 on left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def global_whiten(
    x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """`ops.masking.masked_whiten` with mean and unbiased variance over ALL processes.

    x: any shape; mask: same shape, bool (None = all valid). One all-reduce of three
    numbers under torch.distributed; identical to `masked_whiten` in one process.
    """
    if mask is None:
        mask = torch.ones_like(x, dtype=torch.bool)
    xs = torch.where(mask, x, torch.zeros_like(x)).double()
    sums = torch.stack([xs.sum(), (xs * xs).sum(), mask.sum().double()])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    total, total_sq, n = sums
    mean = total / n.clamp_min(1)
    var = (total_sq - n * mean * mean).clamp_min(0) / (n - 1).clamp_min(1)
    out = (xs - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out.to(x.dtype), torch.zeros_like(x))
