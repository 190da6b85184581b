"""The policy's sampled tokens as a reward model reads them: each row's real tokens, the
decoded prompt and response texts, and whether each response ended with EOS."""

from __future__ import annotations

from typing import Any

import torch


def real_tokens(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """(B, T) ids with a bool mask, any padding layout -> each row's real tokens."""
    return [row[m].tolist() for row, m in zip(ids.cpu(), mask.cpu(), strict=True)]


def ends_with_eos(
    response_ids: torch.Tensor, response_mask: torch.Tensor, eos_id: int
) -> list[bool]:
    """Per row of (B, R) response ids with their bool mask (any layout): whether the last
    real token is EOS, i.e. whether the response finished (an empty one did not)."""
    mask = response_mask.cpu()
    last = torch.where(mask, torch.arange(mask.shape[1]), -1).amax(1)  # (B,), -1 if empty
    token = response_ids.cpu().gather(1, last.clamp(min=0)[:, None]).squeeze(1)  # (B,)
    return ((last >= 0) & (token == eos_id)).tolist()


def decode_pairs(tokenizer: Any, p_ids, p_mask, r_ids, r_mask) -> tuple[list[str], list[str]]:
    """(prompt texts, response texts) of sampled ids with their masks, special tokens dropped."""
    return (
        tokenizer.batch_decode(real_tokens(p_ids, p_mask), skip_special_tokens=True),
        tokenizer.batch_decode(real_tokens(r_ids, r_mask), skip_special_tokens=True),
    )
