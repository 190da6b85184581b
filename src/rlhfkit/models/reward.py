"""Scalar-head reward / value models, saved as `AutoModelForSequenceClassification`.

A reward model is a causal LM whose next-token head is replaced by a linear head with one
output (`num_labels=1`): r(x, y) is that head's value at the LAST real token of prompt x +
response y. It is a real Hugging Face class (e.g. `LlamaForSequenceClassification`), so
`AutoModelForSequenceClassification.from_pretrained(DIR)` loads a saved RM and gives the
same scores as `reward_scores` here (tested to 1e-5).

Which token is "last" (transformers 5.23, `GenericForSequenceClassification.forward`):
HF takes the rightmost token whose id differs from `config.pad_token_id`. Our sequences end
in EOS, so HF and we agree only if the pad id is NOT the EOS id (with pad == eos, HF would
score the token before the final EOS). Hence:
- an RM always has its own pad token: when the LM's tokenizer has none, or pads with EOS,
  `init_reward_model` adds `<|rm_pad|>` to the tokenizer and one embedding row (padding
  is masked, so that row never touches a real token's hidden state);
- our own scoring does not rely on pad ids at all: it takes the rightmost position of the
  attention mask, and derives position ids from the mask, so right, left or mixed padding
  (a left-padded prompt followed by a right-padded response, as PPO rollouts are) all give
  the score of the unpadded sequence. For right-padded batches HF's rule picks the same
  position, which is what the round-trip test checks.

The forward always goes through the model's top-level `forward` (so DDP's gradient hooks
run); per-token values are read from the head with a forward hook, because HF's
classification output keeps only the pooled value.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from rlhfkit.errors import UserError
from rlhfkit.models.load import (
    _check_model_folder,
    load_causal_lm,
    load_tokenizer,
    quiet_progress,
)
from rlhfkit.models.wrap import unwrap

log = logging.getLogger("rlhfkit")

RM_PAD = "<|rm_pad|>"
HeadInit = Literal["zeros", "normal"]


# ---------------------------------------------------------------------------------------
# Building and loading
# ---------------------------------------------------------------------------------------


def ensure_distinct_pad(tokenizer: Any) -> bool:
    """Give `tokenizer` a pad token that is not EOS (in place). True if one was added.

    Needed for HF's last-token rule (module docstring). Right padding is set too: HF
    scores the rightmost non-pad token, which is the last real one under right padding.
    """
    tokenizer.padding_side = "right"
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        return False
    tokenizer.add_special_tokens({"pad_token": RM_PAD})
    return True


def reward_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The one-output linear head (`.score`) of a sequence-classification model."""
    model = unwrap(model)
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise UserError(
            f"{type(model).__name__} has no one-output linear `score` head: not a reward model "
            "(expected an AutoModelForSequenceClassification with num_labels=1)"
        )
    return head


def _backbone(model: PreTrainedModel) -> torch.nn.Module:
    return getattr(model, model.base_model_prefix)


