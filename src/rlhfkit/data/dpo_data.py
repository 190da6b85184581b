"""DPO data: preference records -> token sequences with their response tokens marked ->
batches, one prompt's K responses together.

Every preference format `rlhfkit rm` reads (`data.preferences`: K-wise rankings, graded
pairs, TRL's conversational and implicit-prompt records, HH-RLHF transcripts) is read here
too. Each response becomes SFT's sequence `[bos?] + prompt + response + [eos]`
(`data.tokenize.encode_sft_many`; a conversation through the tokenizer's chat template,
the response's assistant turn(s) with their end-of-turn tokens), and its labels mark the
tokens whose log-probability DPO sums: the response's, as SFT trains them. A sequence over
`max_len` keeps its END (the oldest prompt tokens go, after a leading BOS), as the reward
model's do, so the whole response stays.

A ranking of K responses is ONE example: its K sequences and all C(K,2) (winner, loser)
pairs (`data.ranking.ranking_to_comparisons`; strengths are not used by DPO). A batch
concatenates whole examples, so each response gets one forward pass per model however many
pairs it is in. `PreferenceBatch.owner` says which sequence each label token belongs to,
so that the loop sums log-probs per sequence in padded and packed layouts alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data.collate import collate_packed, collate_right
from rlhfkit.data.ranking import ranking_to_comparisons
from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import _as_sft
from rlhfkit.data.tokenize import EncodedExample, encode_sft_many, resolve_bos
from rlhfkit.errors import RecordError, UserError
from rlhfkit.types import IGNORE_INDEX, LMBatch, move_to


@dataclass
class PreferenceExample:
    """One prompt's K responses as token sequences, and its (winner, loser) pairs.

    `sequences[k].labels` holds response k's tokens where DPO sums log-probs and -100
    elsewhere. `first` is the index of sequence 0 in the run's flat list of sequences
    (where its cached reference log-prob sits).
    """

    sequences: list[EncodedExample]
    pairs: list[tuple[int, int]]
    line: int = 0
    source: str = ""
    first: int = 0


def _runs(labels: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of labelled positions."""
    out: list[tuple[int, int]] = []
    for t, x in enumerate(labels):
        if x == IGNORE_INDEX:
            continue
        if out and out[-1][1] == t:
            out[-1] = (out[-1][0], t + 1)
        else:
            out.append((t, t + 1))
    return out


def _response_only(ex: EncodedExample, rec: RankingRecord, k: int) -> EncodedExample:
    """SFT's labels cover every assistant turn of a conversation: keep response k's.
    Each assistant turn is one labelled run (`_chat_segments`), so the prompt's own
    assistant turns are the first runs."""
    if rec.prompt_messages is None:
        return ex
    earlier = sum(m["role"] == "assistant" for m in rec.prompt_messages)
    if not earlier:
        return ex
    runs = _runs(ex.labels)
    own = sum(m["role"] == "assistant" for m in rec.response_messages[k])  # type: ignore[index]
    if len(runs) != earlier + own:
        raise RecordError(
            rec.source,
            rec.line or None,
            "the chat template joins assistant turns: cannot tell where the response starts",
        )
    labels = list(ex.labels)
    for start, end in runs[:earlier]:
        labels[start:end] = [IGNORE_INDEX] * (end - start)
    return EncodedExample(ex.input_ids, labels)


def _truncate(ex: EncodedExample, max_len: int, bos: int | None) -> EncodedExample:
    """Keep the last tokens (and a leading BOS) so that len <= max_len, as the RM does."""
    ids, labels = ex.input_ids, ex.labels
    if len(ids) <= max_len:
        return ex
    head = 1 if bos is not None and ids and ids[0] == bos else 0
    keep = max_len - head
    if keep < 1:
        raise UserError(f"--max-len {max_len} leaves no room after BOS")
    return EncodedExample(
        ids[:head] + ids[-keep:], [IGNORE_INDEX] * head + labels[-keep:], truncated=True
    )


