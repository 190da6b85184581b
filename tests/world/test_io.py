"""world/io.py: the world's own files: world prompts and responses to judge, with file:line
errors for a record the gold judges cannot score, and no file replaced unasked."""

from __future__ import annotations

import pytest
from tests.helpers import write_jsonl

from rlhfkit.errors import RecordError, UserError
from rlhfkit.world import format_prompt
from rlhfkit.world.io import read_responses, read_world_prompts, refuse_existing

WORLD = format_prompt("What is 2 plus 3?")


def test_world_prompts_are_read_and_others_refused_at_their_line(tmp_path):
    good = write_jsonl(tmp_path / "p.jsonl", [{"prompt": WORLD, "safety": False}])
    assert [r.prompt for r in read_world_prompts(good)] == [WORLD]
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": WORLD}, {"prompt": "Tell me a joke."}])
    with pytest.raises(RecordError, match=r"b\.jsonl:2: not a prompt of the built-in world"):
        read_world_prompts(bad)


def test_responses_keep_their_other_fields_and_bad_ones_name_the_line(tmp_path):
    rows = [{"prompt": WORLD, "response": " 5", "model": "sft"}]
    (rec,) = read_responses(write_jsonl(tmp_path / "r.jsonl", rows))
    assert (rec.prompt, rec.response, rec.line, rec.extra) == (WORLD, " 5", 1, {"model": "sft"})
    for row, why in (
        ({"prompt": WORLD}, "missing field 'response'"),
        ({"prompt": WORLD, "response": 5}, "field 'response' must be a string, got int"),
    ):
        path = write_jsonl(tmp_path / "bad.jsonl", [rows[0], row])
        with pytest.raises(RecordError, match=rf"bad\.jsonl:2: {why}"):
            read_responses(path)
    with pytest.raises(RecordError, match="empty file"):
        read_responses(write_jsonl(tmp_path / "empty.jsonl", []))


def test_refuse_existing_unless_overwrite(tmp_path):
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    old.write_text("")
    refuse_existing([new], overwrite=False)
    refuse_existing([old, new], overwrite=True)
    with pytest.raises(UserError, match="old.jsonl already exist"):
        refuse_existing([old, new], overwrite=False)
