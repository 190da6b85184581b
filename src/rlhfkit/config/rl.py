"""Configs of the RL stages: select, PPO, rejection sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import tyro

from rlhfkit.config.base import (
    ChatOptions,
    DeviceOptions,
    LoraOptions,
    OptimizerOptions,
    RemoteCodeOptions,
    RewardOptions,
    RunOptions,
    ScaleOptions,
    TrainOptions,
)
from rlhfkit.config.fields import (
    CausalLMFolder,
    CheckedBy,
    CheckedWith,
    DataFile,
    ModelFolder,
    NonNegative,
    OutputPath,
    Positive,
    PositiveFraction,
    PromptData,
    Range,
    UnitInterval,
    WithinPositions,
)

NEW_TOKENS = WithinPositions(plus="max_prompt_len")
"""--max-new-tokens: prompt (up to --max-prompt-len) + response fit the model's positions."""

# --- Option groups of the commands that sample from a policy and score the samples ------


@dataclass(kw_only=True)
class LengthOptions:
    """How long prompts and sampled responses may be."""

    max_new_tokens: Annotated[Positive[int], NEW_TOKENS] = 32
    """Maximum response tokens per sample; capped, with a note, so that --max-prompt-len + this fit the positions of the model sampled from (max_position_embeddings in its config.json)."""
    max_prompt_len: Positive[int] = 128
    """Prompts longer than this keep their last tokens."""


@dataclass(kw_only=True)
class GeneratorOptions:
    """Which engine samples responses (`sampling.generator.ENGINES`) and how vLLM is set up."""

    generator: Literal["hf", "vllm"] = "hf"
    """Generation engine: 'hf' (our KV-cached decoding path on the live policy) or 'vllm' (vLLM in this process, weights pushed in place after every update; `make install-vllm`)."""
    vllm_gpu_memory_utilization: PositiveFraction[float] = 0.4
    """--generator vllm: share of the accelerator's memory vLLM may take (weights + KV cache), colocated with training; on CPU, the share of host memory for its KV cache."""
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """--generator vllm: dtype of vLLM's weight copy ('auto': the policy's own)."""
    vllm_enforce_eager: bool = False
    """--generator vllm: no CUDA graphs / torch.compile in vLLM (starts faster, decodes slower)."""
    vllm_tensor_parallel_size: Positive[int] = 1
    """--generator vllm: devices vLLM shards the model over; under torchrun each group of N consecutive ranks shares one engine (N must divide the number of processes)."""


@dataclass(kw_only=True)
class SamplingOptions(LengthOptions):
    """How a policy samples (`temperature` is each command's own: its meaning and type differ)."""

    top_k: NonNegative[int] = 0
    """Sample from the k most likely tokens only (0: all)."""
    top_p: PositiveFraction[float] = 1.0
    """Nucleus sampling mass (1: all)."""


@dataclass(kw_only=True)
class ScorerOptions(RemoteCodeOptions, RewardOptions):
    """The reward of sampled responses: reward models, combined, or a rule (what
    `scoring.build.build_scorer` reads)."""

    rule_reward: Annotated[
        str | None,
        CheckedBy("rlhfkit.scoring.rules:check_rule_reward"),
        CheckedWith("rlhfkit.config.checks:one_reward"),
    ] = None
    """A rule instead of reward models: 'gold' (the built-in world's gold judges), 'length' (words), 'count:TEXT'."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model folders to run."""


@dataclass(kw_only=True)
class RLOptions(ChatOptions, GeneratorOptions, SamplingOptions, ScorerOptions):
    """What the RL stages (`ppo`, `rs`) share: the starting policy, how it samples, its reward,
    and how the held-out evaluation samples."""

    policy: CausalLMFolder[str] = ""
    """Starting policy: a Hugging Face causal LM folder (the SFT checkpoint picked by `rlhfkit select`) or a .gguf file."""
    eval_max_prompts: Positive[int | None] = 256
    """Evaluate on the first N held-out prompts."""
    eval_temperature: NonNegative[float] = 0.0
    """Sampling temperature for evaluation (0: greedy, as `rlhfkit eval`)."""


# --- RL: PPO and picking the SFT checkpoint (loops/ppo, loops/select.py) ----------------


