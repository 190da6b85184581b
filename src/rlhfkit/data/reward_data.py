"""Reward-model data: prompt + response -> tokens, rankings -> examples -> batches.

One tokenization rule for every reward model (training, evaluation, scoring): the RM reads
exactly the sequence SFT trains on, `[bos?] + prompt + response + [eos]`
(`data.tokenize.encode_sft`), EOS INCLUDED, because the policy's finished responses end in
EOS and the score is read at that last token. The one exception is a sampled response
that never ended (cut at max_new_tokens): told so (`ended`), `encode_responses` leaves
its EOS out, so that the RM reads what the policy produced, as it does on the policy's
token ids (`scoring.rm`). A sequence over `max_len` keeps its END: the oldest prompt
tokens are dropped (after a leading BOS).

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
prompt's responses are never split and each gets exactly one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

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
    encode_sft_many,
    prompt_ids,
    resolve_bos,
    truncate_left,
)
from rlhfkit.errors import RecordError, UserError

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
    (`_as_sft`). `ended[i]` False (a sampled response cut at max_new_tokens) leaves that
    pair's EOS out (for a conversation: the prompt rendered with the generation prompt,
    then the response, what the policy produced); None: every response is complete.
    Returns (ids per pair, number truncated)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if ended is not None and len(ended) != len(responses):
        raise ValueError(f"{len(ended)} ended flags for {len(responses)} responses")
    records = [_pair_record(p, r) for p, r in zip(prompts, responses, strict=True)]
    full = _encode_full(records, tokenizer)
    for i, finished in enumerate(ended if ended is not None else []):
        if finished:
            continue
        if isinstance(prompts[i], str):  # the EOS encode_sft appended is the last id
            full[i] = full[i][:-1]
        else:
            cut_off = tokenizer(responses[i], add_special_tokens=False)["input_ids"]
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
    if chat is not None and getattr(tokenizer, "chat_template", None) is None:
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
    """Several prompts' responses, flattened: N = sum of K, M = sum of C(K,2)."""

    input_ids: torch.Tensor  # (N, T) long, right-padded
    attention_mask: torch.Tensor  # (N, T) bool
    pairs: torch.Tensor  # (M, 2) long (winner, loser) rows of input_ids
    margins: torch.Tensor  # (M,) float32
    pair_prompt: torch.Tensor  # (M,) long prompt index within the batch
    buckets: list[str] = field(default_factory=list)  # (M,) strength bucket per pair
    adjacent: list[bool] = field(default_factory=list)  # (M,) neighbours in their ranking

    def to(self, device: torch.device | str) -> RankingBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def collate_rankings(examples: Sequence[RankingExample], pad_id: int) -> RankingBatch:
    """Concatenate prompts' sequences (never splitting a prompt) and offset their pairs."""
    seqs, pairs, margins, prompt_of, buckets, adjacent = [], [], [], [], [], []
    for p, ex in enumerate(examples):
        offset = len(seqs)
        seqs += ex.sequences
        pairs += [(win + offset, lose + offset) for win, lose in ex.pairs]
        margins += ex.margins
        prompt_of += [p] * len(ex.pairs)
        buckets += ex.buckets
        adjacent += ex.adjacent if ex.adjacent is not None else [True] * len(ex.pairs)
    ids, mask = pad_right(seqs, pad_id)
    return RankingBatch(
        input_ids=ids,
        attention_mask=mask,
        pairs=torch.tensor(pairs, dtype=torch.long).view(-1, 2),
        margins=torch.tensor(margins, dtype=torch.float32),
        pair_prompt=torch.tensor(prompt_of, dtype=torch.long),
        buckets=buckets,
        adjacent=adjacent,
    )
