"""ops.advantages: GAE vs the textbook per-row recursion, ragged rows, padding; the
critic-free estimators (RLOO, GRPO, Dr. GRPO, REINFORCE++ and its baseline variant) against
naive loops over groups and tokens, hand cases, padding."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.ops.advantages import (
    discounted_returns,
    gae,
    group_advantages,
    group_mean,
    rloo_advantages,
)


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


# ---------------------------------------------------------------------------------------
# The critic-free estimators
# ---------------------------------------------------------------------------------------


def _scores(groups: int = 5, n: int = 4, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(groups * n, generator=gen, dtype=torch.float64)


def _naive_rloo(rewards: list[float], n: int) -> list[float]:
    """A_i = R_i - (1 / (n - 1)) sum over the OTHER members j of i's group of R_j."""
    out = []
    for i, r in enumerate(rewards):
        g = i // n
        others = [rewards[j] for j in range(g * n, g * n + n) if j != i]
        out.append(r - sum(others) / len(others))
    return out


def _naive_group(rewards: list[float], n: int, scale: bool, eps: float = 1e-4) -> list[float]:
    """(r_i - mean_g) / (std_g + eps), std with Bessel's correction, one group at a time."""
    out = []
    for g in range(len(rewards) // n):
        members = rewards[g * n : g * n + n]
        mean = sum(members) / n
        std = math.sqrt(sum((r - mean) ** 2 for r in members) / (n - 1))
        out += [(r - mean) / (std + eps) if scale else r - mean for r in members]
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_rloo_matches_leave_one_out_loop(n: int) -> None:
    rewards = _scores(groups=3, n=n, seed=n)
    got = rloo_advantages(rewards, n)
    torch.testing.assert_close(got, torch.tensor(_naive_rloo(rewards.tolist(), n), dtype=got.dtype))
    # each group's advantages sum to 0, and A_i = n / (n - 1) (R_i - group mean)
    torch.testing.assert_close(got.view(-1, n).sum(1), torch.zeros(3, dtype=got.dtype))
    centred = rewards - group_mean(rewards, n)
    torch.testing.assert_close(got, centred * n / (n - 1))


def test_rloo_hand_case() -> None:
    # group [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 -> A = -3, -1.5, 4.5
    got = rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), 3)
    assert got.tolist() == [-3.0, -1.5, 4.5]


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("n", [2, 4, 5])
def test_group_advantages_match_per_group_loop(n: int, scale: bool) -> None:
    rewards = _scores(groups=4, n=n, seed=10 + n)
    got = group_advantages(rewards, n, scale=scale)
    ref = torch.tensor(_naive_group(rewards.tolist(), n, scale), dtype=got.dtype)
    torch.testing.assert_close(got, ref)


def test_group_hand_case_and_equal_scores() -> None:
    # group [0, 2]: mean 1, unbiased std sqrt(2) -> A = -+1 / (sqrt 2 + 1e-4); Dr. GRPO: -+1
    got = group_advantages(torch.tensor([0.0, 2.0, 5.0, 5.0], dtype=torch.float64), 2)
    expected = 1 / (math.sqrt(2) + 1e-4)
    torch.testing.assert_close(got, torch.tensor([-expected, expected, 0.0, 0.0], dtype=got.dtype))
    assert group_advantages(torch.tensor([0.0, 2.0]), 2, scale=False).tolist() == [-1.0, 1.0]
    # a group whose scores are all equal: no signal, not a division by 0
    assert group_advantages(torch.tensor([3.0, 3.0, 3.0]), 3).tolist() == [0.0, 0.0, 0.0]


def test_groups_are_consecutive_rows_and_bad_sizes_are_refused() -> None:
    rewards = torch.tensor([0.0, 10.0, 100.0, 110.0])
    # groups (0, 10) and (100, 110), not (0, 100) and (10, 110)
    assert group_advantages(rewards, 2, scale=False).tolist() == [-5.0, 5.0, -5.0, 5.0]
    assert group_mean(rewards, 2).tolist() == [5.0, 5.0, 105.0, 105.0]
    with pytest.raises(ValueError, match="groups of 3"):
        rloo_advantages(rewards, 3)
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(rewards, 1)
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(rewards, 1)


def _naive_returns(rewards, lengths, gamma, baseline=None):
    """G_t = sum_{k = t}^{len - 1} gamma^(k - t) r'_k, r' = r with baseline_b subtracted at
    the last valid token: a double loop over tokens."""
    batch, length = rewards.shape
    out = torch.zeros(batch, length, dtype=torch.float64)
    for b in range(batch):
        n = int(lengths[b])
        r = [float(x) for x in rewards[b, :n]]
        if baseline is not None and n:
            r[-1] -= float(baseline[b])
        for t in range(n):
            out[b, t] = sum(gamma ** (k - t) * r[k] for k in range(t, n))
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.9])
@pytest.mark.parametrize("with_baseline", [False, True])
def test_discounted_returns_match_double_loop(gamma: float, with_baseline: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([5, 1, 3, 0, 5])
    rewards = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    mask = torch.arange(5)[None] < lengths[:, None]
    baseline = torch.randn(5, generator=gen, dtype=torch.float64) if with_baseline else None
    got = discounted_returns(rewards, mask, gamma, baseline=baseline)
    torch.testing.assert_close(got, _naive_returns(rewards, lengths, gamma, baseline))
    assert torch.all(got[~mask] == 0)


def test_reinforce_hand_case_and_padding_junk() -> None:
    # KL rewards -0.1, -0.2, then -0.1 + score 1 at the last token; gamma 1:
    # G = [0.6, 0.7, 0.9]; baseline 0.5 at the last token: [0.1, 0.2, 0.4]
    rewards = torch.tensor([[-0.1, -0.2, 0.9, 123.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(
        discounted_returns(rewards, mask), torch.tensor([[0.6, 0.7, 0.9, 0.0]], dtype=torch.float64)
    )
    got = discounted_returns(rewards, mask, baseline=torch.tensor([0.5], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([[0.1, 0.2, 0.4, 0.0]], dtype=torch.float64))
    # gamma = 1: GAE with zero values and lambda = 1 (the same returns by another route)
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    m = torch.arange(6)[None] < torch.tensor([6, 2, 4])[:, None]
    torch.testing.assert_close(
        discounted_returns(r, m), gae(r, torch.zeros_like(r), m, 1.0, 1.0)[1]
    )


def test_inputs_are_left_unchanged() -> None:
    scores = _scores()
    before = scores.clone()
    rloo_advantages(scores, 4)
    group_advantages(scores, 4)
    rewards = torch.randn(2, 3)
    kept = rewards.clone()
    discounted_returns(rewards, torch.ones(2, 3, dtype=torch.bool), baseline=torch.ones(2))
    assert torch.equal(scores, before) and torch.equal(rewards, kept)
