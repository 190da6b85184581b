"""losses: SFT NLL, K-wise ranking loss with margins, PPO policy and value losses; the
policy loss's aggregations (token mean, per-response mean / sum / sum over a constant),
its k3 KL term and the per-response ratio (RLOO's), DPO and IPO, each against a naive loop;
pair_credit by hand."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.losses import (
    LOSS_AGGREGATIONS,
    LOSS_UNITS,
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    dpo_loss,
    ipo_loss,
    kwise_ranking_loss,
    pair_credit,
    ppo_policy_loss,
    ppo_value_loss,
    ptx_loss,
    sequence_policy_loss,
    sft_nll,
)

# ---------------------------------------------------------------- SFT


def _sft_batch(seed: int = 0, batch: int = 3, length: int = 6, vocab: int = 9):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    labels[0, :3] = -100  # a masked prompt
    labels[1, 4:] = -100  # right padding
    return logits, labels


def test_sft_nll_matches_cross_entropy_on_shifted_labels() -> None:
    logits, labels = _sft_batch()
    loss, stats = sft_nll(logits, labels)
    vocab = logits.shape[-1]
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(loss, ref)
    assert stats["n_tokens"].item() == (labels[:, 1:] != -100).sum().item()
    assert not stats["loss"].requires_grad


def test_sft_nll_sum_reduction_and_token_count() -> None:
    logits, labels = _sft_batch(seed=1)
    mean, stats_mean = sft_nll(logits, labels)
    total, stats_sum = sft_nll(logits, labels, reduction="sum")
    n = stats_sum["n_tokens"]
    torch.testing.assert_close(total / n, mean)
    torch.testing.assert_close(stats_sum["loss"], stats_mean["loss"])
    # Exact accumulation: summing two halves and dividing by all tokens = the full mean.
    halves = [sft_nll(logits[i : i + 2], labels[i : i + 2], reduction="sum") for i in (0, 2)]
    summed = sum(h[0] for h in halves) / sum(h[1]["n_tokens"] for h in halves)
    torch.testing.assert_close(summed, mean)


def test_sft_nll_custom_ignore_index_and_empty() -> None:
    logits, labels = _sft_batch(seed=2)
    relabelled = torch.where(labels == -100, -1, labels)
    torch.testing.assert_close(
        sft_nll(logits, relabelled, ignore_index=-1)[0], sft_nll(logits, labels)[0]
    )
    loss, stats = sft_nll(logits, torch.full_like(labels, -100))
    assert loss.item() == 0.0 and stats["n_tokens"].item() == 0
    with pytest.raises(ValueError):
        sft_nll(logits, labels, reduction="none")


def test_ptx_loss_is_sft_nll() -> None:
    assert ptx_loss is sft_nll


# ---------------------------------------------------------------- ranking


def _ranking_batch(ks, seed: int = 0, scale: float = 1.0, margin_values=(0.0, 1 / 3, 2 / 3, 1.0)):
    """Responses of len(ks) prompts concatenated; every C(K,2) pair of each prompt,
    winner first, with a random margin per pair."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    scores = scale * torch.randn(sum(ks), generator=gen, dtype=torch.float64)
    pairs, margins, prompt = [], [], []
    offset = 0
    for p, k in enumerate(ks):
        order = list(range(offset, offset + k))
        rng.shuffle(order)  # the ranking, best first
        for i, j in itertools.combinations(range(k), 2):
            pairs.append((order[i], order[j]))
            margins.append(rng.choice(margin_values))
            prompt.append(p)
        offset += k
    return (
        scores,
        torch.tensor(pairs),
        torch.tensor(margins, dtype=torch.float64),
        torch.tensor(prompt),
    )


