"""Reward-model data: prompt + response -> tokens, rankings -> examples -> batches.

One tokenization rule for every reward model (training, evaluation, scoring): the RM reads
exactly the sequence SFT trains on, `[bos?] + prompt + response + [eos]`
(`data.tokenize.encode_sft`), EOS INCLUDED, because the policy's finished responses end in
EOS and the score is read at that last token. The one exception is a sampled response
that never ended (cut at max_new_tokens): told so (`ended`), `encode_responses` leaves
its EOS out, so that the RM reads what the policy produced, as it does on the policy's
token ids (`scoring.rm`). A sequence over `max_len` keeps its END: the oldest prompt
tokens are dropped (after a leading BOS).

In chat format (`data.chat`: an instruct model's template, or a model marked chat) a plain
prompt is one user turn and each response its assistant turn, encoded as the
conversational records below (`data.tokenize.as_chat_record`).

A conversational ranking record (`RankingRecord.prompt_messages`, TRL's message lists) is
encoded like an SFT `messages` record: the whole conversation, prompt messages + the
response's assistant turn(s), rendered once by the tokenizer's chat template; the response
starts where the prompt rendered with the generation prompt ends (`_chat_segments`), and
the template's own end of turn serves as EOS (one is appended if it has none). The
sequence ends at that EOS: what a template writes after it (Qwen's newline after
`<|im_end|>`) is dropped, so that the RM reads its score where a sampled response ends
and scores the policy's ids (`scoring.rm`) as it trained.

A ranking of K responses becomes ONE example: its K sequences and its C(K,2) comparisons
(winner, loser, margin, strength bucket). A batch concatenates whole examples, so a
prompt's responses are never split and each gets exactly one forward pass, either
right-padded (N rows) or padding-free (`pack_sequences`: a few packed rows, position ids
restarting per sequence; for models that keep packed examples apart, `loops.reward.train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data.chat import has_template
from rlhfkit.data.collate import collate_right
from rlhfkit.data.ranking import (
    STRENGTHS,
    adjacent_flags,
    comparisons_with_margins,
    ranking_to_comparisons,
)
from rlhfkit.data.ranking import resolve_margins as _resolve
from rlhfkit.data.records import RankingRecord, SFTRecord
from rlhfkit.data.tokenize import (
    EncodedExample,
    as_chat_record,
    encode_sft_many,
    prompt_ids,
    resolve_bos,
    truncate_left,
)
from rlhfkit.errors import RecordError, UserError
from rlhfkit.types import move_to

UNLABELED = "unlabeled"  # bucket of comparisons that carry no strength
BUCKETS: tuple[str, ...] = (*STRENGTHS, UNLABELED)


Prompt = str | list[dict[str, str]]  # a string, or a conversation's messages


def encode_responses(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    responses: Sequence[str],
    max_len: int,
    ended: Sequence[bool] | None = None,
) -> tuple[list[list[int]], int]:
    """`[bos?] + prompt + response + [eos]` per pair (SFT's encoding), left-truncated to
    max_len. A conversational prompt (a list of messages) is encoded as the RM trained on
    it: the messages + the response as an assistant turn, through the chat template
    (`_as_sft`); so is a plain one in chat format (one user turn). `ended[i]` False (a
    sampled response cut at max_new_tokens) leaves that pair's EOS out (for a chat: the
    prompt rendered with the generation prompt, then the response, what the policy
    produced); None: every response is complete. Returns (ids per pair, number truncated)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if ended is not None and len(ended) != len(responses):
        raise ValueError(f"{len(ended)} ended flags for {len(responses)} responses")
    records = [_pair_record(p, r) for p, r in zip(prompts, responses, strict=True)]
    records = [as_chat_record(r, tokenizer) for r in records]
    full = _encode_full(records, tokenizer)
    for i, finished in enumerate(ended if ended is not None else []):
        if finished:
            continue
        if records[i].messages is None:  # the EOS encode_sft appended is the last id
            full[i] = full[i][:-1]
        else:  # the assistant turn's text, as `as_turns` puts it (no leading whitespace)
            text = responses[i] if isinstance(prompts[i], list) else responses[i].lstrip()
            cut_off = tokenizer(text, add_special_tokens=False)["input_ids"]
            full[i] = prompt_ids(prompts[i], tokenizer) + cut_off
    bos = resolve_bos(tokenizer)
    out = [truncate_left(ids, max_len, bos) for ids in full]
    n_cut = sum(len(o) < len(ids) for o, ids in zip(out, full, strict=True))
    return out, n_cut


def _pair_record(prompt: Prompt, response: str) -> SFTRecord:
    if isinstance(prompt, str):
        return SFTRecord(prompt, response)
    return SFTRecord("", response, [*prompt, {"role": "assistant", "content": response}])


