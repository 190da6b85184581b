"""The losses of the pipeline: SFT / ptx, reward-model ranking, PPO policy and value, DPO / IPO.

The policy loss is PPO's clipped surrogate per token for every estimator of `rlhfkit ppo`
(GAE, RLOO, GRPO, REINFORCE++; only their advantages differ), optionally plus a k3 KL
term (GRPO), made one number by one of `LOSS_AGGREGATIONS` (token mean, per-response
mean or sum, sum over a constant); `sequence_policy_loss` clips one ratio per response
instead (TRL's RLOOTrainer). `POLICY_LOSSES` maps each `--loss-agg` to its function.

Each returns ``(loss, stats)``: ``loss`` a 0-d tensor to call ``backward`` on, ``stats``
a dict of detached 0-d tensors for logging. Masks are bool, True = valid token.

PPO-ptx needs no function of its own. InstructGPT maximises
``RL objective + gamma * E_{x ~ D_pretrain}[log pi(x)]``; as a loss that term is
``ptx_coef * ptx_loss(logits, labels)`` on a pretraining batch (``ptx_loss`` is
``sft_nll`` with every non-padding token as a label), and the loop adds its gradient to
the PPO gradient before the one optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from rlhfkit.ops.kl import kl_k3
from rlhfkit.ops.logprobs import logprobs_from_logits, shifted_token_logprobs
from rlhfkit.ops.masking import masked_mean, masked_sum


def sft_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token negative log-likelihood, HF-style labels (shifted here, not by the caller).

    logits: (B, T, V) from the model on input_ids (B, T), or (N, V): only the rows of the
    N positions that predict a label, in row-major order of ``valid`` below (a head run on
    those positions alone); labels: (B, T), usually input_ids with ``ignore_index`` on
    prompt and padding tokens. With valid_j = labels[:, j + 1] != ignore_index and
    N = number of valid tokens:

        nll_sum = -sum_{b, j valid} log p(labels[b, j + 1] | tokens <= j)
        loss    = nll_sum / max(N, 1)    (reduction="mean")
        loss    = nll_sum                (reduction="sum")

    "sum" is for exact gradient accumulation over micro-batches / DDP ranks: sum the
    losses and divide by the total of ``stats["n_tokens"]``.
    Stats: loss (always the per-token mean), nll_sum, n_tokens.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    valid = labels[:, 1:] != ignore_index  # (B, T-1)
    n_tokens = valid.sum()
    if logits.dim() == 2:  # (N, V): the label-predicting positions only
        targets = labels[:, 1:][valid]  # (N,)
        if logits.shape[0] != targets.numel():
            raise ValueError(f"logits {tuple(logits.shape)} for {targets.numel()} label tokens")
        nll_sum = -logprobs_from_logits(logits[None], targets[None]).sum()
    elif logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    else:
        safe_labels = torch.where(labels == ignore_index, 0, labels)  # gather needs an index
        logprobs = shifted_token_logprobs(logits, safe_labels)  # (B, T-1)
        nll_sum = -masked_sum(logprobs, valid)
    mean = nll_sum / n_tokens.clamp_min(1)
    stats = {
        "loss": mean.detach(),
        "nll_sum": nll_sum.detach(),
        "n_tokens": n_tokens.detach(),
    }
    return (mean if reduction == "mean" else nll_sum), stats


ptx_loss = sft_nll  # PPO-ptx: the same next-token NLL, on pretraining text (see module doc)


def _mean_per_prompt(
    pair_loss: torch.Tensor, pair_prompt: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over prompts of the mean over each prompt's pairs, number of prompts).

    pair_loss: (M,); pair_prompt: (M,) int64 prompt id per pair, None = each pair its own."""
    if pair_prompt is None:
        return pair_loss.mean(), torch.tensor(pair_loss.shape[0], device=pair_loss.device)
    prompt_ids, group = torch.unique(pair_prompt, return_inverse=True)  # group: (M,)
    n_groups = prompt_ids.shape[0]
    per_prompt_sum = pair_loss.new_zeros(n_groups).index_add(0, group, pair_loss)
    per_prompt_count = torch.bincount(group, minlength=n_groups).to(pair_loss.dtype)
    loss = (per_prompt_sum / per_prompt_count).mean()
    return loss, torch.tensor(n_groups, device=pair_loss.device)


