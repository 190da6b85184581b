"""Configs of the supervised stages: pretrain, SFT, reward models, scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from rlhfkit.config.base import DeviceOptions, RemoteCodeOptions, RewardOptions, TrainOptions
from rlhfkit.config.fields import (
    AnyModelFolder,
    CausalLMFolder,
    Fraction,
    Input,
    NonNegative,
    Positive,
    RewardFolder,
)

# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PretrainConfig(TrainOptions):
    """Train a byte-level BPE tokenizer and a Llama LM from scratch on a text corpus."""

    data: Input[str] = ""
    """Corpus: JSONL of {"text": ...}, a .txt file, Parquet, or a `datasets` folder."""
    preset: str = "tiny"
    """Model size preset (tiny ~1M params, small ~6M, base ~25M), ignored with --model-config."""
    model_config: Input[str | None] = None
    """Path to a Hugging Face config.json to build instead of a preset."""
    tokenizer: Input[str | None] = None
    """Use this existing tokenizer folder instead of training one."""
    vocab_size: Positive[int] = 2048
    """Vocabulary size of the trained tokenizer."""
    seq_len: Positive[int] = 256
    """Tokens per packed training block."""
    eval_fraction: Fraction[float] = 0.02
    """Share of blocks held out for an evaluation loss each epoch."""
    lr: Positive[float] = 1e-3
    warmup_steps: NonNegative[int] = 20
    weight_decay: NonNegative[float] = 0.1
    batch_size: Positive[int] = 16


@dataclass(kw_only=True)
class SFTConfig(RemoteCodeOptions, TrainOptions):
    """Supervised fine-tuning on prompt + completion pairs; a checkpoint per epoch."""

    model: CausalLMFolder[str] = ""
    """Hugging Face causal LM folder to start from, or a .gguf file (llama.cpp; dequantized at load)."""
    data: Input[str] = ""
    """Training records: {"prompt","completion"} or {"messages"} (JSONL, Parquet, datasets folder)."""
    eval_data: Input[str | None] = None
    """Held-out records of the same format; their loss is reported each epoch."""
    eval_fraction: Fraction[float] = 0.0
    """Without --eval-data, hold out this share of --data for the eval loss."""
    loss_on_prompt: bool = False
    """Train on prompt tokens too (by default only completion tokens carry loss)."""
    max_len: Positive[int] = 256
    """Maximum tokens of prompt + completion + EOS."""
    overlong: Literal["truncate", "drop", "error"] = "truncate"
    """What to do with a record longer than --max-len (the count is reported)."""
    packing: Annotated[
        bool | None, tyro.conf.DisallowNone, tyro.conf.arg(help_behavior_hint="(default: auto)")
    ] = None
    """Pack sequences into rows without padding, position ids restarting per sequence; default: on where the model keeps packed examples apart (checked at start-up)."""
    epochs: Positive[int] = 3
    lr: Positive[float] = 1e-4
    warmup_steps: NonNegative[int] = 10


@dataclass(kw_only=True)
class RMConfig(RemoteCodeOptions, TrainOptions):
    """Train a reward model from K-wise rankings and graded pairwise preferences (InstructGPT + Llama 2)."""

    model: AnyModelFolder[str] = ""
    """Hugging Face causal LM folder (e.g. an SFT epoch) or .gguf file to start from; its LM head is replaced by a one-output head."""
    data: Input[tuple[str, ...]] = ()
    """Training files (required): ranking {"prompt","responses","ranking","strengths"?} and/or pairwise {"prompt","chosen","rejected","strength"?} records."""
    eval_data: Input[tuple[str, ...]] = ()
    """Held-out files of the same formats: loss and pairwise accuracy (overall, per strength) each epoch."""
    eval_fraction: Fraction[float] = 0.0
    """Without --eval-data, hold out this share of the prompts of --data."""
    margin: str = "none"
    """Margin m(strength) subtracted inside the sigmoid: none, llama2-small (1, 2/3, 1/3, 0), llama2-large (3, 2, 1, 0), or 'significantly_better=3,better=2,...'."""
    max_len: Positive[int] = 256
    """Maximum tokens of prompt + response + EOS."""
    overlong: Literal["truncate", "error"] = "truncate"
    """A longer sequence: 'truncate' drops its oldest prompt tokens (the end, where the score is read, stays), 'error' stops with file:line."""
    head_init: Literal["zeros", "normal"] = "zeros"
    """Score head initialisation: 'zeros' (every score starts at 0, loss at log 2) or 'normal' (std 1/sqrt(hidden+1))."""
    packing: Annotated[
        bool | None, tyro.conf.DisallowNone, tyro.conf.arg(help_behavior_hint="(default: auto)")
    ] = None
    """Score responses in padding-free packed rows (position ids restarting per response) instead of padded batches; default: on where the model keeps packed sequences apart (checked at start-up)."""
    normalize_with: Input[str | None] = None
    """After training, shift the RM so that these responses score mean 0: JSONL of {"prompt","completion"} (e.g. the SFT demonstrations, InstructGPT) or {"prompt","response"}. The shift is in the saved weights; the statistics go to rlhfkit_reward.json."""
    normalize_scale: bool = False
    """With --normalize-with: also scale the scores so that those responses have std 1 (N+ details, OpenRLHF)."""
    batch_size: Positive[int] = 8
    """PROMPTS per micro-batch; each brings all its K responses (K forward passes per prompt)."""
    lr: Positive[float] = 1e-4
    warmup_steps: NonNegative[int] = 5


@dataclass(kw_only=True)
class RMEvalConfig(RemoteCodeOptions, DeviceOptions):
    """Evaluate a reward model on rankings: loss, pairwise accuracy overall and per strength, score gap."""

    model: RewardFolder[str] = ""
    """Reward model folder (written by `rlhfkit rm`, or any AutoModelForSequenceClassification with num_labels=1)."""
    data: Input[tuple[str, ...]] = ()
    """Ranking and/or pairwise files (required)."""
    margin: str = "none"
    """Margins used in the reported loss (same choices as `rlhfkit rm --margin`)."""
    out: str | None = None
    """JSON file for the metrics (default: print only)."""
    max_len: Positive[int | None] = None
    """Maximum tokens per sequence (default: the RM's training --max-len)."""
    batch_size: Positive[int] = 16
    """Prompts per forward batch."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run."""


@dataclass(kw_only=True)
class ScoreConfig(DeviceOptions, RewardOptions):
    """Score {"prompt","response","safety"?} records with one or several reward models, combined."""

    data: Input[str] = ""
    """JSONL of {"prompt","response"} records; optional "safety": true marks possibly unsafe prompts."""
    whiten: bool | None = None
    """Whiten the combined score over the whole file (default: on for llama2, off otherwise)."""
    out: str = ""
    """Output JSONL: each record plus "score" (combined) and "scores" ({name: raw score})."""
    overwrite: bool = False
    """Replace --out if it exists."""
    max_len: Positive[int | None] = None
    """Maximum tokens per sequence (default: each RM's training --max-len)."""
    batch_size: Positive[int] = 32
    """Sequences per forward batch."""
