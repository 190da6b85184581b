"""Preference data: K-wise rankings and pairwise preferences -> `RankingRecord`s.

- ranking:  {"prompt", "responses": [y_1 .. y_K], "ranking": [best .. worst], "strengths"?}
- pairwise: {"prompt", "chosen", "rejected", "strength"?}, a K=2 ranking, also as TRL and
  Anthropic ship it (`_parse_pair`): message lists with an explicit prompt (TRL's
  conversational format) or an implicit one (two whole conversations sharing a prefix),
  plain strings with an implicit prompt (their common prefix, cut at a word boundary), and
  HH-RLHF transcripts ("\n\nHuman: ... \n\nAssistant: ...").

The field checks and message rules are `data.records`' (one place for every reader); a bad
record is a `RecordError` naming file:line. No torch import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rlhfkit.data.records import (
    RankingRecord,
    _get,
    _last_user,
    _list,
    _messages,
    _str,
    _strength,
)
from rlhfkit.data.rows import PathLike, _Bad, _read_all
from rlhfkit.errors import UserError

_MARKER = "Assistant:"  # Anthropic HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ..."


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


def read_preferences(paths: PathLike | Sequence[PathLike]) -> list[RankingRecord]:
    """K-wise rankings and pairwise preferences (mixed freely) from one or more files;
    pairwise ones also in TRL's and Anthropic's shapes (`_parse_pair`)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise UserError("read_preferences: no files given")
    return [r for p in paths for r in _read_all(p, _parse_ranking)]
