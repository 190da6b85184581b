"""ops.masking: masked reductions vs filtering the valid entries by hand."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.ops.masking import (
    explained_variance,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)


def _ragged(seed: int = 0, batch: int = 4, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, R) float64 values and a right-padded mask with rows of length 1..R."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([length, 1, 3, 5][:batch])
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    return x, mask


def _poison(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """x with every padding entry replaced by ``value`` (valid entries untouched)."""
    return torch.where(mask, x, torch.full_like(x, value))


def test_hand_case() -> None:
    # valid entries 1, 2, 3, 6 -> sum 12, mean 3,
    # squared deviations 4 + 1 + 0 + 9 = 14 -> biased var 14/4 = 3.5, unbiased 14/3.
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, -50.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert masked_sum(x, mask).item() == 12.0
    assert masked_mean(x, mask).item() == 3.0
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(3.5)
    assert masked_var(x, mask).item() == pytest.approx(14 / 3)
    # per-row means: (1+2)/2 = 1.5, (3+6)/2 = 4.5
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.5]).double())
    torch.testing.assert_close(masked_sum(x, mask, dim=0), torch.tensor([4.0, 8.0, 0.0]).double())


def test_stats_match_filtered_entries() -> None:
    x, mask = _ragged()
    valid = x[mask]
    torch.testing.assert_close(masked_sum(x, mask), valid.sum())
    torch.testing.assert_close(masked_mean(x, mask), valid.mean())
    torch.testing.assert_close(masked_var(x, mask), valid.var(unbiased=True))
    torch.testing.assert_close(masked_var(x, mask, unbiased=False), valid.var(unbiased=False))
    for b in range(x.shape[0]):
        row = x[b][mask[b]]
        torch.testing.assert_close(masked_mean(x, mask, dim=1)[b], row.mean())
        torch.testing.assert_close(masked_sum(x, mask, dim=1)[b], row.sum())


def test_empty_mask_gives_zero_not_nan() -> None:
    x = torch.randn(2, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert masked_mean(x, mask).item() == 0.0
    assert torch.equal(masked_mean(x, mask, dim=1), torch.zeros(2))


def test_whiten_gives_mean_zero_std_one_and_zero_padding() -> None:
    x, mask = _ragged(seed=1)
    x = 5.0 + 3.0 * x
    w = masked_whiten(x, mask)
    valid = w[mask]
    assert valid.mean().abs().item() < 1e-10
    assert valid.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(w[~mask] == 0)
    # shift_mean=False keeps the original mean, still unit std
    w2 = masked_whiten(x, mask, shift_mean=False)
    assert w2[mask].mean().item() == pytest.approx(x[mask].mean().item(), abs=1e-9)
    assert w2[mask].std().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("junk", [0.0, 1e6, float("inf"), float("nan")])
def test_padding_values_change_nothing(junk: float) -> None:
    x, mask = _ragged(seed=2)
    returns = x + 0.1
    poisoned = _poison(x, mask, junk)
    for fn in (masked_sum, masked_mean, masked_var):
        torch.testing.assert_close(fn(poisoned, mask), fn(x, mask))
    torch.testing.assert_close(masked_whiten(poisoned, mask), masked_whiten(x, mask))
    torch.testing.assert_close(
        explained_variance(poisoned, returns, mask), explained_variance(x, returns, mask)
    )


def test_padding_junk_does_not_reach_gradients() -> None:
    x, mask = _ragged(seed=3)
    poisoned = _poison(x, mask, float("inf")).requires_grad_(True)
    clean = x.clone().requires_grad_(True)
    for fn in (masked_mean, masked_var, lambda v, m: masked_whiten(v, m).pow(3).sum()):
        (g_poisoned,) = torch.autograd.grad(fn(poisoned, mask), poisoned)
        (g_clean,) = torch.autograd.grad(fn(clean, mask), clean)
        assert torch.isfinite(g_poisoned).all()
        torch.testing.assert_close(g_poisoned, g_clean)


def test_explained_variance() -> None:
    x, mask = _ragged(seed=4)
    returns = x
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    constant = torch.full_like(returns, returns[mask].mean().item())
    assert explained_variance(constant, returns, mask).item() == pytest.approx(0.0, abs=1e-12)
    # naive: 1 - var(R - V) / var(R) on the valid entries
    values = 0.5 * x + 0.3
    ref = 1 - (returns - values)[mask].var() / returns[mask].var()
    torch.testing.assert_close(explained_variance(values, returns, mask), ref)
    assert torch.isnan(explained_variance(values, torch.ones_like(values), mask))


def test_mask_must_be_bool_and_same_shape() -> None:
    x = torch.randn(2, 3)
    with pytest.raises(TypeError):
        masked_mean(x, torch.ones(2, 3))
    with pytest.raises(ValueError):
        masked_mean(x, torch.ones(2, 2, dtype=torch.bool))


def test_inputs_not_modified() -> None:
    x, mask = _ragged(seed=5)
    x_copy, mask_copy = x.clone(), mask.clone()
    masked_whiten(x, mask)
    explained_variance(x, x, mask)
    assert torch.equal(x, x_copy) and torch.equal(mask, mask_copy)