def _naive_ranking_loss(scores, pairs, margins, prompt):
    """Explicit loop: per prompt, -1/C(K,2) * sum log sigmoid(s_w - s_l - m); mean over prompts."""
    per_prompt: dict[int, list[torch.Tensor]] = {}
    for (win, lose), m, p in zip(pairs.tolist(), margins, prompt.tolist(), strict=True):
        z = scores[win] - scores[lose] - m
        per_prompt.setdefault(p, []).append(-F.logsigmoid(z))
    prompt_losses = [torch.stack(v).sum() / len(v) for v in per_prompt.values()]
    return torch.stack(prompt_losses).mean()


def test_ranking_loss_values_and_gradients_vs_pair_loop() -> None:
    ks = [2, 3, 4, 5, 6, 7, 8, 9]  # mixed K in one batch
    scores, pairs, margins, prompt = _ranking_batch(ks)
    # every prompt has exactly C(K,2) pairs
    assert pairs.shape[0] == sum(math.comb(k, 2) for k in ks)
    scores.requires_grad_(True)
    loss, stats = kwise_ranking_loss(scores, pairs, margins, prompt)
    ref = _naive_ranking_loss(scores, pairs, margins, prompt)
    torch.testing.assert_close(loss, ref)
    (grad,) = torch.autograd.grad(loss, scores)
    (ref_grad,) = torch.autograd.grad(ref, scores)
    torch.testing.assert_close(grad, ref_grad)
    assert stats["n_prompts"].item() == len(ks)
    assert stats["n_pairs"].item() == pairs.shape[0]


def test_ranking_loss_stats_naive() -> None:
    scores, pairs, margins, prompt = _ranking_batch([3, 4, 9], seed=1)
    _, stats = kwise_ranking_loss(scores, pairs, margins, prompt)
    gaps = [float(scores[win] - scores[lose]) for win, lose in pairs.tolist()]
    assert stats["accuracy"].item() == pytest.approx(sum(g > 0 for g in gaps) / len(gaps))
    assert stats["score_gap"].item() == pytest.approx(sum(gaps) / len(gaps))


def test_each_prompt_weighs_the_same_whatever_k() -> None:
    # Prompt 0: K = 2 (1 pair, gap 0 -> loss log 2).  Prompt 1: K = 9, all gaps huge
    # (loss ~0). Per-prompt mean then mean over prompts = (log 2 + 0) / 2, whereas a
    # flat mean over the 1 + 36 pairs would give log 2 / 37.
    s2 = torch.tensor([0.0, 0.0])
    s9 = torch.arange(9, 0, -1, dtype=torch.float32) * 100  # ranked best first
    scores = torch.cat([s2, s9])
    pairs = [(0, 1)] + [(2 + i, 2 + j) for i, j in itertools.combinations(range(9), 2)]
    prompt = torch.tensor([0] + [1] * 36)
    loss, stats = kwise_ranking_loss(scores, torch.tensor(pairs), None, prompt)
    assert loss.item() == pytest.approx(math.log(2) / 2, rel=1e-6)
    assert stats["n_prompts"].item() == 2


def test_hand_pairwise_with_margin() -> None:
    # One pair, s_w - s_l = 1, margin 1 -> -log sigmoid(0) = log 2;
    # margin 0 -> -log sigmoid(1) = log(1 + e^-1). No pair_prompt: mean over pairs.
    scores = torch.tensor([2.0, 1.0], dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [0, 1]])
    loss, stats = kwise_ranking_loss(scores, pairs, torch.tensor([1.0, 0.0]).double())
    expected = (math.log(2) + math.log(1 + math.exp(-1))) / 2
    assert loss.item() == pytest.approx(expected)
    assert stats["accuracy"].item() == 1.0 and stats["n_prompts"].item() == 2


def test_non_contiguous_prompt_ids() -> None:
    scores, pairs, margins, prompt = _ranking_batch([4, 3], seed=2)
    relabelled = torch.where(prompt == 0, 17, 5)
    a = kwise_ranking_loss(scores, pairs, margins, prompt)[0]
    b = kwise_ranking_loss(scores, pairs, margins, relabelled)[0]
    torch.testing.assert_close(a, b)