@dataclass(frozen=True)
class EstimatorDefaults:
    """What an advantage estimator of `rlhfkit ppo --estimator` uses unless told otherwise."""

    kl_in: Literal["reward", "loss"]
    """Where the KL to the reference goes: the per-token reward, or a k3 loss term."""
    loss_agg: str
    """How the per-token policy loss becomes one number (`losses.POLICY_LOSSES`)."""
    samples_per_prompt: int
    """Responses sampled per prompt (the group of the group estimators)."""
    critic: bool = False
    """Whether the estimator needs a value model."""
    group: bool = False
    """Whether its baseline comes from the other responses to the same prompt (n >= 2)."""


ESTIMATOR_DEFAULTS: dict[str, EstimatorDefaults] = {
    # PPO (InstructGPT): GAE on a learned value model, KL in the reward, token mean
    "gae": EstimatorDefaults("reward", "token-mean", 1, critic=True),
    # RLOO (Ahmadian et al. 2024): the response is one action; token sums = its log-prob
    "rloo": EstimatorDefaults("reward", "seq-mean-token-sum", 4, group=True),
    # GRPO (Shao et al. 2024): k3 KL loss, each response's mean over its tokens
    "grpo": EstimatorDefaults("loss", "seq-mean-token-mean", 4, group=True),
    # Dr. GRPO (Liu et al. 2025): token sums over a constant (--max-new-tokens)
    "dr-grpo": EstimatorDefaults("loss", "seq-mean-token-sum-norm", 4, group=True),
    # REINFORCE++ (Hu 2025): PPO's per-token KL reward, returns whitened over the batch
    "reinforce++": EstimatorDefaults("reward", "token-mean", 1),
    "reinforce++-baseline": EstimatorDefaults("reward", "token-mean", 4, group=True),
}
LOSS_AGGREGATIONS = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
    "sequence",
)


def estimator_options(cfg: object) -> tuple[str, str, int]:
    """(kl_in, loss_agg, samples_per_prompt) of a PPO config: each option as given, else its
    --estimator's default (`ESTIMATOR_DEFAULTS`)."""
    d = ESTIMATOR_DEFAULTS[getattr(cfg, "estimator", "gae")]
    kl_in, agg, n = (getattr(cfg, k, None) for k in ("kl_in", "loss_agg", "samples_per_prompt"))
    return kl_in or d.kl_in, agg or d.loss_agg, n or d.samples_per_prompt


def needs_value_model(cfg: object) -> bool:
    """Whether a PPO config's --estimator trains a value model (gae only)."""
    return ESTIMATOR_DEFAULTS[getattr(cfg, "estimator", "gae")].critic


