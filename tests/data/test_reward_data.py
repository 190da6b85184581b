"""data/reward_data.py: rankings -> K sequences and C(K,2) comparisons with their margins and
strength buckets (the strongest label on the ranking path), and the padded and packed
layouts of a reward-model batch."""

from __future__ import annotations

import copy

import pytest
from tests.helpers import SYSTEM, rm_training_sequences, template_ids, user

from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import (
    encode_rankings,
    encode_responses,
    pack_sequences,
    resolve_margin_table,
    row_width,
)


def test_loop_applies_margins_and_strongest_on_path_rule(tiny_tokenizer):
    # ranking best..worst = responses [2, 0, 3, 1]; adjacent strengths slightly, significantly,
    # negligibly. By rank position (i, j) the pair's strength is the strongest of
    # strengths[i..j-1]: (0,1) slightly; (0,2),(0,3),(1,2),(1,3) significantly; (2,3) negligibly.
    rec = RankingRecord(
        "p", ["a", "b", "c", "d"], [2, 0, 3, 1],
        ["slightly_better", "significantly_better", "negligibly_better"], 1, "f",
    )  # fmt: skip
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 64, resolve_margin_table("llama2-large"))
    assert len(ex.sequences) == 4
    assert ex.pairs == [(2, 0), (2, 3), (2, 1), (0, 3), (0, 1), (3, 1)]
    assert ex.buckets == ["slightly_better"] + ["significantly_better"] * 4 + ["negligibly_better"]
    assert ex.margins == [1.0, 3.0, 3.0, 3.0, 3.0, 0.0]
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 64, resolve_margin_table("llama2-small"))
    assert ex.margins == pytest.approx([1 / 3, 1, 1, 1, 1, 0])
    table = resolve_margin_table("significantly_better=5,slightly_better=0.5")
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 64, table)
    assert ex.margins == [0.5, 5, 5, 5, 5, 0]
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 64, resolve_margin_table("none"))
    assert ex.margins == [0.0] * 6
    # no strengths: margin 0, bucket "unlabeled"
    rec.strengths = None
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 64, resolve_margin_table("llama2-large"))
    assert ex.margins == [0.0] * 6 and set(ex.buckets) == {"unlabeled"}


def test_pack_sequences_layout():
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11], [12, 13, 14, 15]]
    rows = pack_sequences(seqs, pad_id=0)
    # rows of 5 (the longest), longest first into the first row with room:
    # [4..8] | [12..15] + [9] | [1, 2, 3] + [10, 11]
    assert rows.input_ids.tolist() == [[4, 5, 6, 7, 8], [12, 13, 14, 15, 9], [1, 2, 3, 10, 11]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    flat = rows.input_ids.reshape(-1)
    assert [int(flat[i]) for i in rows.last] == [s[-1] for s in seqs]
    # a row's unused tail: pad ids at position 0, each a sequence of its own
    tail = pack_sequences([[1, 2, 3, 4], [5, 6], [7]], pad_id=0, row_tokens=4)
    assert tail.input_ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 0]]
    assert tail.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 0]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_sequences([[1, 2, 3]], pad_id=0, row_tokens=2)
    with pytest.raises(ValueError, match="no empty"):
        pack_sequences([[1], []], pad_id=0)


def test_row_width_weighs_unused_cells_against_attention():
    # lengths 10, 6, 6, 6, 6 (34 tokens); first-fit decreasing per width, cost =
    # rows * used * (1 + c * used) with used = the fullest row:
    #   width 10: 5 rows of 10 -> 50 cells;  width 20: [10 6] [6 6 6] -> 2 x 18 = 36;
    #   width 30: [10 6 6 6] [6] -> 2 x 28 = 56;  width 34: one row -> 34.
    lengths = [10, 6, 6, 6, 6]
    assert row_width(lengths, None) == 10  # rows no wider than the longest sequence
    assert row_width(lengths, 0.0) == 34  # attention free: one row
    assert row_width(lengths, 0.01) == 20  # 50 x 1.1 = 55, 36 x 1.18 = 42.5, 34 x 1.34 = 45.6
    assert row_width(lengths, 1.0) == 10  # 550 < 684
    rows = pack_sequences([[1] * n for n in lengths], pad_id=0, attention_cost=0.01)
    assert rows.input_ids.shape == (2, 18)


def test_scoring_a_conversation_reads_what_the_rm_trained_on(tiny_tokenizer):
    """`encode_responses` on a conversational prompt = the sequence `rm` trains on for the
    same conversation (a TRL conversational preference record); cut before EOS, the
    policy's own sequence: prompt with the generation prompt, then the response."""
    tok = tiny_tokenizer
    prompt = [SYSTEM, user("what is two and two?")]
    (seqs, _), rm_seq = (
        encode_responses(tok, [prompt, prompt], ["four", "five"], 256, ended=[True, False]),
        rm_training_sequences(prompt, ["four", "five"], tok),
    )
    assert seqs[0] == rm_seq[0]
    assert seqs[0] == template_ids(tok, prompt) + tok("four", add_special_tokens=False)[
        "input_ids"
    ] + [tok.eos_token_id]
    assert seqs[1] == template_ids(tok, prompt) + tok("five", add_special_tokens=False)["input_ids"]


def test_a_template_writing_past_eos_still_ends_the_rm_sequence_at_eos(tiny_tokenizer):
    """A template that closes a turn with EOS + newline (as Qwen's `<|im_end|>\\n`): the RM
    trains on and scores the sequence up to EOS, the sequence the policy samples (the
    chat-rendered prompt, the response, EOS), not one ending in the newline."""
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    prompt = [user("what is two and two?")]
    four = tok("four", add_special_tokens=False)["input_ids"]
    sampled = template_ids(tok, prompt) + four + [tok.eos_token_id]
    assert rm_training_sequences(prompt, ["four", "five"], tok)[0] == sampled
    assert encode_responses(tok, [prompt], ["four"], 256)[0][0] == sampled