def _encode_full(records: Sequence[SFTRecord], tokenizer: Any) -> list[list[int]]:
    """SFT's encoding of every record (prompt + completion, or chat messages), uncut; a
    chat sequence ends at its last EOS (what a template writes after it is dropped)."""
    records = [as_chat_record(r, tokenizer) for r in records]
    # max_len far above any length: encode_sft_many then never drops; callers cut.
    examples, _ = encode_sft_many(records, tokenizer, max_len=1 << 30, loss_on_prompt=True)
    eos = tokenizer.eos_token_id
    return [
        ex.input_ids if r.messages is None else _end_at_eos(ex.input_ids, eos)
        for r, ex in zip(records, examples, strict=True)
    ]


def _end_at_eos(ids: list[int], eos: int) -> list[int]:
    """`ids` up to and including its last EOS: a sampled response ends at EOS, and the
    reward is read at the last token."""
    return ids[: len(ids) - ids[::-1].index(eos)] if eos in ids else ids


def _as_sft(rec: RankingRecord) -> list[SFTRecord]:
    """One SFT record per response of a ranking record (chat messages if conversational)."""
    if rec.prompt_messages is None:
        return [SFTRecord(rec.prompt, resp, None, rec.line, rec.source) for resp in rec.responses]
    if rec.response_messages is None or len(rec.response_messages) != len(rec.responses):
        raise ValueError("a conversational RankingRecord needs one message list per response")
    return [
        SFTRecord(rec.prompt, resp, rec.prompt_messages + msgs, rec.line, rec.source)
        for resp, msgs in zip(rec.responses, rec.response_messages, strict=True)
    ]


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (N, T) right-padded ids and (N, T) bool mask (via `collate_right`)."""
    batch = collate_right([EncodedExample(list(s), list(s)) for s in sequences], pad_id)
    return batch.input_ids, batch.attention_mask


@dataclass
class PackedRows:
    """Token sequences packed into rows without padding (`pack_sequences`)."""

    input_ids: torch.Tensor  # (R, W) long
    position_ids: torch.Tensor  # (R, W) long, 0 at each sequence's first token
    last: torch.Tensor  # (N,) long: flat index into input_ids.view(-1) of sequence i's last token


def _first_fit(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices per row: longest first, each into the first row with room (first-fit
    decreasing bin packing)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(width)
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


MAX_WIDTH_FACTOR = 8  # candidate row widths: 1..8 x the longest sequence


def row_width(lengths: Sequence[int], attention_cost: float | None) -> int:
    """Row width for `pack_sequences`: the multiple of the longest sequence that minimises
    the estimated work, cells + attention_cost * sum over rows of width^2.

    Wider rows leave fewer unused cells (each costs every linear layer) but attention
    costs the square of a row's width (sdpa computes every key of a masked row).
    `attention_cost` is one row position pair's attention work in units of one cell's
    linear work (`models.reward_packed.attention_cost`: 2 hidden / weights per layer); None:
    the longest sequence, whose rows never cost more attention than the padded batch.
    Short sequences then share wide rows; long ones keep rows of their own length.
    """
    longest, total = max(lengths), sum(lengths)
    if attention_cost is None:
        return longest
    best, best_cost = longest, float("inf")
    for factor in range(1, MAX_WIDTH_FACTOR + 1):
        width = min(factor * longest, total)
        rows = _first_fit(lengths, width)
        used = max(sum(lengths[i] for i in members) for members in rows)  # actual width
        cost = len(rows) * used * (1 + attention_cost * used)  # cells + attention
        if cost < best_cost:
            best, best_cost = width, cost
        if width == total:
            break
    return best


def pack_sequences(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    row_tokens: int | None = None,
    attention_cost: float | None = None,
) -> PackedRows:
    """Padding-free rows of at most `row_tokens` tokens (default: `row_width`).

    Unlike SFT's `collate_packed`, order is free (scores come back per sequence through
    `last`), so sequences go longest first into the first row with room (first-fit
    decreasing): few rows, little unused tail. A row's unused tail holds `pad_id` at
    position 0 each, so every tail token is a sequence of its own: no real token sees it,
    no position passes the longest sequence's, and nothing reads its outputs.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("pack_sequences needs at least one sequence and no empty ones")
    lengths = [len(s) for s in sequences]
    if row_tokens is not None and row_tokens < max(lengths):
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of {row_tokens}")
    rows = _first_fit(lengths, row_tokens or row_width(lengths, attention_cost))
    width = max(sum(lengths[i] for i in members) for members in rows)  # no empty column
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (R, W)
    positions = torch.zeros((len(rows), width), dtype=torch.long)  # (R, W)
    last = torch.empty(len(sequences), dtype=torch.long)  # (N,)
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            n = lengths[i]
            ids[r, start : start + n] = torch.tensor(list(sequences[i]), dtype=torch.long)
            positions[r, start : start + n] = torch.arange(n)
            last[i] = r * width + start + n - 1
            start += n
    return PackedRows(ids, positions, last)


# ---------------------------------------------------------------------------------------
# Records -> examples -> batches
# ---------------------------------------------------------------------------------------


@dataclass
class RankingExample:
    """One prompt's K token sequences and its comparisons (indices into `sequences`)."""

    sequences: list[list[int]]
    pairs: list[tuple[int, int]]
    margins: list[float]
    buckets: list[str]
    line: int = 0
    source: str = ""
    # per pair: neighbours in the ranking (the pairs the labeller graded); None: all True
    adjacent: list[bool] | None = None


