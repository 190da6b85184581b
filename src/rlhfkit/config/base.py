"""Option groups shared by the commands, and reading/writing configs (YAML + flags)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro
import yaml

from rlhfkit.config.fields import (
    CheckedBy,
    CheckedWith,
    Fraction,
    NonNegative,
    OutputPath,
    Positive,
    RewardModels,
    UnitInterval,
    coerce,
    field_types,
)
from rlhfkit.errors import UserError

C = TypeVar("C")


# ---------------------------------------------------------------------------------------
# Shared option groups (flat: inherited, so every flag is `--name`, not `--group.name`).
# A command that needs another default for a shared option redeclares only `name: type =
# default`, and tyro takes the help from the group; a docstring under it replaces that help.
# ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class DeviceOptions:
    """Where a command runs."""

    device: Annotated[str, CheckedWith("rlhfkit.config.checks:device")] = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'."""


@dataclass(kw_only=True)
class RunOptions(DeviceOptions):
    """Where outputs go and how a run starts."""

    out: Annotated[str, OutputPath("run")] = ""
    """Output folder (created; a folder holding another run needs --overwrite or --resume; one left by a run that never started, without a checkpoint, model or logged metric, is reused)."""
    seed: int = 0
    """Random seed for data order, initialisation and sampling."""
    resume: bool = False
    """Continue from the latest checkpoint in --out with full state (an error where --out holds nothing to resume)."""
    overwrite: bool = False
    """Delete an existing run in --out and start fresh."""
    bf16: bool = False
    """bf16 autocast on devices that support it (weights and optimizer stay fp32)."""
    report_to: Annotated[str, CheckedBy("rlhfkit.logging:parse_report_to")] = "tensorboard"
    """Experiment trackers, comma-separated: tensorboard, wandb, mlflow, trackio, or none (metrics.jsonl is always written; wandb/mlflow/trackio must be installed)."""


@dataclass(kw_only=True)
class EpochOptions:
    """How much data a supervised stage trains on, in what batches."""

    epochs: Positive[int] = 1
    """Passes over the training data (ignored when --max-steps is reached first)."""
    max_steps: Positive[int | None] = None
    """Stop after this many optimizer steps (default: run all epochs)."""
    batch_size: Positive[int] = 8
    """Sequences per micro-batch (per process under torchrun)."""
    grad_accum: Positive[int] = 1
    """Micro-batches accumulated into one optimizer step."""


@dataclass(kw_only=True)
class OptimizerOptions:
    """AdamW and its learning-rate schedule (`loops.common.build_optimizer`, `build_scheduler`)."""

    lr: Positive[float] = 3e-4
    """Peak learning rate."""
    min_lr_ratio: UnitInterval[float] = 0.1
    """Final learning rate as a fraction of --lr (cosine and linear schedules)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_steps: NonNegative[int] = 0
    """Linear warmup steps from 0 to --lr."""
    weight_decay: NonNegative[float] = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    adam_beta1: Fraction[float] = 0.9
    adam_beta2: Fraction[float] = 0.95
    adam_eps: Positive[float] = 1e-8
    """Adam's epsilon, added to the root of the second moment (PyTorch's default 1e-8)."""
    max_grad_norm: NonNegative[float] = 1.0
    """Clip the global gradient norm to this value (0 disables)."""


@dataclass(kw_only=True)
class ScaleOptions:
    """How a trained model is spread over processes and memory (models/wrap.py)."""

    strategy: Literal["ddp", "fsdp2"] = "ddp"
    """Under torchrun: 'ddp' copies the model to every process; 'fsdp2' shards parameters, gradients and optimizer states across processes (torch FSDP2, one shard per decoder layer; checkpoints through torch.distributed.checkpoint, resumable at another process count; outputs stay plain Hugging Face folders). One process: no effect."""
    cpu_offload: bool = False
    """With --strategy fsdp2: keep sharded parameters, gradients and optimizer states in CPU memory between uses (CPUOffloadPolicy)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of storing them: less memory, about a third more compute."""


@dataclass(kw_only=True)
class LoraOptions:
    """LoRA (PEFT): train small low-rank adapters instead of the whole model (models/lora.py)."""

    lora_r: NonNegative[int] = 0
    """LoRA rank: train rank-r adapters on --lora-targets with the base weights frozen (0: off, train every weight). Outputs stay plain, merged Hugging Face folders; in ppo the reference is the policy with its adapter switched off (no second copy of the weights)."""
    lora_alpha: Positive[float] = 16.0
    """LoRA scaling numerator: the adapter's update is scaled by alpha / r."""
    lora_dropout: Fraction[float] = 0.0
    """Dropout on the adapter's input during training (ppo runs without dropout)."""
    lora_targets: tuple[str, ...] = ("all-linear",)
    """Module names to adapt (e.g. q_proj v_proj); 'all-linear': every linear layer of the decoder, not the output head (PEFT's 'all-linear')."""
    save_adapter: Annotated[bool, CheckedWith("rlhfkit.config.checks:save_adapter")] = False
    """With --lora-r: also write the PEFT adapter folder ('adapter/', loadable with peft.PeftModel.from_pretrained on the base model) beside each merged model written (final export and checkpoints)."""


@dataclass(kw_only=True)
class TrainOptions(LoraOptions, ScaleOptions, OptimizerOptions, EpochOptions, RunOptions):
    """Options shared by every stage that trains on a dataset (read by `loops.lm.fit_lm`)."""

    log_every: Positive[int] = 10
    """Log metrics every N optimizer steps."""
    save_every: NonNegative[int] = 0
    """Also write a resumable checkpoint every N optimizer steps (0: only at epoch ends)."""
    keep_checkpoints: NonNegative[int] = 2
    """Keep the newest N step checkpoints of --save-every (0: keep all; epoch-N/ folders always stay)."""


