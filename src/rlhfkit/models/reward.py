"""Scalar-head reward / value models, saved as `AutoModelForSequenceClassification`.

A reward model is a causal LM whose next-token head is replaced by a linear head with one
output (`num_labels=1`): r(x, y) is that head's value at the LAST real token of prompt x +
response y. It is a real Hugging Face class (e.g. `LlamaForSequenceClassification`), so
`AutoModelForSequenceClassification.from_pretrained(DIR)` loads a saved RM and gives the
same scores as `reward_scores` here (tested to 1e-5). Families transformers has no such
class for (Granite, Cohere, OLMoE...) get the LM's backbone + a `score` head instead
(`models.scalar_head`); every function here treats both alike.

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
classification output keeps only the pooled value. The same hook serves packed rows
(`packed_reward_scores`: several sequences per row, position ids restarting at 0, no
attention mask): the head runs on every position and each score is read at its sequence's
last token, on models that keep packed sequences apart (`HeadInputView`, probed by
`models.probe.packing_error`).
"""

from __future__ import annotations

import json
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
from rlhfkit.models.lora import AdapterOff
from rlhfkit.models.modules import bias_feeding
from rlhfkit.models.scalar_head import (
    build_score_head_model,
    has_sequence_classification,
    load_score_head_model,
    note_head_bias,
    read_marker,
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


def _head_slot(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module | None, bool]:
    """(model, the module its forward calls for the score, adapter off?): the `.score`
    head itself, or PEFT's wrapper around it under LoRA; `AdapterOff(m)` is m, adapter off."""
    model, off = unwrap(model), False
    if isinstance(model, AdapterOff):  # the LoRA value model read as the reward model
        model, off = unwrap(model.policy), True
    return model, getattr(model, "score", None), off


def reward_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The one-output linear head (`.score`) of a sequence-classification model: under
    LoRA, PEFT's trained copy (its original with the adapter off, `AdapterOff`)."""
    model, head, off = _head_slot(model)
    if hasattr(head, "modules_to_save"):  # LoRA (models/lora.py): PEFT's wrapper
        head = head.original_module if off else head.modules_to_save[head.active_adapter]
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise UserError(
            f"{type(model).__name__} has no one-output linear `score` head: not a reward model "
            "(expected an AutoModelForSequenceClassification with num_labels=1, or rlhfkit's "
            "backbone + score head)"
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
    next-token head is dropped and a `score` head (hidden -> 1, no bias) is added (the
    family's AutoModelForSequenceClassification where transformers has one, else the
    backbone + score head of `models.scalar_head`, with one printed line), initialised:
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
        if not has_sequence_classification(config):  # the backbone + score head path
            model = build_score_head_model(config)
        else:
            try:
                model = AutoModelForSequenceClassification.from_config(
                    config, trust_remote_code=trust_remote_code
                )
            except ValueError as e:  # e.g. its remote code, not allowed
                raise UserError(
                    f"{type(lm).__name__} has no sequence-classification class: {e}"
                ) from e
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
    if read_marker(folder) is not None:  # rlhfkit's backbone + score head (models.scalar_head)
        model = load_score_head_model(folder, dtype)
        return _ready(model, load_tokenizer(folder, trust_remote_code=trust_remote_code), device)
    saved_bias = _saved_head_bias(folder)
    try:
        with quiet_progress(), _quiet_load_report(saved_bias is not None):
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
    head = reward_head(model)
    if saved_bias is not None and head.bias is None:
        # A normalised RM of a family without a norm bias (`shift_and_scale_scores`):
        # from_pretrained dropped the saved score.bias; put it back.
        head.bias = torch.nn.Parameter(saved_bias.to(head.weight), requires_grad=False)
    tokenizer = load_tokenizer(folder, trust_remote_code=trust_remote_code)
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
    return _ready(model, tokenizer, device)


def _ready(model: PreTrainedModel, tokenizer: Any, device: torch.device | str) -> tuple[Any, Any]:
    tokenizer.padding_side = "right"
    model.to(torch.device(device))
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


# ---------------------------------------------------------------------------------------
# Shifting and scaling the scores (reward normalisation)
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def shift_and_scale_scores(model: torch.nn.Module, shift: float, scale: float = 1.0) -> str:
    """Make every score (and per-token value) `scale * r + shift`, exactly, in the weights.

    Returns where the shift went. The head's weight (and bias) are multiplied by `scale`;
    the shift goes to, in order:
    - "score.bias": the head's own bias, if it has one;
    - the bias of the module feeding the head (a final LayerNorm): b += shift * w / |w|^2,
      so w . (h + delta) = w . h + shift for every hidden state h; the architecture is
      unchanged, so `AutoModelForSequenceClassification.from_pretrained` gives the shifted
      scores;
    - else (an RMSNorm: nothing additive after the last normalisation) a new `score.bias`.
      Transformers builds these heads with bias=False and DROPS a saved `score.bias` on
      load: `load_reward_model` restores it, plain `from_pretrained` gives the unshifted
      scores (the caller records the shift in rlhfkit_reward.json).
    """
    model = unwrap(model)
    head = reward_head(model)
    head.weight.mul_(scale)
    if head.bias is not None:
        head.bias.mul_(scale).add_(shift)
        return "score.bias"
    found = bias_feeding(model, head)
    if found is not None:
        name, bias = found
        w = head.weight[0].double()  # (H,)
        if float(w @ w) == 0.0:
            raise UserError("the reward head is all zeros: every score is 0, nothing to shift")
        bias.add_((w * (shift / float(w @ w))).to(bias.dtype))
        return f"{name}.bias"
    head.bias = torch.nn.Parameter(
        torch.tensor([shift], dtype=head.weight.dtype, device=head.weight.device),
        requires_grad=head.weight.requires_grad,
    )
    note_head_bias(model)  # a backbone + score head model rebuilds its head with the bias
    return "score.bias (new: plain from_pretrained drops it)"


def _saved_head_bias(folder: Path) -> torch.Tensor | None:
    """The `score.bias` saved in `folder`'s safetensors, if any (`shift_and_scale_scores`'
    last case: transformers' bias-free heads drop it on load)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        name = json.loads(index.read_text()).get("weight_map", {}).get("score.bias")
    else:
        name = "model.safetensors"
    if name is None or not (folder / name).is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(folder / name), framework="pt") as f:
        return f.get_tensor("score.bias") if "score.bias" in f.keys() else None


@contextmanager
def _quiet_load_report(quiet: bool) -> Iterator[None]:
    """Hide transformers' load report (it lists the score.bias we restore as UNEXPECTED)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


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
def capture_head(model: torch.nn.Module, read: str = "output") -> Iterator[dict[str, torch.Tensor]]:
    """box["v"]: the head's output (B, T, 1), or with read="input" what it reads (B, T, H)."""
    reward_head(model)  # a one-output head, or a clear error
    box: dict[str, torch.Tensor] = {}
    # The module the forward calls: under LoRA, PEFT's wrapper, which returns the output of
    # the trained copy or (adapter off) of the original head.
    slot = _head_slot(model)[1]
    if read == "input":
        handle = slot.register_forward_pre_hook(lambda m, args: box.__setitem__("v", args[0]))
    else:
        handle = slot.register_forward_hook(lambda m, i, out: box.__setitem__("v", out))
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
    with capture_head(model) as box:
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
