"""Record schemas and validation of the data files, before any training starts.

Formats (docs: data formats), one JSON object a line (or a Parquet file, or a folder
written by `datasets.Dataset.save_to_disk`, where "line" means row index + 1):

- corpus:   {"text": ...}, or a plain .txt file whose documents are separated by blank lines
- SFT:      {"prompt": ..., "completion": ...} or {"messages": [{"role", "content"}, ...]}
- ranking:  {"prompt": ..., "responses": [y_1 .. y_K], "ranking": [best .. worst], "strengths"?}
- pairwise: {"prompt": ..., "chosen": ..., "rejected": ..., "strength"?}  (becomes a K=2 ranking)
  also as TRL and Anthropic ship it: message lists with an explicit or an implicit prompt,
  plain strings with an implicit prompt, HH-RLHF transcripts (rankings and pairs are read
  by `data.preferences.read_preferences`; the rest here)
- scoring:  {"prompt": ..., "response": ..., "safety"?: bool, "ended"?: bool} (`rlhfkit score`);
  with a conversational prompt the response may be an assistant message (or a list of one)
- responses to normalise a reward model on (`rlhfkit rm --normalize-with`):
  {"prompt", "completion"} (the SFT format) or {"prompt", "response"}
- prompts:  {"prompt": ..., "safety"?: bool}, or conversational: {"messages": [...]} or
  {"prompt": [...]} (messages ending with a user or system turn; encoded through the chat
  template with the generation prompt, `data.tokenize.prompt_ids`)

Messages are {"role", "content"} objects with roles system, user and assistant in every
reader (`_messages`); ShareGPT's {"from", "value"} and human/gpt are refused with the
mapping to apply.

Every reader validates the whole file and raises a `RecordError` (`file:line: problem`)
for the first bad record, saying how many bad records the file holds. Unknown fields are
ignored; a JSON null counts as a missing field. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.ranking import STRENGTHS  # the one list of strengths (no torch there)
from rlhfkit.data.rows import PathLike, _Bad, _read_all, iter_json_records, reuse_or_read
from rlhfkit.errors import RecordError

__all__ = [
    "CHAT_ROLES",
    "STRENGTHS",
    "NormalizeData",
    "PromptRecord",
    "RankingRecord",
    "SFTRecord",
    "ScoredRecord",
    "iter_json_records",
    "read_corpus",
    "read_normalize_file",
    "read_prompts",
    "read_scoring_records",
    "read_sft",
]


@dataclass
class SFTRecord:
    """A demonstration. For a `messages` record, `prompt` is the last user turn before the
    last assistant turn and `completion` that assistant turn (for display and stats);
    encoding uses `messages` with the tokenizer's chat template."""

    prompt: str
    completion: str
    messages: list[dict[str, str]] | None = None
    line: int = 0
    source: str = ""


@dataclass
class RankingRecord:
    """K >= 2 responses to one prompt; `ranking` lists response indices best to worst.
    `strengths[i]` (optional) says how much ranking[i] beats ranking[i + 1]."""

    prompt: str
    responses: list[str]
    ranking: list[int]
    strengths: list[str] | None = None
    line: int = 0
    source: str = ""
    # Conversational records (TRL's message lists): the prompt's messages and, in the order
    # of `responses`, each response's messages (assistant turn(s)). `prompt` and `responses`
    # then hold the last user turn and each response's last assistant turn, for display;
    # encoding renders the messages with the tokenizer's chat template, as SFT does
    # (`reward_data.encode_rankings`).
    prompt_messages: list[dict[str, str]] | None = None
    response_messages: list[list[dict[str, str]]] | None = None


@dataclass
class PromptRecord:
    """A prompt for RL / rejection sampling / evaluation; `safety` marks possibly unsafe ones.
    A conversational prompt has its `messages` (encoded through the chat template, with the
    generation prompt); `prompt` then holds its last user turn, for display."""

    prompt: str
    safety: bool = False
    line: int = 0
    source: str = ""
    messages: list[dict[str, str]] | None = None

    @property
    def content(self) -> str | list[dict[str, str]]:
        """What to encode: the messages of a conversational prompt, else the text."""
        return self.prompt if self.messages is None else self.messages


@dataclass
class ScoredRecord:
    """A prompt + response to score (`rlhfkit score`); the whole row is kept, to be
    written back with the scores. A conversational prompt has its `messages` (`prompt`
    is then its last user turn); the response is text either way."""

    prompt: str
    response: str
    safety: bool
    row: dict
    line: int
    ended: bool = True  # False: the response was cut before EOS (scored without one)
    messages: list[dict[str, str]] | None = None
    source: str = ""

    @property
    def content(self) -> str | list[dict[str, str]]:
        """The prompt to encode: its messages when conversational, else its text."""
        return self.prompt if self.messages is None else self.messages


