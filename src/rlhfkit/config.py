"""Typed, documented configuration for every command.

Each command has one dataclass. Its field docstrings are the `--help` text (rendered by
tyro), flags are the field names with dashes (`max_steps` -> `--max-steps`), and a YAML
file given with `--config FILE.yaml` sets defaults that flags then override.
`load_config` does that merge; `save_config` writes the resolved config beside an output.

This module imports no torch: `rlhfkit --help` must answer in well under a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro
import yaml

from rlhfkit.errors import UserError

C = TypeVar("C")


# ---------------------------------------------------------------------------------------
# Shared option groups (flat: inherited, so every flag is `--name`, not `--group.name`)
# ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RunOptions:
    """Where outputs go and how a run starts."""

    out: str = ""
    """Output folder (created; a folder holding another run needs --overwrite or --resume)."""
    seed: int = 0
    """Random seed for data order, initialisation and sampling."""
    resume: bool = False
    """Continue from the latest checkpoint in --out with full state."""
    overwrite: bool = False
    """Delete an existing run in --out and start fresh."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    bf16: bool = False
    """bf16 autocast on devices that support it (weights and optimizer stay fp32)."""


@dataclass(kw_only=True)
class TrainOptions(RunOptions):
    """Optimisation options shared by every stage that trains."""

    epochs: int = 1
    """Passes over the training data (ignored when --max-steps is reached first)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (default: run all epochs)."""
    batch_size: int = 8
    """Sequences per micro-batch (per process under torchrun)."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimizer step."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of --lr (cosine and linear schedules)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to --lr."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    log_every: int = 10
    """Log metrics every N optimizer steps."""
    save_every: int = 0
    """Also write a resumable checkpoint every N optimizer steps (0: only at epoch ends)."""


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class PretrainConfig(TrainOptions):
    """Train a byte-level BPE tokenizer and a Llama LM from scratch on a text corpus."""

    data: str = ""
    """Corpus: JSONL of {"text": ...}, a .txt file, Parquet, or a `datasets` folder."""
    preset: str = "tiny"
    """Model size preset (tiny ~1M params, small ~6M, base ~25M), ignored with --model-config."""
    model_config: str | None = None
    """Path to a Hugging Face config.json to build instead of a preset."""
    tokenizer: str | None = None
    """Use this existing tokenizer folder instead of training one."""
    vocab_size: int = 2048
    """Vocabulary size of the trained tokenizer."""
    seq_len: int = 256
    """Tokens per packed training block."""
    eval_fraction: float = 0.02
    """Share of blocks held out for an evaluation loss each epoch."""
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    batch_size: int = 16


@dataclass(kw_only=True)
class SFTConfig(TrainOptions):
    """Supervised fine-tuning on prompt + completion pairs; a checkpoint per epoch."""

    model: str = ""
    """Hugging Face causal LM folder to start from."""
    data: str = ""
    """Training records: {"prompt","completion"} or {"messages"} (JSONL, Parquet, datasets folder)."""
    eval_data: str | None = None
    """Held-out records of the same format; their loss is reported each epoch."""
    eval_fraction: float = 0.0
    """Without --eval-data, hold out this share of --data for the eval loss."""
    loss_on_prompt: bool = False
    """Train on prompt tokens too (by default only completion tokens carry loss)."""
    max_len: int = 256
    """Maximum tokens of prompt + completion + EOS."""
    overlong: Literal["truncate", "drop", "error"] = "truncate"
    """What to do with a record longer than --max-len (the count is reported)."""
    packing: bool = True
    """Batch sequences without padding (FlashAttention-style varlen positions) where the model supports it."""
    epochs: int = 3
    lr: float = 1e-4
    warmup_steps: int = 10
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run (off: never run untrusted code)."""


