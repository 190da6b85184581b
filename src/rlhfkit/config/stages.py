"""Configs of the supervised stages: pretrain, SFT, reward models, scoring, DPO."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from rlhfkit.config.base import (
    ChatOptions,
    DeviceOptions,
    RemoteCodeOptions,
    RewardOptions,
    TrainOptions,
)
from rlhfkit.config.fields import (
    AnyModelFolder,
    CausalLMFolder,
    CheckedBy,
    CheckedWith,
    CorpusData,
    DataFile,
    Fraction,
    Input,
    NonNegative,
    OutputPath,
    Port,
    Positive,
    PreferenceData,
    RewardFolder,
    SFTData,
    WithinPositions,
)

MARGIN = CheckedBy("rlhfkit.config.checks:margin")

# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PretrainConfig(TrainOptions):
    """Train a byte-level BPE tokenizer and a Llama LM from scratch on a text corpus."""

    data: CorpusData[str] = ""
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
class SFTConfig(ChatOptions, RemoteCodeOptions, TrainOptions):
    """Supervised fine-tuning on prompt + completion pairs; a checkpoint per epoch."""

    model: CausalLMFolder[str] = ""
    """Hugging Face causal LM folder to start from, or a .gguf file (llama.cpp; dequantized at load)."""
    data: SFTData[str] = ""
    """Training records: {"prompt","completion"} or {"messages"} (JSONL, Parquet, datasets folder)."""
    eval_data: SFTData[str | None] = None
    """Held-out records of the same format; their loss is reported each epoch."""
    eval_fraction: Fraction[float] = 0.0
    """Without --eval-data, hold out this share of --data for the eval loss."""
    loss_on_prompt: bool = False
    """Train on prompt tokens too (by default only completion tokens carry loss)."""
    max_len: Annotated[Positive[int], WithinPositions()] = 256
    """Maximum tokens of prompt + completion + EOS (capped, with a note, to the model's positions: max_position_embeddings in its config.json)."""
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
class RMConfig(ChatOptions, RemoteCodeOptions, TrainOptions):
    """Train a reward model from K-wise rankings and graded pairwise preferences (InstructGPT + Llama 2)."""

    model: AnyModelFolder[str] = ""
    """Hugging Face causal LM folder (e.g. an SFT epoch) or .gguf file to start from; its LM head is replaced by a one-output head."""
    data: PreferenceData[tuple[str, ...]] = ()
    """Training files (required): ranking {"prompt","responses","ranking","strengths"?} and/or pairwise {"prompt","chosen","rejected","strength"?} records."""
    eval_data: PreferenceData[tuple[str, ...]] = ()
    """Held-out files of the same formats: loss and pairwise accuracy (overall, per strength) each epoch."""
    eval_fraction: Fraction[float] = 0.0
    """Without --eval-data, hold out this share of the prompts of --data."""
    margin: Annotated[str, MARGIN] = "none"
    """Margin m(strength) subtracted inside the sigmoid: none, llama2-small (1, 2/3, 1/3, 0), llama2-large (3, 2, 1, 0), or 'significantly_better=3,better=2,...'."""
    max_len: Annotated[Positive[int], WithinPositions()] = 256
    """Maximum tokens of prompt + response + EOS (capped, with a note, to the model's positions)."""
    overlong: Literal["truncate", "error"] = "truncate"
    """A longer sequence: 'truncate' drops its oldest prompt tokens (the end, where the score is read, stays), 'error' stops with file:line."""
    head_init: Literal["zeros", "normal"] = "zeros"
    """Score head initialisation: 'zeros' (every score starts at 0, loss at log 2) or 'normal' (std 1/sqrt(hidden+1))."""
    packing: Annotated[
        bool | None, tyro.conf.DisallowNone, tyro.conf.arg(help_behavior_hint="(default: auto)")
    ] = None
    """Score responses in padding-free packed rows (position ids restarting per response) instead of padded batches; default: on where the model keeps packed sequences apart (checked at start-up)."""
    normalize_with: Annotated[
        str | None, DataFile("normalize"), CheckedWith("rlhfkit.config.checks:normalize_strategy")
    ] = None
    """After training, shift the RM so that these responses score mean 0: JSONL of {"prompt","completion"} (e.g. the SFT demonstrations, InstructGPT) or {"prompt","response"}. The shift is in the saved weights; the statistics go to rlhfkit_reward.json."""
    normalize_scale: Annotated[bool, CheckedWith("rlhfkit.config.checks:normalize_scale")] = False
    """With --normalize-with: also scale the scores so that those responses have std 1 (N+ details, OpenRLHF)."""
    batch_size: Positive[int] = 8
    """PROMPTS per micro-batch; each brings all its K responses (K forward passes per prompt)."""
    lr: Positive[float] = 1e-4
    warmup_steps: NonNegative[int] = 5


@dataclass(kw_only=True)
class RMEvalConfig(ChatOptions, RemoteCodeOptions, DeviceOptions):
    """Evaluate a reward model on rankings: loss, pairwise accuracy overall and per strength, score gap."""

    model: RewardFolder[str] = ""
    """Reward model folder (written by `rlhfkit rm`, or any AutoModelForSequenceClassification with num_labels=1)."""
    data: PreferenceData[tuple[str, ...]] = ()
    """Ranking and/or pairwise files (required)."""
    margin: Annotated[str, MARGIN] = "none"
    """Margins used in the reported loss (same choices as `rlhfkit rm --margin`)."""
    out: Annotated[str | None, OutputPath("file")] = None
    """JSON file for the metrics (default: print only)."""
    max_len: Positive[int | None] = None
    """Maximum tokens per sequence (default: the RM's training --max-len)."""
    batch_size: Positive[int] = 16
    """Prompts per forward batch."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run."""


@dataclass(kw_only=True)
class ScoreConfig(ChatOptions, DeviceOptions, RewardOptions):
    """Score {"prompt","response","safety"?} records with one or several reward models, combined."""

    data: Annotated[str, DataFile("scoring")] = ""
    """JSONL of {"prompt","response"} records; optional "safety": true marks possibly unsafe prompts."""
    whiten: bool | None = None
    """Whiten the combined score over the whole file (default: on for llama2, off otherwise)."""
    out: Annotated[str, OutputPath("file")] = ""
    """Output JSONL: each record plus "score" (combined) and "scores" ({name: raw score})."""
    overwrite: bool = False
    """Replace --out if it exists."""
    max_len: Positive[int | None] = None
    """Maximum tokens per sequence (default: each RM's training --max-len)."""
    batch_size: Positive[int] = 32
    """Sequences per forward batch."""


@dataclass(kw_only=True)
class DPOConfig(RemoteCodeOptions, TrainOptions):
    """Direct preference optimisation (DPO, or IPO with --loss ipo) of a causal LM on rankings and preference pairs, against a frozen reference."""

    model: CausalLMFolder[str] = ""
    """Hugging Face causal LM folder to start from (the SFT model); also the frozen reference unless --reference is given."""
    reference: CausalLMFolder[str | None] = None
    """Frozen reference model (default: --model; with --lora-r, the policy with its adapter off). Its log-probs are computed once, before training."""
    data: PreferenceData[tuple[str, ...]] = ()
    """Training files (required): ranking {"prompt","responses","ranking"} and/or pairwise {"prompt","chosen","rejected"} records, also TRL's conversational / implicit-prompt records and HH-RLHF transcripts (as `rlhfkit rm` reads them)."""
    eval_data: PreferenceData[tuple[str, ...]] = ()
    """Held-out files of the same formats: loss, preference accuracy, reward margin and log-probs each epoch."""
    eval_fraction: Fraction[float] = 0.0
    """Without --eval-data, hold out this share of the prompts of --data."""
    loss: Literal["dpo", "ipo"] = "dpo"
    """'dpo': -log sigmoid(beta * h) (Rafailov et al. 2023); 'ipo': (h' - 1/(2 beta))^2 with per-token log-ratios (Azar et al. 2023, as TRL's loss_type="ipo"); h = the chosen response's log-ratio to the reference minus the rejected one's."""
    beta: Positive[float] = 0.1
    """Strength of the tie to the reference: the implicit reward is beta * (log pi - log pi_ref) (TRL's default 0.1)."""
    max_len: Positive[int] = 256
    """Maximum tokens of prompt + response + EOS."""
    overlong: Literal["truncate", "error"] = "truncate"
    """A longer sequence: 'truncate' drops its oldest prompt tokens (the response stays whole), 'error' stops with file:line."""
    packing: Annotated[
        bool | None, tyro.conf.DisallowNone, tyro.conf.arg(help_behavior_hint="(default: auto)")
    ] = None
    """Run responses in padding-free packed rows (position ids restarting per response) instead of padded batches; default: on where the model keeps packed sequences apart (checked at start-up)."""
    batch_size: Positive[int] = 8
    """PROMPTS per micro-batch; each brings all its K responses (one forward each, whatever the number of pairs)."""
    lr: Positive[float] = 5e-5
    warmup_steps: NonNegative[int] = 5


@dataclass(kw_only=True)
class ServeRMConfig(RemoteCodeOptions, DeviceOptions):
    """Serve one reward model over HTTP (`--rm NAME=URL` of ppo, rs, select, eval and score reads it): POST /score takes {"items": [{"prompt" or "messages", "response", "ended"?}]} and answers {"scores": [...]}, POST /get_reward speaks OpenRLHF's remote RM protocol, GET /health says it is up. The RM's own tokenizer and chat template are applied here; requests that arrive together are scored in shared forwards (dynamic batching)."""

    model: tyro.conf.Positional[RewardFolder[Annotated[str, tyro.conf.arg(metavar="DIR")]]] = ""
    """Reward model folder (written by `rlhfkit rm`, or any AutoModelForSequenceClassification with num_labels=1)."""
    host: str = "127.0.0.1"
    """Address to listen on: 127.0.0.1 answers this machine only; 0.0.0.0 every network interface (the server has no authentication: keep it on a trusted network)."""
    port: Port[int] = 8000
    """TCP port (0: any free port, printed at start-up)."""
    max_batch: Positive[int] = 32
    """Most sequences in one forward: requests that arrive together are scored together up to this many (a larger request is split)."""
    max_wait_ms: NonNegative[float] = 5.0
    """How long a batch waits for more requests to join after its first one arrives (0: only those already queued)."""
    batching: bool = True
    """Dynamic batching: requests that arrive together share forwards (off: each request is scored alone, in arrival order)."""
    max_items: Positive[int] = 1024
    """Most items (responses) in one request; a larger one is refused with 413 (clients split their batches by this, read from GET /health)."""
    max_bytes: Positive[int] = 16 * 1024 * 1024
    """Largest request body in bytes; a larger one is refused with 413."""
    request_timeout: Positive[float] = 300.0
    """A request not scored within this many seconds is answered 503 (the server is overloaded); clients retry it."""
    max_len: Positive[int | None] = None
    """Maximum tokens per sequence, longer ones keep their end (default: the RM's training --max-len)."""
