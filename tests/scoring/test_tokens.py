"""scoring/tokens.py: a policy's sampled ids as a reward model reads them: each row's real
tokens in any padding layout, whether each response ended with EOS, the decoded texts."""

from __future__ import annotations

import torch

from rlhfkit.models.generate import left_pad
from rlhfkit.scoring.tokens import decode_pairs, ends_with_eos, real_tokens


def test_real_tokens_in_any_padding_layout():
    ids = torch.tensor([[0, 0, 5, 6], [7, 8, 9, 0], [0, 4, 0, 3]])  # left, right, holes
    assert real_tokens(ids, ids != 0) == [[5, 6], [7, 8, 9], [4, 3]]


def test_a_response_ended_if_its_last_real_token_is_eos():
    eos = 2
    ids = torch.tensor([[5, 2, 9], [5, 6, 7], [0, 0, 0], [2, 5, 0], [0, 5, 2]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 1, 0], [0, 1, 1]]).bool()
    # EOS then padding; cut at the limit; empty; EOS not last; left-padded, EOS last
    assert ends_with_eos(ids, mask, eos) == [True, False, False, False, True]


def test_decoded_pairs_leave_out_padding_and_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer

    def enc(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    p_ids, p_mask = left_pad([[tok.bos_token_id, *enc("The cat")], enc("hi")], tok.pad_token_id)
    r_ids, r_mask = left_pad([[*enc(" sat"), tok.eos_token_id], enc(" dog")], tok.pad_token_id)
    prompts, responses = decode_pairs(tok, p_ids, p_mask, r_ids, r_mask)
    assert prompts == [tok.decode(enc("The cat")), tok.decode(enc("hi"))]
    assert responses == [tok.decode(enc(" sat")), tok.decode(enc(" dog"))]
    assert all(tok.pad_token not in t and tok.eos_token not in t for t in prompts + responses)
