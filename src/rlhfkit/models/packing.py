"""Padding-free forwards of padded batches: the real tokens of a (B, T) batch (any padding
layout, e.g. PPO's left-padded prompt + right-padded response) go into packed rows, the
model runs on those, and each output goes back to its (B, T) place.

Packed rows are what the LM loop trains on (`data/collate.collate_packed`): sequences side
by side with no padding between them, position ids restarting at 0 at each one (equal to
`position_ids_from_mask` of the padded layout), `attention_mask` None, so transformers 5
builds a block-diagonal causal mask from the position ids. Rows hold at most T tokens (the
padded width), placed longest first into the emptiest row (`ROW_PLANS["balanced"]`): a
row's attention then costs no more than a padded row's, while the linear layers, most of
the FLOPs, skip every pad. On PPO's realistic batches (prompts of 16-256 tokens, responses
cut at EOS) the pads are 40-50% of the padded cells.

Exact only where the model keeps packed sequences apart (Llama, Qwen2, GPT-2, ... but not
OPT, Falcon or Bloom): `packed_forward_error` compares this path with the padded one on the
role's own model, and the caller picks by it (`loops/lm.choose_packing` for LM training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhfkit.data.collate import ROW_PLANS


@dataclass(frozen=True)
class Packed:
    """A (B, T) padded batch as packed rows.

    input_ids, position_ids: (rows, W) long; the tail of a short row is padding with its own
        segment of positions (0, 1, ...), which no real token attends to.
    index: (N,) long, where each real token of the padded batch sits in the flattened rows
        (rows * W), in the row-major order of `mask` (N = mask.sum()).
    mask: (B, T) bool, the padded batch's real tokens.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor | bool | None]:
        """Keyword arguments of the packed forward (no cache: with one, transformers 5 skips
        the packed-sequence mask)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": None,
            "position_ids": self.position_ids,
            "use_cache": False,
        }

    def positions(self, keep: torch.Tensor) -> torch.Tensor:
        """(n,) flat packed positions of the real tokens where `keep` (B, T) bool is True
        (keep must lie within mask), in the row-major order of `keep`."""
        return self.index[keep[self.mask]]

    def unpack(self, packed: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(rows, W, *rest) outputs -> (B, T, *rest), `fill` at padding (differentiable)."""
        rest = packed.shape[2:]
        flat = packed.reshape(-1, *rest)[self.index]  # (N, *rest)
        out = flat.new_full((*self.mask.shape, *rest), fill)
        out[self.mask] = flat
        return out


def pack(sequences: torch.Tensor, mask: torch.Tensor, pad_id: int) -> Packed:
    """Pack the real tokens of `sequences` (B, T) where `mask` (B, T) bool is True."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool (True = real token), got {mask.dtype}")
    b, t = mask.shape
    lengths = mask.sum(1).tolist()
    rows = ROW_PLANS["balanced"](lengths, t)
    width = max(sum(lengths[i] for i in members) for members in rows)
    base = [0] * b  # flat packed position of each sequence's first token
    for r, members in enumerate(rows):
        offset = r * width
        for i in members:
            base[i] = offset
            offset += lengths[i]
    within = mask.long().cumsum(1) - 1  # (B, T): position of a real token in its sequence
    starts = torch.tensor(base, device=mask.device)[:, None]  # (B, 1)
    index = (starts + within)[mask]  # (N,)
    n_cells = len(rows) * width
    input_ids = sequences.new_full((n_cells,), pad_id)
    input_ids[index] = sequences[mask]
    # Padding cells count 0, 1, ... from the end of each row's real tokens: a segment of
    # their own (a restart at 0), so no real token is taken for part of it.
    cells = torch.arange(n_cells, device=mask.device)
    real = torch.zeros(n_cells, dtype=torch.bool, device=mask.device)
    real[index] = True
    used = real.view(len(rows), width).sum(1, keepdim=True)  # (rows, 1)
    pad_pos = (cells.view(len(rows), width) % width) - used  # (rows, W)
    position_ids = torch.zeros(n_cells, dtype=torch.long, device=mask.device)
    position_ids[index] = within[mask]
    position_ids = torch.where(
        real.view(len(rows), width), position_ids.view(len(rows), width), pad_pos
    )
    return Packed(
        input_ids=input_ids.view(len(rows), width),
        position_ids=position_ids,
        index=index,
        mask=mask,
    )
