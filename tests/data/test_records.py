"""Record readers: the good formats, and every class of bad record -> file:line error."""

import json
from pathlib import Path

import pytest
from tests.helpers import SYSTEM, assistant, user

from rlhfkit.data import records as R
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import (
    STRENGTHS,
    PromptRecord,
    RankingRecord,
    SFTRecord,
    read_corpus,
    read_prompts,
    read_scoring_records,
    read_sft,
)
from rlhfkit.errors import RecordError, UserError


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows are dicts (dumped) or raw strings (written as is), one a line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_SFT = {"prompt": "2+2=", "completion": " 4"}
GOOD_RANK = {"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}
GOOD_PAIR = {"prompt": "p", "chosen": "yes", "rejected": "no", "strength": "better"}
GOOD_PROMPT = {"prompt": "how do I bake bread?", "safety": False}


# ---------------------------------------------------------------- good files


def test_read_sft_plain_and_messages(tmp_path):
    msgs = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]
    f = write_jsonl(tmp_path / "sft.jsonl", [GOOD_SFT, "", {"messages": msgs, "extra": 1}])
    recs = read_sft(f)
    assert recs[0] == SFTRecord("2+2=", " 4", None, line=1, source=str(f))
    # line numbers count the blank line; unknown fields are ignored
    assert recs[1].line == 3 and recs[1].messages == msgs
    assert (recs[1].prompt, recs[1].completion) == ("hi", "hello")


def test_read_preferences_mixed_and_several_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD_RANK, GOOD_PAIR])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "y"}])
    recs = read_preferences([a, b])
    assert recs[0] == RankingRecord("p", ["a", "b", "c"], [2, 0, 1], None, 1, str(a))
    assert recs[1] == RankingRecord("p", ["yes", "no"], [0, 1], ["better"], 2, str(a))
    assert recs[2].strengths is None and recs[2].line == 1 and recs[2].source == str(b)
    assert read_preferences(str(a)) == recs[:2]


def test_read_prompts_safety_default(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "safety": True}])
    assert read_prompts(f) == [
        PromptRecord("a", False, 1, str(f)),
        PromptRecord("b", True, 2, str(f)),
    ]


def test_read_corpus_jsonl_and_txt(tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}, {"text": "two"}])
    assert read_corpus(f) == ["one", "two"]
    t = tmp_path / "c.txt"
    t.write_text("first doc\nstill first\n\n\nsecond\n  \nthird\n", encoding="utf-8")
    assert read_corpus(t) == ["first doc\nstill first", "second", "third"]


def test_strengths_constant():
    assert STRENGTHS == ("significantly_better", "better", "slightly_better", "negligibly_better")


# ---------------------------------------------------------------- bad records

