"""Record schemas and validation of the data files, before any training starts.

Formats (SPEC "Data formats"), one JSON object a line (or a Parquet file, or a folder
written by `datasets.Dataset.save_to_disk`, where "line" means row index + 1):

- corpus:   {"text": ...}, or a plain .txt file whose documents are separated by blank lines
- SFT:      {"prompt": ..., "completion": ...} or {"messages": [{"role", "content"}, ...]}
- ranking:  {"prompt": ..., "responses": [y_1 .. y_K], "ranking": [best .. worst], "strengths"?}
- pairwise: {"prompt": ..., "chosen": ..., "rejected": ..., "strength"?}  (becomes a K=2 ranking)
  also as TRL and Anthropic ship it (`_parse_pair`): message lists with an explicit or an
  implicit prompt, plain strings with an implicit prompt, HH-RLHF transcripts
- scoring:  {"prompt": ..., "response": ..., "safety"?: bool, "ended"?: bool} (`rlhfkit score`);
  with a conversational prompt the response may be an assistant message (or a list of one)
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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.ranking import STRENGTHS  # the one list of strengths (no torch there)
from rlhfkit.data.rows import PathLike, _Bad, _read_all, iter_json_records
from rlhfkit.errors import RecordError, UserError

__all__ = [
    "CHAT_ROLES",
    "STRENGTHS",
    "PromptRecord",
    "RankingRecord",
    "SFTRecord",
    "ScoredRecord",
    "iter_json_records",
    "read_corpus",
    "read_preferences",
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
_MARKER = "Assistant:"  # Anthropic HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ..."


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


def _response_text(msgs: list[dict[str, str]], key: str, where: str) -> str:
    """The last assistant turn of a response given as messages, checked."""
    if not msgs:
        raise _Bad(f"'{key}' has no messages {where}: nothing to rank")
    if msgs[0]["role"] != "assistant":
        raise _Bad(
            f"'{key}' {where} starts with a '{msgs[0]['role']}' turn: a response starts "
            "with an assistant turn"
        )
    if msgs[-1]["role"] != "assistant":
        raise _Bad(
            f"'{key}' ends with a '{msgs[-1]['role']}' turn: a response ends with an "
            "assistant turn (its reward is read there)"
        )
    if not msgs[-1]["content"].strip():
        raise _Bad(f"'{key}' ends with an empty assistant turn")
    return msgs[-1]["content"]


def _split_messages(
    chosen: list[dict[str, str]], rejected: list[dict[str, str]]
) -> tuple[list[dict[str, str]], list[dict[str, str]], list[dict[str, str]]]:
    """Implicit prompt of two conversations: their shared leading messages (TRL's
    `extract_prompt` on message lists)."""
    if chosen == rejected:
        raise _Bad("'chosen' and 'rejected' are the same conversation")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    for key, msgs in (("chosen", chosen), ("rejected", rejected)):
        if n < len(msgs) and msgs[n]["role"] != "assistant":
            raise _Bad(
                f"'chosen' and 'rejected' first differ at message {n}, a '{msgs[n]['role']}' "
                f"turn of '{key}': the prompt is the messages they share, and the responses "
                "must start with an assistant turn"
            )
    return chosen[:n], chosen[n:], rejected[n:]


def _splits_word(shared: str, chosen: str, rejected: str, cut: int) -> bool:
    return (
        cut > 0
        and shared[cut - 1].isalnum()
        and (chosen[cut : cut + 1].isalnum() or rejected[cut : cut + 1].isalnum())
    )


def _split_strings(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit prompt of two strings: (prompt, chosen response, rejected response).

    TRL's `extract_prompt` cuts at the first character where chosen and rejected differ,
    moving a space just before it to the responses (prompt "Q: hi\nA:", responses " yes",
    " no"). We do the same, with two refinements: a transcript (a shared prefix holding an
    "Assistant:" marker, as Anthropic's HH-RLHF "\n\nHuman: ...\n\nAssistant: ...") is cut
    just after its last marker, so that the prompt is the conversation so far and a
    response is the whole last assistant turn even when both start alike; otherwise the cut
    never falls inside a word (it moves back to the start of the word).
    """
    if chosen == rejected:
        raise _Bad("'chosen' and 'rejected' are the same text")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    shared = chosen[:n]
    marker = shared.rfind(_MARKER)
    if marker >= 0:
        cut = marker + len(_MARKER)
    else:
        cut = n
        while _splits_word(shared, chosen, rejected, cut):
            cut -= 1
        if cut > 0 and shared[cut - 1] == " ":  # as TRL: the space goes with the responses
            cut -= 1
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text[cut:].strip():
            raise _Bad(
                f"'{key}' has nothing after the prompt it shares with the other response "
                "(no 'prompt' field: the prompt is their longest shared prefix)"
            )
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _parse_pair(row: dict, line: int, source: str) -> RankingRecord:
    """A pairwise preference (chosen ranked above rejected), in any of the accepted shapes:
    strings with a 'prompt'; strings without (implicit prompt, HH-RLHF transcripts); lists
    of messages with a 'prompt' list or without (implicit prompt: the shared messages)."""
    chosen, rejected = _get(row, "chosen"), _get(row, "rejected")
    strength = row.get("strength")
    strengths = None if strength is None else [_strength(strength, "field 'strength'")]
    prompt = row.get("prompt")
    if isinstance(chosen, list) or isinstance(rejected, list):
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise _Bad("'chosen' and 'rejected' must both be strings or both lists of messages")
        c, r = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        if isinstance(prompt, list):
            p = _messages(prompt, "prompt")
            # some datasets repeat the prompt's messages at the start of each response
            c = c[len(p) :] if c[: len(p)] == p else c
            r = r[len(p) :] if r[: len(p)] == p else r
            where = "after the prompt"
        elif prompt is None or isinstance(prompt, str):
            # As TRL's `maybe_extract_prompt`: a string prompt next to conversational
            # chosen/rejected (UltraFeedback-binarized) is a copy; the prompt is implicit.
            p, c, r = _split_messages(c, r)
            where = "after the messages it shares with the other response"
        else:
            raise _Bad(f"field 'prompt' must be a list of messages, got {type(prompt).__name__}")
        if p and p[-1]["role"] == "assistant":
            raise _Bad("the prompt ends with an assistant turn: the responses are the next one")
        texts = [_response_text(c, "chosen", where), _response_text(r, "rejected", where)]
        return RankingRecord(_last_user(p), texts, [0, 1], strengths, line, source, p, [c, r])
    for key, v in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(v, str):
            raise _Bad(
                f"field '{key}' must be a string or a list of messages, got {type(v).__name__}"
            )
    if prompt is None:
        prompt, c_text, r_text = _split_strings(chosen, rejected)
        return RankingRecord(prompt, [c_text, r_text], [0, 1], strengths, line, source)
    if isinstance(prompt, list):
        raise _Bad(
            "'prompt' is a list of messages but 'chosen' and 'rejected' are strings: "
            "give them as lists of messages too"
        )
    prompt = _str(row, "prompt", allow_empty=True)
    c_text, r_text = _str(row, "chosen"), _str(row, "rejected")
    return RankingRecord(prompt, [c_text, r_text], [0, 1], strengths, line, source)