@dataclass(kw_only=True)
class RemoteCodeOptions:
    """Whether model folders may run their own code (commands that load Hugging Face models)."""

    trust_remote_code: bool = False
    """Allow model code shipped inside the model folder to run (off: never run untrusted code)."""


@dataclass(kw_only=True)
class ChatOptions:
    """How plain prompt strings reach the model (`data.chat`): raw text, or its chat template."""

    chat: Annotated[
        bool | None, tyro.conf.DisallowNone, tyro.conf.arg(help_behavior_hint="(default: auto)")
    ] = None
    """Encode plain {"prompt"} strings through the model's chat template: the prompt as one user turn with the generation prompt, the completion or response as the assistant turn it closes (--no-chat: raw text). Default auto: chat when the tokenizer has its own chat template (an instruct model), plain for a base model that `rlhfkit pretrain` wrote; a model saved by an earlier rlhfkit stage follows the format that stage used (marked in its tokenizer_config.json as rlhfkit_chat). Conversational {"messages"} records always use the template."""


@dataclass(kw_only=True)
class RewardOptions:
    """Which reward models score a response, and how several become one reward (the same
    options for `score`, `select`, `ppo` and `rs`, read by one scorer builder)."""

    rm: RewardModels[
        Annotated[
            tuple[str, ...],
            tyro.conf.UseAppendAction,
            CheckedWith("rlhfkit.config.checks:reward_models"),
        ]
    ] = ()
    """Reward model NAME=DIR, or NAME=URL for one served by `rlhfkit serve-rm` or vLLM (repeat for several: --rm helpfulness=DIR --rm safety=http://host:8000)."""
    combine: Literal["single", "weighted-sum", "llama2"] = "single"
    """How several RMs become one reward: single (one RM's raw score), weighted-sum, or llama2 (the safety RM's score if the prompt is tagged safety or sigmoid(safety) < --threshold, else helpfulness)."""
    threshold: UnitInterval[float] = 0.15
    """llama2: sigmoid(safety score) below this takes the safety RM."""
    helpfulness_rm: str = "helpfulness"
    """llama2: name of the helpfulness RM (as in --rm NAME=DIR)."""
    safety_rm: str = "safety"
    """llama2: name of the safety RM."""
    weights: Annotated[str | None, CheckedBy("rlhfkit.config.base:parse_weights")] = None
    """weighted-sum: 'NAME=W,NAME=W' (default: equal weights summing to 1)."""
    rm_timeout: Positive[float] = 60.0
    """--rm NAME=URL: seconds to wait for a server's answer to one request."""
    rm_retries: NonNegative[int] = 5
    """--rm NAME=URL: tries again after a refused connection, a timeout or a 5xx answer, waiting 0.5 s, 1 s, 2 s ... (at most 8 s) in between; then the command stops (ppo saves a checkpoint first, rs keeps its samples: rerun with --resume)."""


class ConfigError(UserError):
    """A config file that cannot be read or names unknown options."""


def load_yaml_defaults(cls: type[C], path: str | None) -> C:
    """Default instance of `cls`, updated by the YAML mapping in `path` (if given).

    Unknown keys are an error naming the file and the key. Each value is converted to its
    option's type (`fields.coerce`: PyYAML reads `1e-4` as a string, and a list where the
    option has a tuple), or is an error naming the file, the option and what was expected.
    A config with `sections` (the pipeline's per-stage mappings) gets each section's
    options checked and converted the same way, by that stage's config class.
    """
    cfg = cls()
    if path is None:
        return cfg
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    data = read_options(cls, data, f"{path}", "this command")
    for name, section_cls in getattr(cls, "sections", {}).items():
        if isinstance(data.get(name), dict):
            data[name] = read_options(section_cls, data[name], f"{path}: section '{name}'", name)
    return dataclasses.replace(cfg, **data)  # type: ignore[type-var]


def read_options(cls: type, data: Any, where: str, command: str) -> dict[str, Any]:
    """A YAML mapping of option: value for config class `cls`, each value of its option's
    type; ConfigError naming `where` and the option otherwise."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of option: value")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for {command}")
    types = field_types(cls)
    for key, value in data.items():
        try:
            data[key] = coerce(types[key], value)
        except ValueError as e:
            raise ConfigError(f"{where}: option {key}: {e}") from None
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (what `--config` reads back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def parse_rm_spec(spec: str) -> tuple[str, str]:
    """An --rm value: "NAME=DIR" or "NAME=URL" -> (NAME, DIR or URL); a bare "DIR" or "URL"
    is named "reward"."""
    if is_url(spec):
        return "reward", spec
    name, sep, path = spec.partition("=")
    if not sep:
        return "reward", spec
    if not name.strip() or not path.strip():
        raise UserError(f"bad --rm {spec!r}: expected NAME=DIR (e.g. helpfulness=runs/rm_help)")
    return name.strip(), path.strip()


def parse_weights(text: str) -> dict[str, float]:
    """--weights "helpfulness=0.7,safety=0.3" -> {"helpfulness": 0.7, "safety": 0.3}."""
    out = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise UserError(f"bad --weights entry {part!r}: expected NAME=NUMBER")
    return out


URL_SCHEMES = ("http://", "https://")


def is_url(value: str) -> bool:
    """Whether an --rm location is a server's URL (http:// or https://) rather than a folder."""
    return value.strip().lower().startswith(URL_SCHEMES)