@dataclass(kw_only=True)
class PPOConfig(LoraOptions, ScaleOptions, OptimizerOptions, RunOptions, RLOptions):
    """RL fine-tuning with PPO: per-token KL penalty to the reference, clipped policy and value losses, optional PPO-ptx; or with a critic-free estimator (--estimator rloo, grpo, dr-grpo, reinforce++, reinforce++-baseline: no value model)."""

    reference: CausalLMFolder[str | None] = None
    """Frozen reference for the KL penalty, a causal LM folder or .gguf file (default: --policy, as in InstructGPT)."""
    prompts: PromptData[str] = ""
    """RL prompts: JSONL of {"prompt", "safety"?} records (Parquet and datasets folders too)."""
    whiten: bool | None = None
    """Whiten the combined RM score over each rollout batch (default: on for llama2, off otherwise)."""
    value_init: Annotated[str, CheckedWith("rlhfkit.config.checks:value_init")] = "rm"
    """Value model start: 'rm' (a copy of the first --rm, InstructGPT), an RM NAME, 'policy' (the policy with a zero head; used with --rule-reward), or a reward/value model folder."""
    steps: Positive[int] = 100
    """PPO iterations (one rollout batch + its update each)."""
    batch_size: Positive[int] = 64
    """Prompts per rollout, over all processes (split across them under torchrun); each gets --samples-per-prompt responses."""
    num_mini_batches: Annotated[
        Positive[int], CheckedWith("rlhfkit.config.checks:mini_batches")
    ] = 1
    """Minibatches per PPO epoch; one policy and one value optimizer step each."""
    micro_batch_size: NonNegative[int] = 0
    """Sequences per forward/backward within a minibatch, per process (0: the whole minibatch). Changes memory, not results."""
    packing: Annotated[
        bool | None, tyro.conf.DisallowNone, tyro.conf.arg(help_behavior_hint="(default: auto)")
    ] = None
    """Run the reference, value and training forwards padding-free (sequences packed into rows, no padding FLOPs); default: on for each model a probe at start-up finds exact (packed sequences kept apart), padded otherwise."""
    ppo_epochs: Positive[int] = 4
    """Passes over each rollout batch."""
    ignore_eos: bool = False
    """EOS is an ordinary token in rollouts: every response gets exactly --max-new-tokens tokens (benchmarks; TRL's stop_token=None). Evaluation still stops at EOS."""
    temperature: Annotated[
        Positive[float], CheckedWith("rlhfkit.config.checks:full_distribution")
    ] = 1.0
    """Sampling temperature of the rollouts; every log-prob (policy, reference) uses it too."""
    kl_coef: NonNegative[float] = 0.02
    """beta: KL penalty per token (InstructGPT 0.02; Llama 2 0.01 for 7B/13B); the start value with --kl-target."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    """Per-token KL estimator in the reward (and the logged kl): k1 = log pi - log pi_ref (InstructGPT), k2, k3. --kl-in loss always adds k3."""
    kl_target: Positive[float | None] = None
    """Adaptive KL controller (Ziegler et al. 2019): steer the per-sequence KL to this target."""
    kl_horizon: Positive[float] = 10000.0
    """Adaptive KL controller horizon (in samples)."""
    gamma: UnitInterval[float] = 1.0
    """GAE discount (and REINFORCE++'s, whose returns use no lambda)."""
    lam: UnitInterval[float] = 0.95
    """GAE lambda."""
    clip_eps: Positive[float] = 0.2
    """PPO ratio clip range."""
    value_clip: Positive[float | None] = 0.2
    """Value clip range around the rollout's values (None: unclipped value loss)."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch (all processes)."""
    whiten_rewards: bool = False
    """Scale per-token rewards to unit variance over the batch before GAE (mean kept)."""
    missing_eos_penalty: NonNegative[float | None] = None
    """Penalty for a response that hits --max-new-tokens without EOS (None: no penalty)."""
    missing_eos_mode: Literal["add", "replace"] = "add"
    """'add': score - penalty; 'replace': score = -penalty."""
    score_norm: Literal["none", "whiten"] = "none"
    """Normalise scores over each rollout batch (all processes) before the KL penalty is added."""
    score_clip: Positive[float | None] = None
    """Clip (normalised) scores to [-c, c]."""
    ptx_data: Annotated[str | None, DataFile("corpus", when="ptx_coef")] = None
    """Pretraining corpus for PPO-ptx ({"text"} JSONL or .txt)."""
    ptx_coef: Annotated[NonNegative[float], CheckedWith("rlhfkit.config.checks:ptx")] = 0.0
    """gamma of PPO-ptx: weight of the LM loss added to every policy step (InstructGPT 27.8; 0: plain PPO)."""
    ptx_batch_size: Positive[int] = 8
    """Pretraining blocks per policy step (over all processes)."""
    ptx_seq_len: Positive[int] = 128
    """Tokens per pretraining block."""
    value_lr: Positive[float | None] = None
    """Value model learning rate (default: --lr)."""
    estimator: Annotated[
        Literal["gae", "rloo", "grpo", "dr-grpo", "reinforce++", "reinforce++-baseline"],
        CheckedWith("rlhfkit.config.checks:estimator"),
    ] = "gae"
    """Advantage estimator (docs/estimators.md). gae: PPO with a value model (GAE; KL in reward; token-mean; 1 sample per prompt). The rest build no value model: rloo (Ahmadian et al. 2024: sequence reward = score - kl_coef x summed KL, minus the mean of the other responses to its prompt; reward; seq-mean-token-sum; 4), grpo (Shao et al. 2024: (score - group mean) / (group std + 1e-4); loss; seq-mean-token-mean; 4), dr-grpo (Liu et al. 2025: score - group mean; loss; seq-mean-token-sum-norm; 4), reinforce++ (Hu 2025: per-token KL reward, returns to go, whitened over the batch; reward; token-mean; 1), reinforce++-baseline (the same after subtracting the group's mean score; reward; token-mean; 4)."""
    samples_per_prompt: Annotated[
        int | None,
        Range(gt=0),
        tyro.conf.DisallowNone,
        tyro.conf.arg(help_behavior_hint="(default: per --estimator, 1 or 4; > 0)"),
    ] = None
    """Responses sampled per prompt: a step trains on --batch-size x this many. The responses to one prompt stay on one process and in one minibatch (the group estimators' baseline)."""
    kl_in: Annotated[
        Literal["reward", "loss"] | None,
        tyro.conf.DisallowNone,
        tyro.conf.arg(help_behavior_hint="(default: per --estimator)"),
    ] = None
    """Where the KL to the reference goes: 'reward' (-kl_coef x --kl-estimator per token in the reward, InstructGPT) or 'loss' (kl_coef x k3 per token added to the policy loss, GRPO). Default: loss for grpo and dr-grpo, reward for the others."""
    loss_agg: Annotated[
        Literal[
            "token-mean",
            "seq-mean-token-mean",
            "seq-mean-token-sum",
            "seq-mean-token-sum-norm",
            "sequence",
        ]
        | None,
        tyro.conf.DisallowNone,
        tyro.conf.arg(help_behavior_hint="(default: per --estimator)"),
    ] = None
    """How per-token clipped losses become the minibatch's loss: token-mean (over all tokens: PPO, REINFORCE++; TRL's 'dapo'), seq-mean-token-mean (each response's mean, then the mean over responses: GRPO; TRL's 'grpo'), seq-mean-token-sum (each response's sum: RLOO), seq-mean-token-sum-norm (sums over --max-new-tokens: Dr. GRPO; TRL's 'dr_grpo'), or sequence (one ratio per response, exp of its summed log-ratio, clipped as a whole: TRL's RLOOTrainer; rloo, grpo and dr-grpo only)."""
    # OptimizerOptions with PPO's defaults, and help that says how PPO counts and clips.
    lr: Positive[float] = 1e-5
    """Policy learning rate."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule after warmup (over steps x ppo_epochs x num_mini_batches optimizer steps)."""
    warmup_steps: NonNegative[int] = 0
    """Linear warmup optimizer steps."""
    min_lr_ratio: UnitInterval[float] = 0.1
    """Final learning rate as a fraction of the peak (cosine and linear)."""
    weight_decay: NonNegative[float] = 0.1
    """AdamW weight decay (Llama 2: 0.1; not on biases and norms)."""
    max_grad_norm: NonNegative[float] = 1.0
    """Clip each model's gradient norm to this (0 disables)."""
    adam_eps: Positive[float] = 1e-5
    """Adam's epsilon for the policy and value optimizers: 1e-5, not PyTorch's 1e-8, as OpenAI's PPO baselines and lm-human-preferences (Huang et al. 2024, the N+ implementation details of RLHF with PPO)."""
    log_every: Positive[int] = 1
    """Log metrics every N steps."""
    sample_every: NonNegative[int] = 10
    """Print a table of sample prompts/responses/scores every N steps (0: never)."""
    num_samples: NonNegative[int] = 4
    """Rows of that table."""
    eval_prompts: PromptData[str | None] = None
    """Held-out prompts: evaluated before training, every --eval-every steps and at the end."""
    eval_every: NonNegative[int] = 0
    """Evaluate every N steps (0: only before and after training)."""
    eval_batch_size: Positive[int] = 64
    """Prompts per evaluation generation batch."""
    save_every: NonNegative[int] = 50
    """Write a resumable checkpoint every N steps (and always at the end)."""
    keep_checkpoints: NonNegative[int] = 2
    """Keep the newest N checkpoints (0: keep all)."""
    vllm_logprobs: bool = False
    """--generator vllm: take the behaviour log-probs from vLLM's sampler instead of a training-side forward (saves a forward; OFF-POLICY by the engines' numerical gap, logged as vllm/logprob_gap_*)."""


@dataclass(kw_only=True)
class SelectConfig(ChatOptions, DeviceOptions, GeneratorOptions, LengthOptions, ScorerOptions):
    """Pick the SFT checkpoint whose samples the reward model(s) score highest (InstructGPT's pi^SFT)."""

    checkpoints: Annotated[
        tuple[str, ...], tyro.conf.UseAppendAction, ModelFolder("causal-lm", runs=True)
    ] = ()
    """A run folder holding epoch-*/ checkpoints (as `rlhfkit sft` writes), or model folders or .gguf files (repeatable)."""
    rule_reward: Annotated[
        str | None,
        CheckedBy("rlhfkit.scoring.rules:check_rule_reward"),
        CheckedWith("rlhfkit.config.checks:one_reward"),
    ] = None
    """A rule instead of reward models: 'gold', 'length' or 'count:TEXT' (as `rlhfkit ppo`)."""
    prompts: PromptData[str] = ""
    """Prompts JSONL ({"prompt","safety"?}), the same for every checkpoint."""
    max_prompts: Positive[int | None] = None
    """Use only the first N prompts."""
    samples_per_prompt: Positive[int] = 1
    """Responses sampled per prompt and checkpoint."""
    temperature: NonNegative[float] = 1.0
    """Sampling temperature (0: greedy)."""
    max_new_tokens: Annotated[Positive[int], NEW_TOKENS] = 32
    """Maximum response tokens (capped, with a note, to fit the checkpoints' positions with --max-prompt-len)."""
    batch_size: Positive[int] = 64
    """Sequences per generation batch."""
    seed: int = 0
    """Sampling seed, the same for every checkpoint (common random numbers)."""
    out: Annotated[str, OutputPath("folder", files=("select.json",))] = ""
    """Output folder for select.json."""
    overwrite: bool = False
    """Replace an existing select.json in --out."""


# --- Rejection sampling fine-tuning (loops/rejection) ------------------------------------


@dataclass(kw_only=True)
class RSConfig(TrainOptions, RLOptions):
    """Rejection sampling fine-tuning (Llama 2): per round, sample K responses per prompt, keep the highest-reward one, fine-tune on the kept set with the SFT loss."""

    prompts: PromptData[str] = ""
    """Prompts: JSONL of {"prompt", "safety"?} records (Parquet and datasets folders too), the same every round."""
    max_prompts: Positive[int | None] = None
    """Use only the first N prompts."""
    k: Positive[int] = 8
    """Responses sampled per prompt and round (Llama 2: up to ~30 per prompt)."""
    rounds: Positive[int] = 2
    """Rounds of sample -> keep the best -> fine-tune; each samples from the previous round's policy."""
    temperature: Annotated[
        NonNegative[tuple[float, ...]], CheckedWith("rlhfkit.config.checks:round_temperatures")
    ] = (1.0,)
    """Sampling temperature: one value for every round, or one per round (e.g. 0.7 1.0)."""
    keep: Literal["best", "best-of-all-rounds"] = "best"
    """'best': each prompt's best sample of this round; 'best-of-all-rounds': the best sample of any round so far (Llama 2)."""
    min_gap: NonNegative[float] = 0.0
    """Fine-tune only on prompts whose best sample beats the median of its samples by at least this reward (0: every prompt, as Llama 2)."""
    kl_coef: NonNegative[float] = 0.0
    """Keep the sample with the highest reward + beta x log pi(y|x) (pi: the policy that drew it) instead of the highest reward: the most likely one under the KL-regularised optimum pi x exp(r / beta), so that where the reward cannot tell samples apart the policy's own belief decides (0: the highest reward, as Llama 2)."""
    add_greedy: bool = False
    """Add the policy's greedy response to each prompt's K samples as one more candidate for keeping (saved in round-N/greedy.jsonl)."""
    keep_truncated: bool = False
    """Also fine-tune on kept samples cut at --max-new-tokens before EOS, trained WITHOUT EOS (default: drop those prompts for the round, counted as truncated_dropped in stats.json)."""
    sample_batch_size: Positive[int] = 64
    """Sequences per generation batch (prompts per batch: this // --k); samples are saved batch by batch."""
    max_len: Annotated[Positive[int], WithinPositions()] = 256
    """Fine-tuning: maximum tokens of prompt + kept response + EOS."""
    overlong: Literal["truncate", "drop", "error"] = "truncate"
    """Fine-tuning: what to do with a kept example longer than --max-len."""
    packing: Annotated[
        bool | None, tyro.conf.DisallowNone, tyro.conf.arg(help_behavior_hint="(default: auto)")
    ] = None
    """Fine-tuning: pack sequences into rows without padding; default: on where the model keeps packed examples apart (checked at start-up)."""
    epochs: Positive[int] = 1
    """Fine-tuning passes over each round's kept set."""
    lr: Positive[float] = 1e-4
    warmup_steps: NonNegative[int] = 5
    eval_prompts: PromptData[str | None] = None
    """Held-out prompts: the policy's reward (and the world's gold metrics) before round 1 and after every round."""

    checkpointed: ClassVar[bool] = False
    """--resume continues from the round-N/ folders (`models.run_folder.resumable`)."""
