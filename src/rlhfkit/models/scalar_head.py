"""Reward and value models for the causal LMs that transformers has no sequence-classification
class for (Granite, Cohere, OLMoE, CodeGen, XGLM, ...): the LM's backbone plus a linear
`score` head (hidden -> 1), as OpenRLHF builds its reward models.

Which path a model takes is decided by what transformers exposes, never by a list of
families: `has_sequence_classification(config)` asks the auto mapping
(`MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING`, or the config's own `auto_map`); where it
has a class, `AutoModelForSequenceClassification` stays the reward model, unchanged.

Elsewhere `score_head_class(config)` makes, once per config class, a subclass of the
family's own `PreTrainedModel` base (e.g. `GranitePreTrainedModel`: its weight init,
`_no_split_modules` for FSDP2, attention implementations, gradient checkpointing) named
`<Family>WithScoreHead`, holding
- the backbone under the family's `base_model_prefix` (e.g. `model`), of the very class
  the family's causal LM nests there (found by building that LM on the meta device), so
  backbone weights have the same names as in the causal LM's checkpoint, minus `lm_head`;
- `score`: nn.Linear(hidden, 1), no bias unless the marker says so (a shift put there
  by reward normalisation).
Its forward returns `logits` (B, 1): the head's value at each row's last real token by
the attention mask (any padding side), or without a mask at the rightmost token that is
not the pad id (transformers' rule). rlhfkit itself reads the head with hooks
(`models.reward`), as for the sequence-classification classes.

On disk (`save_pretrained`): config.json is the family's config (its `model_type`) with
`architectures: ["<Family>WithScoreHead"]`, `num_labels: 1` and the marker
`"rlhfkit_score_head": {"format": 1, "backbone": ..., "head": "score", "bias": ...}`,
which `validate.model_kind` reads to call the folder a reward model before torch loads;
model.safetensors holds the backbone's weights and `score.weight` (+ `score.bias`).
`load_score_head_model` rebuilds the class from the config (no remote code, ever).
Plain transformers: `AutoModel.from_pretrained(DIR)` is the backbone, and the score is
`last_hidden_state[last real token] @ score.weight.T (+ score.bias)`
(docs/reward-models-any-architecture.md, tested).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from rlhfkit.errors import UserError
from rlhfkit.models.folders import SCORE_HEAD_MARKER
from rlhfkit.models.load import _check_model_folder, quiet_progress

FORMAT = 1  # the on-disk format of the marker; a newer one is refused
DOCS = "docs/reward-models-any-architecture.md"
_CLASSES: dict[type, type] = {}
_BACKBONES: dict[type, type] = {}


def has_sequence_classification(config: Any) -> bool:
    """Whether transformers has an AutoModelForSequenceClassification class for `config`
    (its auto mapping, or the config's `auto_map` for remote code)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    auto_map = getattr(config, "auto_map", None) or {}
    return (
        type(config) in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
        or "AutoModelForSequenceClassification" in auto_map
    )


def is_marked(config: Any) -> bool:
    """Whether `config` describes a backbone + score head model (it holds the marker)."""
    return isinstance(getattr(config, SCORE_HEAD_MARKER, None), dict)


def is_score_head_model(model: torch.nn.Module) -> bool:
    """Whether `model` is a backbone + score head model of this module (by its config)."""
    return is_marked(getattr(model, "config", None))


def _causal_lm_class(config: Any) -> type:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise UserError(
            f"{type(config).__name__} (model_type {config.model_type!r}): transformers has "
            "neither a sequence-classification nor a causal-LM class for it (a backbone + "
            "score head is built from transformers' own causal-LM classes, not remote code)"
        ) from None


def _family_base(lm_class: type) -> type:
    """The family's PreTrainedModel base of its causal LM (e.g. GranitePreTrainedModel)."""
    for cls in lm_class.__mro__[1:]:
        if issubclass(cls, PreTrainedModel) and cls is not PreTrainedModel:
            return cls
    return PreTrainedModel


def _backbone_class(config: Any) -> type:
    """The class the family's causal LM holds under its `base_model_prefix`: a probe build
    of that LM on the meta device (no memory, no weights), once per config class."""
    if type(config) not in _BACKBONES:
        lm_class = _causal_lm_class(config)
        with torch.device("meta"), quiet_progress():
            lm = lm_class(copy.deepcopy(config))
        backbone = getattr(lm, lm.base_model_prefix, None)
        if not isinstance(backbone, PreTrainedModel):
            raise UserError(
                f"{lm_class.__name__} has no backbone module under its base_model_prefix "
                f"{lm.base_model_prefix!r}: rlhfkit cannot build a reward model on it"
            )
        _BACKBONES[type(config)] = type(backbone)
    return _BACKBONES[type(config)]


class ScoreHeadMixin:
    """The backbone + `score` head model; mixed into the family's PreTrainedModel base by
    `score_head_class` (module docstring)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        marker = getattr(config, SCORE_HEAD_MARKER, None) or {}
        backbone = _backbone_class(config)._from_config(config)
        setattr(self, self.base_model_prefix, backbone)
        hidden = config.get_text_config().hidden_size
        self.score = torch.nn.Linear(hidden, 1, bias=bool(marker.get("bias", False)))
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast:
        """logits (B, 1): the head at each row's last real token (module docstring); with
        `labels` (B,), loss = mean squared error, as transformers' regression heads."""
        given = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        # Only what was given: some backbones (state-space models) take no position ids.
        given = {k: v for k, v in given.items() if v is not None}
        out = getattr(self, self.base_model_prefix)(**given, **kwargs)
        values = self.score(out.last_hidden_state)  # (B, T, 1)
        b, t = values.shape[:2]
        last = _last_positions(self.config, input_ids, attention_mask, b, t).to(values.device)
        pooled = values[torch.arange(b, device=values.device), last]  # (B, 1)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.mse_loss(pooled.squeeze(-1), labels.to(pooled.dtype))
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=getattr(out, "past_key_values", None),
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
        )


