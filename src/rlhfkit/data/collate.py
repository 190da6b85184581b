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


def collate_packed(examples: Sequence[Example]) -> LMBatch:
    """Padding-free batch: all examples concatenated in one row (B = 1, T = total length).

    position_ids restart at 0 at each example (the model builds a block-diagonal causal
    mask from them; attention_mask is None). Boundary labels: the shifted loss predicts
    labels[t + 1] from position t, so the label at each example's FIRST position is set to
    -100; otherwise the last token of one example would be trained to predict the first
    token of the next. Forward with `batch.model_inputs()` (it passes `use_cache=False`,
    without which transformers 5 ignores the packing).
    """
    _check(examples)
    input_ids = torch.tensor([t for ex in examples for t in ex.input_ids], dtype=torch.long)
    labels = torch.tensor([t for ex in examples for t in ex.labels], dtype=torch.long)
    lengths = torch.tensor([len(ex.input_ids) for ex in examples])
    starts = torch.cumsum(lengths, 0) - lengths  # (n_examples,) first position of each
    labels[starts] = IGNORE_INDEX
    # position within own example: global index minus the example's start
    position_ids = torch.arange(len(input_ids)) - torch.repeat_interleave(starts, lengths)
    return LMBatch(
        input_ids=input_ids[None],  # (1, T)
        attention_mask=None,
        labels=labels[None],  # (1, T)
        position_ids=position_ids[None],  # (1, T)
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