def resolve_margin_table(spec: str | None) -> dict[str, float]:
    """--margin: a preset (none, llama2-small, llama2-large) or "strength=value,..."."""
    try:
        return _resolve(spec)
    except ValueError as e:
        raise UserError(f"--margin: {e}") from e


def encode_rankings(
    records: Sequence[RankingRecord],
    tokenizer: Any,
    max_len: int,
    margin_table: dict[str, float],
    overlong: str = "truncate",
) -> tuple[list[RankingExample], int]:
    """Tokenize every response and expand every ranking into its comparisons with margins.

    Returns (examples, number of sequences truncated). overlong "truncate" keeps a
    sequence's end (drops the oldest prompt tokens); "error" raises a RecordError naming
    the record's file and line.
    """
    chat = next((r for r in records if r.prompt_messages is not None), None)
    if chat is not None and not has_template(tokenizer):
        raise RecordError(
            chat.source,
            chat.line or None,
            "a conversational preference record (lists of messages) needs a tokenizer with a "
            "chat template, and this one has none",
        )
    flat = _encode_full([s for r in records for s in _as_sft(r)], tokenizer)
    bos = resolve_bos(tokenizer)
    out, n_cut, pos = [], 0, 0
    for rec in records:
        seqs = flat[pos : pos + len(rec.responses)]
        pos += len(rec.responses)
        if any(len(s) > max_len for s in seqs):
            if overlong == "error":
                longest = max(len(s) for s in seqs)
                raise RecordError(
                    rec.source,
                    rec.line,
                    f"a response is {longest} tokens with its prompt, over --max-len {max_len} "
                    "(raise --max-len or use --overlong truncate)",
                )
            n_cut += sum(len(s) > max_len for s in seqs)
            seqs = [truncate_left(s, max_len, bos) for s in seqs]
        implied = ranking_to_comparisons(rec.ranking, rec.strengths)
        comps = comparisons_with_margins(implied, margin_table)
        out.append(
            RankingExample(
                sequences=seqs,
                pairs=[(win, lose) for win, lose, _, _ in comps],
                margins=[m for _, _, m, _ in comps],
                buckets=[b or UNLABELED for _, _, _, b in comps],
                line=rec.line,
                source=rec.source,
                adjacent=adjacent_flags(rec.ranking, implied),
            )
        )
    return out, n_cut


@dataclass
class RankingBatch:
    """Several prompts' responses, flattened: N = sum of K, M = sum of C(K,2).

    Right-padded (N rows, `attention_mask`) or packed (R rows, `position_ids` and `last`;
    attention_mask None), as `collate_rankings` was asked."""

    input_ids: torch.Tensor  # (N, T) long, right-padded; packed: (R, W)
    attention_mask: torch.Tensor | None  # (N, T) bool; packed: None
    pairs: torch.Tensor  # (M, 2) long (winner, loser) indices of sequences (0..N-1)
    margins: torch.Tensor  # (M,) float32
    pair_prompt: torch.Tensor  # (M,) long prompt index within the batch
    buckets: list[str] = field(default_factory=list)  # (M,) strength bucket per pair
    adjacent: list[bool] = field(default_factory=list)  # (M,) neighbours in their ranking
    position_ids: torch.Tensor | None = None  # packed: (R, W) long, restarting per sequence
    last: torch.Tensor | None = None  # packed: (N,) flat index of each sequence's last token

    @property
    def packed(self) -> bool:
        return self.position_ids is not None

    def to(self, device: torch.device | str) -> RankingBatch:
        return move_to(self, device)


def collate_rankings(
    examples: Sequence[RankingExample],
    pad_id: int,
    packing: bool = False,
    attention_cost: float | None = None,
) -> RankingBatch:
    """Concatenate prompts' sequences (never splitting a prompt) and offset their pairs;
    right-padded, or with `packing` padding-free rows (`pack_sequences`; `attention_cost`
    picks their width, `row_width`)."""
    seqs, pairs, margins, prompt_of, buckets, adjacent = [], [], [], [], [], []
    for p, ex in enumerate(examples):
        offset = len(seqs)
        seqs += ex.sequences
        pairs += [(win + offset, lose + offset) for win, lose in ex.pairs]
        margins += ex.margins
        prompt_of += [p] * len(ex.pairs)
        buckets += ex.buckets
        adjacent += ex.adjacent if ex.adjacent is not None else [True] * len(ex.pairs)
    if packing:
        rows = pack_sequences(seqs, pad_id, attention_cost=attention_cost)
        ids, mask, positions, last = rows.input_ids, None, rows.position_ids, rows.last
    else:
        (ids, mask), positions, last = pad_right(seqs, pad_id), None, None
    return RankingBatch(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        last=last,
        pairs=torch.tensor(pairs, dtype=torch.long).view(-1, 2),
        margins=torch.tensor(margins, dtype=torch.float32),
        pair_prompt=torch.tensor(prompt_of, dtype=torch.long),
        buckets=buckets,
        adjacent=adjacent,
    )
