"""Records -> token ids: SFT examples with the prompt masked, prompts for generation, and
the packed pretraining corpus.

BOS policy (one rule, used by every function here): a BOS token is prepended when the
tokenizer defines one that differs from its EOS (GPT-2 style tokenizers reuse EOS as BOS
and their models never saw it at the start), unless `add_bos` says otherwise. Text is
always tokenized with `add_special_tokens=False` and the specials are placed by hand, so
where the prompt ends and the completion starts is exact, whatever the tokenizer's
post-processor does.

Chat format (`data.chat`): for a tokenizer whose model reads prompts through its chat
template, a plain prompt is one user turn and a completion the assistant turn, encoded as
`{"messages"}` records are (`as_chat_record`); every function here reads the format off
the tokenizer it is given.

Labels use -100 where no loss is taken; label 0 of an example is always -100 because
position 0 is never a prediction target under the one-position shift (it also keeps
packed examples from predicting across their boundary).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from rlhfkit.data.chat import (
    CHAT_FORMAT,
    LEGACY_CHAT_MARK,
    as_turns,
    chat_format,
    has_template,
    render,
    set_chat_format,
)
from rlhfkit.data.records import SFTRecord
from rlhfkit.errors import RecordError, UserError
from rlhfkit.types import IGNORE_INDEX

Overlong = Literal["truncate", "drop", "error"]
OVERLONG: tuple[str, ...] = ("truncate", "drop", "error")


@dataclass
class EncodedExample:
    """One training sequence: `labels[t]` is input_ids[t] or -100 (not trained on)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class EncodeStats:
    """How many examples were kept (of which truncated) and dropped, for reporting."""

    kept: int = 0
    truncated: int = 0
    dropped: int = 0

    def add(self, example: EncodedExample | None) -> None:
        """Count one result of `encode_sft` (None = dropped)."""
        if example is None:
            self.dropped += 1
        else:
            self.kept += 1
            self.truncated += int(example.truncated)

    def __str__(self) -> str:
        return f"kept {self.kept} ({self.truncated} truncated), dropped {self.dropped}"