def kwise_ranking_loss(
    scores: torch.Tensor,
    pairs: torch.Tensor,
    margins: torch.Tensor | None = None,
    pair_prompt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """InstructGPT K-wise ranking loss with Llama 2 margins; per prompt, then over prompts.

    scores: (N,) one reward per response, all responses of all prompts concatenated
    (K forward passes per prompt, not one per pair). pairs: (M, 2) int64 rows
    (winner index, loser index) into ``scores``. margins: (M,) m(r) per pair, None = 0.
    pair_prompt: (M,) int64 prompt id of each pair; None = every pair its own prompt
    (plain pairwise data). For prompt p with pair set P_p (its C(K,2) comparisons):

        loss_p = 1/|P_p| * sum_{(w, l) in P_p} -log sigmoid(s_w - s_l - m_wl)
        loss   = mean_p loss_p

    which is InstructGPT's -1/C(K,2) E[log sigmoid(r_w - r_l)] per prompt, each prompt
    weighted the same whatever its K. Stats: loss, accuracy (fraction of pairs with
    s_w > s_l, margins aside), score_gap (mean s_w - s_l), n_prompts, n_pairs.
    """
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(f"pairs must be a non-empty (M, 2) index tensor, got {tuple(pairs.shape)}")
    if scores.dim() != 1:
        raise ValueError(f"scores must be (N,), got {tuple(scores.shape)}")
    n_pairs = pairs.shape[0]
    for name, t in (("margins", margins), ("pair_prompt", pair_prompt)):
        if t is not None and t.shape != (n_pairs,):
            raise ValueError(f"{name} must be (M,) = ({n_pairs},), got {tuple(t.shape)}")

    gap = scores[pairs[:, 0]] - scores[pairs[:, 1]]  # (M,) s_w - s_l
    z = gap if margins is None else gap - margins.to(gap.dtype)
    pair_loss = -F.logsigmoid(z)  # (M,); finite, with a finite gradient, for |z| ~ 1e4
    loss, n_prompts = _mean_per_prompt(pair_loss, pair_prompt)

    with torch.no_grad():
        stats = {
            "loss": loss.detach(),
            "accuracy": (gap > 0).float().mean(),
            "score_gap": gap.mean(),
            "n_prompts": n_prompts,
            "n_pairs": torch.tensor(n_pairs, device=scores.device),
        }
    return loss, stats


def pair_credit(scores: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((M,) gap s_w - s_l, (M,) credit): 1 if the RM prefers the winner, 0.5 for a tie.

    scores: (N,) one score per response; pairs: (M, 2) (winner, loser) indices into them.
    A tie (equal scores: in practice two identical responses, which noisy labellers
    still order) counts half, the expected accuracy of breaking it at random, so chance
    is 0.5 in every bucket. `kwise_ranking_loss`'s own accuracy counts ties as 0.
    """
    gap = (scores[pairs[:, 0]] - scores[pairs[:, 1]]).detach().float()  # (M,)
    return gap, (gap > 0).float() + 0.5 * (gap == 0).float()


def _token_mean(per_token: torch.Tensor, mask: torch.Tensor, norm_length: float | None):
    """sum over all valid tokens / their number (PPO; TRL GRPO's "dapo" / "bnpo")."""
    return masked_mean(per_token, mask)


def _seq_mean_token_mean(per_token: torch.Tensor, mask: torch.Tensor, norm_length: float | None):
    """mean over responses of each response's token mean (GRPO; TRL's "grpo")."""
    return masked_mean(per_token, mask, dim=1).mean()


def _seq_mean_token_sum(per_token: torch.Tensor, mask: torch.Tensor, norm_length: float | None):
    """mean over responses of each response's token sum (RLOO: the response's log-prob)."""
    return masked_sum(per_token, mask, dim=1).mean()


def _seq_mean_token_sum_norm(
    per_token: torch.Tensor, mask: torch.Tensor, norm_length: float | None
):
    """mean over responses of each response's token sum / a constant length (Dr. GRPO;
    TRL's "dr_grpo" with max_completion_length = norm_length)."""
    if not norm_length:
        raise ValueError("seq-mean-token-sum-norm needs norm_length (e.g. max_new_tokens)")
    return masked_sum(per_token, mask, dim=1).mean() / norm_length


LOSS_AGGREGATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}
"""(B, R) per-token losses, (B, R) bool mask, norm_length -> the 0-d loss (verl's names)."""


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
    agg: str = "token-mean",
    *,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    norm_length: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) per token, aggregated by `agg`.

    logprobs: (B, R) under the policy being trained; old_logprobs: (B, R) from the
    rollout; advantages: (B, R) (a per-response estimator repeats A_i on every token);
    response_mask: (B, R) bool; ref_logprobs: (B, R) under the reference, with kl_coef > 0
    for GRPO's KL loss term. With ratio_t = exp(logprobs_t - old_logprobs_t):

        l_t  = -min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t)
               + kl_coef * k3_t,     k3_t = exp(d_t) - d_t - 1,  d_t = ref_logprobs_t - logprobs_t
        loss = LOSS_AGGREGATIONS[agg](l, response_mask, norm_length)

    The default ("token-mean", no KL term) is masked_mean(l): PPO's token-level mean.
    Stats: policy_loss; approx_kl = masked_mean((ratio - 1) - log ratio) (k3 of
    KL(old || new), >= 0); clipfrac = fraction of tokens where the clipped term is
    the active one; ratio_mean; kl_loss = masked_mean(k3) when the KL term is on.
    """
    zeros = torch.zeros_like(logprobs)
    # Padding -> ratio 1, A 0 before any exp, so junk there cannot reach a gradient.
    log_ratio = torch.where(response_mask, logprobs - old_logprobs, zeros)
    advantages = torch.where(response_mask, advantages, torch.zeros_like(advantages))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)
    kl = None
    if ref_logprobs is not None and kl_coef:
        ref = torch.where(response_mask, ref_logprobs, logprobs.detach())  # padding: k3 = 0
        kl = torch.where(response_mask, kl_k3(logprobs, ref), zeros)
        per_token = per_token + kl_coef * kl
    loss = LOSS_AGGREGATIONS[agg](per_token, response_mask, norm_length)

    with torch.no_grad():
        stats = {
            "policy_loss": loss.detach(),
            "approx_kl": masked_mean((ratio - 1) - log_ratio, response_mask),
            "clipfrac": masked_mean((clipped > unclipped).float(), response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
        }
        if kl is not None:
            stats["kl_loss"] = masked_mean(kl, response_mask)
    return loss, stats


def sequence_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float,
    *,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    norm_length: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate with one ratio per response: the whole response is one action
    (Ahmadian et al. 2024's RLOO; TRL 1.16's RLOOTrainer loss).

    Shapes as `ppo_policy_loss`; advantages (B, R) hold one A_i per response, read at its
    first token. With log r_i = sum_t mask * (logprobs - old_logprobs) over response i:

        loss = mean_i -min(r_i * A_i, clip(r_i, 1 - eps, 1 + eps) * A_i)
               + kl_coef * mean_i sum_t k3_t                  (KL term only if asked)

    At r = 1 its gradient is -mean_i A_i * grad log pi(y_i | x_i), RLOO's estimator, the
    same as "seq-mean-token-sum" there; off-policy (later epochs) one response's ratio
    is the product of its tokens', so it clips sooner. `norm_length` is unused.
    Stats: policy_loss, approx_kl and ratio_mean (per token, as PPO's, for the logs),
    clipfrac (the fraction of responses clipped), seq_ratio_mean.
    """
    zeros = torch.zeros_like(logprobs)
    token_log_ratio = torch.where(response_mask, logprobs - old_logprobs, zeros)  # (B, R)
    log_ratio = token_log_ratio.sum(1)  # (B,)
    seq_advantages = advantages[:, 0]  # (B,): every token of a response holds its A_i
    ratio = torch.exp(log_ratio)
    unclipped = -seq_advantages * ratio
    clipped = -seq_advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = torch.maximum(unclipped, clipped).mean()
    kl = None
    if ref_logprobs is not None and kl_coef:
        ref = torch.where(response_mask, ref_logprobs, logprobs.detach())
        kl = torch.where(response_mask, kl_k3(logprobs, ref), zeros)
        loss = loss + kl_coef * _seq_mean_token_sum(kl, response_mask, None)

    with torch.no_grad():
        token_ratio = torch.exp(token_log_ratio)
        stats = {
            "policy_loss": loss.detach(),
            "approx_kl": masked_mean((token_ratio - 1) - token_log_ratio, response_mask),
            "clipfrac": (clipped > unclipped).float().mean(),
            "ratio_mean": masked_mean(token_ratio, response_mask),
            "seq_ratio_mean": ratio.mean(),
        }
        if kl is not None:
            stats["kl_loss"] = masked_mean(kl, response_mask)
    return loss, stats


