"""Configs of the built-in world, evaluation, the pipeline and its report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import tyro

from rlhfkit.config.base import ChatOptions, DeviceOptions, RemoteCodeOptions, RewardOptions
from rlhfkit.config.fields import (
    AtLeastTwo,
    CausalLMFolder,
    CheckedBy,
    CheckedWith,
    DataFile,
    Input,
    InputPath,
    NonNegative,
    OutputPath,
    Positive,
    PromptData,
    UnitInterval,
    WithinPositions,
)
from rlhfkit.config.rl import GeneratorOptions, PPOConfig, RSConfig, SelectConfig
from rlhfkit.config.stages import DPOConfig, PretrainConfig, RMConfig, SFTConfig

PROMPT_CAP = 128
"""Prompt tokens kept (the last ones) by `eval` and `world label`
(`loops.evaluate.MAX_PROMPT_LEN`, `world.sampling.ModelSampler`)."""

# --- The built-in world (rlhfkit.world) ---------------------------------------------
# These take only the options they use: the world's commands neither train nor resume, so
# RunOptions (resume, bf16) would put dead flags into their --help. Some take DeviceOptions.


@dataclass(kw_only=True)
class WorldMakeConfig:
    """Write the built-in world: pretraining corpus, SFT demos, RL and eval prompts, world.json."""

    out: Annotated[str, OutputPath("folder")] = ""
    """Output folder (created; one that already holds world files needs --overwrite)."""
    seed: int = 0
    """World seed: the same seed writes byte-identical files."""
    overwrite: bool = False
    """Replace the world files already in --out."""
    corpus_docs: Positive[int] = 12000
    """Pretraining documents in corpus.jsonl (12000 is about 3 MB)."""
    sft: Positive[int] = 2000
    """SFT demonstrations in sft.jsonl."""
    train_prompts: Positive[int] = 1000
    """RL prompts in prompts_train.jsonl (PPO, rejection sampling, labelling)."""
    eval_prompts: Positive[int] = 400
    """Held-out prompts in prompts_eval.jsonl (all different, never in any training file;
    400 holds 80 harmful ones)."""
    unsafe_share: UnitInterval[float] = 0.2
    """Share of prompts and demos that are harmful requests (tagged "safety": true)."""
    borderline_share: UnitInterval[float] = 0.1
    """Share of harmless prompts that look risky ("How do I kill a python process?")."""
    imperfect_share: UnitInterval[float] = 0.3
    """Share of SFT demos that are flawed (wrong, wordy, needless refusal, harmful compliance)."""
    corpus_noise: UnitInterval[float] = 0.1
    """Share of the corpus's Q/A answers that are flawed the same ways (times
    --blind-spot-weight, at most 1, for harmful requests in the compliance blind spot)."""
    blind_spot_weight: Positive[float] = 8.0
    """How much likelier a demo in a blind spot is to be flawed (1 = flaws spread uniformly)."""


@dataclass(kw_only=True)
class WorldJudgeConfig:
    """Score {"prompt","response"} records with the world's gold helpfulness and safety judges."""

    data: Annotated[str, DataFile("world-responses")] = ""
    """JSONL of {"prompt","response"} records whose prompts are world prompts."""
    out: Annotated[str, OutputPath("file")] = ""
    """Scored JSONL to write (default: --data with the suffix .scored.jsonl)."""
    overwrite: bool = False
    """Replace --out if it exists."""


@dataclass(kw_only=True)
class WorldLabelConfig(ChatOptions, GeneratorOptions, DeviceOptions):
    """Simulated labellers: rank K samples of a policy per prompt by the gold judges plus noise."""

    policy: CausalLMFolder[str] = ""
    """Hugging Face causal LM folder (model + tokenizer) or .gguf file to sample responses from."""
    prompts: Annotated[str, DataFile("world-prompts")] = ""
    """Prompts JSONL ({"prompt","safety"}) of the world, e.g. prompts_train.jsonl."""
    out: Annotated[str, OutputPath("folder")] = ""
    """Output folder for rankings_helpfulness.jsonl, rankings_safety.jsonl, samples.jsonl."""
    k: AtLeastTwo[int] = 4
    """Responses sampled and ranked per prompt (InstructGPT used 4 to 9)."""
    noise: NonNegative[float] = 0.5
    """Annotator noise: scale of the Gumbel noise added to gold scores (0 = exact order)."""
    strength_thresholds: NonNegative[tuple[float, float, float]] = (0.5, 0.25, 0.1)
    """Gold-score gaps for significantly_better, better and slightly_better (else negligibly)."""
    safety_tiebreak: NonNegative[float] = 0.25
    """Weight of helpfulness in the safety annotator's score (safety first, then helpfulness)."""
    safety_mix: UnitInterval[float] = 0.1
    """Share of ordinary (not harmful, not borderline) prompts also ranked for safety."""
    max_prompts: Positive[int | None] = None
    """Label only the first N prompts (default: all)."""
    temperature: NonNegative[float] = 1.0
    """Sampling temperature (0 = greedy, which makes the K samples identical)."""
    max_new_tokens: Annotated[Positive[int], WithinPositions(plus=PROMPT_CAP)] = 32
    """Maximum response tokens per sample (capped, with a note, so that a prompt of 128 tokens and the response fit the policy's positions)."""
    batch_size: Positive[int] = 64
    """Sequences sampled per forward batch."""
    seed: int = 0
    """Seed for sampling and annotator noise."""
    overwrite: bool = False
    """Replace ranking files already in --out."""