def resolve_bos(tokenizer: Any, add_bos: bool | None = None) -> int | None:
    """The BOS id to prepend, or None. `add_bos=None` applies the module's BOS policy."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if add_bos is None:
        add_bos = bos is not None and bos != eos
    if add_bos and bos is None:
        raise UserError("add_bos=True but the tokenizer defines no BOS token")
    return bos if add_bos else None


def _eos(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError("the tokenizer defines no EOS token; set one (tokenizer.eos_token)")
    return tokenizer.eos_token_id


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


# ---------------------------------------------------------------- SFT


def encode_sft(
    record: SFTRecord,
    tokenizer: Any,
    max_len: int,
    loss_on_prompt: bool = False,
    overlong: Overlong = "truncate",
    add_bos: bool | None = None,
    stats: EncodeStats | None = None,
) -> EncodedExample | None:
    """One SFT record -> ids and labels, or None when dropped as too long.

    Prompt/completion: `[bos?] + prompt + completion + [eos]`, prompt and completion
    tokenized separately; labels -100 on bos and prompt unless `loss_on_prompt`.
    `messages`, or any record for a tokenizer in chat format (`as_chat_record`): see
    `_chat_segments` (loss on assistant turns only).
    overlong: "truncate" cuts from the right and drops the example if no trained token is
    left; "drop" returns None; "error" raises RecordError naming the record's line.
    `stats`, if given, counts the result (kept / truncated / dropped).
    """
    ex = _encode_one(record, tokenizer, max_len, loss_on_prompt, overlong, add_bos)
    if stats is not None:
        stats.add(ex)
    return ex


def _encode_one(
    record: SFTRecord,
    tokenizer: Any,
    max_len: int,
    loss_on_prompt: bool,
    overlong: str,
    add_bos: bool | None,
) -> EncodedExample | None:
    record = as_chat_record(record, tokenizer)
    if record.messages is not None:
        segments = _chat_segments(record.messages, tokenizer)
        texts = [t for t, _ in segments]
        ids, labels, last_turn = [], [], []
        for toks, (_, trained) in zip(_ids(tokenizer, texts), segments, strict=True):
            ids += toks
            labels += toks if trained else [IGNORE_INDEX] * len(toks)
            last_turn = toks if trained else last_turn
        # EOS once: templates that close turns with EOS (even followed by "\n") get none
        eos = _eos(tokenizer)
        if record.messages[-1]["role"] == "assistant" and eos not in last_turn:
            ids.append(eos)
            labels.append(eos)
        if loss_on_prompt:
            labels = list(ids)
        return _finish(ids, labels, 1, max_len, overlong, record)
    prompt, completion = _ids(tokenizer, [record.prompt, record.completion])
    return _assemble(
        prompt, completion, tokenizer, max_len, loss_on_prompt, overlong, add_bos, record
    )


def _assemble(
    prompt: list[int],
    completion: list[int],
    tokenizer: Any,
    max_len: int,
    loss_on_prompt: bool,
    overlong: str,
    add_bos: bool | None,
    record: SFTRecord,
) -> EncodedExample | None:
    eos = _eos(tokenizer)
    while completion and completion[-1] == eos:  # text already ending in EOS: add it once
        completion = completion[:-1]
    bos = resolve_bos(tokenizer, add_bos)
    head = ([bos] if bos is not None else []) + prompt
    ids = head + completion + [eos]
    labels = list(ids) if loss_on_prompt else [IGNORE_INDEX] * len(head) + completion + [eos]
    # keep at least one completion token when truncating (or the EOS of an empty completion)
    return _finish(ids, labels, len(head) + 1, max_len, overlong, record)


def _finish(
    ids: list[int],
    labels: list[int],
    min_keep: int,
    max_len: int,
    overlong: str,
    record: SFTRecord,
) -> EncodedExample | None:
    """Apply the overlong policy; `min_keep` = shortest prefix that still trains something."""
    if overlong not in OVERLONG:
        raise ValueError(f"overlong must be one of {OVERLONG}, got {overlong!r}")
    labels[0] = IGNORE_INDEX  # position 0 is never a target (see module docstring)
    if len(ids) <= max_len:
        return EncodedExample(ids, labels)
    if overlong == "error":
        raise RecordError(
            record.source or "<sft record>",
            record.line or None,
            f"example is {len(ids)} tokens, longer than max_len={max_len} "
            "(raise max_len, or set overlong to 'truncate' or 'drop')",
        )
    if overlong == "drop":
        return None
    labels = labels[:max_len]
    if max_len < min_keep or all(x == IGNORE_INDEX for x in labels[1:]):
        return None
    return EncodedExample(ids[:max_len], labels, truncated=True)


def as_chat_record(record: SFTRecord, tokenizer: Any) -> SFTRecord:
    """A prompt/completion record as the `messages` record it is in chat format (the prompt
    one user turn, the completion the assistant turn: `data.chat.as_turns`); any other
    record, or any record for a tokenizer in plain format, as it is."""
    if record.messages is not None or not chat_format(tokenizer):
        return record
    messages = as_turns(record.prompt, record.completion)
    return SFTRecord(record.prompt, record.completion, messages, record.line, record.source)


def _render_prefix(tokenizer: Any, messages: list[dict]) -> str:
    """The conversation so far plus the assistant header; "" if a template cannot render
    an empty conversation (an assistant turn that opens the chat)."""
    try:
        return render(tokenizer, messages, True)
    except Exception:
        if messages:
            raise
        return ""


def _chat_segments(messages: list[dict], tokenizer: Any) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trained) segments.

    The chat template renders the whole conversation once. For each assistant turn i,
    rendering messages[:i] with the generation prompt gives where the turn's content starts,
    and rendering messages[:i + 1] gives where the turn ends (its end-of-turn tokens
    included, so the model learns to stop). Both must be prefixes of the full rendering,
    which holds for ordinary templates; one that is not prefix-stable is refused. Each
    segment is tokenized on its own so that the label boundary is exact, like the
    prompt/completion path. The template, not this function, places BOS.
    """
    if not has_template(tokenizer):
        raise UserError("an SFT record has 'messages' but the tokenizer has no chat template")
    full = render(tokenizer, messages, False)
    cuts: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start_text = _render_prefix(tokenizer, messages[:i])
        end_text = render(tokenizer, messages[: i + 1], False)
        ok = full.startswith(end_text) and end_text.startswith(start_text)
        if not ok or (cuts and len(start_text) < cuts[-1][1]):
            raise UserError(
                "the chat template is not prefix-stable (rendering a conversation's first "
                "turns does not give a prefix of the whole rendering); cannot mask labels"
            )
        cuts.append((len(start_text), len(end_text)))
    segments: list[tuple[str, bool]] = []
    pos = 0
    for start, end in cuts:
        segments += [(full[pos:start], False), (full[start:end], True)]
        pos = end
    segments.append((full[pos:], False))
    return [(t, trained) for t, trained in segments if t]


def encode_sft_many(
    records: Iterable[SFTRecord],
    tokenizer: Any,
    max_len: int,
    loss_on_prompt: bool = False,
    overlong: Overlong = "truncate",
    add_bos: bool | None = None,
) -> tuple[list[EncodedExample], EncodeStats]:
    """Encode many records (prompt/completion ones batch-tokenized), with counts."""
    records = [as_chat_record(r, tokenizer) for r in records]
    plain = [r for r in records if r.messages is None]
    texts = [t for r in plain for t in (r.prompt, r.completion)]
    tokens = iter(_ids(tokenizer, texts))
    out: list[EncodedExample] = []
    stats = EncodeStats()
    for r in records:
        if r.messages is None:
            ex = _assemble(
                next(tokens), next(tokens), tokenizer, max_len, loss_on_prompt, overlong, add_bos, r
            )
        else:
            ex = encode_sft(r, tokenizer, max_len, loss_on_prompt, overlong, add_bos)
        stats.add(ex)
        if ex is not None:
            out.append(ex)
    return out, stats