def test_ranking_loss_extreme_scores_stay_finite() -> None:
    scores, pairs, margins, prompt = _ranking_batch([2, 5, 9], seed=3, scale=1e4)
    scores = scores.float().requires_grad_(True)
    loss, _ = kwise_ranking_loss(scores, pairs, margins.float(), prompt)
    (grad,) = torch.autograd.grad(loss, scores)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # A wrong pair by 2e4 costs ~2e4 (linear, not inf): -log sigmoid(-2e4) = 2e4.
    worst, _ = kwise_ranking_loss(torch.tensor([-1e4, 1e4]), torch.tensor([[0, 1]]))
    assert worst.item() == pytest.approx(2e4)


def test_ranking_loss_bad_shapes() -> None:
    scores = torch.zeros(3)
    with pytest.raises(ValueError):
        kwise_ranking_loss(scores, torch.zeros(0, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        kwise_ranking_loss(scores, torch.tensor([[0, 1]]), torch.zeros(2))
    with pytest.raises(ValueError):
        kwise_ranking_loss(scores, torch.tensor([0, 1]))


def test_pair_credit_counts_a_tie_half() -> None:
    # scores (1, 2, 2, 0); pairs (winner, loser): 1>0 gap 1, 1>2 a tie, 0>3 gap 1, 3>0 gap -1
    scores = torch.tensor([1.0, 2.0, 2.0, 0.0], requires_grad=True)
    gap, credit = pair_credit(scores, torch.tensor([[1, 0], [1, 2], [0, 3], [3, 0]]))
    assert gap.tolist() == [1.0, 0.0, 1.0, -1.0] and not gap.requires_grad
    assert credit.tolist() == [1.0, 0.5, 1.0, 0.0]


# ---------------------------------------------------------------- PPO


def _ppo_batch(seed: int = 0, batch: int = 3, length: int = 5):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=gen, dtype=torch.float64) * 3
    new = old + 0.4 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    adv = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    mask = torch.arange(length).unsqueeze(0) < torch.tensor([5, 2, 3]).unsqueeze(1)
    return new, old, adv, mask


def _naive_policy(new, old, adv, mask, eps):
    losses, kls, clipped, ratios = [], [], [], []
    for b, t in itertools.product(range(new.shape[0]), range(new.shape[1])):
        if not mask[b, t]:
            continue
        ratio = math.exp(float(new[b, t] - old[b, t]))
        a = float(adv[b, t])
        surr1, surr2 = ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a
        losses.append(-min(surr1, surr2))
        clipped.append(float(surr2 < surr1))
        kls.append((ratio - 1) - math.log(ratio))
        ratios.append(ratio)
    n = len(losses)
    return sum(losses) / n, sum(kls) / n, sum(clipped) / n, sum(ratios) / n


def test_policy_loss_vs_naive_per_token() -> None:
    new, old, adv, mask = _ppo_batch()
    loss, stats = ppo_policy_loss(new, old, adv, mask, clip_eps=0.2)
    ref_loss, ref_kl, ref_clip, ref_ratio = _naive_policy(new, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx(ref_loss)
    assert stats["policy_loss"].item() == pytest.approx(ref_loss)
    assert stats["approx_kl"].item() == pytest.approx(ref_kl)
    assert stats["clipfrac"].item() == pytest.approx(ref_clip)
    assert stats["ratio_mean"].item() == pytest.approx(ref_ratio)
    assert stats["approx_kl"].item() >= 0


def test_policy_clipfrac_hand_case() -> None:
    # eps = 0.2, four tokens:
    #   ratio 1.5, A = +1: clipped term 1.2 < 1.5 -> min picks clipped  -> clipped
    #   ratio 1.5, A = -1: -1.5 < -1.2 -> min picks unclipped           -> not clipped
    #   ratio 0.5, A = -1: clipped -0.8 < -0.5 -> min picks clipped     -> clipped
    #   ratio 1.1, A = +1: inside the band                              -> not clipped
    # clipfrac = 2/4; loss = mean(-[1.2, -1.5, -0.8, 1.1]) = mean([-1.2, 1.5, 0.8, -1.1]) = 0
    ratio = torch.tensor([[1.5, 1.5, 0.5, 1.1]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
    old = torch.zeros_like(ratio)
    mask = torch.ones_like(ratio, dtype=torch.bool)
    loss, stats = ppo_policy_loss(ratio.log(), old, adv, mask, clip_eps=0.2)
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_ratio_one_gives_minus_mean_advantage() -> None:
    new, _, adv, mask = _ppo_batch(seed=1)
    new.requires_grad_(True)
    loss, stats = ppo_policy_loss(new, new.detach().clone(), adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-adv[mask].mean().item())
    assert stats["clipfrac"].item() == 0 and stats["approx_kl"].item() == 0
    # d loss / d logp_t = -A_t / N at valid tokens (d ratio / d logp = ratio = 1), 0 at padding
    (grad,) = torch.autograd.grad(loss, new)
    expected = torch.where(mask, -adv / mask.sum(), torch.zeros_like(adv))
    torch.testing.assert_close(grad, expected)


def test_policy_loss_padding_junk_changes_nothing() -> None:
    new, old, adv, mask = _ppo_batch(seed=2)
    clean = new.clone().requires_grad_(True)
    dirty = torch.where(mask, new, torch.full_like(new, 1e4)).requires_grad_(True)
    adv_dirty = torch.where(mask, adv, torch.full_like(adv, float("nan")))
    loss_c, stats_c = ppo_policy_loss(clean, old, adv, mask, 0.2)
    loss_d, stats_d = ppo_policy_loss(dirty, old, adv_dirty, mask, 0.2)
    torch.testing.assert_close(loss_c, loss_d)
    for key in stats_c:
        torch.testing.assert_close(stats_c[key], stats_d[key])
    (g_c,) = torch.autograd.grad(loss_c, clean)
    (g_d,) = torch.autograd.grad(loss_d, dirty)
    torch.testing.assert_close(g_c, g_d)


def test_value_loss_vs_naive_per_token() -> None:
    gen = torch.Generator().manual_seed(3)
    values, old, returns = torch.randn(3, 3, 5, generator=gen, dtype=torch.float64)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([5, 1, 3]).unsqueeze(1)
    clip = 0.2
    loss, stats = ppo_value_loss(values, old, returns, mask, clip)
    terms, clipped = [], []
    for b, t in itertools.product(range(3), range(5)):
        if mask[b, t]:
            v, o, r = float(values[b, t]), float(old[b, t]), float(returns[b, t])
            vc = o + min(max(v - o, -clip), clip)
            terms.append(0.5 * max((v - r) ** 2, (vc - r) ** 2))
            clipped.append(float((vc - r) ** 2 > (v - r) ** 2))
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert stats["value_clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))


def test_value_loss_hand_case_and_no_clip() -> None:
    # old 0, v 1, R 2, clip 0.5: v_clip = 0.5. (v-R)^2 = 1, (v_clip-R)^2 = 2.25 -> 0.5*2.25
    values = torch.tensor([[1.0]], dtype=torch.float64)
    old, returns = torch.zeros_like(values), torch.full_like(values, 2.0)
    mask = torch.ones_like(values, dtype=torch.bool)
    loss, stats = ppo_value_loss(values, old, returns, mask, 0.5)
    assert loss.item() == pytest.approx(1.125) and stats["value_clipfrac"].item() == 1.0
    loss, stats = ppo_value_loss(values, old, returns, mask, None)
    assert loss.item() == pytest.approx(0.5) and stats["value_clipfrac"].item() == 0.0


def test_value_loss_padding_junk_changes_nothing() -> None:
    gen = torch.Generator().manual_seed(4)
    values, old, returns = torch.randn(3, 2, 4, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    junk = torch.full_like(values, float("inf"))
    v_c = values.clone().requires_grad_(True)
    v_d = torch.where(mask, values, junk).requires_grad_(True)
    loss_c, _ = ppo_value_loss(v_c, old, returns, mask, 0.2)
    loss_d, _ = ppo_value_loss(v_d, torch.where(mask, old, -junk), returns, mask, 0.2)
    torch.testing.assert_close(loss_c, loss_d)
    (g_c,) = torch.autograd.grad(loss_c, v_c)
    (g_d,) = torch.autograd.grad(loss_d, v_d)
    torch.testing.assert_close(g_c, g_d)


# ---------------------------------------------------------------- policy loss variants


def _naive_token_losses(new, old, adv, mask, eps, ref=None, kl_coef=0.0):
    """Per valid token: -min(r A, clip(r) A) + kl_coef (exp(d) - d - 1), d = ref - new;
    {row: [losses of its valid tokens]}."""
    rows: dict[int, list[float]] = {}
    for b, t in itertools.product(range(new.shape[0]), range(new.shape[1])):
        if not mask[b, t]:
            continue
        ratio = math.exp(float(new[b, t] - old[b, t]))
        a = float(adv[b, t])
        loss = -min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
        if ref is not None:
            d = float(ref[b, t] - new[b, t])
            loss += kl_coef * (math.exp(d) - d - 1)
        rows.setdefault(b, []).append(loss)
    return rows


def _naive_aggregate(rows: dict[int, list[float]], batch: int, agg: str, norm: float) -> float:
    flat = [x for b in range(batch) for x in rows.get(b, [])]
    per_row = [rows.get(b, []) for b in range(batch)]
    if agg == "token-mean":
        return sum(flat) / len(flat)
    if agg == "seq-mean-token-mean":
        return sum(sum(r) / len(r) if r else 0.0 for r in per_row) / batch
    if agg == "seq-mean-token-sum":
        return sum(sum(r) for r in per_row) / batch
    return sum(sum(r) for r in per_row) / (batch * norm)  # seq-mean-token-sum-norm


@pytest.mark.parametrize("agg", list(LOSS_AGGREGATIONS))
@pytest.mark.parametrize("kl_coef", [0.0, 0.3])
def test_policy_loss_aggregations_vs_naive(agg: str, kl_coef: float) -> None:
    new, old, adv, mask = _ppo_batch(seed=4)
    ref = old + 0.3 * torch.randn(
        old.shape, generator=torch.Generator().manual_seed(9), dtype=old.dtype
    )
    loss, stats = ppo_policy_loss(
        new, old, adv, mask, 0.2, agg, ref_logprobs=ref, kl_coef=kl_coef, norm_length=7
    )
    rows = _naive_token_losses(new, old, adv, mask, 0.2, ref if kl_coef else None, kl_coef)
    assert loss.item() == pytest.approx(_naive_aggregate(rows, 3, agg, 7))
    assert ("kl_loss" in stats) == bool(kl_coef)
    if kl_coef:  # the mean k3 per token, >= 0
        d = (ref - new)[mask]
        assert stats["kl_loss"].item() == pytest.approx((d.exp() - d - 1).mean().item())
    assert POLICY_LOSSES[agg](new, old, adv, mask, 0.2, ref_logprobs=ref, kl_coef=kl_coef,
                              norm_length=7)[0].item() == loss.item()  # fmt: skip
    assert LOSS_UNITS[agg] == ("token" if agg == "token-mean" else "sequence")


def test_token_mean_without_kl_is_ppo_default_bit_for_bit() -> None:
    new, old, adv, mask = _ppo_batch(seed=5)
    a, _ = ppo_policy_loss(new, old, adv, mask, 0.2)
    b, _ = ppo_policy_loss(new, old, adv, mask, 0.2, "token-mean", ref_logprobs=old, kl_coef=0.0)
    assert torch.equal(a, b)


def test_dr_grpo_aggregation_needs_its_constant() -> None:
    new, old, adv, mask = _ppo_batch()
    with pytest.raises(ValueError, match="norm_length"):
        ppo_policy_loss(new, old, adv, mask, 0.2, "seq-mean-token-sum-norm")


def _row_advantages(seed: int = 6):
    new, old, _, mask = _ppo_batch(seed=seed)
    a = torch.tensor([1.5, -0.7, 0.4], dtype=torch.float64)
    adv = torch.where(mask, a[:, None].expand_as(new), torch.zeros_like(new))
    return new, old, a, adv, mask


@pytest.mark.parametrize("kl_coef", [0.0, 0.2])
def test_sequence_loss_vs_naive(kl_coef: float) -> None:
    """One ratio per response: r_i = exp(sum_t (new - old)), clipped as a whole."""
    new, old, a, adv, mask = _row_advantages()
    # small per-token changes: some responses' ratios leave [0.8, 1.2], some do not
    noise = torch.randn(new.shape, generator=torch.Generator().manual_seed(1), dtype=new.dtype)
    old = new - 0.15 * noise
    ref = new + 0.2
    loss, stats = sequence_policy_loss(new, old, adv, mask, 0.2, ref_logprobs=ref, kl_coef=kl_coef)
    total, clipped = 0.0, 0
    for b in range(3):
        n = int(mask[b].sum())
        ratio = math.exp(sum(float(new[b, t] - old[b, t]) for t in range(n)))
        surr = min(ratio * float(a[b]), min(max(ratio, 0.8), 1.2) * float(a[b]))
        clipped += surr != ratio * float(a[b])
        d = 0.2  # ref - new at every token
        total += -surr + kl_coef * n * (math.exp(d) - d - 1)
    assert 0 < clipped < 3  # both cases are exercised
    assert loss.item() == pytest.approx(total / 3)
    assert stats["clipfrac"].item() == pytest.approx(clipped / 3)
    assert POLICY_LOSSES["sequence"] is sequence_policy_loss


def test_on_policy_gradient_of_the_response_sum_is_rloo_estimator() -> None:
    """At ratio 1 both seq-mean-token-sum and the per-response ratio give d loss / d logp_t
    = -A_i / B on every valid token: REINFORCE with the whole response as one action."""
    new, _, a, adv, mask = _row_advantages(seed=7)
    expected = torch.where(mask, -a[:, None].expand_as(new) / 3, torch.zeros_like(new))
    for fn in (POLICY_LOSSES["seq-mean-token-sum"], sequence_policy_loss):
        x = new.clone().requires_grad_(True)
        loss, _ = fn(x, new.detach(), adv, mask, 0.2)
        assert loss.item() == pytest.approx(-(a * mask.sum(1)).mean().item()
                                            if fn is not sequence_policy_loss else -a.mean().item())  # fmt: skip
        (grad,) = torch.autograd.grad(loss, x)
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("agg", list(POLICY_LOSSES))
def test_every_policy_loss_ignores_padding_junk(agg: str) -> None:
    new, old, _, adv, mask = _row_advantages(seed=8)
    ref = old - 0.1
    clean = new.clone().requires_grad_(True)
    dirty = torch.where(mask, new, torch.full_like(new, 1e4)).requires_grad_(True)
    junk = torch.full_like(new, float("nan"))
    args = dict(kl_coef=0.1, norm_length=5)
    loss_c, _ = POLICY_LOSSES[agg](clean, old, adv, mask, 0.2, ref_logprobs=ref, **args)
    loss_d, _ = POLICY_LOSSES[agg](
        dirty, torch.where(mask, old, junk), torch.where(mask, adv, torch.zeros_like(adv)), mask,
        0.2, ref_logprobs=torch.where(mask, ref, junk), **args,
    )  # fmt: skip
    torch.testing.assert_close(loss_c, loss_d)
    (g_c,) = torch.autograd.grad(loss_c, clean)
    (g_d,) = torch.autograd.grad(loss_d, dirty)
    torch.testing.assert_close(g_c, g_d)
    assert torch.isfinite(g_d).all()


# ---------------------------------------------------------------- DPO and IPO
# Against an explicit loop over every pair of every prompt, hand values, extreme inputs.
# Equality with TRL 1.16's DPOTrainer: tests/loops/test_dpo_trl.py.


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
