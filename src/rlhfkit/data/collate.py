"""Token lists -> batches: right padding for training, left padding for generation, and
padding-free packing with token-budget batching.

Packing and transformers 5 (checked for 5.23, Llama with sdpa and eager attention): with
`attention_mask=None` and 2-D `position_ids` that restart at 0, `masking_utils.
find_packed_sequence_indices` gives each packed example its own causal block, so a packed
row yields the same logits as each example alone. Two conditions, both easy to miss:
the forward must get no KV cache (`use_cache=False`; models default to `config.use_cache=
True`, which creates one and silently turns packing detection off), and position_ids must
be passed. `LMBatch.model_inputs()` does both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

import torch

from rlhfkit.types import IGNORE_INDEX, LMBatch, PromptBatch


class Example(Protocol):
    """Anything with token ids and labels of the same length (e.g. `EncodedExample`)."""

    input_ids: list[int]
    labels: list[int]


def _check(examples: Sequence[Example]) -> None:
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    for i, ex in enumerate(examples):
        if len(ex.input_ids) != len(ex.labels) or not ex.input_ids:
            raise ValueError(
                f"example {i}: input_ids ({len(ex.input_ids)}) and labels ({len(ex.labels)}) "
                "must be non-empty and of equal length"
            )


def collate_right(
    examples: Sequence[Example], pad_id: int, pad_to_multiple_of: int | None = None
) -> LMBatch:
    """Right-padded batch: input_ids padded with `pad_id`, labels with -100, mask bool.

    Labels are taken as given (`encode_sft` already puts -100 at position 0).
    """
    _check(examples)
    width = max(len(ex.input_ids) for ex in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    b = len(examples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((b, width), dtype=torch.bool)  # (B, T)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[i, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(ex.labels, dtype=torch.long)
        mask[i, :n] = True
    return LMBatch(input_ids=input_ids, attention_mask=mask, labels=labels)


def _rows_in_order(lengths: Sequence[int], max_row_tokens: int | None) -> list[list[int]]:
    """Example indices per row, in order: a row takes examples until the next would pass
    `max_row_tokens` (an example longer than that gets a row of its own)."""
    rows: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(lengths):
        if rows[-1] and max_row_tokens is not None and used + n > max_row_tokens:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def _rows_balanced(lengths: Sequence[int], max_row_tokens: int | None) -> list[list[int]]:
    """Example indices per row for the fewest rows of at most `max_row_tokens` tokens that
    longest-first placement finds, each example going to the emptiest row, so the rows end
    nearly equally full and the padding to the longest row is small. In-order filling
    instead leaves a short last row padded to full width: 16 examples of ~20 tokens under
    a 256 cap make rows of 256 and ~64 tokens, ~60% more cells than tokens. Within a row
    the examples keep their order. An example longer than the cap gets a row of its own."""
    total = sum(lengths)
    if max_row_tokens is None or total <= max_row_tokens:
        return [list(range(len(lengths)))]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    n_rows = -(-total // max_row_tokens)
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        used = [0] * n_rows
        for i in order:
            r = min(range(n_rows), key=lambda r: (used[r], r))
            rows[r].append(i)
            used[r] += lengths[i]
        fits = all(u <= max_row_tokens or len(m) == 1 for u, m in zip(used, rows, strict=True))
        if fits or n_rows >= len(lengths):
            return [sorted(m) for m in rows if m]
        n_rows += 1


# How `collate_packed` splits a micro-batch into rows.
ROW_PLANS = {"in_order": _rows_in_order, "balanced": _rows_balanced}


def collate_packed(
    examples: Sequence[Example],
    max_row_tokens: int | None = None,
    pad_id: int = 0,
    rows: str = "in_order",
) -> LMBatch:
    """Padding-free batch: examples concatenated into rows (B = 1 without a cap).

    position_ids restart at 0 at each example (the model builds a block-diagonal causal
    mask from them; attention_mask is None). Boundary labels: the shifted loss predicts
    labels[t + 1] from position t, so the label at each example's FIRST position is set to
    -100; otherwise the last token of one example would be trained to predict the first
    token of the next. Forward with `batch.model_inputs()` (it passes `use_cache=False`,
    without which transformers 5 ignores the packing).

    With `max_row_tokens`, rows hold at most that many tokens (attention costs the square
    of a row's length, so one long row of a whole micro-batch is slower than a few short
    ones); shorter rows are padded at the end with a segment of their own (positions from
    0, labels -100), which no real token attends to. `rows` names the split (`ROW_PLANS`):
    "in_order" fills rows in the examples' order; "balanced" makes the rows nearly equally
    full (the least padding).
    """
    _check(examples)
    plan = ROW_PLANS[rows]([len(ex.input_ids) for ex in examples], max_row_tokens)
    built = []
    for idx in plan:
        lengths = torch.tensor([len(examples[i].input_ids) for i in idx])
        ids = torch.tensor([t for i in idx for t in examples[i].input_ids], dtype=torch.long)
        labels = torch.tensor([t for i in idx for t in examples[i].labels], dtype=torch.long)
        starts = torch.cumsum(lengths, 0) - lengths  # (n_examples,) first position of each
        labels[starts] = IGNORE_INDEX
        # position within own example: global index minus the example's start
        positions = torch.arange(len(ids)) - torch.repeat_interleave(starts, lengths)
        built.append((ids, labels, positions))
    width = max(len(r[0]) for r in built)
    input_ids = torch.full((len(built), width), pad_id, dtype=torch.long)
    labels = torch.full((len(built), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(built), width), dtype=torch.long)
    for b, (ids, lab, pos) in enumerate(built):
        n = len(ids)
        input_ids[b, :n], labels[b, :n], position_ids[b, :n] = ids, lab, pos
        position_ids[b, n:] = torch.arange(width - n)  # the padding's own segment
    return LMBatch(
        input_ids=input_ids,  # (B, T)
        attention_mask=None,
        labels=labels,  # (B, T)
        position_ids=position_ids,  # (B, T)
    )


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0
) -> list[list[int]]:
    """Group example indices into batches of at most `max_tokens` tokens in total.

    Greedy in (seeded-shuffled or original) order: an example that does not fit starts a
    new batch. Same lengths + seed -> same batches. An example longer than the budget is
    an error (encode with max_len <= max_tokens).
    """
    order = list(range(len(lengths)))
    if shuffle:
        random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = lengths[i]
        if n > max_tokens:
            raise ValueError(f"example {i} has {n} tokens, more than max_tokens={max_tokens}")
        if current and used + n > max_tokens:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(current)
    return batches


def collate_left(prompt_ids: Sequence[Sequence[int]], pad_id: int) -> PromptBatch:
    """Left-padded prompts for generation, so every row ends at its last prompt token."""
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("collate_left needs at least one prompt and no empty prompts")
    width = max(len(p) for p in prompt_ids)
    b = len(prompt_ids)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((b, width), dtype=torch.bool)  # (B, P)
    for i, p in enumerate(prompt_ids):
        input_ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = True
    return PromptBatch(input_ids=input_ids, attention_mask=mask)