# (reader, rows, bad line, words the problem must contain)
BAD = {
    "bad_json_line2": (read_sft, [GOOD_SFT, '{"prompt": "a", '], 2, "bad JSON"),
    "not_object": (read_sft, [GOOD_SFT, "[1, 2]"], 2, "not a JSON object"),
    "missing_completion": (read_sft, [{"prompt": "a"}], 1, "missing field 'completion'"),
    "missing_all_sft": (read_sft, [GOOD_SFT, {"foo": 1}], 2, "missing fields"),
    "null_field": (read_sft, [{"prompt": "a", "completion": None}], 1, "missing field"),
    "prompt_number": (read_sft, [{"prompt": 3, "completion": "x"}], 1, "must be a string, got int"),
    "empty_completion": (read_sft, [GOOD_SFT, GOOD_SFT, {"prompt": "a", "completion": " "}], 3, "'completion' is empty"),
    "messages_not_list": (read_sft, [{"messages": "hi"}], 1, "must be a list"),
    "messages_bad_item": (read_sft, [{"messages": [{"role": "user"}]}], 1, "messages[0] needs a string 'content'"),
    "messages_no_assistant": (read_sft, [{"messages": [{"role": "user", "content": "x"}]}], 1, "no assistant turn"),
    "messages_and_prompt": (read_sft, [{"messages": [{"role": "assistant", "content": "x"}], "prompt": "p"}], 1, "not both"),
    "messages_empty": (read_sft, [{"messages": []}], 1, "empty list"),
    "rank_k1": (read_preferences, [{"prompt": "p", "responses": ["a"], "ranking": [0]}], 1, "at least 2"),
    "rank_dup": (read_preferences, [GOOD_RANK, {**GOOD_RANK, "ranking": [0, 0, 1]}], 2, "index 0 repeats"),
    "rank_out_of_range": (read_preferences, [{**GOOD_RANK, "ranking": [0, 1, 3]}], 1, "out of range"),
    "rank_negative": (read_preferences, [{**GOOD_RANK, "ranking": [0, 1, -1]}], 1, "out of range"),
    "rank_wrong_len": (read_preferences, [{**GOOD_RANK, "ranking": [0, 1]}], 1, "2 entries for 3 responses"),
    "rank_not_int": (read_preferences, [{**GOOD_RANK, "ranking": [0, 1, "2"]}], 1, "must be integers"),
    "rank_bool": (read_preferences, [{**GOOD_RANK, "ranking": [0, 1, True]}], 1, "must be integers"),
    "rank_missing_ranking": (read_preferences, [{"prompt": "p", "responses": ["a", "b"]}], 1, "missing field 'ranking'"),
    "rank_empty_response": (read_preferences, [{**GOOD_RANK, "responses": ["a", "", "c"]}], 1, "responses[1] is empty"),
    "rank_response_type": (read_preferences, [{**GOOD_RANK, "responses": ["a", 2, "c"]}], 1, "responses[1] must be a string"),
    "strengths_len": (read_preferences, [{**GOOD_RANK, "strengths": ["better"]}], 1, "'strengths' has 1 entries"),
    "strengths_value": (read_preferences, [{**GOOD_RANK, "strengths": ["better", "way_better"]}], 1, "strengths[1] is 'way_better'"),
    "pair_strength": (read_preferences, [{**GOOD_PAIR, "strength": "much"}], 1, "field 'strength' is 'much'"),
    "pair_missing_rejected": (read_preferences, [{"prompt": "p", "chosen": "a"}], 1, "missing field 'rejected'"),
    "pair_empty_chosen": (read_preferences, [{"prompt": "p", "chosen": "", "rejected": "b"}], 1, "'chosen' is empty"),
    "pref_neither": (read_preferences, [{"prompt": "p"}], 1, "'chosen' + 'rejected'"),
    "prompt_missing": (read_prompts, [GOOD_PROMPT, {"safety": True}], 2, "missing field 'prompt'"),
    "prompt_empty": (read_prompts, [{"prompt": ""}], 1, "'prompt' is empty"),
    "safety_type": (read_prompts, [{"prompt": "x", "safety": "yes"}], 1, "'safety' must be true or false"),
    "text_empty": (read_corpus, [{"text": "ok"}, {"text": "\n"}], 2, "'text' is empty"),
    "text_missing": (read_corpus, [{"body": "ok"}], 1, "missing field 'text'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_record_names_file_and_line(tmp_path, case):
    reader, rows, line, words = BAD[case]
    f = write_jsonl(tmp_path / f"{case}.jsonl", rows)
    with pytest.raises(RecordError) as e:
        reader(f)
    assert (e.value.path, e.value.line) == (str(f), line)
    assert words in e.value.problem
    assert str(e.value).startswith(f"{f}:{line}: ")


@pytest.mark.parametrize("reader", [read_sft, read_preferences, read_prompts, read_corpus])
def test_invalid_utf8_on_line_3(tmp_path, reader):
    good = {"prompt": "a", "completion": "b", "chosen": "c", "rejected": "d", "text": "t"}
    for suffix in [".jsonl", ".txt"] if reader is read_corpus else [".jsonl"]:
        f = tmp_path / f"u{suffix}"
        line = json.dumps(good).encode() + b"\n"
        f.write_bytes(line + line + b'{"prompt": "caf\xe9"}\n' + line)
        with pytest.raises(RecordError, match="invalid UTF-8") as e:
            reader(f)
        assert (e.value.path, e.value.line) == (str(f), 3)


@pytest.mark.parametrize("reader", [read_sft, read_preferences, read_prompts, read_corpus])
@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, reader, content):
    for name in ["e.jsonl", "e.txt"] if reader is read_corpus else ["e.jsonl"]:
        f = tmp_path / name
        f.write_text(content)
        with pytest.raises(RecordError, match="empty file") as e:
            reader(f)
        assert e.value.path == str(f)


@pytest.mark.parametrize("reader", [read_sft, read_preferences, read_prompts, read_corpus])
def test_missing_file(tmp_path, reader):
    for name in ["nope.jsonl", "nope.txt", "nope.parquet"]:
        with pytest.raises(RecordError, match="file not found"):
            reader(tmp_path / name)


def test_first_bad_line_reported_with_count(tmp_path):
    f = write_jsonl(tmp_path / "s.jsonl", [GOOD_SFT, {"prompt": "a"}, "{", {"prompt": 1}])
    with pytest.raises(RecordError) as e:
        read_sft(f)
    assert e.value.line == 2 and "first of 3 bad records" in e.value.problem
    f = write_jsonl(tmp_path / "t.jsonl", [GOOD_SFT, {"prompt": "a"}])
    with pytest.raises(RecordError, match="the only bad record"):
        read_sft(f)


def test_preferences_error_names_the_right_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD_RANK])
    b = write_jsonl(tmp_path / "b.jsonl", [GOOD_PAIR, GOOD_PAIR, {"prompt": "p", "chosen": "a"}])
    with pytest.raises(RecordError) as e:
        read_preferences([a, b])
    assert (e.value.path, e.value.line) == (str(b), 3)
    with pytest.raises(UserError):
        read_preferences([])


def test_bom_is_ignored(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_PROMPT).encode() + b"\n")
    assert read_prompts(f)[0].prompt == GOOD_PROMPT["prompt"]