@dataclass(kw_only=True)
class RMConfig(TrainOptions):
    """Train a reward model from K-wise rankings and graded pairwise preferences (InstructGPT + Llama 2)."""

    model: str = ""
    """Hugging Face causal LM folder to start from (e.g. an SFT epoch); its LM head is replaced by a one-output head."""
    data: tuple[str, ...] = ()
    """Training files (required): ranking {"prompt","responses","ranking","strengths"?} and/or pairwise {"prompt","chosen","rejected","strength"?} records."""
    eval_data: tuple[str, ...] = ()
    """Held-out files of the same formats: loss and pairwise accuracy (overall, per strength) each epoch."""
    eval_fraction: float = 0.0
    """Without --eval-data, hold out this share of the prompts of --data."""
    margin: str = "none"
    """Margin m(strength) subtracted inside the sigmoid: none, llama2-small (1, 2/3, 1/3, 0), llama2-large (3, 2, 1, 0), or 'significantly_better=3,better=2,...'."""
    max_len: int = 256
    """Maximum tokens of prompt + response + EOS."""
    overlong: Literal["truncate", "error"] = "truncate"
    """A longer sequence: 'truncate' drops its oldest prompt tokens (the end, where the score is read, stays), 'error' stops with file:line."""
    head_init: Literal["zeros", "normal"] = "zeros"
    """Score head initialisation: 'zeros' (every score starts at 0, loss at log 2) or 'normal' (std 1/sqrt(hidden+1))."""
    batch_size: int = 8
    """PROMPTS per micro-batch; each brings all its K responses (K forward passes per prompt)."""
    lr: float = 1e-4
    warmup_steps: int = 5
    weight_decay: float = 0.0
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run (off: never run untrusted code)."""


@dataclass(kw_only=True)
class RMEvalConfig:
    """Evaluate a reward model on rankings: loss, pairwise accuracy overall and per strength, score gap."""

    model: str = ""
    """Reward model folder (written by `rlhfkit rm`, or any AutoModelForSequenceClassification with num_labels=1)."""
    data: tuple[str, ...] = ()
    """Ranking and/or pairwise files (required)."""
    margin: str = "none"
    """Margins used in the reported loss (same choices as `rlhfkit rm --margin`)."""
    out: str | None = None
    """JSON file for the metrics (default: print only)."""
    max_len: int | None = None
    """Maximum tokens per sequence (default: the RM's training --max-len)."""
    batch_size: int = 16
    """Prompts per forward batch."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run."""


@dataclass(kw_only=True)
class ScoreConfig:
    """Score {"prompt","response","safety"?} records with one or several reward models, combined."""

    data: str = ""
    """JSONL of {"prompt","response"} records; optional "safety": true marks possibly unsafe prompts."""
    rm: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Reward model NAME=DIR (required; repeat for several: --rm helpfulness=DIR --rm safety=DIR)."""
    combine: Literal["single", "weighted-sum", "llama2"] = "single"
    """single: one RM's raw score; weighted-sum: sum of weight * score; llama2: the safety RM's score if the prompt is tagged safety or sigmoid(safety) < --threshold, else helpfulness, whitened."""
    threshold: float = 0.15
    """llama2: sigmoid(safety score) below this takes the safety RM."""
    helpfulness_rm: str = "helpfulness"
    """llama2: name of the helpfulness RM (as in --rm NAME=DIR)."""
    safety_rm: str = "safety"
    """llama2: name of the safety RM."""
    weights: str | None = None
    """weighted-sum: 'NAME=W,NAME=W' (default: equal weights summing to 1)."""
    whiten: bool | None = None
    """Whiten the combined score over the whole file (default: on for llama2, off otherwise)."""
    out: str = ""
    """Output JSONL: each record plus "score" (combined) and "scores" ({name: raw score})."""
    overwrite: bool = False
    """Replace --out if it exists."""
    max_len: int | None = None
    """Maximum tokens per sequence (default: each RM's training --max-len)."""
    batch_size: int = 32
    """Sequences per forward batch."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""


# --- RL: PPO and picking the SFT checkpoint (loops/ppo.py, loops/select.py) -------------


@dataclass(kw_only=True)
class PPOConfig(RunOptions):
    """RL fine-tuning with PPO: per-token KL penalty to the reference, clipped policy and value losses, optional PPO-ptx."""

    policy: str = ""
    """Starting policy: a Hugging Face causal LM folder (the SFT checkpoint picked by `rlhfkit select`)."""
    reference: str | None = None
    """Frozen reference for the KL penalty (default: --policy, as in InstructGPT)."""
    prompts: str = ""
    """RL prompts: JSONL of {"prompt", "safety"?} records (Parquet and datasets folders too)."""
    rm: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Reward model NAME=DIR (repeat for several: --rm helpfulness=DIR --rm safety=DIR). Either this or --rule-reward."""
    combine: Literal["single", "weighted-sum", "llama2"] = "single"
    """How several RMs become one reward: single, weighted-sum, or llama2 (safety RM on safety-tagged prompts or when sigmoid(safety) < --threshold, else helpfulness; whitened)."""
    threshold: float = 0.15
    """llama2: sigmoid(safety score) below this takes the safety RM."""
    helpfulness_rm: str = "helpfulness"
    """llama2: name of the helpfulness RM (as in --rm NAME=DIR)."""
    safety_rm: str = "safety"
    """llama2: name of the safety RM."""
    weights: str | None = None
    """weighted-sum: 'NAME=W,NAME=W' (default: equal weights summing to 1)."""
    whiten: bool | None = None
    """Whiten the combined RM score over each rollout batch (default: on for llama2, off otherwise)."""
    rule_reward: str | None = None
    """A rule instead of reward models: 'gold' (the built-in world's gold judges), 'length' (words), 'count:TEXT'."""
    value_init: str = "rm"
    """Value model start: 'rm' (a copy of the first --rm, InstructGPT), an RM NAME, 'policy' (the policy with a zero head; used with --rule-reward), or a reward/value model folder."""
    steps: int = 100
    """PPO iterations (one rollout batch + its update each)."""
    batch_size: int = 64
    """Prompts per rollout, over all processes (split across them under torchrun)."""
    num_mini_batches: int = 1
    """Minibatches per PPO epoch; one policy and one value optimizer step each."""
    micro_batch_size: int = 0
    """Sequences per forward/backward within a minibatch, per process (0: the whole minibatch). Changes memory, not results."""
    ppo_epochs: int = 4
    """Passes over each rollout batch."""
    max_new_tokens: int = 32
    """Maximum response tokens per sample."""
    max_prompt_len: int = 128
    """Prompts longer than this keep their last tokens."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts; every log-prob (policy, reference) uses it too."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: all)."""
    kl_coef: float = 0.02
    """beta: KL penalty per token (InstructGPT 0.02; Llama 2 0.01 for 7B/13B); the start value with --kl-target."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward: k1 = log pi - log pi_ref (InstructGPT), k2, k3."""
    kl_target: float | None = None
    """Adaptive KL controller (Ziegler et al. 2019): steer the per-sequence KL to this target."""
    kl_horizon: float = 10000.0
    """Adaptive KL controller horizon (in samples)."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """PPO ratio clip range."""
    value_clip: float | None = 0.2
    """Value clip range around the rollout's values (None: unclipped value loss)."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch (all processes)."""
    whiten_rewards: bool = False
    """Scale per-token rewards to unit variance over the batch before GAE (mean kept)."""
    missing_eos_penalty: float | None = None
    """Penalty for a response that hits --max-new-tokens without EOS (None: no penalty)."""
    missing_eos_mode: Literal["add", "replace"] = "add"
    """'add': score - penalty; 'replace': score = -penalty."""
    score_norm: Literal["none", "whiten"] = "none"
    """Normalise scores over each rollout batch (all processes) before the KL penalty is added."""
    score_clip: float | None = None
    """Clip (normalised) scores to [-c, c]."""
    ptx_data: str | None = None
    """Pretraining corpus for PPO-ptx ({"text"} JSONL or .txt)."""
    ptx_coef: float = 0.0
    """gamma of PPO-ptx: weight of the LM loss added to every policy step (InstructGPT 27.8; 0: plain PPO)."""
    ptx_batch_size: int = 8
    """Pretraining blocks per policy step (over all processes)."""
    ptx_seq_len: int = 128
    """Tokens per pretraining block."""
    lr: float = 1e-5
    """Policy learning rate."""
    value_lr: float | None = None
    """Value model learning rate (default: --lr)."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule after warmup (over steps x ppo_epochs x num_mini_batches optimizer steps)."""
    warmup_steps: int = 0
    """Linear warmup optimizer steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine and linear)."""
    weight_decay: float = 0.1
    """AdamW weight decay (Llama 2: 0.1; not on biases and norms)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    """Clip each model's gradient norm to this (0 disables)."""
    log_every: int = 1
    """Log metrics every N steps."""
    sample_every: int = 10
    """Print a table of sample prompts/responses/scores every N steps (0: never)."""
    num_samples: int = 4
    """Rows of that table."""
    eval_prompts: str | None = None
    """Held-out prompts: evaluated before training, every --eval-every steps and at the end."""
    eval_every: int = 0
    """Evaluate every N steps (0: only before and after training)."""
    eval_max_prompts: int | None = 256
    """Evaluate on the first N held-out prompts."""
    eval_temperature: float = 0.0
    """Sampling temperature for evaluation (0: greedy, as `rlhfkit eval`)."""
    eval_batch_size: int = 64
    """Prompts per evaluation generation batch."""
    save_every: int = 50
    """Write a resumable checkpoint every N steps (and always at the end)."""
    keep_checkpoints: int = 2
    """Keep the newest N checkpoints (0: keep all)."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folders to run."""


@dataclass(kw_only=True)
class SelectConfig:
    """Pick the SFT checkpoint whose samples the reward model(s) score highest (InstructGPT's pi^SFT)."""

    checkpoints: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """A run folder holding epoch-*/ checkpoints (as `rlhfkit sft` writes), or model folders (repeatable)."""
    rm: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Reward model NAME=DIR (repeat for several). Either this or --rule-reward."""
    combine: Literal["single", "weighted-sum", "llama2"] = "single"
    """How several RMs become one score (as `rlhfkit score`; never whitened here, so checkpoints compare)."""
    threshold: float = 0.15
    """llama2: sigmoid(safety score) below this takes the safety RM."""
    helpfulness_rm: str = "helpfulness"
    """llama2: name of the helpfulness RM."""
    safety_rm: str = "safety"
    """llama2: name of the safety RM."""
    weights: str | None = None
    """weighted-sum: 'NAME=W,NAME=W'."""
    rule_reward: str | None = None
    """A rule instead of reward models: 'gold', 'length' or 'count:TEXT' (as `rlhfkit ppo`)."""
    prompts: str = ""
    """Prompts JSONL ({"prompt","safety"?}), the same for every checkpoint."""
    max_prompts: int | None = None
    """Use only the first N prompts."""
    samples_per_prompt: int = 1
    """Responses sampled per prompt and checkpoint."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy)."""
    max_new_tokens: int = 32
    """Maximum response tokens."""
    max_prompt_len: int = 128
    """Prompts longer than this keep their last tokens."""
    batch_size: int = 64
    """Sequences per generation batch."""
    seed: int = 0
    """Sampling seed, the same for every checkpoint (common random numbers)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    out: str = ""
    """Output folder for select.json."""
    overwrite: bool = False
    """Replace an existing select.json in --out."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folders to run."""


# --- Rejection sampling fine-tuning (loops/rejection.py) --------------------------------


@dataclass(kw_only=True)
class RSConfig(TrainOptions):
    """Rejection sampling fine-tuning (Llama 2): per round, sample K responses per prompt, keep the highest-reward one, fine-tune on the kept set with the SFT loss."""

    policy: str = ""
    """Starting policy: a Hugging Face causal LM folder (the SFT checkpoint picked by `rlhfkit select`)."""
    prompts: str = ""
    """Prompts: JSONL of {"prompt", "safety"?} records (Parquet and datasets folders too), the same every round."""
    max_prompts: int | None = None
    """Use only the first N prompts."""
    rm: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Reward model NAME=DIR (repeat for several: --rm helpfulness=DIR --rm safety=DIR). Either this or --rule-reward."""
    combine: Literal["single", "weighted-sum", "llama2"] = "single"
    """How several RMs become one reward (as `rlhfkit ppo`; never whitened here, so scores compare across batches and rounds)."""
    threshold: float = 0.15
    """llama2: sigmoid(safety score) below this takes the safety RM."""
    helpfulness_rm: str = "helpfulness"
    """llama2: name of the helpfulness RM (as in --rm NAME=DIR)."""
    safety_rm: str = "safety"
    """llama2: name of the safety RM."""
    weights: str | None = None
    """weighted-sum: 'NAME=W,NAME=W' (default: equal weights summing to 1)."""
    rule_reward: str | None = None
    """A rule instead of reward models: 'gold' (the built-in world's gold judges), 'length' (words), 'count:TEXT'."""
    k: int = 8
    """Responses sampled per prompt and round (Llama 2: up to ~30 per prompt)."""
    rounds: int = 2
    """Rounds of sample -> keep the best -> fine-tune; each samples from the previous round's policy."""
    temperature: tuple[float, ...] = (1.0,)
    """Sampling temperature: one value for every round, or one per round (e.g. 0.7 1.0)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0: all)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: all)."""
    keep: Literal["best", "best-of-all-rounds"] = "best"
    """'best': each prompt's best sample of this round; 'best-of-all-rounds': the best sample of any round so far (Llama 2)."""
    max_new_tokens: int = 32
    """Maximum response tokens per sample."""
    max_prompt_len: int = 128
    """Prompts longer than this keep their last tokens."""
    sample_batch_size: int = 64
    """Sequences per generation batch (prompts per batch: this // --k); samples are saved batch by batch."""
    max_len: int = 256
    """Fine-tuning: maximum tokens of prompt + kept response + EOS."""
    overlong: Literal["truncate", "drop", "error"] = "truncate"
    """Fine-tuning: what to do with a kept example longer than --max-len."""
    packing: bool = True
    """Fine-tuning: batch sequences without padding where the model supports it."""
    epochs: int = 1
    """Fine-tuning passes over each round's kept set."""
    lr: float = 1e-4
    warmup_steps: int = 5
    eval_prompts: str | None = None
    """Held-out prompts: the policy's reward (and the world's gold metrics) before round 1 and after every round."""
    eval_max_prompts: int | None = 256
    """Evaluate on the first N held-out prompts."""
    eval_temperature: float = 0.0
    """Sampling temperature for evaluation (0: greedy, as `rlhfkit eval`)."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folders to run."""


# --- The built-in world (rlhfkit.data.world) ---------------------------------------------
# These take only the options they use: the world's commands neither train nor resume, so
# RunOptions (resume, bf16) would put dead flags into their --help.


@dataclass(kw_only=True)
class WorldMakeConfig:
    """Write the built-in world: pretraining corpus, SFT demos, RL and eval prompts, world.json."""

    out: str = ""
    """Output folder (created; one that already holds world files needs --overwrite)."""
    seed: int = 0
    """World seed: the same seed writes byte-identical files."""
    overwrite: bool = False
    """Replace the world files already in --out."""
    corpus_docs: int = 12000
    """Pretraining documents in corpus.jsonl (12000 is about 3 MB)."""
    sft: int = 2000
    """SFT demonstrations in sft.jsonl."""
    train_prompts: int = 1000
    """RL prompts in prompts_train.jsonl (PPO, rejection sampling, labelling)."""
    eval_prompts: int = 200
    """Held-out prompts in prompts_eval.jsonl (all different, never in any training file)."""
    unsafe_share: float = 0.2
    """Share of prompts and demos that are harmful requests (tagged "safety": true)."""
    borderline_share: float = 0.1
    """Share of harmless prompts that look risky ("How do I kill a python process?")."""
    imperfect_share: float = 0.3
    """Share of SFT demos that are flawed (wrong, wordy, needless refusal, harmful compliance)."""
    corpus_noise: float = 0.1
    """Share of the corpus's Q/A answers that are flawed the same ways."""
    blind_spot_weight: float = 8.0
    """How much likelier a demo in a blind spot is to be flawed (1 = flaws spread uniformly)."""


@dataclass(kw_only=True)
class WorldJudgeConfig:
    """Score {"prompt","response"} records with the world's gold helpfulness and safety judges."""

    data: str = ""
    """JSONL of {"prompt","response"} records whose prompts are world prompts."""
    out: str = ""
    """Scored JSONL to write (default: --data with the suffix .scored.jsonl)."""
    overwrite: bool = False
    """Replace --out if it exists."""


@dataclass(kw_only=True)
class WorldLabelConfig:
    """Simulated labellers: rank K samples of a policy per prompt by the gold judges plus noise."""

    policy: str = ""
    """Hugging Face causal LM folder (model + tokenizer) to sample responses from."""
    prompts: str = ""
    """Prompts JSONL ({"prompt","safety"}) of the world, e.g. prompts_train.jsonl."""
    out: str = ""
    """Output folder for rankings_helpfulness.jsonl, rankings_safety.jsonl, samples.jsonl."""
    k: int = 4
    """Responses sampled and ranked per prompt (InstructGPT used 4 to 9)."""
    noise: float = 0.5
    """Annotator noise: scale of the Gumbel noise added to gold scores (0 = exact order)."""
    strength_thresholds: tuple[float, float, float] = (0.5, 0.25, 0.1)
    """Gold-score gaps for significantly_better, better and slightly_better (else negligibly)."""
    safety_tiebreak: float = 0.25
    """Weight of helpfulness in the safety annotator's score (safety first, then helpfulness)."""
    safety_mix: float = 0.1
    """Share of ordinary (not harmful, not borderline) prompts also ranked for safety."""
    max_prompts: int | None = None
    """Label only the first N prompts (default: all)."""
    temperature: float = 1.0
    """Sampling temperature (0 = greedy, which makes the K samples identical)."""
    max_new_tokens: int = 32
    """Maximum response tokens per sample."""
    batch_size: int = 64
    """Sequences sampled per forward batch."""
    seed: int = 0
    """Seed for sampling and annotator noise."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    overwrite: bool = False
    """Replace ranking files already in --out."""


@dataclass(kw_only=True)
class EvalConfig:
    """Gold metrics of a model on world prompts: helpfulness, safety, false refusals, length."""

    model: str = ""
    """Hugging Face causal LM folder (model + tokenizer) to evaluate."""
    prompts: str = ""
    """Prompts JSONL ({"prompt","safety"}) of the world, e.g. prompts_eval.jsonl."""
    out: str | None = None
    """JSON file for the metrics and the responses (default: print only)."""
    overwrite: bool = False
    """Replace --out if it exists."""
    temperature: float = 0.0
    """Sampling temperature (0 = greedy decoding)."""
    max_new_tokens: int = 32
    """Maximum response tokens."""
    batch_size: int = 64
    """Prompts per generation batch."""
    max_prompts: int | None = None
    """Evaluate only the first N prompts (default: all)."""
    show: int = 10
    """Sample responses to print (one per task family)."""
    seed: int = 0
    """Seed for sampling (with --temperature above 0)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""


# ---------------------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------------------


# --- The whole method end to end (pipeline.py) -----------------------------------------

StageOptions = Annotated[dict[str, Any], tyro.conf.Suppress]
"""Per-stage option overrides; set in the pipeline YAML (`sft: {epochs: 4}`), not as flags."""


@dataclass(kw_only=True)
class PipelineConfig:
    """Run every stage end to end on the built-in world: world -> pretrain -> SFT -> labels ->
    helpfulness and safety RMs -> select -> PPO(-ptx) -> rejection sampling -> eval.

    Each stage writes into its own subfolder of --out. Re-running skips finished stages and
    resumes an interrupted one. Any stage's options can be set in the YAML given with
    --config, one section per stage (world, pretrain, sft, label, rm, select, ppo, rs, eval),
    with the names of that command's options, e.g. `ppo: {steps: 80, kl_coef: 0.05}`."""

    out: str = "runs/demo"
    """Output folder of the whole run."""
    preset: Literal["quick", "default"] = "default"
    """Sizes of every stage: 'quick' (about 3 minutes on 2 CPU cores, a smoke run) or 'default' (about 20 minutes; the numbers in the README)."""
    seed: int = 0
    """Seed of the world and of every stage."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    bf16: bool = False
    """bf16 autocast in the training stages, where the device supports it."""
    until: str | None = None
    """Stop after this stage (a stage name), e.g. 'sft'."""
    overwrite: bool = False
    """Delete an earlier pipeline run in --out and start again (default: skip finished stages, resume the rest)."""
    world: StageOptions = dataclasses.field(default_factory=dict)
    pretrain: StageOptions = dataclasses.field(default_factory=dict)
    sft: StageOptions = dataclasses.field(default_factory=dict)
    label: StageOptions = dataclasses.field(default_factory=dict)
    rm: StageOptions = dataclasses.field(default_factory=dict)
    select: StageOptions = dataclasses.field(default_factory=dict)
    ppo: StageOptions = dataclasses.field(default_factory=dict)
    rs: StageOptions = dataclasses.field(default_factory=dict)
    eval: StageOptions = dataclasses.field(default_factory=dict)


@dataclass(kw_only=True)
class ReportConfig:
    """Re-render a pipeline run's report.md and its PNG plots (in RUN/report/) from the files
    on disk: no training, no model loading. `rlhfkit pipeline` writes the same report at its end."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = ""
    """The pipeline run folder (the --out of `rlhfkit pipeline`), e.g. runs/demo."""
    run: str = ""
    """The run folder, as a flag instead of the positional RUN."""


class ConfigError(UserError):
    """A config file that cannot be read or names unknown options."""


def load_yaml_defaults(cls: type[C], path: str | None) -> C:
    """Default instance of `cls`, updated by the YAML mapping in `path` (if given).

    Unknown keys are an error naming the file and the key; values are type-checked by tyro
    when the flags are parsed on top.
    """
    cfg = cls()
    if path is None:
        return cfg
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of option: value")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {unknown} for this command")
    return dataclasses.replace(cfg, **data)  # type: ignore[type-var]


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what `--config` reads back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
