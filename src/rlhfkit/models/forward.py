"""Training-side forwards of the PPO roles over prompt + response: the policy's (or the
reference's) logits and the value model's per-token values, read at the positions that
predict each response token. Positions come from the mask, as in sampling, so left
padding changes nothing. Each goes through the top-level forward (DDP / FSDP hooks run)."""

from __future__ import annotations

import inspect

import torch

from rlhfkit.models.reward import values_for_tokens
from rlhfkit.models.wrap import unwrap
from rlhfkit.ops.masking import position_ids_from_mask

_FORWARD_KWARGS: dict[type, frozenset[str]] = {}


def _forward_kwargs(model: torch.nn.Module) -> frozenset[str]:
    """Parameter names of the model's forward (cached per class)."""
    cls = type(unwrap(model))
    if cls not in _FORWARD_KWARGS:
        _FORWARD_KWARGS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _FORWARD_KWARGS[cls]


def policy_logits(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
) -> torch.Tensor:
    """(B, L, V) logits of a causal LM over prompt + response; L = R + 1 when the model
    supports `logits_to_keep` (the LM head skips prompt positions), else P + R.

    Position ids come from the mask (0 at each row's first real token), as in sampling,
    so left padding changes nothing. Goes through the top-level forward (DDP hooks run).
    """
    extra = (
        {"logits_to_keep": response_len + 1} if "logits_to_keep" in _forward_kwargs(model) else {}
    )
    out = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **extra,
    )
    return out.logits


def response_values(
    value_model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
) -> torch.Tensor:
    """(B, R) V(s_t) for each response token t, read at the position that PREDICTS it
    (prompt + response[:t], i.e. position P + t - 1), as the policy's logits are."""
    full = values_for_tokens(value_model, sequences, attention_mask)  # (B, P + R)
    return full[:, prompt_len - 1 : -1].float()
