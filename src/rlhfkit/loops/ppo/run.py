"""The `PPORun` of `rlhfkit ppo` (`loop.py`) and what happens to it outside one iteration:
`build_run` makes it from the roles (training wrappers, optimizers and schedules, the KL
controller, the generator, encoded prompts and ptx blocks), `resume` and `save` read and
write its checkpoints, `stop_at_checkpoint` ends a run whose served reward model stopped
answering, and `evaluate` scores the policy on held-out prompts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import PPOConfig
from rlhfkit.data.records import PromptRecord
from rlhfkit.data.tokenize import pack_corpus
from rlhfkit.distributed import Dist, barrier
from rlhfkit.errors import RemoteUnavailable
from rlhfkit.logging import MetricsLogger, rank0_print
from rlhfkit.loops.common import build_optimizer, build_scheduler
from rlhfkit.loops.ppo.roles import packed_roles, shard_frozen
from rlhfkit.loops.ppo.rollout import RolloutSettings
from rlhfkit.loops.ppo.update import PtxBatches, Trainables, UpdateSettings
from rlhfkit.models.resume import latest_checkpoint, prune_checkpoints, step_dir
from rlhfkit.models.sharded import read_checkpoint, write_checkpoint
from rlhfkit.models.wrap import enable_gradient_checkpointing, is_sharded, wrap_for_training
from rlhfkit.ops.kl import AdaptiveKLController, FixedKLController
from rlhfkit.sampling.generator import ResponseGenerator, make_generator
from rlhfkit.sampling.held_out import evaluate_policy
from rlhfkit.sampling.sample_score import encode_prompts
from rlhfkit.scoring.build import unwhitened

# ---------------------------------------------------------------------------------------
# The run, built from its roles
# ---------------------------------------------------------------------------------------


@dataclass
class PPORun:
    """Everything one PPO iteration needs besides the options (built by `build_run`)."""

    trainables: Trainables
    generator: ResponseGenerator
    reference: torch.nn.Module
    scorer: Any
    tokenizer: Any
    prompts: list[PromptRecord]
    prompt_ids: list[list[int]]
    rollout_settings: RolloutSettings
    update_settings: UpdateSettings
    kl_controller: FixedKLController | AdaptiveKLController
    dist: Dist
    device: torch.device
    ptx: PtxBatches | None = None
    policy_steps: int = 0
    eval_prompts: list[PromptRecord] = field(default_factory=list)
    eval_scorer: Any = None
    eval_settings: RolloutSettings | None = None


def build_run(
    cfg: PPOConfig,
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    value_model: torch.nn.Module | None,
    scorer: Any,
    tokenizer: Any,
    prompts: list[PromptRecord],
    ptx_corpus: list[str] | None = None,
    d: Dist | None = None,
    device: torch.device | None = None,
    eval_prompts: list[PromptRecord] | None = None,
) -> PPORun:
    """A `PPORun` from roles already built: optimizers (AdamW, decay on matrices only),
    schedules, the KL controller, training wrappers, the generator, encoded prompts and
    ptx blocks, and the evaluation's unwhitened scorer and settings. `value_model` is None
    for a critic-free --estimator."""
    d = d or Dist()
    device = device or next(policy.parameters()).device
    ptx = None
    if ptx_corpus is not None and cfg.ptx_coef > 0:
        blocks = pack_corpus(ptx_corpus, tokenizer, cfg.ptx_seq_len)
        ptx = PtxBatches(blocks, cfg.ptx_batch_size, cfg.seed)
    settings = RolloutSettings.from_config(cfg)
    kl_ctl = (
        AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.kl_target is not None
        else FixedKLController(cfg.kl_coef)
    )
    trainables = _trainables(cfg, policy, value_model, d, device)
    if cfg.strategy == "fsdp2" and d.enabled:  # frozen roles sharded too: four models fit
        shard_frozen(reference, scorer, device, bf16=cfg.bf16, cpu_offload=cfg.cpu_offload)
    roles = {"policy": (trainables.policy, "logits"), "reference": (reference, "logits")}
    if trainables.value_model is not None:
        roles["value"] = (trainables.value_model, "values")
    packed = packed_roles(cfg.packing, roles, d.rank)
    settings = replace(settings, packed=packed & {"policy", "reference"})
    update_settings = replace(UpdateSettings.from_config(cfg), packed=packed & {"policy", "value"})
    return PPORun(
        trainables=trainables,
        generator=make_generator(trainables.policy, tokenizer, cfg),
        reference=reference,
        scorer=scorer,
        tokenizer=tokenizer,
        prompts=list(prompts),
        prompt_ids=encode_prompts(prompts, tokenizer, cfg.max_prompt_len),
        rollout_settings=settings,
        update_settings=update_settings,
        kl_controller=kl_ctl,
        dist=d,
        device=device,
        ptx=ptx,
        eval_prompts=list(eval_prompts or []),
        eval_scorer=unwhitened(scorer, cfg),
        eval_settings=replace(
            settings, temperature=cfg.eval_temperature, score_norm="none", stop_at_eos=True
        ),
    )


def _trainables(
    cfg: PPOConfig, policy: torch.nn.Module, value_model: torch.nn.Module | None, d: Dist, device
) -> Trainables:
    """The policy and value model (if any) wrapped for training (--strategy), then AdamW
    over the wrapped parameters (FSDP2's are shards) and their schedules."""
    trained = [policy] if value_model is None else [policy, value_model]
    if cfg.gradient_checkpointing:
        for model in trained:
            enable_gradient_checkpointing(model)
    scale = dict(bf16=cfg.bf16, cpu_offload=cfg.cpu_offload)
    trained = [wrap_for_training(m, d, device, cfg.strategy, lora=cfg, **scale) for m in trained]
    betas = (cfg.adam_beta1, cfg.adam_beta2)  # eps: 1e-5 by default (N+ details)
    adam = dict(weight_decay=cfg.weight_decay, betas=betas, eps=cfg.adam_eps)
    total = cfg.steps * cfg.ppo_epochs * cfg.num_mini_batches
    sched = dict(
        schedule=cfg.schedule, warmup=cfg.warmup_steps, total=total, min_ratio=cfg.min_lr_ratio
    )
    policy, value = trained[0], (None if value_model is None else trained[1])
    p_opt = build_optimizer(policy, lr=cfg.lr, **adam)
    v_opt = None if value is None else build_optimizer(value, lr=cfg.value_lr or cfg.lr, **adam)
    return Trainables(
        policy=policy,
        value_model=value,  # None: a critic-free estimator, the policy alone
        policy_optimizer=p_opt,
        value_optimizer=v_opt,
        policy_scheduler=build_scheduler(p_opt, **sched),
        value_scheduler=None if v_opt is None else build_scheduler(v_opt, **sched),
    )


# ---------------------------------------------------------------------------------------
# Checkpoints and evaluation
# ---------------------------------------------------------------------------------------


def _checkpoint_parts(run: PPORun) -> dict[str, dict[str, Any]]:
    """The roles a checkpoint holds: policy and value model, or the policy alone (a
    critic-free --estimator: no value/ folder, no value optimizer state)."""
    t = run.trainables
    parts = {
        "models": {"policy": t.policy, "value": t.value_model},
        "optimizers": {"policy": t.policy_optimizer, "value": t.value_optimizer},
        "schedulers": {"policy": t.policy_scheduler, "value": t.value_scheduler},
    }
    if t.value_model is None:
        parts = {k: {"policy": v["policy"]} for k, v in parts.items()}
    return parts


def resume(run: PPORun, out: Path) -> dict[str, Any] | None:
    """The loop state of the latest checkpoint in `out`, loaded into `run` (None if none)."""
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return None
    state = read_checkpoint(ckpt, dist=run.dist, **_checkpoint_parts(run))
    run.kl_controller.load_state_dict(state["kl_controller"])
    run.policy_steps = state["policy_steps"]
    run.generator.sync_weights()
    rank0_print(f"resuming from {ckpt} at step {state['step']}", rank=run.dist.rank)
    return state


def save(run: PPORun, state: dict[str, Any], out: Path, keep: int | None) -> None:
    """A resumable checkpoint at `out/checkpoints/step-N` (every process calls)."""
    state.update(policy_steps=run.policy_steps, kl_controller=run.kl_controller.state_dict())
    path = step_dir(out, state["step"])
    write_checkpoint(
        path, tokenizer=run.tokenizer, state=dict(state), dist=run.dist, **_checkpoint_parts(run)
    )
    if run.dist.is_main:
        prune_checkpoints(out, keep)
    barrier(run.dist)


@contextmanager
def stop_at_checkpoint(
    run: PPORun, state: dict[str, Any], out: Path, cfg: PPOConfig, *, eval_due: bool = False
) -> Iterator[None]:
    """Around a PPO step or an evaluation: a served reward model that stopped answering
    (`RemoteUnavailable`, after the client's retries) ends the run at a checkpoint of the
    last finished step, with one line saying to --resume, instead of a traceback.

    Scoring comes before the update in a step, so the run's state is still that of the
    last finished step: nothing of the failed step was applied, and the resumed run
    samples that step again with the same seeded generator. `eval_due`: an evaluation
    failed; the checkpoint says so and the resumed run evaluates first. Under torchrun
    the error ends every process without a new checkpoint (the others would wait for the
    failed one): --resume continues from the last --save-every checkpoint."""
    try:
        yield
    except RemoteUnavailable as e:
        step = state["step"]
        if run.dist.world_size > 1:
            raise RemoteUnavailable(
                f"{e}. Rerun with --resume from the last checkpoint in {out} once it answers"
            ) from None
        if eval_due:
            state["eval_due"] = True
        path = step_dir(out, step)
        if eval_due or not path.exists():
            save(run, state, out, cfg.keep_checkpoints)
        raise RemoteUnavailable(
            f"{e}. The run is saved at step {step} ({path}): rerun the same command with "
            "--resume once the server answers again"
        ) from None


def evaluate(run: PPORun, state: dict[str, Any], logger: MetricsLogger, cfg: PPOConfig) -> None:
    """Reward, KL and (world prompts) gold metrics on the held-out prompts, on rank 0; on
    every process (the same work) when the roles are sharded, since their forwards are
    collective."""
    everyone = is_sharded(run.trainables.policy)
    if (run.dist.is_main or everyone) and run.eval_prompts:
        result = evaluate_policy(
            run.generator, run.reference, run.eval_scorer, run.eval_prompts,
            tokenizer=run.tokenizer, settings=run.eval_settings.generation,
            max_prompt_len=run.eval_settings.max_prompt_len, batch_size=cfg.eval_batch_size,
            seed=cfg.seed, device=run.device,
        )  # fmt: skip
        logger.log(state["step"], {f"eval/{k}": v for k, v in result.items() if k != "samples"})
        state["evals"].append({"step": state["step"], **result})
        rank0_print(_eval_line(state["step"], result), rank=run.dist.rank)
    barrier(run.dist)


def _eval_line(step: int, r: dict[str, Any]) -> str:
    parts = [f"eval @ step {step}: score {r['score']:.4f}", f"kl {r['kl']:.4f}"]
    if r.get("gold_score") is not None:
        parts.append(f"gold {r['gold_score']:.4f}")
    return ", ".join(parts)
