"""Training-side forwards of the PPO roles over prompt + response: the policy's (or the
reference's) logits and the value model's per-token values, read at the positions that
predict each response token. Positions come from the mask, as in sampling, so left
padding changes nothing. Each goes through the top-level forward (DDP / FSDP hooks run).

`packed=True` runs the same forward padding-free (`models/packing.py`): the real tokens in
packed rows, the outputs put back in their (B, T) places, the LM head applied only at the
positions that predict response tokens. Equal to the padded forward up to float rounding
where the model keeps packed sequences apart, which the caller checks on the model first
(`models/probe.packed_forward_error`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from rlhfkit.models.packing import pack
from rlhfkit.models.reward import capture_head, values_for_tokens
from rlhfkit.models.wrap import unwrap
from rlhfkit.ops.masking import position_ids_from_mask

_FORWARD_KWARGS: dict[type, frozenset[str]] = {}


def _forward_kwargs(model: torch.nn.Module) -> frozenset[str]:
    """Parameter names of the model's forward (cached per class)."""
    cls = type(unwrap(model))
    if cls not in _FORWARD_KWARGS:
        _FORWARD_KWARGS[cls] = frozenset(inspect.signature(cls.forward).parameters)
    return _FORWARD_KWARGS[cls]


def _pad_id(model: torch.nn.Module) -> int:
    pad_id = unwrap(model).config.pad_token_id
    return 0 if pad_id is None else int(pad_id)


@contextmanager
def head_reads(
    model: torch.nn.Module, pick: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """During the block, the model's output layer (`get_output_embeddings()`) reads only
    `pick(hidden)` of the hidden states it is given: the positions whose logits are used,
    so the head and the log-softmax skip the rest (prompts, padding). Whatever the model
    does to the logits after its head (Gemma's soft-capping) still happens. Used by PPO's
    packed forwards here and by the LM loop (`loops/lm.py`, with its own probe)."""
    handle = (
        unwrap(model)
        .get_output_embeddings()
        .register_forward_pre_hook(lambda _m, args: (pick(args[0]), *args[1:]))
    )
    try:
        yield
    finally:
        handle.remove()


def policy_logits(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    response_len: int,
    packed: bool = False,
) -> torch.Tensor:
    """(B, L, V) logits of a causal LM over prompt + response; L = R + 1 when the model
    supports `logits_to_keep` or `packed` (the LM head skips prompt positions), else P + R.

    Position ids come from the mask (0 at each row's first real token), as in sampling,
    so left padding changes nothing. Goes through the top-level forward (DDP hooks run).
    Packed, the logits at padding positions are 0 (padded: whatever the model gives).
    """
    if packed:
        return _packed_logits(model, sequences, attention_mask, response_len)
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


def _packed_logits(
    model: torch.nn.Module, sequences: torch.Tensor, mask: torch.Tensor, response_len: int
) -> torch.Tensor:
    b, t = mask.shape
    kept = response_len + 1
    keep = mask.clone()
    keep[:, : t - kept] = False  # (B, T): the last R + 1 positions, where real
    rows = pack(sequences, mask, _pad_id(model))
    positions = rows.positions(keep)  # (n,) flat over the packed rows
    with head_reads(model, lambda h: h.reshape(-1, h.shape[-1])[positions][None]):
        logits = model(**rows.model_inputs()).logits[0]  # (n, V)
    out = logits.new_zeros(b, kept, logits.shape[-1])  # (B, R + 1, V)
    out[keep[:, t - kept :]] = logits
    return out


def token_values(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    packed: bool = False,
) -> torch.Tensor:
    """(B, T) head value at every position (`models.reward.values_for_tokens`), optionally
    computed on packed rows (0 at padding positions then)."""
    if not packed:
        return values_for_tokens(model, sequences, attention_mask)
    rows = pack(sequences, attention_mask, _pad_id(model))
    with capture_head(model) as box:
        model(**rows.model_inputs())
    return rows.unpack(box["v"].squeeze(-1))  # (B, T)


def response_values(
    value_model: torch.nn.Module,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    packed: bool = False,
) -> torch.Tensor:
    """(B, R) V(s_t) for each response token t, read at the position that PREDICTS it
    (prompt + response[:t], i.e. position P + t - 1), as the policy's logits are."""
    full = token_values(value_model, sequences, attention_mask, packed)  # (B, P + R)
    return full[:, prompt_len - 1 : -1].float()
