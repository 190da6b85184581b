"""Batch containers shared by data, models, rollouts and losses.

One mask convention everywhere: masks are `torch.bool`, True = a valid token.
Labels use -100 for positions the loss ignores (the Hugging Face convention).
Shapes: B = batch size, T = sequence length, P = prompt length.

No `transformers` import here: these are plain tensors in dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch

from rlhfkit.ops.masking import position_ids_from_mask

IGNORE_INDEX = -100
"""Label value that the loss skips (prompt tokens, padding, packed boundaries)."""


def move_to(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """A copy of a dataclass of tensors with every tensor, and every batch of tensors in it
    (a dataclass with `.to`), moved to `device`."""

    def move(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.to(device, non_blocking=non_blocking)
        return v.to(device) if is_dataclass(v) and hasattr(v, "to") else v

    return replace(batch, **{f.name: move(getattr(batch, f.name)) for f in fields(batch)})


@dataclass
class LMBatch:
    """A language-modelling batch (pretraining, SFT, rejection-sampling fine-tuning).

    Two layouts:
    - padded: B rows, right-padded; `attention_mask` marks real tokens, `position_ids` None
      (the model derives them) or given.
    - padding-free packed: B = 1, several examples concatenated in one row, `attention_mask`
      None and `position_ids` restarting at 0 at each example. transformers 5 turns such
      position_ids into a block-diagonal causal mask, but only when the forward gets
      `attention_mask=None` and no KV cache: pass `use_cache=False` (see `model_inputs`).

    The loss shift predicts `labels[:, t + 1]` from position t; labels of the first token
    of every example are -100 so no token is ever predicted across an example boundary.
    """

    input_ids: torch.Tensor
    """(B, T) long: token ids; padding positions hold the pad id."""
    attention_mask: torch.Tensor | None
    """(B, T) bool, True = valid token; None for padding-free packed batches."""
    labels: torch.Tensor
    """(B, T) long: target ids, -100 (IGNORE_INDEX) where no loss is taken."""
    position_ids: torch.Tensor | None = None
    """(B, T) long: positions, restarting at 0 per packed example; None = 0..T-1 per row."""

    @property
    def num_tokens(self) -> int:
        """Number of prediction targets: labels != -100 at positions 1..T-1.

        Position 0 of a row is never a target under the one-position shift, so it is not
        counted even when its label is set; for batches from `rlhfkit.data.collate` this is
        the plain count of labels != -100.
        """
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum().item())

    @property
    def is_packed(self) -> bool:
        """True for a padding-free packed batch (attention_mask None, position_ids given)."""
        return self.attention_mask is None and self.position_ids is not None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> LMBatch:
        """A copy with every tensor on `device`."""
        return move_to(self, device, non_blocking)

    def model_inputs(self) -> dict[str, torch.Tensor | bool | None]:
        """Keyword arguments for a Hugging Face causal LM forward (labels excluded).

        `use_cache=False` always: training forwards need no KV cache, and with a cache
        transformers 5 silently skips the packed-sequence mask (it only looks at
        position_ids when `past_key_values is None`), letting examples attend to each other.
        """
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "use_cache": False,
        }


@dataclass
class PromptBatch:
    """Prompts for generation, left-padded so every row's last column is its last prompt token."""

    input_ids: torch.Tensor
    """(B, P) long: prompt ids, left-padded with the pad id."""
    attention_mask: torch.Tensor
    """(B, P) bool, True = valid (non-pad) token."""

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) long: number of real tokens in each prompt."""
        return self.attention_mask.sum(dim=1)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PromptBatch:
        """A copy with every tensor on `device`."""
        return move_to(self, device, non_blocking)


class _PromptResponse:
    """Sequence views shared by `Generation` and `Rollout`: left-padded prompt ids and mask
    (B, P), right-padded response ids and mask (B, R)."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor

    @property
    def sequences(self) -> torch.Tensor:
        """(B, P + R) prompt then response ids."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + R) bool: real prompt and response tokens."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def position_ids(self) -> torch.Tensor:
        """(B, P + R) long: positions counting real tokens only, as while sampling."""
        return position_ids_from_mask(self.attention_mask)

    @property
    def prompt_len(self) -> int:
        """P, the padded prompt width."""
        return self.prompt_ids.shape[1]


@dataclass
class Generation(_PromptResponse):
    """One batch of sampled responses, as every generation engine returns it (`sampling.generator`).
    Masks are bool, True = real token."""

    prompt_ids: torch.Tensor  # (B, P) long, left-padded with pad_token_id
    prompt_mask: torch.Tensor  # (B, P) bool
    response_ids: torch.Tensor  # (B, R) long, pad after EOS; R = longest response
    response_mask: torch.Tensor  # (B, R) bool, True up to and including EOS
    logprobs: torch.Tensor  # (B, R) float32, 0 where response_mask is False
    ended: torch.Tensor  # (B,) bool, the row produced EOS within max_new_tokens
    texts: list[str] = field(default_factory=list)  # B decoded responses (no EOS, no padding)

    def to(self, device: torch.device | str) -> Generation:
        return move_to(self, device)


@dataclass(frozen=True)
class Rollout(_PromptResponse):
    """One batch of PPO experience, the object that grows through an iteration.

    `loops.ppo.rollout.collect_rollout` builds it (sampling, scores, reference log-probs,
    per-token rewards); the `--estimator`'s function (`loops.ppo.estimators`) returns a copy
    that also holds advantages and returns (and values: gae). Frozen: no stage edits a
    field another has read. Masks are bool, True = real token. P: prompt width
    (left-padded), R: longest response (right-padded); B rows of this process.
    """

    prompt_ids: torch.Tensor  # (B, P) long
    prompt_mask: torch.Tensor  # (B, P) bool
    response_ids: torch.Tensor  # (B, R) long, pad after EOS
    response_mask: torch.Tensor  # (B, R) bool, True up to and including EOS
    logprobs: torch.Tensor  # (B, R) float32, behaviour log-probs from sampling; 0 at padding
    ref_logprobs: torch.Tensor  # (B, R) float32, under the frozen reference; 0 at padding
    raw_scores: torch.Tensor  # (B,) float32, the combined score before any whitening
    scores: torch.Tensor  # (B,) float32, after EOS penalty / normalisation / clipping
    kl: torch.Tensor  # (B, R) float32, the KL estimator per token; 0 at padding
    rewards: (
        torch.Tensor
    )  # (B, R) float32, -kl_coef * kl (KL in the reward) + score at the last token
    ended: torch.Tensor  # (B,) bool, the response produced EOS
    safety: torch.Tensor  # (B,) bool, prompt tagged possibly unsafe
    prompts: list[str] = field(default_factory=list)  # B prompt texts
    responses: list[str] = field(default_factory=list)  # B decoded responses (no EOS/pad)
    per_rm: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B,) raw score
    kl_coef: float = 0.0
    kl_estimator: str = "k1"  # which estimator `kl` holds
    kl_in: str = "reward"  # "reward": `rewards` carry -kl_coef x kl; "loss": the update adds k3
    group_size: int = 1  # responses per prompt: rows [g n, (g + 1) n) answer one prompt
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    # the generation engine's own numbers, logged as they are (vLLM: vllm/logprob_gap_*)
    engine_stats: dict[str, float] = field(default_factory=dict)
    # Added by step 4 (`loops.ppo.estimators`):
    values: torch.Tensor | None = (
        None  # (B, R) float32, V(prompt + response[:t]); 0 at padding; gae only
    )
    advantages: torch.Tensor | None = None  # (B, R) float32, the estimator's; 0 at padding
    returns: torch.Tensor | None = (
        None  # (B, R) float32, gae: advantages + values before whitening; else what A is computed from
    )
    value_graph: torch.Tensor | None = field(default=None, repr=False, compare=False)
    """(B, R) the same values WITH their autograd graph, kept only when the update makes a
    single pass and can reuse this forward for its value loss (`update.reuses_value_forward`)."""

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: tokens per response, EOS included."""
        return self.response_mask.sum(-1)

    @property
    def device(self) -> torch.device:
        return self.response_ids.device

    def row_tensors(self) -> dict[str, torch.Tensor]:
        """The per-row tensor fields that are set (what minibatches slice); not the graph."""
        return {
            f.name: v
            for f in fields(self)
            if f.name != "value_graph" and isinstance(v := getattr(self, f.name), torch.Tensor)
        }

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]