def encode_preferences(
    records: Sequence[RankingRecord],
    tokenizer: Any,
    max_len: int,
    overlong: str = "truncate",
    first: int = 0,
) -> tuple[list[PreferenceExample], int]:
    """Tokenize every response and expand every ranking into its C(K,2) pairs.

    Returns (examples, number of sequences truncated). `overlong` "truncate" keeps a
    sequence's end; "error" raises a RecordError naming the record's file and line.
    `first`: the flat index of the first sequence (eval data after the training data).
    """
    chat = next((r for r in records if r.prompt_messages is not None), None)
    if chat is not None and getattr(tokenizer, "chat_template", None) is None:
        raise RecordError(
            chat.source,
            chat.line or None,
            "a conversational preference record (lists of messages) needs a tokenizer with a "
            "chat template, and this one has none",
        )
    flat = [s for r in records for s in _as_sft(r)]
    # max_len far above any length: nothing is dropped here; `_truncate` cuts below.
    encoded, _ = encode_sft_many(flat, tokenizer, max_len=1 << 30, loss_on_prompt=False)
    bos = resolve_bos(tokenizer)
    out, n_cut, pos = [], 0, 0
    for rec in records:
        mine = encoded[pos : pos + len(rec.responses)]
        seqs = [_response_only(ex, rec, k) for k, ex in enumerate(mine)]
        pos += len(rec.responses)
        longest = max(len(s.input_ids) for s in seqs)
        if longest > max_len and overlong == "error":
            raise RecordError(
                rec.source,
                rec.line,
                f"a response is {longest} tokens with its prompt, over --max-len {max_len} "
                "(raise --max-len or use --overlong truncate)",
            )
        seqs = [_truncate(s, max_len, bos) for s in seqs]
        n_cut += sum(s.truncated for s in seqs)
        pairs = [(w, lo) for w, lo, _ in ranking_to_comparisons(rec.ranking)]
        out.append(PreferenceExample(seqs, pairs, rec.line, rec.source, first))
        first += len(seqs)
    return out, n_cut


def count_sequences(examples: Sequence[PreferenceExample]) -> int:
    return sum(len(ex.sequences) for ex in examples)


@dataclass
class PreferenceBatch:
    """Several prompts' responses, flattened: N = sum of K sequences, M = sum of C(K,2).

    `lm` is an LM batch of the N sequences, right-padded or packed (`data.collate`), its
    labels the response tokens; `owner` (same shape as its labels) is the sequence
    (0..N-1) each labelled position belongs to, -100 elsewhere."""

    lm: LMBatch
    owner: torch.Tensor  # (B, T) long
    pairs: torch.Tensor  # (M, 2) long (winner, loser) indices of sequences 0..N-1
    pair_prompt: torch.Tensor  # (M,) long prompt index within the batch
    index: torch.Tensor  # (N,) long flat index of each sequence (reference cache)
    lengths: torch.Tensor  # (N,) long response tokens whose log-prob is summed

    @property
    def n_sequences(self) -> int:
        return int(self.index.numel())

    def to(self, device: torch.device | str) -> PreferenceBatch:
        return move_to(self, device)


def collate_preferences(
    examples: Sequence[PreferenceExample],
    pad_id: int,
    packing: bool = False,
    max_row_tokens: int | None = None,
) -> PreferenceBatch:
    """Concatenate prompts' sequences (never splitting a prompt), right-padded or packed
    into rows of at most `max_row_tokens` tokens (`collate_packed`, "balanced" rows)."""
    seqs, pairs, prompt_of, index = [], [], [], []
    for p, ex in enumerate(examples):
        offset = len(seqs)
        seqs += ex.sequences
        pairs += [(w + offset, lo + offset) for w, lo in ex.pairs]
        prompt_of += [p] * len(ex.pairs)
        index += range(ex.first, ex.first + len(ex.sequences))
    # The same layout a second time, with each labelled position holding its sequence's
    # number: rows depend on lengths only, so the two batches line up cell for cell.
    owners = [
        EncodedExample(s.input_ids, [i if x != IGNORE_INDEX else x for x in s.labels])
        for i, s in enumerate(seqs)
    ]
    if packing:
        lm = collate_packed(seqs, max_row_tokens, pad_id, rows="balanced")
        owner = collate_packed(owners, max_row_tokens, pad_id, rows="balanced").labels
    else:
        lm, owner = collate_right(seqs, pad_id), collate_right(owners, pad_id).labels
    # What is summed: labels after the first position of each sequence (the shift).
    lengths = [sum(x != IGNORE_INDEX for x in s.labels[1:]) for s in seqs]
    return PreferenceBatch(
        lm=lm,
        owner=owner,
        pairs=torch.tensor(pairs, dtype=torch.long).view(-1, 2),
        pair_prompt=torch.tensor(prompt_of, dtype=torch.long),
        index=torch.tensor(index, dtype=torch.long),
        lengths=torch.tensor(lengths, dtype=torch.long),
    )