POLICY_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {
    **{agg: partial(ppo_policy_loss, agg=agg) for agg in LOSS_AGGREGATIONS},
    "sequence": sequence_policy_loss,
}
"""`--loss-agg` -> policy loss(logprobs, old_logprobs, advantages, response_mask, clip_eps,
*, ref_logprobs, kl_coef, norm_length)."""

LOSS_UNITS: dict[str, str] = {agg: "sequence" for agg in POLICY_LOSSES} | {"token-mean": "token"}
"""What each `--loss-agg` averages over ("token" or "sequence"): a minibatch split into
micro-batches or processes weights each part's loss by its share of these."""


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines / InstructGPT's PPO), masked mean.

    values: (B, R) from the value model being trained; old_values: (B, R) from the
    rollout; returns: (B, R) GAE returns; response_mask: (B, R) bool.

        v_clip = old_values + clip(values - old_values, -clip_range, clip_range)
        loss   = 0.5 * masked_mean( max((values - returns)^2, (v_clip - returns)^2) )

    ``clip_range=None`` disables clipping (plain 0.5 * MSE). Stats: value_loss,
    value_clipfrac (fraction of tokens where the clipped error is the larger).
    """
    zeros = torch.zeros_like(values)
    values = torch.where(response_mask, values, zeros)
    old_values = torch.where(response_mask, old_values, zeros)
    returns = torch.where(response_mask, returns, zeros)
    unclipped = (values - returns) ** 2
    if clip_range is None:
        clipped = unclipped
    else:
        v_clip = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        clipped = (v_clip - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), response_mask)

    with torch.no_grad():
        stats = {
            "value_loss": loss.detach(),
            "value_clipfrac": masked_mean((clipped > unclipped).float(), response_mask),
        }
    return loss, stats


# ---------------------------------------------------------------------------------------
# Direct preference optimisation: DPO and IPO
# ---------------------------------------------------------------------------------------


def _check_preference_inputs(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, lengths: torch.Tensor, pairs: torch.Tensor
) -> None:
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.shape[0] == 0:
        raise ValueError(f"pairs must be a non-empty (M, 2) index tensor, got {tuple(pairs.shape)}")
    n = logprobs.shape
    if logprobs.dim() != 1 or ref_logprobs.shape != n or lengths.shape != n:
        raise ValueError(
            f"logprobs, ref_logprobs and lengths must be (N,) alike, got {tuple(n)}, "
            f"{tuple(ref_logprobs.shape)}, {tuple(lengths.shape)}"
        )


def _preference_stats(
    loss: torch.Tensor,
    logprobs: torch.Tensor,
    log_ratios: torch.Tensor,
    pairs: torch.Tensor,
    beta: float,
    n_prompts: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """What TRL's DPOTrainer logs, per pair: implicit rewards beta * (logp - ref) of the
    chosen and rejected responses, their margin, accuracy (chosen reward strictly above the
    rejected one: 0 at the start, where every reward is 0), and the summed log-probs."""
    with torch.no_grad():
        rewards = beta * log_ratios.detach()  # (N,)
        chosen, rejected = rewards[pairs[:, 0]], rewards[pairs[:, 1]]  # (M,)
        return {
            "loss": loss.detach(),
            "accuracy": (chosen > rejected).float().mean(),
            "margin": (chosen - rejected).mean(),
            "chosen_reward": chosen.mean(),
            "rejected_reward": rejected.mean(),
            "chosen_logprob": logprobs.detach()[pairs[:, 0]].mean(),
            "rejected_logprob": logprobs.detach()[pairs[:, 1]].mean(),
            "n_prompts": n_prompts,
            "n_pairs": torch.tensor(pairs.shape[0], device=logprobs.device),
        }


def dpo_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    lengths: torch.Tensor,
    pairs: torch.Tensor,
    beta: float,
    pair_prompt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO (Rafailov et al. 2023), per prompt over its pairs, then over prompts.

    logprobs: (N,) log pi(y | x) of each response, summed over its response tokens, under
    the policy being trained; ref_logprobs: (N,) the same under the frozen reference;
    lengths: (N,) response token counts (unused here: `ipo_loss`'s normaliser; the two
    share one signature). pairs: (M, 2) int64 rows (winner, loser) into the N responses;
    pair_prompt: (M,) prompt id of each pair (None: every pair its own prompt). With
    h_wl = (logp_w - ref_w) - (logp_l - ref_l):

        loss_wl = -log sigmoid(beta * h_wl)
        loss    = mean_p  1/|P_p| sum_{(w, l) in P_p} loss_wl

    For pairwise data (one pair per prompt) this is TRL 1.16's DPOTrainer loss
    (loss_type="sigmoid", the mean over the batch's pairs); a K-wise ranking is one prompt
    with its C(K,2) pairs, weighted as one prompt, as the reward model's loss does.
    Stats: `_preference_stats`.
    """
    _check_preference_inputs(logprobs, ref_logprobs, lengths, pairs)
    log_ratios = logprobs - ref_logprobs  # (N,)
    h = log_ratios[pairs[:, 0]] - log_ratios[pairs[:, 1]]  # (M,)
    pair_loss = -F.logsigmoid(beta * h)  # (M,)
    loss, n_prompts = _mean_per_prompt(pair_loss, pair_prompt)
    return loss, _preference_stats(loss, logprobs, log_ratios, pairs, beta, n_prompts)


