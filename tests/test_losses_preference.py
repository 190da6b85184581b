"""losses: DPO and IPO (`dpo_loss`, `ipo_loss`) against an explicit loop over every pair of
every prompt, hand values, extreme inputs. Equality with TRL 1.16's DPOTrainer:
tests/loops/test_dpo_trl.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses import PREFERENCE_LOSSES, dpo_loss, ipo_loss


def _groups(ks: tuple[int, ...], seed: int = 0):
    """N responses of prompts with K = ks[p] each, random summed log-probs (policy and
    reference, float64) and lengths; pairs: every (winner, loser) of each prompt's ranking,
    the ranking a random permutation."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(ks)
    logprobs = (-20 * torch.rand(n, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = -20 * torch.rand(n, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, 12, (n,), generator=gen)
    pairs, prompt_of, start = [], [], 0
    for p, k in enumerate(ks):
        ranking = (torch.randperm(k, generator=gen) + start).tolist()
        for i in range(k):
            for j in range(i + 1, k):
                pairs.append((ranking[i], ranking[j]))
                prompt_of.append(p)
        start += k
    return logprobs, ref, lengths, torch.tensor(pairs), torch.tensor(prompt_of)


def _naive(logprobs, ref, lengths, pairs, prompt_of, beta, kind):
    """Each prompt: mean over its pairs, written out term by term; then mean over prompts."""
    per_prompt: dict[int, list[torch.Tensor]] = {}
    for (w, lo), p in zip(pairs.tolist(), prompt_of.tolist(), strict=True):
        rw, rl = logprobs[w] - ref[w], logprobs[lo] - ref[lo]
        if kind == "dpo":
            h = rw - rl
            term = -torch.log(1 / (1 + torch.exp(-beta * h)))  # -log sigmoid(beta h)
        else:  # TRL's IPO: per-token log-ratios
            h = rw / lengths[w] - rl / lengths[lo]
            term = (h - 1 / (2 * beta)) ** 2
        per_prompt.setdefault(p, []).append(term)
    means = [sum(terms) / len(terms) for terms in per_prompt.values()]
    return sum(means) / len(means)


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
@pytest.mark.parametrize("ks", [(2, 2, 2), (4, 2, 3), (9,)])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_and_gradient_match_an_explicit_loop_over_pairs(kind, ks, beta) -> None:
    logprobs, ref, lengths, pairs, prompt_of = _groups(ks, seed=len(ks) + int(10 * beta))
    loss, stats = PREFERENCE_LOSSES[kind](logprobs, ref, lengths, pairs, beta, prompt_of)
    (grad,) = torch.autograd.grad(loss, logprobs)
    expected = _naive(logprobs, ref, lengths, pairs, prompt_of, beta, kind)
    (expected_grad,) = torch.autograd.grad(expected, logprobs)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert int(stats["n_pairs"]) == sum(math.comb(k, 2) for k in ks)
    assert int(stats["n_prompts"]) == len(ks)
    # the logged implicit rewards: beta * (logp - ref) of each pair's chosen / rejected
    rewards = beta * (logprobs.detach() - ref)
    chosen, rejected = rewards[pairs[:, 0]], rewards[pairs[:, 1]]
    torch.testing.assert_close(stats["margin"], (chosen - rejected).mean())
    torch.testing.assert_close(stats["chosen_reward"], chosen.mean())
    torch.testing.assert_close(stats["rejected_logprob"], logprobs.detach()[pairs[:, 1]].mean())
    assert float(stats["accuracy"]) == pytest.approx(float((chosen > rejected).double().mean()))


def test_one_pair_per_prompt_is_the_plain_mean_over_pairs() -> None:
    logprobs, ref, lengths, pairs, _ = _groups((2, 2, 2, 2), seed=3)
    for fn in (dpo_loss, ipo_loss):
        grouped, _ = fn(logprobs, ref, lengths, pairs, 0.2, torch.arange(4))
        plain, _ = fn(logprobs, ref, lengths, pairs, 0.2, None)
        torch.testing.assert_close(grouped, plain)


def test_hand_values() -> None:
    # two responses, one pair (0 beats 1); log-ratios 0 - (-1) = 1 and -3 - (-2) = -1
    logprobs = torch.tensor([0.0, -3.0], dtype=torch.float64)
    ref = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    lengths = torch.tensor([2, 4])
    pair = torch.tensor([[0, 1]])
    # DPO: h = 1 - (-1) = 2, beta 0.5 -> -log sigmoid(1) = log(1 + e^-1)
    loss, stats = dpo_loss(logprobs, ref, lengths, pair, 0.5)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)))
    assert float(stats["margin"]) == pytest.approx(0.5 * 2) and float(stats["accuracy"]) == 1
    # IPO: h = 1/2 - (-1/4) = 0.75, beta 0.5 -> (0.75 - 1)^2 = 0.0625
    loss, _ = ipo_loss(logprobs, ref, lengths, pair, 0.5)
    assert float(loss) == pytest.approx(0.0625)
    # at the start (policy = reference): DPO log 2, IPO 1/(2 beta)^2, accuracy 0 (ties)
    loss, stats = dpo_loss(ref, ref, lengths, pair, 0.5)
    assert float(loss) == pytest.approx(math.log(2)) and float(stats["accuracy"]) == 0
    assert float(ipo_loss(ref, ref, lengths, pair, 0.5)[0]) == pytest.approx(1.0)


def test_extreme_log_ratios_stay_finite_with_finite_gradients() -> None:
    logprobs = torch.tensor([0.0, -1e5, -1e5, 0.0], requires_grad=True)
    ref = torch.zeros(4)
    pairs = torch.tensor([[0, 1], [2, 3]])  # h = +1e5 and -1e5
    loss, _ = dpo_loss(logprobs, ref, torch.ones(4, dtype=torch.long), pairs, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert float(loss.detach()) == pytest.approx(
        1e5 / 2, rel=1e-6
    )  # the wrong pair's -log sigmoid(-1e5)


def test_bad_shapes_are_refused() -> None:
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="pairs"):
        dpo_loss(x, x, torch.ones(3), torch.zeros(0, 2, dtype=torch.long), 0.1)
    with pytest.raises(ValueError, match="alike"):
        ipo_loss(x, torch.zeros(4), torch.ones(3), torch.tensor([[0, 1]]), 0.1)
