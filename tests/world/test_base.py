"""world/base.py: the prompt format and the text helpers every task family shares."""

from __future__ import annotations

from rlhfkit.world import format_prompt, question_of
from rlhfkit.world.base import (
    first_int,
    format_completion,
    n_words,
    normalize,
    positional_overlap,
    starts_with_answer,
    strip_filler,
    words_of,
)


def test_prompt_format_round_trip():
    p = format_prompt("What is 2 plus 3?")
    assert p == "Q: What is 2 plus 3?\nA:"
    assert question_of(p) == "What is 2 plus 3?"


def test_text_helpers_by_hand():
    assert format_completion("blue") == " blue"
    assert question_of("What is 2 plus 3?") == "What is 2 plus 3?"  # bare: unchanged
    assert normalize("  a\n b\t\tc ") == "a b c" and n_words("  a\n b\t\tc ") == 3
    # filler stripped repeatedly, case-insensitively, whatever whitespace is around it
    assert strip_filler("Sure!  The answer is:\n blue fox") == "blue fox"
    assert strip_filler("blue fox") == "blue fox"
    # an answer at a word boundary, a trailing "." optional
    assert starts_with_answer("Blue fox.", "blue")
    assert starts_with_answer("5.", "5.") and starts_with_answer("5 apples", "5.")
    assert not starts_with_answer("bluebird", "blue")
    assert not starts_with_answer("Blue", "blue", case=True)
    assert words_of("Blue fox, red!") == ["Blue", "fox", "red"]
    assert first_int("it is -12 or 3") == -12 and first_int("none") is None
    # 2 of 4 positions agree (the longer list's length counts)
    assert positional_overlap(["a", "b", "x"], ["a", "b", "c", "d"]) == 0.5
    assert positional_overlap([], ["a"]) == 0.0