def _last_positions(
    config: Any, input_ids: torch.Tensor | None, mask: torch.Tensor | None, b: int, t: int
) -> torch.Tensor:
    """(B,) the position each row's score is read at: the rightmost True of a (B, T) mask;
    without one, the rightmost id that is not the pad id (transformers' rule), else T - 1."""
    pad = getattr(config.get_text_config(), "pad_token_id", None)
    if mask is not None and mask.dim() == 2:
        real = mask.bool()
    elif input_ids is not None and pad is not None:
        real = input_ids != pad
    else:
        return torch.full((b,), t - 1, dtype=torch.long)
    positions = torch.arange(t, device=real.device)
    return torch.where(real, positions, -1).argmax(dim=1).clamp(min=0)  # (B,)


def score_head_class(config: Any) -> type[PreTrainedModel]:
    """`<Family>WithScoreHead` for `config`'s family, made once per config class."""
    if type(config) not in _CLASSES:
        lm_class = _causal_lm_class(config)
        base = _family_base(lm_class)
        family = lm_class.__name__
        for suffix in ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"):
            family = family.removesuffix(suffix)
        name = f"{family}WithScoreHead"
        attrs = {
            "__module__": __name__,
            "__qualname__": name,
            "config_class": type(config),
            "base_model_prefix": lm_class.base_model_prefix,
            "__doc__": f"{family}'s backbone + a one-output linear `score` head (rlhfkit).",
        }
        cls = type(name, (ScoreHeadMixin, base), attrs)
        setattr(sys.modules[__name__], name, cls)  # found by name (pickle, repr)
        _CLASSES[type(config)] = cls
    return _CLASSES[type(config)]


def mark(config: Any, *, bias: bool = False) -> None:
    """Put the marker into `config` (in place): this config describes a score head model."""
    prefix = _causal_lm_class(config).base_model_prefix
    setattr(
        config,
        SCORE_HEAD_MARKER,
        {"format": FORMAT, "backbone": prefix, "head": "score", "bias": bias},
    )


def note_head_bias(model: torch.nn.Module) -> None:
    """After a `score.bias` was added (reward normalisation): the marker says so, so the
    saved folder rebuilds the head with its bias."""
    if is_score_head_model(model):
        getattr(model.config, SCORE_HEAD_MARKER)["bias"] = model.score.bias is not None


def build_score_head_model(config: Any) -> PreTrainedModel:
    """A fresh backbone + score head model for causal-LM `config` (a copy is marked; the
    caller's config is left alone). Prints one line saying so (rank 0)."""
    config = config.__class__.from_dict(config.to_dict())
    mark(config)
    model = score_head_class(config)(config)
    if os.environ.get("RANK", "0") == "0":
        print(
            f"note: transformers has no sequence-classification class for "
            f"{config.model_type}: reward model = its backbone + a linear score head "
            f"({type(model).__name__}; loads with rlhfkit; see {DOCS})",
            flush=True,
        )
    return model


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a saved model folder's config.json, or None (another kind of model)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    marker = config.get(SCORE_HEAD_MARKER) if isinstance(config, dict) else None
    return marker if isinstance(marker, dict) else None


def load_score_head_model(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A saved backbone + score head model (train mode, as from_pretrained gives it).
    Safetensors only; never remote code: the class is rebuilt from the family's own."""
    folder = _check_model_folder(path)
    marker = read_marker(folder) or {}
    if not isinstance(marker.get("format"), int) or marker["format"] > FORMAT:
        raise UserError(
            f"{folder}: a score head model of format {marker.get('format')} (this rlhfkit "
            f"reads format {FORMAT}): written by a newer rlhfkit"
        )
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        with quiet_progress():
            model = score_head_class(config).from_pretrained(
                str(folder), config=config, dtype=dtype, use_safetensors=True
            )
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not load a reward model from {folder}: {e}") from e
    return model
