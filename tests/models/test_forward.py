"""models/forward.py: PPO's training-side forwards over a left-padded batch: the policy's
logits and the value model's per-response-token values are each row's own (its unpadded
forward), padded or packed."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhfkit.models.forward import policy_logits, response_values
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model

ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]  # prompt + response, rows of different length
R = 2  # response tokens (the last 2 of each row)


def _left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(map(len, rows))
    ids = torch.tensor([[pad] * (t - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (t - len(r)) + [True] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("packed", [False, True])
def test_policy_logits_are_each_rows_own(tiny_tokenizer, packed):
    model = build_model("test", tiny_tokenizer, seed=0).eval()
    ids, mask = _left_padded(ROWS, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logits = policy_logits(model, ids, mask, R, packed=packed)[:, -(R + 1) :]  # (B, R+1, V)
        for b, row in enumerate(ROWS):
            own = model(input_ids=torch.tensor([row])).logits[0, -(R + 1) :]
            torch.testing.assert_close(logits[b], own, atol=1e-5, rtol=0)


@pytest.mark.parametrize("packed", [False, True])
def test_response_values_are_read_where_each_response_token_is_predicted(tiny_tokenizer, packed):
    tok = copy.deepcopy(tiny_tokenizer)
    value_model, _ = init_reward_model(build_model("test", tok, seed=0), tok, head_init="normal")
    value_model.eval()
    ids, mask = _left_padded(ROWS, tok.pad_token_id)
    prompt_len = ids.shape[1] - R
    with torch.no_grad():
        values = response_values(value_model, ids, mask, prompt_len, packed=packed)  # (B, R)
        for b, row in enumerate(ROWS):
            for j in range(R):
                # V(s_t) for response token j: the score of the row up to the token before it
                prefix = row[: len(row) - R + j]
                want = value_model(input_ids=torch.tensor([prefix])).logits[0, 0]
                torch.testing.assert_close(values[b, j], want.float(), atol=1e-5, rtol=0)
