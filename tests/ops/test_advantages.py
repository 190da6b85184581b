"""ops.advantages: GAE vs the textbook per-row recursion, ragged rows, padding."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.ops.advantages import gae


def _naive_gae(rewards, values, lengths, gamma, lam):
    """Textbook GAE written independently: per row, on the valid prefix only.

    delta_t = r_t + gamma * V_{t+1} - V_t with V_n = 0 past the last token,
    A_t = sum_{l >= 0} (gamma * lam)^l * delta_{t+l} (a double loop, no recursion).
    """
    batch, length = rewards.shape
    adv = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        n = int(lengths[b])
        r = [float(x) for x in rewards[b, :n]]
        v = [float(x) for x in values[b, :n]] + [0.0]
        deltas = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
    returns = torch.zeros_like(adv)
    for b in range(batch):
        n = int(lengths[b])
        returns[b, :n] = adv[b, :n] + values[b, :n]
    return adv, returns


def _ragged(seed: int = 0, lengths=(6, 1, 4, 0)):
    gen = torch.Generator().manual_seed(seed)
    batch, length = len(lengths), max(lengths)
    rewards = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(length).unsqueeze(0) < lengths_t.unsqueeze(1)
    return rewards, values, mask, lengths_t


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)])
def test_gae_matches_naive_double_loop(gamma: float, lam: float) -> None:
    rewards, values, mask, lengths = _ragged()
    adv, ret = gae(rewards, values, mask, gamma, lam)
    ref_adv, ref_ret = _naive_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    assert torch.all(adv[~mask] == 0) and torch.all(ret[~mask] == 0)


def test_hand_case() -> None:
    # rewards [0, 0, 1], values [0.5, 0.5, 0.5], gamma = 1, lam = 0.5, V after end = 0
    # delta_2 = 1 + 0 - 0.5 = 0.5            A_2 = 0.5
    # delta_1 = 0 + 0.5 - 0.5 = 0            A_1 = 0 + 0.5 * 0.5 = 0.25
    # delta_0 = 0 + 0.5 - 0.5 = 0            A_0 = 0 + 0.5 * 0.25 = 0.125
    # returns = A + V = [0.625, 0.75, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.5, 0.5, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[0.125, 0.25, 0.5, 0.0]]).double())
    torch.testing.assert_close(ret, torch.tensor([[0.625, 0.75, 1.0, 0.0]]).double())


def test_gamma_lam_one_gives_reward_to_go() -> None:
    # gamma = lam = 1: A_t = sum_{k>=t} r_k - V_t, so returns = reward-to-go.
    rewards, values, mask, lengths = _ragged(seed=1)
    _, ret = gae(rewards, values, mask, 1.0, 1.0)
    for b in range(rewards.shape[0]):
        n = int(lengths[b])
        to_go = rewards[b, :n].flip(0).cumsum(0).flip(0)
        torch.testing.assert_close(ret[b, :n], to_go)


@pytest.mark.parametrize("junk", [0.0, 1e6, float("nan"), float("inf")])
def test_padding_never_changes_valid_outputs(junk: float) -> None:
    rewards, values, mask, _ = _ragged(seed=2)
    clean = gae(rewards, values, mask, 0.95, 0.9)
    filled = [torch.where(mask, x, torch.full_like(x, junk)) for x in (rewards, values)]
    dirty = gae(filled[0], filled[1], mask, 0.95, 0.9)
    for a, b in zip(clean, dirty, strict=True):
        torch.testing.assert_close(a, b)


def test_extra_padding_columns_change_nothing() -> None:
    rewards, values, mask, _ = _ragged(seed=3)
    adv, ret = gae(rewards, values, mask, 0.9, 0.95)
    pad = torch.randn(rewards.shape[0], 3, dtype=torch.float64)
    wide = gae(
        torch.cat([rewards, pad], 1),
        torch.cat([values, pad], 1),
        torch.cat([mask, torch.zeros_like(mask[:, :3])], 1),
        0.9,
        0.95,
    )
    torch.testing.assert_close(wide[0][:, : adv.shape[1]], adv)
    torch.testing.assert_close(wide[1][:, : ret.shape[1]], ret)


def test_never_normalises_and_leaves_inputs() -> None:
    # Constant reward at the end and zero values: advantages are plain discounted
    # sums, far from mean 0 / std 1.
    rewards = torch.tensor([[0.0, 0.0, 10.0]])
    values = torch.zeros(1, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    r_copy, v_copy = rewards.clone(), values.clone()
    adv, _ = gae(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[10.0, 10.0, 10.0]]))
    assert torch.equal(rewards, r_copy) and torch.equal(values, v_copy)


def test_rejects_float_mask() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(TypeError):
        gae(x, x, torch.ones(1, 2), 1.0, 1.0)