@dataclass(kw_only=True)
class EvalConfig(ChatOptions, GeneratorOptions, DeviceOptions, RemoteCodeOptions, RewardOptions):
    """Evaluate a model on prompts: reward-model score (--rm), KL to --reference, response length, EOS rate, win rate over --baseline; gold helpfulness, safety and false refusals when the prompts are the built-in world's."""

    model: CausalLMFolder[str] = ""
    """Hugging Face causal LM folder (model + tokenizer) or .gguf file to evaluate."""
    prompts: PromptData[str] = ""
    """Prompts: JSONL of {"prompt"} or {"messages"} records (Parquet and datasets folders too); the world's prompts_eval.jsonl adds the gold metrics."""
    reference: CausalLMFolder[str | None] = None
    """Causal LM folder to measure KL(model || reference) against on the model's own responses (e.g. the SFT model)."""
    baseline: Annotated[
        CausalLMFolder[str | None], CheckedWith("rlhfkit.config.checks:baseline_needs_rm")
    ] = None
    """Causal LM folder to compare with: its responses to the same prompts are scored by the --rm reward models and the model's win rate over it is reported with its standard error."""
    out: Annotated[str | None, OutputPath("file")] = None
    """JSON file for the metrics and the responses (default: print only)."""
    overwrite: bool = False
    """Replace --out if it exists."""
    temperature: NonNegative[float] = 0.0
    """Sampling temperature (0 = greedy decoding)."""
    max_new_tokens: Annotated[Positive[int], WithinPositions(plus=PROMPT_CAP)] = 32
    """Maximum response tokens (capped, with a note, so that a prompt of 128 tokens and the response fit the model's positions)."""
    batch_size: Positive[int] = 64
    """Prompts per generation batch."""
    max_prompts: Positive[int | None] = None
    """Evaluate only the first N prompts (default: all)."""
    show: NonNegative[int] = 10
    """Sample responses to print (one per task family)."""
    seed: int = 0
    """Seed for sampling (with --temperature above 0)."""


# --- The whole method end to end (pipeline.py) -----------------------------------------

StageOptions = Annotated[dict[str, Any], tyro.conf.Suppress]
"""Per-stage option overrides; set in the pipeline YAML (`sft: {epochs: 4}`), not as flags."""


PIPELINE_STAGES = (
    "world", "pretrain", "sft", "label", "rm", "select", "bon", "ppo", "rs", "dpo", "rloo", "eval"
)  # fmt: skip
"""The stages of `rlhfkit pipeline`, in order (`pipeline.STAGES` runs them; the report lists
the missing ones)."""


