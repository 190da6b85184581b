"""data.dpo_data: responses as SFT's sequences with the response tokens marked (plain and
chat, prompts with earlier assistant turns), all C(K,2) pairs per ranking, truncation that
keeps the response, and batches whose `owner` maps every label to its sequence, padded
and packed alike."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhfkit.data.dpo_data import collate_preferences, count_sequences, encode_preferences
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import RankingRecord
from rlhfkit.errors import RecordError
from rlhfkit.types import IGNORE_INDEX


def _response(seq) -> list[int]:
    return [t for t, x in zip(seq.input_ids, seq.labels, strict=True) if x != IGNORE_INDEX]


def test_plain_ranking_sequences_labels_and_pairs(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = RankingRecord("Say cat", [" a", " the cat", " dog", " red mat"], [2, 0, 3, 1], line=7)
    (ex,), n_cut = encode_preferences([rec], tok, 64)
    assert n_cut == 0 and ex.line == 7 and len(ex.sequences) == 4
    # all C(4,2) = 6 pairs, winner first, in rank order
    assert ex.pairs == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
    prompt = tok("Say cat", add_special_tokens=False)["input_ids"]
    for seq, text in zip(ex.sequences, rec.responses, strict=True):
        response = tok(text, add_special_tokens=False)["input_ids"]
        assert seq.input_ids == [tok.bos_token_id, *prompt, *response, tok.eos_token_id]
        assert _response(seq) == [*response, tok.eos_token_id]  # the prompt carries none


def test_chat_response_only_even_after_earlier_assistant_turns(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo yo"},
             {"role": "user", "content": "say cat"}]  # fmt: skip
    row = {"prompt": turns, "chosen": [{"role": "assistant", "content": "the cat"}],
           "rejected": [{"role": "assistant", "content": "a dog"}]}  # fmt: skip
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row) + "\n")
    (ex,), _ = encode_preferences(read_preferences(path), tok, 128)
    for seq, text in zip(ex.sequences, ("the cat", "a dog"), strict=True):
        full = tok.apply_chat_template([*turns, {"role": "assistant", "content": text}],
                                       tokenize=False)  # fmt: skip
        assert tok.decode(seq.input_ids) == full
        # the response's tokens only: "yo yo" of the prompt is not summed
        assert tok.decode(_response(seq)) == f"{text}{tok.eos_token}"


def test_truncation_keeps_bos_and_the_whole_response_or_refuses(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = RankingRecord("the cat sat on the mat " * 6, [" big dog", " red"], [0, 1], line=3,
                        source="f.jsonl")  # fmt: skip
    (full,), _ = encode_preferences([rec], tok, 512)
    (cut,), n_cut = encode_preferences([rec], tok, 12)
    assert n_cut == 2
    for a, b in zip(full.sequences, cut.sequences, strict=True):
        assert len(b.input_ids) == 12 and b.truncated
        assert b.input_ids[0] == tok.bos_token_id and b.input_ids[1:] == a.input_ids[-11:]
        assert _response(b) == _response(a)
    with pytest.raises(RecordError, match=r"f.jsonl:3: .*--max-len 12"):
        encode_preferences([rec], tok, 12, overlong="error")


@pytest.mark.parametrize("packing", [False, True])
def test_batch_owner_maps_each_label_to_its_sequence(tiny_tokenizer, packing):
    tok = tiny_tokenizer
    recs = [
        RankingRecord("Say cat", [" a", " the cat sat", " dog"], [1, 0, 2]),
        RankingRecord("Add two", [" four", " two and two"], [0, 1]),
        RankingRecord("Copy it", [" it", " copy", " it it", " no"], [3, 2, 1, 0]),
    ]
    examples, _ = encode_preferences(recs, tok, 64, first=5)
    assert count_sequences(examples) == 9 and [ex.first for ex in examples] == [5, 8, 10]
    batch = collate_preferences(examples, tok.pad_token_id, packing, max_row_tokens=24)
    seqs = [s for ex in examples for s in ex.sequences]
    assert batch.index.tolist() == list(range(5, 14))
    assert batch.pairs.shape == (sum(math.comb(len(ex.sequences), 2) for ex in examples), 2)
    assert batch.pair_prompt.tolist() == [0, 0, 0, 1] + [2] * 6
    assert batch.pairs[3].tolist() == [3, 4]  # the second prompt's pair, offset by 3
    labels, owner = batch.lm.labels, batch.owner
    assert ((labels == IGNORE_INDEX) == (owner == IGNORE_INDEX)).all()
    for i, s in enumerate(seqs):
        assert labels[owner == i].tolist() == _response(s)
        assert int(batch.lengths[i]) == len(_response(s))
    if packing:
        assert batch.lm.attention_mask is None and batch.lm.input_ids.shape[1] <= 24
    else:
        assert batch.lm.input_ids.shape[0] == 9
    moved = batch.to("cpu")
    assert torch.equal(moved.owner, owner)
