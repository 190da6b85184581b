"""Token log-probabilities and entropy from logits.

This module owns the one-position shift of causal LMs: the logits at position t
predict the token at position t + 1. Every caller that needs "the log-prob of the
tokens in this sequence" goes through ``shifted_token_logprobs`` or
``response_logprobs`` so the shift is written once.

Results are float32 (float64 stays float64) even for bf16/fp16 logits: PPO ratios
exp(logp - old_logp) need the precision. Callers need not upcast the logits: the
vocabulary reductions run one batch row at a time on a float32 copy of that row, so
under no_grad (rollouts) the extra memory is one (T, V) row, not a float32 copy of the
whole (B, T, V) tensor (with grad, autograd keeps what backward needs, as always).
"""

from __future__ import annotations

import torch


def logprob_temperature(temperature: float) -> float:
    """The temperature of the log-probs of sampled tokens: the sampling temperature, or 1
    for greedy decoding (temperature 0), which has no distribution of its own to score
    under. Sampling, the reference, training and evaluation all use this one rule, so
    their log-probs of a response agree.

        logprob_temperature(T) = T if T > 0 else 1
    """
    return temperature if temperature > 0 else 1.0


def _scaled_row(row: torch.Tensor, temperature: float) -> torch.Tensor:
    """One (T, V) row upcast to at least float32 and divided by the temperature."""
    dtype = torch.promote_types(row.dtype, torch.float32)
    row = row.to(dtype)
    return row if temperature == 1.0 else row / temperature


def _check_temperature(temperature: float) -> None:
    # Kept though the options declare their ranges (`config.fields`): this is pure math
    # called from anywhere, and a temperature <= 0 gives inf / NaN log-probs silently.
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def logprobs_from_logits(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of ``labels`` under ``softmax(logits / temperature)``, no shift.

    logits: (B, T, V); labels: (B, T) int64, every entry a valid index in [0, V).
    Returns (B, T), float32 or wider:

        logprobs[b, t] = z[b, t, labels[b, t]] - logsumexp_v z[b, t, v],   z = logits / temperature

    ``temperature`` must match the one used at sampling time, or the PPO ratio is off
    from 1 before any update.
    """
    _check_temperature(temperature)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ")
    rows = []
    for row_logits, row_labels in zip(logits, labels, strict=True):
        z = _scaled_row(row_logits, temperature)  # (T, V)
        picked = z.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)  # (T,)
        rows.append(picked - torch.logsumexp(z, dim=-1))
    if not rows:  # B = 0
        return logits.new_zeros(
            labels.shape, dtype=torch.promote_types(logits.dtype, torch.float32)
        )
    return torch.stack(rows)


def shifted_token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of each token of ``input_ids`` given the tokens before it.

    logits: (B, T, V) from a causal LM run on input_ids (B, T). Returns (B, T - 1):

        out[b, j] = log p(input_ids[b, j + 1] | input_ids[b, : j + 1])
                  = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])[b, j]

    The first token has no prediction, so it has no entry.
    """
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} do not cover input_ids {tuple(input_ids.shape)}"
        )
    return logprobs_from_logits(logits[:, :-1], input_ids[:, 1:], temperature)


def response_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, prompt_len: int, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probabilities of the response tokens of prompt + response sequences.

    input_ids: (B, P + R), prompts left-padded to a common width P = ``prompt_len``,
    responses (right-padded) in the last R columns. logits: (B, L, V) for the LAST L
    positions of input_ids, with R + 1 <= L <= P + R: either the full sequence, or
    only the tail when the model ran with ``logits_to_keep = R + 1``. Returns (B, R):

        out[b, r] = log p(input_ids[b, P + r] | input_ids[b, : P + r])

    read from the logits at position P + r - 1. Padding after the end of a response
    gets a number too; the caller masks it with ``response_mask``.
    """
    total = input_ids.shape[1]
    resp_len = total - prompt_len
    if prompt_len < 1 or resp_len < 1:
        raise ValueError(f"need prompt_len >= 1 and a response; got P={prompt_len}, P+R={total}")
    if not resp_len + 1 <= logits.shape[1] <= total or logits.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"logits {tuple(logits.shape)} must cover the last R+1={resp_len + 1} "
            f"positions of input_ids {tuple(input_ids.shape)}"
        )
    predicting = logits[:, -(resp_len + 1) : -1]  # (B, R, V): positions P-1 .. P+R-2
    return logprobs_from_logits(predicting, input_ids[:, prompt_len:], temperature)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` at every position.

    logits: (B, T, V). Returns (B, T), float32 or wider:

        H[b, t] = -sum_v p_v log p_v = logsumexp_v z_v - sum_v p_v z_v,   p = softmax(z)
    """
    _check_temperature(temperature)
    rows = []
    for row_logits in logits:
        z = _scaled_row(row_logits, temperature)  # (T, V)
        # -inf logits (banned tokens) have p = 0; a finite floor avoids 0 * -inf = NaN.
        z = z.clamp_min(torch.finfo(z.dtype).min)
        probs = torch.softmax(z, dim=-1)
        rows.append(torch.logsumexp(z, dim=-1) - (probs * z).sum(dim=-1))
    if not rows:
        return logits.new_zeros(
            logits.shape[:-1], dtype=torch.promote_types(logits.dtype, torch.float32)
        )
    return torch.stack(rows)


def sequence_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, n_sequences: int
) -> torch.Tensor:
    """Log-probability of whole sequences, summed over their tokens (DPO's log pi(y | x)).

    logits: (n, V), one row per predicted token (the positions that predict them, in any
    order; e.g. packed rows flattened); targets: (n,) int64 the predicted tokens;
    owner: (n,) int64 the sequence (0..S-1) each token belongs to. Returns (S,),
    float32 or wider:

        out[s] = sum_{i : owner[i] = s} log softmax(logits[i])[targets[i]]

    A sequence with no token gets 0.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1] or owner.shape != targets.shape:
        raise ValueError(
            f"logits (n, V), targets (n,) and owner (n,) expected, got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}, {tuple(owner.shape)}"
        )
    token_logprobs = logprobs_from_logits(logits[None], targets[None])[0]  # (n,)
    return token_logprobs.new_zeros(n_sequences).index_add(0, owner, token_logprobs)
