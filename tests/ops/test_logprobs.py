"""ops.logprobs: gathered log-softmax, the one-position shift, response slicing, entropy,
per-sequence sums (DPO)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from rlhfkit.ops.logprobs import (
    entropy_from_logits,
    logprob_temperature,
    logprobs_from_logits,
    response_logprobs,
    sequence_logprobs,
    shifted_token_logprobs,
)


def _naive_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """log(softmax(z)[label]) one position at a time, in float64."""
    out = torch.empty(labels.shape, dtype=torch.float64)
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            probs = torch.softmax(logits[b, t].double() / temperature, dim=-1)
            out[b, t] = torch.log(probs[labels[b, t]])
    return out


def _naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    out = torch.empty(logits.shape[:2], dtype=torch.float64)
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            p = torch.softmax(logits[b, t].double(), dim=-1)
            out[b, t] = -(p * torch.log(p)).sum()
    return out


def _random(batch: int = 3, length: int = 5, vocab: int = 11, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, length, vocab, generator=gen)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    return logits, ids


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_logprobs_match_naive_log_softmax(temperature: float) -> None:
    logits, ids = _random()
    got = logprobs_from_logits(logits.double(), ids, temperature=temperature)
    assert got.shape == ids.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, _naive_logprobs(logits, ids, temperature))
    got32 = logprobs_from_logits(logits, ids, temperature=temperature)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32, got.float())


def test_bf16_logits_give_float32_logprobs() -> None:
    logits, ids = _random(seed=1)
    got = logprobs_from_logits(logits.bfloat16(), ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _naive_logprobs(logits.bfloat16().float(), ids))


def test_shift_hand_case() -> None:
    # Vocab of 3. Position t's logits put log-weight 0 on token (t + 1) % 3 and -inf-ish
    # elsewhere, i.e. logits at t "predict" token (t+1) % 3 with probability ~1.
    # For input_ids [0, 1, 2, 0] the shifted targets are [1, 2, 0]: exactly the
    # predicted tokens, so every log-prob is ~0; with targets NOT shifted they would
    # be ~-100 (the unlikely tokens).
    big = 100.0
    logits = torch.full((1, 4, 3), -big)
    for t in range(4):
        logits[0, t, (t + 1) % 3] = 0.0
    ids = torch.tensor([[0, 1, 2, 0]])
    got = shifted_token_logprobs(logits, ids)
    assert got.shape == (1, 3)
    torch.testing.assert_close(got, torch.zeros(1, 3), atol=1e-6, rtol=0)
    unshifted = logprobs_from_logits(logits, ids)
    assert (unshifted < -50).all()


def test_shift_matches_naive() -> None:
    logits, ids = _random(seed=2)
    got = shifted_token_logprobs(logits.double(), ids)
    # naive: position j of the output is the log-prob of ids[j + 1] under logits[j]
    ref = torch.empty(ids.shape[0], ids.shape[1] - 1, dtype=torch.float64)
    for b in range(ids.shape[0]):
        for j in range(ids.shape[1] - 1):
            ref[b, j] = torch.log_softmax(logits[b, j].double(), -1)[ids[b, j + 1]]
    torch.testing.assert_close(got, ref)


def test_response_logprobs_full_and_tail_logits() -> None:
    # P = 3 prompt columns, R = 4 response columns.
    logits, ids = _random(batch=2, length=7, seed=3)
    prompt_len = 3
    got = response_logprobs(logits, ids, prompt_len)
    assert got.shape == (2, 4)
    # the response tokens are the last 4 entries of the shifted log-probs
    torch.testing.assert_close(got, shifted_token_logprobs(logits, ids)[:, prompt_len - 1 :])
    # logits_to_keep = R + 1: only the last 5 positions' logits
    torch.testing.assert_close(response_logprobs(logits[:, -5:], ids, prompt_len), got)
    # temperature passes through
    torch.testing.assert_close(
        response_logprobs(logits, ids, prompt_len, temperature=0.5),
        shifted_token_logprobs(logits, ids, temperature=0.5)[:, prompt_len - 1 :],
    )


def test_response_logprobs_rejects_short_logits() -> None:
    logits, ids = _random(batch=1, length=7)
    with pytest.raises(ValueError):
        response_logprobs(logits[:, -4:], ids, 3)  # needs R + 1 = 5 positions
    with pytest.raises(ValueError):
        response_logprobs(logits, ids, 7)  # no response


def test_entropy_matches_naive_and_bounds() -> None:
    logits, _ = _random(seed=4)
    torch.testing.assert_close(entropy_from_logits(logits.double()), _naive_entropy(logits))
    torch.testing.assert_close(entropy_from_logits(logits), _naive_entropy(logits).float())
    # uniform logits: H = log V; a near one-hot: H ~ 0
    assert entropy_from_logits(torch.zeros(1, 2, 11))[0, 0].item() == pytest.approx(math.log(11))
    peaked = torch.full((1, 1, 5), -1e4)
    peaked[0, 0, 2] = 0
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_with_banned_tokens_is_finite() -> None:
    logits = torch.tensor([[[0.0, 0.0, float("-inf")]]], requires_grad=True)
    h = entropy_from_logits(logits)
    assert h.item() == pytest.approx(math.log(2))
    (grad,) = torch.autograd.grad(h.sum(), logits)
    assert torch.isfinite(grad).all()


def test_extreme_logits_stay_finite() -> None:
    logits, ids = _random(seed=5)
    logits = logits * 1e4
    assert torch.isfinite(logprobs_from_logits(logits, ids)).all()
    assert torch.isfinite(entropy_from_logits(logits)).all()


def test_gradients_flow_and_inputs_untouched() -> None:
    logits, ids = _random(seed=6)
    logits.requires_grad_(True)
    before = logits.detach().clone()
    (grad,) = torch.autograd.grad(shifted_token_logprobs(logits, ids).sum(), logits)
    # d/dz log softmax(z)[y] = onehot(y) - softmax(z); the last position predicts nothing
    expected = torch.nn.functional.one_hot(ids[:, 1:], 11).float() - torch.softmax(
        before[:, :-1], -1
    )
    torch.testing.assert_close(grad[:, :-1], expected)
    assert torch.all(grad[:, -1] == 0)
    assert torch.equal(logits.detach(), before)


def test_bad_temperature() -> None:
    logits, ids = _random()
    with pytest.raises(ValueError):
        logprobs_from_logits(logits, ids, temperature=0.0)


@pytest.mark.parametrize(("sampling", "expected"), [(0.0, 1.0), (0.7, 0.7), (1.0, 1.0), (2.5, 2.5)])
def test_logprob_temperature_is_the_sampling_one_and_1_when_greedy(sampling, expected) -> None:
    assert logprob_temperature(sampling) == expected
    # greedy log-probs are those of the untempered model: log softmax(z), z the logits
    logits, ids = _random(seed=2)
    got = logprobs_from_logits(logits.double(), ids, logprob_temperature(sampling))
    torch.testing.assert_close(got, _naive_logprobs(logits, ids, expected))


def test_the_greedy_rule_is_written_once() -> None:
    """Every place that needs the log-prob temperature calls `logprob_temperature`: no other
    module of the package spells out "temperature 0 means 1"."""
    src = Path(__file__).resolve().parents[2] / "src" / "rlhfkit"
    rule = re.compile(r"temperature\s*>\s*0(\.0)?\s+else|temperature\s+in\s+\(0")
    written = [
        str(p.relative_to(src))
        for p in sorted(src.rglob("*.py"))
        if rule.search(p.read_text(encoding="utf-8"))
    ]
    assert written == ["ops/logprobs.py"], written


def test_sequence_logprobs_match_a_per_token_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(11, 7, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, 7, (11,), generator=gen)
    owner = torch.tensor([2, 0, 0, 2, 1, 1, 1, 2, 0, 4, 4])  # sequence 3 has no token
    out = sequence_logprobs(logits, targets, owner, 5)
    expected = torch.zeros(5, dtype=torch.float64)
    for i in range(11):
        expected[owner[i]] += torch.log_softmax(logits[i], -1)[targets[i]]
    torch.testing.assert_close(out, expected)
    assert out[3] == 0
    with pytest.raises(ValueError):
        sequence_logprobs(logits, targets[:3], owner, 5)