def init_reward_model(
    lm: str | Path | PreTrainedModel,
    tokenizer: Any | None = None,
    *,
    head_init: HeadInit = "zeros",
    seed: int = 0,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """A reward model initialised from a causal LM: (model, tokenizer), in train mode.

    `lm` is a Hugging Face causal LM folder (its tokenizer is loaded from there when
    `tokenizer` is None) or an LM object. The backbone weights are copied from the LM; its
    next-token head is dropped and a `score` head (hidden -> 1, no bias) is added:
    - "zeros" (default): every score starts at exactly 0, so every pair's loss starts at
      log 2 and no random preference is baked in; the head still gets a gradient at step 1
      (sum of (sigmoid - 1) * (h_w - h_l)), the backbone from step 2 on. A value model
      started from it predicts 0 everywhere, a neutral start.
    - "normal": normal with std 1/sqrt(hidden + 1), as OpenAI's lm-human-preferences
      (Ziegler et al. 2019); scores start with std about 1 after the final norm.
    The tokenizer gets a pad token distinct from EOS if needed (module docstring).
    """
    if isinstance(lm, (str, Path)):
        if tokenizer is None:
            tokenizer = load_tokenizer(lm, trust_remote_code=trust_remote_code)
        lm = load_causal_lm(lm, "cpu", trust_remote_code=trust_remote_code)
    if tokenizer is None:
        raise ValueError("init_reward_model: pass the tokenizer with an LM object")
    ensure_distinct_pad(tokenizer)
    config = lm.config.__class__.from_dict(lm.config.to_dict())
    config.num_labels = 1
    # The pad id may be one we just added (not yet an embedding row): set it after resizing.
    config.pad_token_id = None
    config.architectures = None  # set to the classification class on save
    config.problem_type = "regression"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_config(
                config, trust_remote_code=trust_remote_code
            )
        except ValueError as e:
            raise UserError(f"{type(lm).__name__} has no sequence-classification class: {e}") from e
        try:
            _backbone(model).load_state_dict(_backbone(lm).state_dict())
        except RuntimeError as e:
            raise UserError(
                f"backbone weights of {type(lm).__name__} do not fit {type(model).__name__}: {e}"
            ) from e
        embeddings = model.get_input_embeddings()
        if len(tokenizer) > embeddings.num_embeddings:  # a pad token was added
            embeddings = model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        embeddings.padding_idx = tokenizer.pad_token_id  # no gradient into the pad row
        head = reward_head(model)
        with torch.no_grad():
            if head_init == "zeros":
                head.weight.zero_()
            elif head_init == "normal":
                head.weight.normal_(0.0, 1.0 / math.sqrt(head.in_features + 1))
            else:
                raise ValueError(f"head_init must be 'zeros' or 'normal', got {head_init!r}")
    model.to(torch.device(device))
    model.train()
    return model, tokenizer


def load_reward_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """A saved reward model and its tokenizer (eval mode, gradients off): (model, tokenizer).

    Same safety rules as `load_causal_lm`: safetensors only, no remote code unless asked.
    """
    folder = _check_model_folder(path)
    try:
        with quiet_progress():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(folder), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
            )
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"could not load a reward model from {folder}: {e}") from e
    if model.config.num_labels != 1:
        raise UserError(
            f"{folder} is a classifier with {model.config.num_labels} labels, not a reward "
            "model (num_labels=1)"
        )
    reward_head(model)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "right"
    pad = model.config.pad_token_id
    if pad is None or pad == tokenizer.eos_token_id:
        # rlhfkit's scores use the attention mask and stay right; HF's pooled output
        # (rightmost token != pad id) would skip a final EOS. Folders we write never do this.
        log.warning(
            "%s: pad_token_id %s is None or EOS: AutoModelForSequenceClassification's own "
            "pooling of this model differs from rlhfkit's scores on sequences ending in EOS",
            folder,
            pad,
        )
    model.to(torch.device(device))
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


# ---------------------------------------------------------------------------------------
# Scores and values
# ---------------------------------------------------------------------------------------


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B,) long: the rightmost True position of each row (any padding side)."""
    if attention_mask.dtype != torch.bool:
        raise TypeError(
            f"attention_mask must be bool (True = real token), got {attention_mask.dtype}"
        )
    if not bool(attention_mask.any(dim=1).all()):
        raise ValueError("every row needs at least one real token")
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return torch.where(attention_mask, positions, -1).argmax(dim=1)  # (B,)


@contextmanager
def _capture_head(model: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    box: dict[str, torch.Tensor] = {}
    handle = reward_head(model).register_forward_hook(lambda m, i, out: box.__setitem__("v", out))
    try:
        yield box
    finally:
        handle.remove()


def values_for_tokens(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) head value at every position (PPO's value model; the RM score at the last).

    input_ids: (B, T) long; attention_mask: (B, T) bool, True = real token, any padding
    layout. Position ids count real tokens (0 at a row's first real token), as in
    `models.generate`, so values do not depend on padding. Padding positions hold junk:
    mask them. `model` may be DDP-wrapped; the call goes through its top-level forward.
    """
    if attention_mask.dtype != torch.bool:
        raise TypeError(
            f"attention_mask must be bool (True = real token), got {attention_mask.dtype}"
        )
    pad_id = unwrap(model).config.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    # Padding positions get the RM's pad id whatever the caller padded with (e.g. a
    # policy that pads with EOS), so HF's own pooled output stays well defined too.
    input_ids = torch.where(attention_mask, input_ids, pad_id)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
    with _capture_head(model) as box:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
    return box["v"].squeeze(-1)  # (B, T)


def reward_scores(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B,) r(x, y): the head's value at each row's last real token (differentiable).

    input_ids, attention_mask: (B, T), prompt + response, any padding layout (mask bool).
    """
    values = values_for_tokens(model, input_ids, attention_mask)  # (B, T)
    last = last_token_index(attention_mask)  # (B,)
    return values.gather(1, last[:, None]).squeeze(1)  # (B,)
