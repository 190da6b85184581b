"""Preference data as TRL and Anthropic ship it: conversational (explicit or implicit
prompt), plain strings with an implicit prompt, HH-RLHF transcripts -> the pairwise
ranking record, and (conversational) the exact ids through the chat template."""

import json
from pathlib import Path

import pytest

from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import encode_rankings, resolve_margin_table
from rlhfkit.errors import RecordError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "be brief"}
NONE = resolve_margin_table("none")


def read_one(tmp_path: Path, row: dict) -> RankingRecord:
    f = write_jsonl(tmp_path / "p.jsonl", [row])
    (rec,) = read_preferences(f)
    assert (rec.line, rec.source, rec.ranking) == (1, str(f), [0, 1])
    return rec


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def assert_chat_ids(rec: RankingRecord, tok) -> None:
    """Each sequence = the prompt rendered with the generation prompt, then the response's
    assistant turn closed by the template (EOS), as SFT encodes `messages`."""
    (ex,), n_cut = encode_rankings([rec], tok, 256, NONE)
    assert n_cut == 0 and ex.pairs == [(0, 1)]
    prompt_text = tok.apply_chat_template(
        rec.prompt_messages, tokenize=False, add_generation_prompt=True
    )
    for seq, response in zip(ex.sequences, rec.responses, strict=True):
        # the tiny template: <|bos|><|role|>\ncontent\n ... <|assistant|>\n + content <|eos|>
        assert seq == _ids(tok, prompt_text) + _ids(tok, response) + [tok.eos_token_id]
        n_turns = sum(m["role"] == "assistant" for m in rec.prompt_messages) + 1
        assert seq[0] == tok.bos_token_id and seq.count(tok.eos_token_id) == n_turns
        full = tok.apply_chat_template(rec.prompt_messages + [assistant(response)], tokenize=False)
        assert tok.decode(seq) == full


# ---------------------------------------------------------------- 1. TRL conversational, explicit


def test_conversational_explicit_prompt(tmp_path, tiny_tokenizer):
    row = {
        "prompt": [SYSTEM, user("what is two and two?")],
        "chosen": [assistant("four")],
        "rejected": [assistant("five")],
        "strength": "better",
    }
    rec = read_one(tmp_path, row)
    assert rec.prompt == "what is two and two?"
    assert rec.responses == ["four", "five"]
    assert rec.strengths == ["better"]
    assert rec.prompt_messages == [SYSTEM, user("what is two and two?")]
    assert rec.response_messages == [[assistant("four")], [assistant("five")]]
    assert_chat_ids(rec, tiny_tokenizer)
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 256, resolve_margin_table("llama2-large"))
    assert ex.buckets == ["better"]
    # exact ids, spelled out
    tok = tiny_tokenizer
    text = "<|bos|><|system|>\nbe brief\n<|user|>\nwhat is two and two?\n<|assistant|>\n"
    assert ex.sequences[0] == _ids(tok, text) + _ids(tok, "four") + [tok.eos_token_id]


def test_conversational_explicit_prompt_repeated_in_responses(tmp_path, tiny_tokenizer):
    # some datasets repeat the prompt's messages at the start of chosen and rejected
    p = [user("sort 3 1 2")]
    row = {"prompt": p, "chosen": p + [assistant("1 2 3")], "rejected": p + [assistant("3 2 1")]}
    rec = read_one(tmp_path, row)
    assert (rec.prompt, rec.responses) == ("sort 3 1 2", ["1 2 3", "3 2 1"])
    assert rec.prompt_messages == p
    assert_chat_ids(rec, tiny_tokenizer)


# ---------------------------------------------------------------- 2. TRL conversational, implicit


def test_conversational_implicit_prompt(tmp_path, tiny_tokenizer):
    shared = [user("hi"), assistant("hello"), user("what is red?")]
    row = {"chosen": shared + [assistant("a colour")], "rejected": shared + [assistant("a dog")]}
    rec = read_one(tmp_path, row)
    assert rec.prompt == "what is red?"
    assert rec.responses == ["a colour", "a dog"]
    assert rec.prompt_messages == shared
    assert rec.response_messages == [[assistant("a colour")], [assistant("a dog")]]
    assert_chat_ids(rec, tiny_tokenizer)


def test_conversational_implicit_ignores_a_string_prompt(tmp_path):
    # UltraFeedback-binarized: "prompt" is a string copy of the first user turn (TRL ignores it)
    row = {
        "prompt": "hi",
        "chosen": [user("hi"), assistant("hello")],
        "rejected": [user("hi"), assistant("go away")],
    }
    rec = read_one(tmp_path, row)
    assert rec.prompt_messages == [user("hi")]
    assert rec.responses == ["hello", "go away"]


def test_conversational_multi_turn_responses(tmp_path, tiny_tokenizer):
    # the conversations part at the first assistant turn: each response is several turns
    row = {
        "chosen": [user("hi"), assistant("hello"), user("and?"), assistant("fine")],
        "rejected": [user("hi"), assistant("go"), user("and?"), assistant("no")],
    }
    rec = read_one(tmp_path, row)
    assert rec.prompt_messages == [user("hi")]
    assert rec.responses == ["fine", "no"]  # the last assistant turn, for display
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 256, NONE)
    full = tiny_tokenizer.apply_chat_template(row["chosen"], tokenize=False)
    assert tiny_tokenizer.decode(ex.sequences[0]) == full


