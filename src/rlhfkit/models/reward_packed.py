"""Reward-model forwards on packed rows (padding-free, `data.reward_data.pack_sequences`):
the scores, the attention-cost estimate that sizes the rows, and the view of what the score
head reads that the packing probe compares (`models.probe.packing_error`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from weakref import WeakKeyDictionary

import torch

from rlhfkit.models.reward import capture_head
from rlhfkit.models.wrap import unwrap


def packed_reward_scores(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    last: torch.Tensor,
) -> torch.Tensor:
    """(N,) r(x, y) of N sequences packed into rows (`data.reward_data.pack_sequences`),
    differentiable: the head's value at each sequence's last token.

    input_ids, position_ids: (R, W) long, positions restarting at 0 per sequence; last: (N,)
    flat index into the (R * W) positions. No attention mask and no KV cache, so that
    transformers builds one causal block per sequence. Exact only on models that keep
    packed sequences apart (probe `HeadInputView(model)`; `reward_scores` elsewhere).
    """
    with capture_head(model) as box:
        model(input_ids=input_ids, position_ids=position_ids, attention_mask=None, use_cache=False)
    return box["v"].reshape(-1)[last]  # (R, W, 1) -> (N,)


def attention_cost(model: torch.nn.Module) -> float:
    """One (query, key) pair's attention work in units of one token's work in the linear
    layers, per decoder layer: 2 hidden / (weights per layer) (scores and weighted values
    take `hidden` multiply-adds each per pair; a linear layer one per weight per token).
    What `data.reward_data.row_width` weighs packed rows' widths with. Cached per model."""
    if model not in _ATTENTION_COST:
        inner = unwrap(model)
        config = inner.config.get_text_config()
        embedding = inner.get_input_embeddings().weight.numel()
        weights = sum(p.numel() for p in inner.parameters()) - embedding
        per_layer = weights / max(int(getattr(config, "num_hidden_layers", 1) or 1), 1)
        _ATTENTION_COST[model] = 2.0 * config.hidden_size / max(per_layer, 1.0)
    return _ATTENTION_COST[model]


_ATTENTION_COST: WeakKeyDictionary[torch.nn.Module, float] = WeakKeyDictionary()


class HeadInputView(torch.nn.Module):
    """A reward model seen as a causal LM whose "logits" are what its score head reads
    (B, T, H): the output `models.probe.packing_error` compares between a packed row and
    each sequence alone. The head's own output would not do: a fresh RM's zero head scores
    0 everywhere, packed or not. The view's class carries the RM's class name, which the
    probe's messages print. Forward goes through the RM's top-level forward."""

    _classes: dict[type, type] = {}

    def __new__(cls, model: torch.nn.Module) -> HeadInputView:
        if cls is HeadInputView:
            name = type(unwrap(model)).__name__
            cls = HeadInputView._classes.setdefault(type(unwrap(model)), type(name, (cls,), {}))
        return super().__new__(cls)

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.rm = model
        self.training = model.training  # the probe restores the mode it finds: the RM's

    def get_input_embeddings(self) -> torch.nn.Module:
        return unwrap(self.rm).get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, **_: Any) -> Any:
        with capture_head(self.rm, read="input") as box:
            self.rm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )
        return SimpleNamespace(logits=box["v"])  # (B, T, H)