# ---------------------------------------------------------------- field checks


def _get(row: dict, key: str) -> Any:
    if row.get(key) is None:
        raise _Bad(f"missing field '{key}'")
    return row[key]


def _str(row: dict, key: str, allow_empty: bool = False) -> str:
    v = _get(row, key)
    if not isinstance(v, str):
        raise _Bad(f"field '{key}' must be a string, got {type(v).__name__}")
    if not allow_empty and not v.strip():
        raise _Bad(f"field '{key}' is empty")
    return v


def _list(row: dict, key: str) -> list:
    v = _get(row, key)
    if not isinstance(v, list):
        raise _Bad(f"field '{key}' must be a list, got {type(v).__name__}")
    return v


def _strength(v: Any, where: str) -> str:
    if not isinstance(v, str) or v not in STRENGTHS:
        raise _Bad(f"{where} is {v!r}, expected one of {', '.join(STRENGTHS)}")
    return v


# ---------------------------------------------------------------- parsers


def _parse_text(row: dict, line: int, source: str) -> str:
    return _str(row, "text")


CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")
_ROLES = ", ".join(CHAT_ROLES)
_SHAREGPT = "ShareGPT data: map from->role, value->content, human->user, gpt->assistant"


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    """A list of {"role", "content"} messages (field `key`), roles checked; a copy holding
    only those two keys. The one check of messages, for every reader."""
    if not isinstance(value, list):
        raise _Bad(f"field '{key}' must be a list of messages, got {type(value).__name__}")
    if not value:
        raise _Bad(f"field '{key}' is an empty list")
    out = []
    for i, m in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(m, dict):
            raise _Bad(f"{where} must be an object with 'role' and 'content'")
        if m.get("role") is None and ("from" in m or "value" in m):
            raise _Bad(
                f"{where} has ShareGPT keys 'from'/'value': messages are "
                f'{{"role", "content"}} with roles {_ROLES} ({_SHAREGPT})'
            )
        for k in ("role", "content"):
            if not isinstance(m.get(k), str):
                raise _Bad(f"{where} needs a string '{k}'")
        if m["role"] not in CHAT_ROLES:
            raise _Bad(f"{where}: role {m['role']!r} is not one of {_ROLES} ({_SHAREGPT})")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _last_user(messages: list[dict[str, str]]) -> str:
    """The last user turn's content ("" if none): a conversation's text for display."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def _parse_sft(row: dict, line: int, source: str) -> SFTRecord:
    if row.get("messages") is not None:
        if row.get("prompt") is not None or row.get("completion") is not None:
            raise _Bad("give either 'messages' or 'prompt' + 'completion', not both")
        messages = _messages(row["messages"], "messages")
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant:
            raise _Bad("'messages' has no assistant turn: nothing to train on")
        for i in assistant:
            if not messages[i]["content"].strip():
                raise _Bad(f"messages[{i}] is an empty assistant turn")
        last = assistant[-1]
        prompt = _last_user(messages[:last])
        return SFTRecord(prompt, messages[last]["content"], messages, line, source)
    if row.get("completion") is None and row.get("prompt") is None:
        raise _Bad("missing fields: need 'prompt' + 'completion' or 'messages'")
    prompt = _str(row, "prompt", allow_empty=True)
    completion = _str(row, "completion")
    return SFTRecord(prompt, completion, None, line, source)


def _prompt_field(row: dict) -> tuple[str, list[dict[str, str]] | None]:
    """A record's prompt: (text, None) for a string 'prompt', (last user turn, messages)
    for conversational ones ('messages', or 'prompt' as a list of messages), which end
    with a user or system turn (the model answers next). Raises `_Bad`."""
    if row.get("messages") is not None:
        if row.get("prompt") is not None:
            raise _Bad("give either 'messages' or 'prompt', not both")
        key = "messages"
    elif isinstance(row.get("prompt"), list):
        key = "prompt"
    else:
        return _str(row, "prompt"), None
    messages = _messages(row[key], key)
    if messages[-1]["role"] == "assistant":
        raise _Bad(
            f"'{key}' ends with an assistant turn: a prompt ends with the turn the model "
            "answers (drop the last assistant turn)"
        )
    if not any(m["content"].strip() for m in messages):
        raise _Bad(f"'{key}' has only empty messages")
    return _last_user(messages), messages


def _parse_prompt(row: dict, line: int, source: str) -> PromptRecord:
    prompt, messages = _prompt_field(row)
    safety = row.get("safety")
    if safety is None:
        safety = False
    elif not isinstance(safety, bool):
        raise _Bad(f"field 'safety' must be true or false, got {safety!r}")
    return PromptRecord(prompt, safety, line, source, messages)


def _flag(row: dict, key: str) -> bool | None:
    v = row.get(key)
    if v is not None and not isinstance(v, bool):
        raise _Bad(f"field '{key}' must be true or false, got {v!r}")
    return v


def _scored_response(row: dict, conversational: bool) -> str:
    """'response': a string or, after a conversational prompt, one assistant message
    (or a list holding one, TRL's completion)."""
    v = row.get("response")
    if isinstance(v, (dict, list)) and conversational:
        msgs = _messages(v if isinstance(v, list) else [v], "response")
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise _Bad("'response' as messages must be one assistant message")
        v = msgs[0]["content"]
    elif isinstance(v, (dict, list)):
        raise _Bad("'response' is a message but 'prompt' is a string: give both as messages")
    elif v is None:
        raise _Bad("field 'response' is missing")
    elif not isinstance(v, str):
        raise _Bad("field 'response' is not a string")
    if not v.strip():
        raise _Bad("field 'response' is empty")
    return v


def _parse_scored(row: dict, line: int, source: str) -> ScoredRecord:
    if row.get("prompt") is None and row.get("messages") is None:
        raise _Bad("field 'prompt' is missing")
    prompt, messages = _prompt_field(row)
    response = _scored_response(row, messages is not None)
    safety, ended = _flag(row, "safety"), _flag(row, "ended")
    return ScoredRecord(
        prompt, response, bool(safety), row, line, ended is not False, messages, source
    )


# ---------------------------------------------------------------- readers


def _read_txt(p: Path) -> list[str]:
    """Documents separated by blank lines; invalid UTF-8 is reported by line."""
    docs: list[str] = []
    current: list[str] = []
    with p.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(
                    str(p), line_no, f"invalid UTF-8 (byte {e.start} of the line)"
                ) from None
            if line_no == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                current.append(text.rstrip("\r\n"))
            elif current:
                docs.append("\n".join(current))
                current = []
    if current:
        docs.append("\n".join(current))
    if not docs:
        raise RecordError(str(p), None, "empty file: no documents")
    return docs


def read_corpus(path: PathLike) -> list[str]:
    """Documents of a corpus: `{"text"}` records, or a .txt file split at blank lines."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.exists():
            raise RecordError(str(p), None, "file not found")
        return reuse_or_read(p, "corpus.txt", lambda: _read_txt(p))
    return _read_all(p, _parse_text)


def read_sft(path: PathLike) -> list[SFTRecord]:
    """SFT demonstrations: prompt + completion, or chat `messages`."""
    return _read_all(path, _parse_sft)


def read_prompts(path: PathLike) -> list[PromptRecord]:
    """Prompts (strings or conversational) with an optional `safety` tag (default False)."""
    return _read_all(path, _parse_prompt)


def read_scoring_records(path: PathLike) -> list[ScoredRecord]:
    """Prompt + response records to score, each row kept whole."""
    return _read_all(path, _parse_scored)


@dataclass
class NormalizeData:
    """The responses a reward model is centred on (`rlhfkit rm --normalize-with`)."""

    file: str
    prompts: list[str]
    responses: list[str]


def _parse_response_pair(row: dict, line: int, source: str) -> tuple[str, str]:
    prompt = row.get("prompt")
    key = "completion" if row.get("completion") is not None else "response"
    response = row.get(key)
    if not isinstance(prompt, str):
        raise _Bad("needs a string 'prompt'")
    if not isinstance(response, str) or not response.strip():
        raise _Bad("needs a non-empty 'completion' or 'response'")
    return prompt, response


def read_normalize_file(path: PathLike) -> NormalizeData:
    """{"prompt", "completion"} (SFT format) or {"prompt", "response"} records, file:line
    errors; other fields are ignored."""
    pairs = _read_all(path, _parse_response_pair)
    return NormalizeData(str(path), [p for p, _ in pairs], [r for _, r in pairs])


def parse_scoring_record(row: Any, where: str) -> ScoredRecord:
    """One record of `read_scoring_records`' format from an already parsed JSON value (an
    item of a served reward model's request), or RecordError(where, problem)."""
    if not isinstance(row, dict):
        raise RecordError(where, None, f"must be a JSON object, got {type(row).__name__}")
    try:
        return _parse_scored(row, 0, where)
    except _Bad as e:
        raise RecordError(where, None, str(e)) from None
