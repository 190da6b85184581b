"""`rlhfkit ppo`: RL fine-tuning with PPO, a per-token KL penalty, and PPO-ptx (InstructGPT
step 3, Llama 2 section 3.2.3); or, with `--estimator`, the same loop with a critic-free
advantage estimator: RLOO, GRPO, Dr. GRPO, REINFORCE++ (`estimators.py`).

Roles (separate objects, `roles.py`): the policy (trained; sampled through a
`sampling.settings.ResponseGenerator`), the reference (a frozen copy of the starting policy; with
--lora-r the policy itself with its LoRA adapter switched off), the
value model (gae only: a scalar-head model, started from the reward model as in
InstructGPT, or from the policy with a zero head), and the reward (one RM, several combined
by `--combine`, or a rule).

One iteration, `ppo_step` (each numbered step is one call there, in this order):
  1. take the next `--batch-size` prompts of a seeded order (split across processes, so
     the responses to one prompt stay on one process);
  2. the policy samples `--samples-per-prompt` responses to each, in consecutive rows (KV
     cache, stop at EOS); our engine's sampling
     log-probs are the behaviour log-probs (no second policy forward); with
     `--generator vllm` one training-side forward gives them and the gap to vLLM's is
     logged (`--vllm-logprobs`: vLLM's, off-policy by that gap)  [rollout.py];
  3. the reward scores prompt + response at its last token (optional penalty for a
     response without EOS, normalisation, clipping); one reference forward gives the
     per-token KL; rewards_t = -kl_coef * KL_t (k1 by default; not with --kl-in loss)
     + score at the last token  [rollout.py];
  4. the advantages of `--estimator`: gae: one value forward gives V per response token,
     GAE (gamma, lam) gives advantages and returns, advantages whitened over the batch;
     rloo / grpo / dr-grpo: one advantage per response from its group's rewards;
     reinforce++(-baseline): returns to go, whitened  [estimators.py];
  5. `--ppo-epochs` passes over `--num-mini-batches` shuffled minibatches of whole
     groups: per minibatch one value step (gae: clipped value loss) and one policy step
     (clipped surrogate, aggregated by `--loss-agg`, plus kl_coef x k3 with --kl-in loss,
     plus ptx_coef x the LM loss of a pretraining batch when PPO-ptx is on: ONE step on
     the summed gradient), gradient norms clipped to 1; then the generator is given the
     new weights  [update.py: ppo_update];
  6. the adaptive KL controller (if `--kl-target`) updates kl_coef from the batch's KL.
Then `train_ppo`'s loop, step 7: log; every `--sample-every` steps a table of samples;
every `--eval-every` steps an evaluation on held-out prompts (`evaluate`); every
`--save-every` steps a resumable checkpoint (`save`). `PPORun` (what one iteration
needs), `build_run`, `resume`, `save` and `evaluate` are in `run.py`. A served reward
model that stops answering ends the run at a checkpoint of the last finished step
(`stop_at_checkpoint`): `--resume` continues once the server is back.
The final policy is exported at the top of `--out` (a Hugging Face folder: `rlhfkit eval
--model OUT` and `from_pretrained(OUT)` read it); checkpoints are `OUT/checkpoints/step-N`.

Departures from the papers, on purpose:
- every model runs in eval mode (no dropout), so the sampling log-probs equal the
  training forward's before the first update (Huang et al. 2024);
- sampling and minibatch orders are re-seeded from (seed, step, rank) every step, and
  the data position (which prompts, which ptx blocks) is a function of the step count,
  so a checkpoint's step restores both: a resumed run, and every process under
  torchrun, need no saved generator state;
- a llama2-combined reward is whitened within each process's share of the batch (the
  combiner's batch); `--score-norm whiten` whitens over all processes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import PPOConfig, save_config
from rlhfkit.config.checks import check_options
from rlhfkit.config.rl import ESTIMATOR_DEFAULTS, estimator_options
from rlhfkit.data.records import read_corpus, read_prompts
from rlhfkit.distributed import (
    Dist,
    all_reduce_sum,
    barrier,
    setup_distributed,
    teardown_distributed,
)
from rlhfkit.files import write_json
from rlhfkit.logging import (
    MetricsLogger,
    format_metrics,
    progress,
    rank0_print,
    sync_time,
)
from rlhfkit.loops.common import epoch_order
from rlhfkit.loops.ppo.estimators import estimate_advantages
from rlhfkit.loops.ppo.metrics import mean_kl, rollout_metrics, sample_table
from rlhfkit.loops.ppo.roles import build_roles, value_source
from rlhfkit.loops.ppo.rollout import collect_rollout
from rlhfkit.loops.ppo.run import PPORun, build_run, evaluate, resume, save, stop_at_checkpoint
from rlhfkit.loops.ppo.update import ppo_update
from rlhfkit.models.resume import prepare_output_dir
from rlhfkit.models.sharded import export_model
from rlhfkit.scoring.rules import check_rule_prompts

PPO_INFO = "rlhfkit_ppo.json"


# ---------------------------------------------------------------------------------------
# One iteration
# ---------------------------------------------------------------------------------------


def ppo_step(run: PPORun, step: int, batch_size: int, seed: int):
    """Steps 1-6 of the module docstring, one call each. Returns (rollout with advantages,
    metrics) for this process; metrics are over all processes."""
    t, d = run.trainables, run.dist
    t0, c0 = sync_time(run.device), time.process_time()
    # 1. this step's prompts: this process's share of a seeded global batch
    idx = step_prompts(len(run.prompts), batch_size, seed, step, d)
    # 2-3. sample, score, reference log-probs, KL-penalised per-token rewards
    rollout = collect_rollout(
        run.generator, run.reference, run.scorer, [run.prompts[i] for i in idx],
        tokenizer=run.tokenizer, settings=run.rollout_settings,
        kl_coef=run.kl_controller.value, rng=sampling_generator(seed, step, d.rank, run.device),
        prompt_ids=[run.prompt_ids[i] for i in idx],
    )  # fmt: skip
    # 4. the estimator's advantages (gae: values, then GAE advantages and returns)
    rollout = estimate_advantages(t.value_model, rollout, run.update_settings)
    # 5. PPO epochs over minibatches (value and clipped policy steps, + ptx); new weights out
    t1 = sync_time(run.device)
    stats, run.policy_steps = ppo_update(
        t, rollout, run.update_settings, step=step, policy_steps=run.policy_steps, ptx=run.ptx
    )
    run.generator.sync_weights()
    t2 = sync_time(run.device)
    # 6. the KL controller, from this batch's KL
    run.kl_controller.update(mean_kl(rollout), batch_size)

    metrics = {**rollout_metrics(rollout), **stats}
    metrics["lr"] = t.policy_scheduler.get_last_lr()[0] if t.policy_scheduler else None
    metrics["time/update"] = t2 - t1
    metrics["time/step"] = t2 - t0
    metrics["tokens_per_s"] = metrics["response_tokens"] / max(t2 - t0, 1e-9)
    metrics["cpu_s"] = all_reduce_sum(time.process_time() - c0, d, run.device)  # all processes
    return rollout, metrics


def step_prompts(n: int, batch_size: int, seed: int, step: int, d: Dist) -> list[int]:
    """Indices of this process's prompts at step `step` (0-based): global batch `step` of
    endless seeded passes over the prompts, cut into one contiguous slice per process."""
    per_pass = max(1, n // batch_size)
    epoch, i = divmod(step, per_pass)
    order = epoch_order(n, seed, epoch)
    batch = [order[(i * batch_size + j) % n] for j in range(batch_size)]
    lo, hi = batch_size * d.rank // d.world_size, batch_size * (d.rank + 1) // d.world_size
    return batch[lo:hi]


def sampling_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A fresh generator per (seed, step, rank): resume and multi-process need no saved state."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def train_ppo(cfg: PPOConfig) -> dict[str, Any]:
    """Run `rlhfkit ppo` (module docstring). Returns the summary dict."""
    cpu_start = time.process_time()
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    d, device = setup_distributed(cfg.device)
    out = Path(cfg.out)
    prompts, eval_prompts, corpus = _read_inputs(cfg, d)
    if d.is_main:
        prepare_output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite, command="ppo")
        save_config(cfg, out / "config.yaml")
    barrier(d)
    tokenizer, policy, reference, value_model, scorer = build_roles(cfg, device)
    run = build_run(
        cfg, policy, reference, value_model, scorer, tokenizer, prompts, corpus, d, device,
        eval_prompts=eval_prompts,
    )  # fmt: skip
    state = resume(run, out) if cfg.resume else None
    state = state or {"step": 0, "policy_steps": 0, "evals": [], "first_score": None}
    state.setdefault("cpu_s", 0.0)  # CPU-seconds of the steps so far, all processes
    kl_in, loss_agg, n = estimator_options(cfg)
    has_value = run.trainables.value_model is not None
    value = f"value model from {value_source(cfg)}" if has_value else "no value model"
    rank0_print(
        f"ppo: {len(prompts)} prompts, {cfg.steps} steps x {cfg.batch_size} prompts x {n} "
        f"samples, {d.world_size} process(es) on {device}; reward: "
        f"{cfg.rule_reward or ', '.join(cfg.rm)}; estimator {cfg.estimator} (KL in the "
        f"{kl_in}, {loss_agg}), {value}",
        rank=d.rank,
    )
    logger = MetricsLogger(out, enabled=d.is_main, report_to=cfg.report_to)
    if state["step"] == 0:  # what ran, in metrics.jsonl too (a row of strings: no tracker)
        logger.log(0, {"run/estimator": cfg.estimator, "run/kl_in": kl_in,
                       "run/loss_agg": loss_agg, "run/samples_per_prompt": n})  # fmt: skip
    if state["step"] == 0 or state.pop("eval_due", False):
        with stop_at_checkpoint(run, state, out, cfg, eval_due=True):
            evaluate(run, state, logger, cfg)
    bar = progress(cfg.steps, desc="ppo", enabled=d.is_main, initial=state["step"])
    t_start, totals, last = time.perf_counter(), {}, {}
    while state["step"] < cfg.steps:
        with stop_at_checkpoint(run, state, out, cfg):  # a served RM gone: save, one line
            rollout, last = ppo_step(run, state["step"], cfg.batch_size, cfg.seed)  # steps 1-6
        state["step"] += 1
        state["cpu_s"] += last["cpu_s"]
        step = state["step"]
        # 7. log, samples, evaluate, save
        if state["first_score"] is None:
            state["first_score"] = last["score/mean"]
        for k, v in last.items():
            if k.startswith("time/"):
                totals[k] = totals.get(k, 0.0) + v
        bar.update(1)
        bar.set_postfix(format_metrics(last, ("score/mean", "kl", "kl_coef", "entropy")))
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.log(step, {k if "/" in k else f"train/{k}": v for k, v in last.items()})
        if cfg.sample_every and (step % cfg.sample_every == 0 or step == 1) and d.is_main:
            table = sample_table(rollout, cfg.num_samples)
            bar.write(f"step {step} samples:\n{table}")
            logger.text("samples", table, step)
        if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == cfg.steps:
            with stop_at_checkpoint(run, state, out, cfg, eval_due=True):
                evaluate(run, state, logger, cfg)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
            save(run, state, out, cfg.keep_checkpoints)
    bar.close()
    logger.close()
    summary = _summary(run, state, last, totals, time.perf_counter() - t_start, out)
    summary.update(_estimator_summary(cfg, run, state, cpu_start))
    info = {"policy_init": cfg.policy, "reference": cfg.reference or cfg.policy,
            "steps": state["step"], "reward": cfg.rule_reward or list(cfg.rm),
            "estimator": cfg.estimator}  # fmt: skip
    export_model(
        run.trainables.policy, tokenizer, out, dist=d, extra_json={PPO_INFO: info},
        adapter=cfg.save_adapter,
    )  # fmt: skip
    if d.is_main:
        write_json(out / "summary.json", summary)
        rank0_print(f"ppo: final policy written to {out} (rlhfkit eval --model {out})")
    teardown_distributed()
    return summary


def _read_inputs(cfg: PPOConfig, d: Dist):
    """Every data file, validated before a model is loaded."""
    prompts = read_prompts(cfg.prompts)
    eval_prompts = read_prompts(cfg.eval_prompts) if cfg.eval_prompts else []
    if cfg.eval_max_prompts is not None:
        eval_prompts = eval_prompts[: cfg.eval_max_prompts]
    corpus = read_corpus(cfg.ptx_data) if cfg.ptx_data and cfg.ptx_coef > 0 else None
    check_rule_prompts(cfg.rule_reward, [*prompts, *eval_prompts])
    if cfg.ptx_data and cfg.ptx_coef == 0:
        rank0_print("note: --ptx-coef is 0: --ptx-data is not used (plain PPO)", rank=d.rank)
    return prompts, eval_prompts, corpus


def _estimator_summary(cfg: PPOConfig, run: PPORun, state, cpu_start: float) -> dict[str, Any]:
    """Which estimator ran, with what, and its compute: `cpu_time_s` is the CPU-seconds
    (process time) of the steps of the whole run, all processes, summed across resumes;
    `cpu_time_total_s` this invocation's whole process time (loading and evaluation too),
    all processes."""
    kl_in, loss_agg, n = estimator_options(cfg)
    total = all_reduce_sum(time.process_time() - cpu_start, run.dist, run.device)
    return {
        "estimator": cfg.estimator,
        "samples_per_prompt": n,
        "kl_in": kl_in,
        "loss_agg": loss_agg,
        "value_model": ESTIMATOR_DEFAULTS[cfg.estimator].critic,
        "cpu_time_s": round(state["cpu_s"], 2),
        "cpu_time_total_s": round(total, 2),
    }


def _summary(run: PPORun, state, last, totals, wall: float, out: Path) -> dict[str, Any]:
    return {
        "steps": state["step"],
        "first_score": state["first_score"],
        "final_score": last.get("score/mean"),
        "final_kl": last.get("kl"),
        "kl_coef": run.kl_controller.value,
        "evals": [{k: v for k, v in e.items() if k != "samples"} for e in state["evals"]],
        "wall_time_s": round(wall, 2),
        "time_split_s": {k.removeprefix("time/"): round(v, 3) for k, v in totals.items()},
        "world_size": run.dist.world_size,
        "device": str(run.device),
        "policy": str(out),
    }
