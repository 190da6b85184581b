"""loops/rejection/rounds.py: what one round fine-tunes on (`encode_kept`)."""

from __future__ import annotations

import copy
import json

from tests.helpers import SYSTEM, assistant, template_ids, user, write_jsonl

from rlhfkit.data.records import (
    read_sft,
)
from rlhfkit.data.tokenize import trained_on_chat


def test_encode_kept_trains_a_truncated_sample_without_eos(tiny_tokenizer):
    from rlhfkit.config import RSConfig
    from rlhfkit.loops.rejection.keep import Kept
    from rlhfkit.loops.rejection.rounds import encode_kept

    cfg = RSConfig(max_len=64)
    done = Kept("Q: what is the cat\nA:", " the cat sat", 1.0, 1, 0, ended=True)
    cut = Kept("Q: what is the cat\nA:", " the cat sat", 1.0, 1, 0, ended=False)
    whole, partial = encode_kept([done, cut], tiny_tokenizer, cfg, "kept.jsonl")
    eos = tiny_tokenizer.eos_token_id
    assert whole.input_ids[-1] == eos and whole.labels[-1] == eos
    assert partial.input_ids == whole.input_ids[:-1] and partial.labels == whole.labels[:-1]
    assert eos not in partial.input_ids


def test_rs_keeps_conversational_samples_as_sft_messages(tmp_path, tiny_tokenizer):
    """A kept sample of a conversational prompt is written as SFT `messages` (readable by
    `rlhfkit sft`) and fine-tuned on through the chat template; a cut one without EOS."""
    from rlhfkit.config import RSConfig
    from rlhfkit.loops.rejection.keep import keep_best
    from rlhfkit.loops.rejection.rounds import encode_kept
    from rlhfkit.loops.rejection.samples import SampleRecord

    tok = copy.deepcopy(tiny_tokenizer)
    prompt = [SYSTEM, user("count to three")]
    rec = SampleRecord("count to three", ["one two", "one two three"], [0.1, 0.9], 1,
                       ended=[True, False], messages=prompt)  # fmt: skip
    assert SampleRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec
    whole = SampleRecord("count to three", ["one two three"], [0.5], 0, messages=prompt)
    (done,) = keep_best([[whole]])
    (cut,) = keep_best([[rec]])
    assert done.to_json()["messages"] == [*prompt, assistant("one two three")]
    assert "prompt" not in done.to_json() and not cut.ended
    f = write_jsonl(tmp_path / "kept.jsonl", [done.to_json()])
    assert read_sft(f)[0].messages == [*prompt, assistant("one two three")]
    a, b = encode_kept([done, cut], tok, RSConfig(max_len=128), "kept.jsonl")
    reply = tok("one two three", add_special_tokens=False)["input_ids"]
    assert a.input_ids == template_ids(tok, prompt) + reply + [tok.eos_token_id]
    assert a.labels == [-100] * len(template_ids(tok, prompt)) + reply + [tok.eos_token_id]
    assert b.input_ids == a.input_ids[:-1] and b.labels == a.labels[:-1]
    assert not trained_on_chat(tok)  # encoding never changes the policy's format
