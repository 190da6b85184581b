"""Which format a model reads prompts in: raw text, or its tokenizer's chat template.

A plain prompt string (a `{"prompt": ...}` record of any stage) is encoded one of two ways:
- plain: `[bos?] + prompt`, a completion or response following as more text, then EOS;
- chat: the prompt as one user turn rendered by the chat template with the generation
  prompt, a completion or response as the assistant turn that the template closes (its
  end of turn is the EOS: `align_eos`), exactly as `{"messages"}` records are encoded.
Conversational records (`{"messages"}`, a prompt given as a list of messages) always go
through the template; the format decides only the plain strings.

The rule (`resolve_chat`; `--chat` / `--no-chat` force either way, auto otherwise), read
off the tokenizer alone (`chat_format`):
1. no chat template: plain;
2. a mark saved by rlhfkit (`CHAT_FORMAT` in tokenizer_config.json): as marked. Every stage
   that saves a model marks the format it used, so the next stage follows it; `pretrain`
   marks its base model plain (its tokenizer ships a template the model never trained on);
   the older `rlhfkit_trained_on_chat` mark of a chat-trained SFT model reads as chat;
3. the template rlhfkit's own tokenizers carry (`BUILTIN_CHAT_TEMPLATE`, on a tokenizer
   saved before the marks existed): plain;
4. any other template, an instruct model's own (SmolLM2, Qwen2.5, Llama 3 Instruct): chat.

In chat format a completion's leading whitespace is dropped: in raw text it separated the
completion from the prompt (" 35" after "A:"), in a chat turn the template's header does.
"""

from __future__ import annotations

import os
from typing import Any

from rlhfkit.errors import UserError

CHAT_FORMAT = "rlhfkit_chat"
"""Key in a tokenizer's `init_kwargs`, saved to its tokenizer_config.json: True if the model
saved with it reads plain prompts through the chat template, False if as raw text."""

LEGACY_CHAT_MARK = "rlhfkit_trained_on_chat"
"""The mark an SFT on `messages` records wrote before `CHAT_FORMAT` existed (read as chat)."""

# Rendering of {"messages": [...]} by rlhfkit's own tokenizers (`models.presets`):
#   <|bos|><|system|>\n{content}\n<|user|>\n{content}\n<|assistant|>\n{content}<|eos|>...
# With add_generation_prompt the text ends in "<|assistant|>\n", an exact prefix of the
# rendering that includes the assistant turn (so prompt masking is a plain length cut).
BUILTIN_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('chat roles are system, user and assistant, not ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_PROBE = "rlhfkit"  # assistant content rendered to find what closes a turn


def has_template(tokenizer: Any) -> bool:
    return getattr(tokenizer, "chat_template", None) is not None


def _marks(tokenizer: Any) -> dict[str, Any]:
    kwargs = getattr(tokenizer, "init_kwargs", None)
    return kwargs if isinstance(kwargs, dict) else {}


def auto_format(tokenizer: Any) -> tuple[bool, str]:
    """(chat, why) by the module's rule, steps 1-4."""
    if not has_template(tokenizer):
        return False, "the tokenizer has no chat template"
    mark = _marks(tokenizer).get(CHAT_FORMAT)
    if isinstance(mark, bool):
        return mark, f"marked {'chat' if mark else 'plain'} by the rlhfkit stage that saved it"
    if _marks(tokenizer).get(LEGACY_CHAT_MARK):
        return True, "marked chat by the rlhfkit stage that saved it"
    if tokenizer.chat_template == BUILTIN_CHAT_TEMPLATE:
        return False, "rlhfkit's own tokenizer, whose template its base model never trained on"
    return True, "the tokenizer's own chat template"


def chat_format(tokenizer: Any) -> bool:
    """Whether plain prompts for this tokenizer's model go through its chat template (the
    module's rule; what `resolve_chat` set, when a stage has resolved it)."""
    return auto_format(tokenizer)[0]


def set_chat_format(tokenizer: Any, chat: bool) -> None:
    """Record the format in `tokenizer` (and every copy saved from it). A no-op on
    tokenizer-like objects without `init_kwargs`."""
    if chat and not has_template(tokenizer):
        raise UserError("chat format needs a tokenizer with a chat template, and this one has none")
    marks = getattr(tokenizer, "init_kwargs", None)
    if isinstance(marks, dict):
        marks[CHAT_FORMAT] = bool(chat)
        marks.pop(LEGACY_CHAT_MARK, None)


def resolve_chat(
    tokenizer: Any, chat: bool | None, *, what: str = "the model", conversational: bool = False
) -> bool:
    """A stage's format for the model whose tokenizer this is: `chat` (--chat / --no-chat)
    if given, else the module's rule, or chat where the stage's own data holds
    conversational records (`conversational`: one format per model). Recorded in the
    tokenizer (`set_chat_format`), which every encoder here reads and every saved model
    keeps; in chat format the template's end of turn becomes the EOS (`align_eos`). One
    note says what was chosen, unless it is the plain default.

    `what` names the model in messages (its folder)."""
    if chat is None:
        use, why = auto_format(tokenizer)
        if not use and conversational and has_template(tokenizer):
            use, why = True, "the data holds conversational records"
    else:
        use, why = chat, "--chat" if chat else "--no-chat"
        if chat and not has_template(tokenizer):
            raise UserError(f"--chat: {what} has no chat template (its tokenizer_config.json)")
    set_chat_format(tokenizer, use)
    if use:
        say_note(
            f"note: {what}: plain prompts go through its chat template, as one user turn with "
            f"the generation prompt ({why}; --no-chat for raw text)"
        )
        align_eos(tokenizer, what)
    elif chat is False and has_template(tokenizer):
        say_note(f"note: {what}: prompts are raw text, not its chat template (--no-chat)")
    return use


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The special token that closes an assistant turn in the chat template (the first
    token the template writes after the turn's content), or None where it writes no
    special token there."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = render(tokenizer, turns, False)
    at = text.rfind(_PROBE)
    if at < 0:
        return None
    after = tokenizer(text[at + len(_PROBE) :], add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return after[0] if after and after[0] in special else None


def align_eos(tokenizer: Any, what: str = "the model") -> None:
    """In chat format a response ends where the template ends a turn: where that is a
    special token other than the EOS (Gemma's <end_of_turn>, Phi-3's <|end|>), it becomes
    the tokenizer's EOS, so that sampling stops there and SFT and the RM put it at the end
    of every response, in this stage and every later one (saved with the tokenizer)."""
    eot = end_of_turn_id(tokenizer)
    if eot is None or eot == tokenizer.eos_token_id:
        return
    old, new = tokenizer.eos_token, tokenizer.convert_ids_to_tokens(eot)
    tokenizer.eos_token = new
    say_note(f"note: {what}: its chat template ends a turn with {new}: EOS is {new}, not {old}")


def as_turns(prompt: str, completion: str | None = None) -> list[dict[str, str]]:
    """A plain prompt (and completion) as chat messages: one user turn (and the assistant
    turn, its leading whitespace dropped: module docstring)."""
    turns = [{"role": "user", "content": prompt}]
    if completion is not None:
        turns.append({"role": "assistant", "content": completion.lstrip()})
    return turns


_SAID: set[str] = set()


def say_note(line: str) -> None:
    """Print a note once per process, on the first process only (torchrun's RANK)."""
    if line not in _SAID and os.environ.get("RANK", "0") == "0":
        _SAID.add(line)
        print(line, flush=True)
