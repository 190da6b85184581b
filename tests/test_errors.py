"""errors.py: the user's errors, printed by the CLI as one line: a record's is file:line."""

from __future__ import annotations

from rlhfkit.errors import OutputExistsError, RecordError, UserError


def test_a_record_error_names_file_and_line():
    e = RecordError("data/train.jsonl", 7, "missing field 'prompt'")
    assert str(e) == "data/train.jsonl:7: missing field 'prompt'"
    assert (e.path, e.line, e.problem) == ("data/train.jsonl", 7, "missing field 'prompt'")
    assert str(RecordError("folder", None, "empty file")) == "folder: empty file"
    assert isinstance(e, UserError) and issubclass(OutputExistsError, UserError)