@dataclass(kw_only=True)
class PipelineConfig(DeviceOptions):
    """Run every stage end to end on the built-in world: world -> pretrain -> SFT -> labels ->
    helpfulness and safety RMs -> select -> best-of-n samples (bon) -> PPO(-ptx) -> rejection
    sampling -> DPO on the same rankings -> RLOO(-ptx) -> eval. With --model, on your own
    causal LM instead of a pretrained tiny one (its presets skip dpo and rloo), and with
    --sft-data, --rm-data, --prompts, --eval-prompts on your own data where given.

    Each stage writes into its own subfolder of --out. Re-running skips finished stages and
    resumes an interrupted one. Any stage's options can be set in the YAML given with
    --config, one section per stage (world, pretrain, sft, label, rm, select, bon, ppo, rs,
    dpo, rloo, eval), with the names of that command's options, e.g. `ppo: {steps: 80,
    kl_coef: 0.05}`; bon takes `rlhfkit select`'s, e.g. `bon: {samples_per_prompt: 64}`,
    dpo `rlhfkit dpo`'s and rloo `rlhfkit ppo`'s (its estimator is rloo)."""

    out: Annotated[str, OutputPath("folder", owner="pipeline.json")] = "runs/demo"
    """Output folder of the whole run."""
    preset: Annotated[
        Literal["quick", "default", "real", "real-smoke"] | None,
        tyro.conf.DisallowNone,
        CheckedWith("rlhfkit.pipeline_inputs:check_preset"),
        tyro.conf.arg(help_behavior_hint="(default: real with --model, else default)"),
    ] = None
    """Sizes of every stage: 'quick' (a smoke run, about 2.5 minutes on 2 CPU cores) or 'default' (about 11 minutes alone on 2 CPU cores; the numbers in docs/results.md) for the built-in tiny model; 'real' (learning rates, batches and steps for a pretrained ~0.1-0.5B model on CPU; needs --model) or 'real-smoke' (every stage on a few records, a few minutes with a 135M model) for yours."""
    seed: int = 0
    """Seed of the world and of every stage."""
    bf16: bool = False
    """bf16 autocast in the training stages, where the device supports it."""
    until: Annotated[str | None, CheckedBy("rlhfkit.config.checks:pipeline_stage")] = None
    """Stop after this stage (a stage name), e.g. 'sft'."""
    overwrite: bool = False
    """Delete an earlier pipeline run in --out and start again (default: skip finished stages, resume the rest)."""
    model: CausalLMFolder[str | None] = None
    """Start from your own causal LM instead of pretraining one: a Hugging Face folder or a .gguf file (converted once, into OUT/base). The pretrain stage is skipped, the model's tokenizer is used in every stage, and PPO-ptx is off unless --ptx-data is given; the memory plan of sft, rm, ppo and rs is printed before anything loads."""
    sft_data: Annotated[
        str | None, InputPath(), CheckedBy("rlhfkit.pipeline_inputs:check_sft_data")
    ] = None
    """SFT records for the sft stage instead of the world's demonstrations: {"prompt","completion"} or {"messages"} (JSONL, Parquet, datasets folder)."""
    rm_data: Annotated[
        tuple[str, ...],
        tyro.conf.UseAppendAction,
        tyro.conf.arg(metavar="[NAME=]FILE"),
        CheckedBy("rlhfkit.pipeline_inputs:check_rm_data"),
    ] = ()
    """Preference data for the reward models (and dpo) instead of the world's simulated labellers (the label stage is skipped): helpfulness=FILE and/or safety=FILE, repeated for several files (a bare FILE is helpfulness); rankings or pairs in any format `rlhfkit rm` reads. A helpfulness RM alone is the reward as it is (combine single); with a safety RM the two are combined by Llama 2's rule."""
    prompts: Annotated[
        str | None, InputPath(), CheckedBy("rlhfkit.pipeline_inputs:check_prompts")
    ] = None
    """RL prompts for ppo, rs and rloo instead of the world's: {"prompt","safety"?} or {"messages"} records."""
    eval_prompts: Annotated[
        str | None, InputPath(), CheckedBy("rlhfkit.pipeline_inputs:check_eval_prompts")
    ] = None
    """Held-out prompts for select, bon, the evaluations of ppo, rs and rloo, and the eval stage, instead of the world's. Gold metrics only where the prompts are the world's; RM score, KL to SFT and win rate over the SFT model on any."""
    ptx_data: Input[str | None] = None
    """Pretraining corpus for PPO-ptx ({"text"} JSONL or .txt): default the world's corpus without --model, none with --model (PPO-ptx off)."""
    world: StageOptions = dataclasses.field(default_factory=dict)
    pretrain: StageOptions = dataclasses.field(default_factory=dict)
    sft: StageOptions = dataclasses.field(default_factory=dict)
    label: StageOptions = dataclasses.field(default_factory=dict)
    rm: StageOptions = dataclasses.field(default_factory=dict)
    select: StageOptions = dataclasses.field(default_factory=dict)
    bon: StageOptions = dataclasses.field(default_factory=dict)
    ppo: StageOptions = dataclasses.field(default_factory=dict)
    rs: StageOptions = dataclasses.field(default_factory=dict)
    dpo: StageOptions = dataclasses.field(default_factory=dict)
    rloo: StageOptions = dataclasses.field(default_factory=dict)
    eval: StageOptions = dataclasses.field(default_factory=dict)

    sections: ClassVar[dict[str, type]] = {
        "world": WorldMakeConfig,
        "pretrain": PretrainConfig,
        "sft": SFTConfig,
        "label": WorldLabelConfig,
        "rm": RMConfig,
        "select": SelectConfig,
        "bon": SelectConfig,  # the same options: sample one model, score with the RMs
        "ppo": PPOConfig,
        "rs": RSConfig,
        "dpo": DPOConfig,
        "rloo": PPOConfig,  # `rlhfkit ppo --estimator rloo`
        "eval": EvalConfig,
    }
    """The config class of each stage's section: its options are read and range-checked
    with that class's types and constraints before any stage runs."""


@dataclass(kw_only=True)
class ReportConfig:
    """Re-render a pipeline run's report.md and its PNG plots (in RUN/report/) from the files
    on disk: no training, no model loading. `rlhfkit pipeline` writes the same report at its end."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = ""
    """The pipeline run folder (the --out of `rlhfkit pipeline`), e.g. runs/demo."""
    run: str = ""
    """The run folder, as a flag instead of the positional RUN."""
