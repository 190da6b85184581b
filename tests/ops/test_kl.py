"""ops.kl: estimators, KL-shaped rewards, fixed and adaptive controllers."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.ops.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k3,
    kl_penalized_rewards,
)


def test_estimators_hand_values() -> None:
    # logp = -1, logp_ref = -2: d = logp - logp_ref = 1
    #   k1 = 1, k2 = 0.5 * 1^2 = 0.5, k3 = exp(-1) - 1 - (-1) = exp(-1)
    # logp = -2, logp_ref = -1: d = -1
    #   k1 = -1, k2 = 0.5, k3 = exp(1) - 1 - 1 = e - 2
    logp = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    ref = torch.tensor([-2.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(KL_ESTIMATORS["k1"](logp, ref), torch.tensor([1.0, -1.0]).double())
    torch.testing.assert_close(KL_ESTIMATORS["k2"](logp, ref), torch.tensor([0.5, 0.5]).double())
    torch.testing.assert_close(
        KL_ESTIMATORS["k3"](logp, ref), torch.tensor([math.exp(-1), math.e - 2]).double()
    )


@pytest.mark.parametrize("name", sorted(KL_ESTIMATORS))
def test_all_zero_when_policy_equals_reference(name: str) -> None:
    logp = -torch.rand(4, 6) * 10
    assert torch.all(KL_ESTIMATORS[name](logp, logp.clone()) == 0)


def test_k3_nonnegative_everywhere() -> None:
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(10_000, generator=gen) * torch.logspace(-12, 1.5, 10_000)
    ref = torch.zeros_like(logp)
    assert (kl_k3(logp, ref) >= 0).all()
    assert (kl_k3(ref, logp) >= 0).all()
    tiny = torch.tensor([1e-30, -1e-30, 1e-8, -1e-8])
    assert (kl_k3(tiny, torch.zeros(4)) >= 0).all()
    # Small d: k3 ~ d^2 / 2 with no cancellation (expm1), unlike exp(x) - 1 - x.
    d = torch.tensor([1e-4], dtype=torch.float32)
    assert kl_k3(d, torch.zeros(1)).item() == pytest.approx(0.5e-8, rel=1e-3)


def test_k1_and_k3_are_unbiased_kl_estimates() -> None:
    # Samples y ~ p, KL(p || q) for two categoricals: E_p[k1] = E_p[k3] = KL.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    kl = (p * (p / q).log()).sum()
    logp, logq = p.log(), q.log()
    for name in ("k1", "k3"):
        expectation = (p * KL_ESTIMATORS[name](logp, logq)).sum()
        torch.testing.assert_close(expectation, kl)


def _naive_rewards(scores, logprobs, ref_logprobs, mask, kl_coef, estimator):
    """Row by row: -kl_coef * kl at valid tokens, score added at the last valid one."""
    fn = KL_ESTIMATORS[estimator]
    rewards = torch.zeros_like(logprobs)
    kls = torch.zeros_like(logprobs)
    for b in range(logprobs.shape[0]):
        last = None
        for t in range(logprobs.shape[1]):
            if mask[b, t]:
                kls[b, t] = fn(logprobs[b, t], ref_logprobs[b, t])
                rewards[b, t] = -kl_coef * kls[b, t]
                last = t
        if last is not None:
            rewards[b, last] += scores[b]
    return rewards, kls


@pytest.mark.parametrize("estimator", sorted(KL_ESTIMATORS))
def test_kl_penalized_rewards_vs_naive_ragged(estimator: str) -> None:
    gen = torch.Generator().manual_seed(1)
    batch, length = 4, 6
    logprobs = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    ref = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    scores = torch.randn(batch, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 0])  # the last row is empty: it gets nothing
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, 0.05, estimator)
    ref_rewards, ref_kl = _naive_rewards(scores, logprobs, ref, mask, 0.05, estimator)
    torch.testing.assert_close(rewards, ref_rewards)
    torch.testing.assert_close(kl, ref_kl)
    assert torch.all(rewards[~mask] == 0) and torch.all(kl[~mask] == 0)


def test_kl_penalized_rewards_hand_case() -> None:
    # One row of 3 valid tokens + 1 pad, kl_coef = 0.1, k1 = logp - ref = [1, -2, 0.5].
    # rewards = -0.1 * k1 = [-0.1, 0.2, -0.05], score 3 added at t = 2 -> 2.95; pad 0.
    logprobs = torch.tensor([[-1.0, -3.0, -0.5, 9.0]], dtype=torch.float64)
    ref = torch.tensor([[-2.0, -1.0, -1.0, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])
    rewards, kl = kl_penalized_rewards(torch.tensor([3.0]).double(), logprobs, ref, mask, 0.1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 0.2, 2.95, 0.0]]).double())
    torch.testing.assert_close(kl, torch.tensor([[1.0, -2.0, 0.5, 0.0]]).double())


def test_kl_penalized_rewards_padding_junk_changes_nothing() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    clean = kl_penalized_rewards(torch.tensor([1.0]), logprobs, ref, mask, 0.2, "k3")
    junk = torch.tensor([[0.0, 0.0, float("nan")]])
    dirty = kl_penalized_rewards(torch.tensor([1.0]), logprobs + junk, ref - junk, mask, 0.2, "k3")
    for a, b in zip(clean, dirty, strict=True):
        torch.testing.assert_close(a, b)


def test_unknown_estimator() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="k4"):
        kl_penalized_rewards(torch.zeros(1), x, x, x.bool(), 0.1, "k4")


def test_fixed_controller() -> None:
    ctl = FixedKLController(0.02)
    assert ctl.update(10.0, 256) == 0.02 and ctl.value == 0.02
    other = FixedKLController(0.5)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.02


def test_adaptive_controller_hand_sequence() -> None:
    # target 6, horizon 10000, n_steps 256 each update, beta0 = 0.2
    # kl 12: e = clip(12/6 - 1) = clip(1) = 0.2 -> beta = 0.2 * (1 + 0.2*256/1e4) = 0.2 * 1.00512
    # kl 6:  e = 0 -> unchanged
    # kl 3:  e = 3/6 - 1 = -0.5 -> clip -0.2 -> beta *= (1 - 0.00512)
    # kl 5.4: e = 5.4/6 - 1 = -0.1 -> beta *= (1 - 0.1 * 0.0256) = (1 - 0.00256)
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    expected = 0.2
    for kl, mult in [(12.0, 1.00512), (6.0, 1.0), (3.0, 1 - 0.00512), (5.4, 1 - 0.00256)]:
        expected *= mult
        assert ctl.update(kl, 256) == pytest.approx(expected, rel=1e-12)
        assert ctl.value == pytest.approx(expected, rel=1e-12)


def test_adaptive_controller_state_round_trip() -> None:
    ctl = AdaptiveKLController(0.1, target=4.0, horizon=1000)
    for kl in (1.0, 9.0, 4.5):
        ctl.update(kl, 32)
    state = ctl.state_dict()
    assert all(type(v) is float for v in state.values())
    resumed = AdaptiveKLController(0.7, target=1.0, horizon=5)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert resumed.update(7.0, 32) == ctl.update(7.0, 32)


def test_adaptive_controller_accepts_tensor_kl() -> None:
    ctl = AdaptiveKLController(0.1, target=1.0, horizon=100)
    assert ctl.update(torch.tensor(2.0), 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))


def test_controller_validation() -> None:
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        FixedKLController(-1.0)