# ---------------------------------------------------------------- prompts


def prompt_ids(
    prompt: str | list[dict[str, str]],
    tokenizer: Any,
    chat: bool | None = None,
    add_bos: bool | None = None,
) -> list[int]:
    """A prompt for generation, whole: `[bos?] + prompt ids` for a string; for a list of
    messages (or a string in chat format, one user turn: `chat`, None = the tokenizer's
    format, `data.chat`) the chat template rendered with `add_generation_prompt=True`,
    which places BOS itself: the sequence SFT trained the assistant's answer to follow."""
    if chat is None:
        chat = chat_format(tokenizer)
    if chat or isinstance(prompt, list):
        if not has_template(tokenizer):
            raise UserError("chat prompts need a tokenizer with a chat template")
        messages = as_turns(prompt) if isinstance(prompt, str) else prompt
        ids = _ids(tokenizer, [render(tokenizer, messages, True)])[0]
    else:
        bos = resolve_bos(tokenizer, add_bos)
        ids = ([bos] if bos is not None else []) + _ids(tokenizer, [prompt])[0]
    if not ids:
        raise UserError(f"the prompt {prompt!r} encodes to no tokens")
    return ids


def truncate_left(ids: list[int], max_len: int, bos: int | None) -> list[int]:
    """Keep the last tokens of `ids` (and a leading BOS) so that len <= max_len."""
    if len(ids) <= max_len:
        return ids
    head = [bos] if bos is not None and ids and ids[0] == bos else []
    keep = max_len - len(head)
    if keep < 1:
        raise ValueError(f"max_len={max_len} leaves no room after BOS")
    return head + ids[-keep:]


def encode_prompt(
    prompt: str | list[dict[str, str]],
    tokenizer: Any,
    max_prompt_len: int,
    chat: bool | None = None,
    add_bos: bool | None = None,
) -> list[int]:
    """`prompt_ids`, truncated from the LEFT to fit max_prompt_len: a leading BOS is kept
    and the oldest tokens after it are dropped (`truncate_left`)."""
    if max_prompt_len < 1:
        raise ValueError(f"max_prompt_len must be >= 1, got {max_prompt_len}")
    ids = prompt_ids(prompt, tokenizer, chat, add_bos)
    return truncate_left(ids, max_prompt_len, tokenizer.bos_token_id)


# ---------------------------------------------------------------- chat-trained mark

CHAT_MARK = CHAT_FORMAT
"""The key of the chat-format mark in a tokenizer's config (`data.chat.CHAT_FORMAT`)."""


def mark_trained_on_chat(tokenizer: Any) -> None:
    """Record in `tokenizer`, and every copy saved from it, that its model reads prompts
    through the chat template (`data.chat.set_chat_format`); a no-op without a template or
    on tokenizer-like objects without `init_kwargs`."""
    if has_template(tokenizer):
        set_chat_format(tokenizer, True)


def trained_on_chat(tokenizer: Any) -> bool:
    """Whether the tokenizer has a chat template and is marked chat by an rlhfkit stage (a
    template alone says nothing here: see `data.chat.chat_format` for the full rule)."""
    marks = getattr(tokenizer, "init_kwargs", None) or {}
    return has_template(tokenizer) and bool(marks.get(CHAT_FORMAT) or marks.get(LEGACY_CHAT_MARK))


# ---------------------------------------------------------------- corpus


def pack_corpus(
    texts: Sequence[str],
    tokenizer: Any,
    seq_len: int,
    add_bos: bool | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Pretraining blocks: (N, seq_len) long.

    Every document becomes `[bos?] + ids + [eos]` (BOS by the module's policy, so pretraining
    and SFT see the same document format); the stream of all documents is cut into
    consecutive blocks of seq_len tokens and the remainder dropped. Documents are batch
    tokenized `chunk_size` at a time.
    """
    eos = _eos(tokenizer)
    bos = resolve_bos(tokenizer, add_bos)
    head = [bos] if bos is not None else []
    parts: list[np.ndarray] = []
    for i in range(0, len(texts), chunk_size):
        docs = _ids(tokenizer, list(texts[i : i + chunk_size]))
        flat = itertools.chain.from_iterable(head + d + [eos] for d in docs)
        parts.append(np.fromiter(flat, dtype=np.int64))
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    n = len(stream) // seq_len
    if n == 0:
        raise UserError(
            f"the corpus has {len(stream)} tokens, fewer than one block of seq_len={seq_len}"
        )
    return torch.from_numpy(stream[: n * seq_len].copy()).view(n, seq_len)