# ---------------------------------------------------------------- 3. strings, implicit prompt


@pytest.mark.parametrize(
    ("chosen", "rejected", "prompt", "responses"),
    [
        # TRL: cut where they differ, the space before it going to the responses
        ("Q: what is 2+2?\nA: 4", "Q: what is 2+2?\nA: 5", "Q: what is 2+2?\nA:", [" 4", " 5"]),
        # never inside a word: "fo(ur)" / "fi(ve)" share "f", cut before the word
        ("Q: 2+2?\nA: four", "Q: 2+2?\nA: five", "Q: 2+2?\nA:", [" four", " five"]),
        ("The cat sat.", "The car sat.", "The", [" cat sat.", " car sat."]),
        # at punctuation: no space to move
        ("Say:yes", "Say:no", "Say:", ["yes", "no"]),
        # a shared "Assistant:" marker: cut just after the last one
        ("User: hi\nAssistant: I can", "User: hi\nAssistant: I cannot",
         "User: hi\nAssistant:", [" I can", " I cannot"]),
    ],
)  # fmt: skip
def test_strings_implicit_prompt(tmp_path, tiny_tokenizer, chosen, rejected, prompt, responses):
    rec = read_one(tmp_path, {"chosen": chosen, "rejected": rejected})
    assert (rec.prompt, rec.responses) == (prompt, responses)
    assert rec.prompt_messages is None and rec.response_messages is None
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 256, NONE)
    tok = tiny_tokenizer
    for seq, resp in zip(ex.sequences, responses, strict=True):  # the plain SFT encoding
        assert seq == [tok.bos_token_id] + _ids(tok, prompt) + _ids(tok, resp) + [tok.eos_token_id]


# ---------------------------------------------------------------- 4. Anthropic HH-RLHF


def test_hh_rlhf_transcript(tmp_path):
    head = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I bake bread?\n\nAssistant:"
    row = {
        "chosen": head + " Mix flour, water and yeast, then bake.",
        "rejected": head + " Mix it with sand.",
    }
    rec = read_one(tmp_path, row)
    assert rec.prompt == head
    assert rec.responses == [" Mix flour, water and yeast, then bake.", " Mix it with sand."]
    assert rec.prompt_messages is None


# ---------------------------------------------------------------- errors name file:line


BAD = {
    "sharegpt_role": (
        {"chosen": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "a"}],
         "rejected": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "b"}]},
        "chosen[0]: role 'human' is not one of system, user, assistant "
        "(ShareGPT data: map from->role, value->content, human->user, gpt->assistant)",
    ),
    "sharegpt_role_in_response": (
        {"prompt": [user("hi")], "chosen": [{"role": "gpt", "content": "a"}],
         "rejected": [assistant("b")]},
        "chosen[0]: role 'gpt' is not one of system, user, assistant "
        "(ShareGPT data: map from->role, value->content, human->user, gpt->assistant)",
    ),
    "sharegpt_keys": (
        {"chosen": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a"}],
         "rejected": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "b"}]},
        "chosen[0] has ShareGPT keys 'from'/'value': messages are {\"role\", \"content\"} "
        "with roles system, user, assistant "
        "(ShareGPT data: map from->role, value->content, human->user, gpt->assistant)",
    ),
    "mixed_types": ({"chosen": [assistant("a")], "rejected": "b"}, "both be strings or both lists"),
    "same_text": ({"chosen": "same", "rejected": "same"}, "are the same text"),
    "prefix_only": ({"chosen": "Q: hi A:", "rejected": "Q: hi A: yes"}, "'chosen' has nothing"),
    "same_conversation": ({"chosen": [user("a"), assistant("b")],
                           "rejected": [user("a"), assistant("b")]}, "same conversation"),
    "differ_at_user": ({"chosen": [user("a"), assistant("b")],
                        "rejected": [user("c"), assistant("b")]}, "a 'user' turn of 'chosen'"),
    "response_ends_with_user": ({"prompt": [user("a")], "chosen": [assistant("b"), user("c")],
                                 "rejected": [assistant("d")]}, "ends with a 'user' turn"),
    "prompt_list_strings": ({"prompt": [user("a")], "chosen": "b", "rejected": "c"},
                            "give them as lists of messages too"),
    "empty_assistant": ({"prompt": [user("a")], "chosen": [assistant(" ")],
                         "rejected": [assistant("d")]}, "empty assistant turn"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_preference_names_file_and_line(tmp_path, case):
    row, words = BAD[case]
    good = {"chosen": [user("x"), assistant("y")], "rejected": [user("x"), assistant("z")]}
    f = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(RecordError) as e:
        read_preferences(f)
    assert (e.value.path, e.value.line) == (str(f), 3)
    assert words in e.value.problem, e.value.problem
    assert str(e.value).startswith(f"{f}:3: ")


def test_conversational_records_need_a_chat_template(tmp_path, tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    f = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                           {"prompt": [user("x")], "chosen": [assistant("y")],
                                            "rejected": [assistant("z")]}])  # fmt: skip
    with pytest.raises(RecordError) as e:
        encode_rankings(read_preferences(f), tok, 64, NONE)
    assert str(e.value).startswith(f"{f}:2: ") and "chat template" in str(e.value)