def _parse_ranking(row: dict, line: int, source: str) -> RankingRecord:
    if row.get("responses") is None and (
        row.get("chosen") is not None or row.get("rejected") is not None
    ):
        return _parse_pair(row, line, source)
    prompt = _str(row, "prompt", allow_empty=True)
    if row.get("responses") is None:
        raise _Bad(
            "missing field 'responses' (ranking record) or 'chosen' + 'rejected' (pairwise record)"
        )
    responses = _list(row, "responses")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise _Bad(f"responses[{i}] must be a string, got {type(r).__name__}")
        if not r.strip():
            raise _Bad(f"responses[{i}] is empty")
    k = len(responses)
    if k < 2:
        raise _Bad(f"a ranking needs at least 2 responses, got {k}")
    ranking = _list(row, "ranking")
    if len(ranking) != k:
        raise _Bad(f"'ranking' has {len(ranking)} entries for {k} responses")
    for r in ranking:
        if not isinstance(r, int) or isinstance(r, bool):
            raise _Bad(f"'ranking' entries must be integers, got {r!r}")
        if not 0 <= r < k:
            raise _Bad(f"'ranking' index {r} is out of range 0..{k - 1}")
    if len(set(ranking)) != k:
        dup = next(r for r in ranking if ranking.count(r) > 1)
        raise _Bad(f"'ranking' is not a permutation of 0..{k - 1}: index {dup} repeats")
    strengths = None
    if row.get("strengths") is not None:
        strengths = _list(row, "strengths")
        if len(strengths) != k - 1:
            raise _Bad(
                f"'strengths' has {len(strengths)} entries; {k} responses need {k - 1} "
                "(one per adjacent pair of the ranking)"
            )
        strengths = [_strength(s, f"strengths[{i}]") for i, s in enumerate(strengths)]
    return RankingRecord(prompt, list(responses), list(ranking), strengths, line, source)


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
        return _read_txt(p)
    return _read_all(p, _parse_text)


def read_sft(path: PathLike) -> list[SFTRecord]:
    """SFT demonstrations: prompt + completion, or chat `messages`."""
    return _read_all(path, _parse_sft)


def read_preferences(paths: PathLike | Sequence[PathLike]) -> list[RankingRecord]:
    """K-wise rankings and pairwise preferences (mixed freely) from one or more files;
    pairwise ones also in TRL's and Anthropic's shapes (`_parse_pair`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("read_preferences: no files given")
    return [r for p in paths for r in _read_all(p, _parse_ranking)]


def read_prompts(path: PathLike) -> list[PromptRecord]:
    """Prompts (strings or conversational) with an optional `safety` tag (default False)."""
    return _read_all(path, _parse_prompt)


def read_scoring_records(path: PathLike) -> list[ScoredRecord]:
    """Prompt + response records to score, each row kept whole."""
    return _read_all(path, _parse_scored)
