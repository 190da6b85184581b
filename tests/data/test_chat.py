"""The prompt-format rule (`rlhfkit.data.chat`): which tokenizers read plain prompts
through their chat template, what --chat / --no-chat force, the mark every saved model
keeps, and the EOS of a template whose turns end in another special token."""

from __future__ import annotations

import copy
import json

import pytest
from tests.helpers import as_instruct

from rlhfkit.data.chat import (
    BUILTIN_CHAT_TEMPLATE,
    CHAT_FORMAT,
    LEGACY_CHAT_MARK,
    as_turns,
    auto_format,
    chat_format,
    end_of_turn_id,
    resolve_chat,
    set_chat_format,
)
from rlhfkit.data.records import SFTRecord
from rlhfkit.data.tokenize import encode_sft
from rlhfkit.errors import UserError
from rlhfkit.models.load import load_tokenizer


def _unmarked(tok, template):
    out = copy.deepcopy(tok)
    out.init_kwargs.pop(CHAT_FORMAT, None)
    out.chat_template = template
    return out


def test_the_rule(tiny_tokenizer):
    """Steps 1-4 of the module's rule, each on the tokenizer alone."""
    instruct = as_instruct(tiny_tokenizer)
    no_template = _unmarked(tiny_tokenizer, None)
    older_builtin = _unmarked(tiny_tokenizer, BUILTIN_CHAT_TEMPLATE)  # saved before the marks
    marked_plain, marked_chat, legacy = (copy.deepcopy(instruct) for _ in range(3))
    set_chat_format(marked_plain, False)
    set_chat_format(marked_chat, True)
    legacy.init_kwargs[LEGACY_CHAT_MARK] = True
    cases = {
        "no template": (no_template, False),
        "rlhfkit's pretrain tokenizer (marked plain)": (tiny_tokenizer, False),
        "rlhfkit's template, unmarked": (older_builtin, False),
        "an instruct model's own template": (instruct, True),
        "an instruct template marked plain by a stage": (marked_plain, False),
        "marked chat": (marked_chat, True),
        "the older SFT mark": (legacy, True),
    }
    for name, (tok, chat) in cases.items():
        assert chat_format(tok) is chat, name
    assert auto_format(tiny_tokenizer)[1] == "marked plain by the rlhfkit stage that saved it"
    assert auto_format(instruct)[1] == "the tokenizer's own chat template"


def test_chat_and_no_chat_force_the_format_and_are_recorded(tiny_tokenizer, capsys):
    instruct = as_instruct(tiny_tokenizer)
    assert resolve_chat(instruct, False, what="m") is False
    assert instruct.init_kwargs[CHAT_FORMAT] is False and not chat_format(instruct)
    assert "m: prompts are raw text, not its chat template (--no-chat)" in capsys.readouterr().out
    base = copy.deepcopy(tiny_tokenizer)
    assert resolve_chat(base, True, what="base") is True and chat_format(base)
    assert "base: plain prompts go through its chat template" in capsys.readouterr().out
    with pytest.raises(UserError, match=r"--chat: nt has no chat template"):
        resolve_chat(_unmarked(tiny_tokenizer, None), True, what="nt")
    auto = as_instruct(tiny_tokenizer)
    assert resolve_chat(auto, None) is True and auto.init_kwargs[CHAT_FORMAT] is True


def test_the_built_in_tokenizer_stays_plain_unless_the_data_is_conversational(
    tiny_tokenizer, capsys
):
    """Auto on rlhfkit's own tokenizer: plain, silently (the built-in pipeline prints and
    encodes what it did before); SFT data of conversational records makes a chat model."""
    tok = copy.deepcopy(tiny_tokenizer)
    assert resolve_chat(tok, None) is False
    assert capsys.readouterr().out == ""
    assert resolve_chat(tok, None, conversational=True) is True
    assert resolve_chat(_unmarked(tiny_tokenizer, None), None, conversational=True) is False


def test_the_mark_survives_save_and_load(tmp_path, tiny_tokenizer):
    for chat in (True, False):
        tok = as_instruct(tiny_tokenizer)
        resolve_chat(tok, chat)
        tok.save_pretrained(tmp_path / str(chat))
        saved = json.loads((tmp_path / str(chat) / "tokenizer_config.json").read_text())
        assert saved[CHAT_FORMAT] is chat
        assert chat_format(load_tokenizer(tmp_path / str(chat))) is chat


def test_a_template_ending_turns_in_another_special_token_makes_it_the_eos(
    tmp_path, tiny_tokenizer, capsys
):
    """Gemma's <end_of_turn>, Phi-3's <|end|>: in chat format the turn's own end token is the
    EOS (sampling stops there, SFT appends no second one), saved with the tokenizer; a
    ChatML-like template, whose turns end in EOS, keeps its EOS."""
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|system|>\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    tok = as_instruct(tiny_tokenizer, template)
    assert end_of_turn_id(tok) == tok.convert_tokens_to_ids("<|system|>") != tok.eos_token_id
    resolve_chat(tok, None, what="gemma-like")
    assert tok.eos_token == "<|system|>"
    assert "gemma-like: its chat template ends a turn with <|system|>: EOS is <|system|>, not " \
        "<|eos|>" in capsys.readouterr().out  # fmt: skip
    ex = encode_sft(SFTRecord("hi", " yo"), tok, 64)
    turn = tok("yo", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex.input_ids[-len(turn) - 1 : -1] == turn  # "yo<|system|>" then the template's "\n"
    assert ex.input_ids.count(tok.convert_tokens_to_ids("<|eos|>")) == 0
    tok.save_pretrained(tmp_path / "t")
    assert load_tokenizer(tmp_path / "t").eos_token == "<|system|>"
    chatml = as_instruct(tiny_tokenizer)
    resolve_chat(chatml, True)
    assert chatml.eos_token == "<|eos|>"


def test_a_plain_pair_as_turns_drops_the_completions_leading_space():
    assert as_turns("Q: 2 + 2?\nA:", " 4") == [
        {"role": "user", "content": "Q: 2 + 2?\nA:"},
        {"role": "assistant", "content": "4"},
    ]
    assert as_turns(" keep my spaces ") == [{"role": "user", "content": " keep my spaces "}]