def ipo_loss(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    lengths: torch.Tensor,
    pairs: torch.Tensor,
    beta: float,
    pair_prompt: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """IPO (Azar et al. 2023, eq. 17, tau = beta) as TRL 1.16 computes it.

    Shapes as `dpo_loss`. TRL's DPOTrainer (loss_type="ipo") divides each response's
    summed log-ratio by its number of response tokens (clamped at 1) before the
    difference, "confirmed with the IPO authors" (its comment): without it the square
    grows with the responses' length. So, with n_y = lengths[y]:

        h_wl    = (logp_w - ref_w) / n_w - (logp_l - ref_l) / n_l
        loss_wl = (h_wl - 1 / (2 beta))^2
        loss    = mean_p  1/|P_p| sum_{(w, l) in P_p} loss_wl

    The logged rewards stay beta * (logp - ref), unnormalised, as TRL logs them.
    """
    _check_preference_inputs(logprobs, ref_logprobs, lengths, pairs)
    log_ratios = logprobs - ref_logprobs  # (N,)
    per_token = log_ratios / lengths.to(log_ratios.dtype).clamp_min(1.0)  # (N,)
    h = per_token[pairs[:, 0]] - per_token[pairs[:, 1]]  # (M,)
    pair_loss = (h - 1.0 / (2.0 * beta)) ** 2  # (M,)
    loss, n_prompts = _mean_per_prompt(pair_loss, pair_prompt)
    return loss, _preference_stats(loss, logprobs, log_ratios, pairs, beta, n_prompts)


PREFERENCE_LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss}  # --loss