def test_records_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, rlhfkit.data.records; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert R.__name__ == "rlhfkit.data.records"


def test_prompt_records_plain_and_conversational(tmp_path):
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "The cat sat", "safety": True},
            {"messages": [SYSTEM, user("what is two and two?")]},
            {"prompt": [user("hi"), assistant("hello"), user("sort 3 1 2")], "safety": False},
        ],
    )
    plain, msgs, prompt_list = read_prompts(f)
    assert (plain.prompt, plain.messages, plain.safety, plain.content) == (
        "The cat sat", None, True, "The cat sat"
    )  # fmt: skip
    assert msgs.prompt == "what is two and two?"  # the last user turn, for display
    assert msgs.messages == msgs.content == [SYSTEM, user("what is two and two?")]
    assert (msgs.line, msgs.source) == (2, str(f))
    assert prompt_list.messages == [user("hi"), assistant("hello"), user("sort 3 1 2")]
    assert prompt_list.prompt == "sort 3 1 2"


BAD_PROMPTS = {
    "ends_with_assistant": (
        {"messages": [user("hi"), assistant("hello")]},
        "'messages' ends with an assistant turn: a prompt ends with the turn the model "
        "answers (drop the last assistant turn)",
    ),
    "both": ({"messages": [user("hi")], "prompt": "hi"}, "give either 'messages' or 'prompt'"),
    "empty_list": ({"prompt": []}, "field 'prompt' is an empty list"),
    "sharegpt_roles": (
        {"messages": [{"role": "human", "content": "hi"}]},
        "messages[0]: role 'human' is not one of system, user, assistant (ShareGPT data: "
        "map from->role, value->content, human->user, gpt->assistant)",
    ),
    "sharegpt_keys": (
        {"prompt": [{"from": "human", "value": "hi"}]},
        "prompt[0] has ShareGPT keys 'from'/'value': messages are {\"role\", \"content\"} "
        "with roles system, user, assistant (ShareGPT data: map from->role, "
        "value->content, human->user, gpt->assistant)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_conversational_prompts_name_file_line_and_fix(tmp_path, case):
    row, words = BAD_PROMPTS[case]
    f = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, row])
    with pytest.raises(RecordError) as e:
        read_prompts(f)
    assert (e.value.path, e.value.line) == (str(f), 2)
    assert words in str(e.value), str(e.value)


def test_sharegpt_sft_records_get_the_role_mapping_not_no_assistant_turn(tmp_path):
    rows = [
        {"messages": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}]},
    ]
    for row in rows:
        f = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}, row])
        with pytest.raises(RecordError) as e:
            read_sft(f)
        message = str(e.value)
        assert message.startswith(f"{f}:2: messages[0]")
        assert "roles system, user, assistant" in message or "not one of system" in message
        assert "human->user, gpt->assistant" in message and "no assistant turn" not in message


def test_scoring_records_take_conversational_prompts(tmp_path):
    f = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"prompt": [user("hi")], "response": "hello", "id": 7},
            {"messages": [SYSTEM, user("hi")], "response": assistant("yo")},
            {"prompt": [user("hi")], "response": [assistant("hey")], "ended": False},
            {"prompt": "plain", "response": "text"},
        ],
    )
    a, b, c, d = read_scoring_records(f)
    assert (a.messages, a.response, a.content, a.row["id"]) == (
        [user("hi")], "hello", [user("hi")], 7
    )  # fmt: skip
    assert (b.messages, b.response) == ([SYSTEM, user("hi")], "yo")
    assert (c.response, c.ended) == ("hey", False)
    assert (d.messages, d.content) == (None, "plain")
    bad = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "plain", "response": assistant("x")}])
    with pytest.raises(RecordError, match=r"b\.jsonl:1: 'response' is a message but 'prompt'"):
        read_scoring_records(bad)
    bad = write_jsonl(
        tmp_path / "b2.jsonl", [{"prompt": [user("q")], "response": [assistant("x"), user("y")]}]
    )
    with pytest.raises(RecordError, match="one assistant message"):
        read_scoring_records(bad)


def test_read_scoring_records_file_line_errors(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"prompt": "p"}))
    with pytest.raises(RecordError, match=r"r\.jsonl:2: field 'response' is missing"):
        read_scoring_records(f)
    f.write_text(json.dumps({"prompt": "p", "response": "r", "safety": "yes"}) + "\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:1: field 'safety'"):
        read_scoring_records(f)
    f.write_text(json.dumps({"prompt": "p", "response": "r", "safety": True, "x": 1}) + "\n")
    (rec,) = read_scoring_records(f)
    assert rec.safety and rec.row["x"] == 1
    assert rec.ended  # no "ended": a whole response
    f.write_text(json.dumps({"prompt": "p", "response": "r", "ended": False}) + "\n")
    assert not read_scoring_records(f)[0].ended
    f.write_text(json.dumps({"prompt": "p", "response": "r", "ended": 0}) + "\n")
    with pytest.raises(RecordError, match=r"r\.jsonl:1: field 'ended'"):
        read_scoring_records(f)
