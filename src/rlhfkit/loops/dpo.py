"""`rlhfkit dpo`: direct preference optimisation (Rafailov et al. 2023), or IPO (Azar et al.
2023), of a causal LM on K-wise rankings and preference pairs.

Algorithm:
  1. read and validate every ranking / pairwise record (train and eval, every format
     `rlhfkit rm` reads) before anything is written; --eval-fraction holds out prompts;
  2. each response -> SFT's sequence `[bos?] + prompt + response + [eos]` (a conversation
     through the chat template) with its response tokens marked; a ranking of K responses
     -> ONE example with all its C(K,2) (winner, loser) pairs (`data.dpo_data`);
  3. the policy starts from --model: every dropout probability 0 (as TRL's
     disable_dropout), wrapped for training (LoRA, DDP, FSDP2) and resumed with --resume;
     padding-free packed rows where a probe finds the model keeps packed sequences apart;
  4. the reference log-probs, ONCE: one no-grad pass over every train and eval response,
     log pi_ref(y | x) summed over its response tokens, kept in
     `reference_logprobs/` (a resume reads them back). The reference is the
     policy before its first step (with --lora-r: the policy with its adapter off), or
     --reference, loaded for that pass only;
  5. one optimizer step = `batch_size * grad_accum * world_size` PROMPTS in a seeded order;
     each response ONE policy forward (however many pairs it is in), its log-prob summed
     over its response tokens;
  6. loss of a prompt = mean over its pairs of the DPO (or IPO) loss of
     h = (logp_w - ref_w) - (logp_l - ref_l) (`losses.PREFERENCE_LOSSES`); the step's loss
     = mean over its prompts, micro-batches and ranks weighted by their prompt counts;
     backward, clip, AdamW step;
  7. each epoch: held-out loss, preference accuracy (the implicit reward beta * (logp -
     ref) ranks the chosen response strictly above the rejected one), reward margin,
     chosen / rejected rewards and log-probs; a resumable checkpoint `epoch-N/`, itself a
     plain Hugging Face causal LM folder;
  8. the final model at the top of --out; summary.json with the CPU seconds of the run
     (process time, all processes, resumes included).

Departures: TRL truncates a long sequence's end (keep_start); we drop its oldest prompt
tokens, as our reward models do, so that every response is whole. Strength labels are read
but not used (DPO has no margins).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.config import DPOConfig
from rlhfkit.config.checks import check_options
from rlhfkit.data.dpo_data import (
    PreferenceBatch,
    PreferenceExample,
    count_sequences,
    encode_preferences,
)
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import RankingRecord
from rlhfkit.data.tokenize import mark_trained_on_chat
from rlhfkit.distributed import Dist, all_reduce, barrier, setup_distributed, teardown_distributed
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.loops.common import (
    disable_dropout,
    print_saved_lm,
    seed_everything,
    split_held_out,
    start_output,
)
from rlhfkit.loops.dpo_reference import (
    collate,
    compute_reference,
    even_micro_batches,
    fingerprint,
    read_cache,
    response_logprobs,
    write_cache,
)
from rlhfkit.loops.lm import choose_packing
from rlhfkit.loops.trainer import Trainer, TrainRun, start_training
from rlhfkit.losses import PREFERENCE_LOSSES
from rlhfkit.models.fast_linear import use_onednn_linears
from rlhfkit.models.load import load_causal_lm, load_reference, load_tokenizer
from rlhfkit.models.lora import adapter_disabled
from rlhfkit.models.resume import epoch_dir
from rlhfkit.models.wrap import eval_mode, no_sync, shard, unwrap

# Sums a step (or an evaluation) adds up over micro-batches and ranks; `_means` divides,
# the PER_PAIR ones by the pairs.
PER_PAIR = ("margin", "chosen_reward", "rejected_reward", "chosen_logprob", "rejected_logprob")
SUMS = ("loss", "prompts", "pairs", "correct", *PER_PAIR, "cpu_s")


def train_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """`rlhfkit dpo`: validate everything, then train and save the policy (steps 1-8 of
    the module docstring). Returns the summary (also in summary.json)."""
    cpu_start = time.process_time()
    # 1. the options as declared, every record checked (file:line), before anything is
    # written
    check_options(cfg)
    records, eval_records = _read_inputs(cfg)
    d, device = setup_distributed(cfg.device)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    # 2. responses -> sequences with their response tokens marked; rankings -> pairs
    train = _encode(records, tokenizer, cfg, 0, d)
    held_out = _encode(eval_records, tokenizer, cfg, count_sequences(train), d)
    if any(r.prompt_messages is not None for r in records):  # as sft: a chat model now
        mark_trained_on_chat(tokenizer)
    out = start_output(cfg, d, "dpo")
    # 3. the policy: no dropout, packed rows where the model keeps sequences apart
    model, packing = _init_policy(cfg, device, d)
    n_pairs = sum(len(ex.pairs) for ex in train)
    rank0_print(
        f"dpo: {len(train)} prompts ({count_sequences(train)} responses, {n_pairs} pairs), "
        f"{len(held_out)} held out; loss {cfg.loss}, beta {cfg.beta}, {cfg.epochs} epoch(s)",
        rank=d.rank,
    )
    separate = cfg.reference not in (None, "", cfg.model)
    run = DPORun(
        model=model, tokenizer=tokenizer, train=train, eval=held_out, out=out, dist=d,
        device=device, packing=packing, separate=separate,
        reference_source=str(cfg.reference if separate else cfg.model), cpu_start=cpu_start,
    )  # fmt: skip
    # 3-8. wrap and resume, reference log-probs, train, evaluate, checkpoint, save
    summary = fit_dpo(run, cfg)
    print_saved_lm(out, d, f"; {summary['cpu_seconds']:.1f} CPU s")
    teardown_distributed()
    return summary


# ---------------------------------------------------------------------------------------
# 1-3. Inputs, encoding, the policy
# ---------------------------------------------------------------------------------------


def _read_inputs(cfg: DPOConfig) -> tuple[list[RankingRecord], list[RankingRecord]]:
    """(train records, held-out records), every one checked; a share --eval-fraction of
    the train records is held out where no --eval-data is given."""
    if not cfg.data:
        raise UserError("--data is required: ranking / pairwise JSONL file(s)")
    records = read_preferences(list(cfg.data))
    eval_records = read_preferences(list(cfg.eval_data)) if cfg.eval_data else []
    if not eval_records and cfg.eval_fraction > 0:
        records, eval_records = split_held_out(records, cfg.eval_fraction, cfg.seed)
    return records, eval_records


def _encode(records: list[RankingRecord], tokenizer: Any, cfg: DPOConfig, first: int, d: Dist):
    examples, n_cut = encode_preferences(records, tokenizer, cfg.max_len, cfg.overlong, first)
    if n_cut:
        rank0_print(
            f"{n_cut} sequences over --max-len {cfg.max_len}: oldest prompt tokens dropped "
            "(the response is kept whole)",
            rank=d.rank,
        )
    return examples


def _init_policy(cfg: DPOConfig, device: torch.device, d: Dist) -> tuple[torch.nn.Module, bool]:
    """--model loaded with every dropout off (policy and reference agree before the first
    step), and whether it trains on packed rows (probed now, before any training)."""
    seed_everything(cfg.seed)
    model = load_causal_lm(cfg.model, device, trust_remote_code=cfg.trust_remote_code)
    dropped = disable_dropout(model)
    if dropped:
        rank0_print(f"dpo: dropout set to 0 (was {', '.join(dropped)})", rank=d.rank)
    use_onednn_linears(model)  # large fp32 CPU linear layers: oneDNN (models/fast_linear.py)
    return model, choose_packing(model, cfg.packing, "dpo", rank=d.rank)


# ---------------------------------------------------------------------------------------
# 3-8. Training
# ---------------------------------------------------------------------------------------


@dataclass
class DPORun(TrainRun):
    """`TrainRun` (the policy; examples: `PreferenceExample`; packing resolved by
    `choose_packing`) and its reference."""

    # The reference: a frozen model given here, else the folder `reference_source` when
    # `separate` (--reference), else the policy before training (with LoRA: adapter off).
    reference: torch.nn.Module | None = None
    reference_source: str = ""
    separate: bool = False
    cpu_start: float | None = None  # process time when the command started (default: fit_dpo's)


def fit_dpo(run: DPORun, cfg: DPOConfig) -> dict[str, Any]:
    """Train `run.model` on `run.train` with the DPO / IPO loss. Returns the summary."""
    d = run.dist
    cpu_mark = time.process_time() if run.cpu_start is None else run.cpu_start
    # 3. wrap (LoRA, DDP, FSDP2), optimizer, schedule, resume
    counters = {"cpu_seconds": 0.0, "epoch_correct": 0.0, "epoch_pairs": 0}
    t = start_training(run, cfg, desc="dpo", counters=counters)
    # 4. the reference log-probs of every train and eval response, once (cached in --out)
    t_ref = time.perf_counter()
    ref = _reference_logprobs(t, run, cfg)
    reference_s = time.perf_counter() - t_ref
    t.t_start += reference_s  # prompts_per_s counts training only
    prompts_seen = 0
    for epoch in t.epochs():
        for step in t.steps(epoch):
            # 5-6. K forwards per prompt, the loss per prompt, backward; one AdamW step
            micro = t.micro_batches(step, run.train)
            sums = accumulate_gradients(t.model, micro, len(step), run, ref, cfg)
            grad_norm = t.optimizer_step()
            now = time.process_time()
            sums[SUMS.index("cpu_s")], cpu_mark = now - cpu_mark, now
            sums = _reduce(sums, run)
            t.state["cpu_seconds"] += float(sums[SUMS.index("cpu_s")])
            t.state["epoch_correct"] += float(sums[SUMS.index("correct")])
            t.state["epoch_pairs"] += int(sums[SUMS.index("pairs")])
            prompts_seen += len(step)
            metrics = {
                **_means(sums),
                "lr": t.lr(),
                "grad_norm": grad_norm,
                "prompts_per_s": prompts_seen / max(t.elapsed(), 1e-9),
                "epoch": epoch,
            }
            t.step_done(metrics, shown=("loss", "accuracy", "margin", "prompts_per_s"))
        if not t.end_epoch(epoch):  # --max-steps reached mid-epoch
            break
        # 7. held-out metrics, checkpoint epoch-N/
        _end_epoch(t, run, cfg, epoch, ref)
    wall = t.finish()
    # 8. the final model, the summary
    t.export(t.out)
    cpu = torch.tensor([time.process_time() - cpu_mark], dtype=torch.float64)
    t.state["cpu_seconds"] += float(_reduce(cpu, run)[0])
    history = t.state["history"]
    summary = {
        "loss_type": cfg.loss,
        "beta": cfg.beta,
        "final_loss": t.last.get("loss"),
        "final_train_accuracy": t.last.get("accuracy"),
        "eval": history[-1]["eval"] if history else None,
        "steps": t.state["step"],
        "epochs": history,
        "prompts": len(run.train),
        "pairs": sum(len(ex.pairs) for ex in run.train),
        "sequences": count_sequences(run.train),
        "reference": run.reference_source,
        "reference_pass_s": round(reference_s, 2),
        "wall_time_s": round(wall, 2),
        "cpu_seconds": round(t.state["cpu_seconds"], 2),
        "prompts_per_s": round(prompts_seen / max(wall, 1e-9), 2),
        "world_size": d.world_size,
        "device": str(run.device),
        "packing": run.packing,
    }
    t.write_summary(summary)
    return summary


def _reference_logprobs(t: Trainer, run: DPORun, cfg: DPOConfig) -> torch.Tensor:
    """(S,) log pi_ref(y | x) of every train and eval sequence: from the cache in --out, or
    one pass of the reference. The reference is `run.reference` if given; --reference
    (loaded now, dropped after); with LoRA the policy with its adapter off; else the policy
    itself before its first step, or --model loaded again when a resumed run has no cache."""
    examples = [*run.train, *run.eval]
    key = fingerprint(examples, run.reference_source)
    cached = read_cache(run.out, key)
    if cached is not None:
        rank0_print(f"dpo: reference log-probs read from {run.out}", rank=run.dist.rank)
        return cached.to(run.device)
    policy, context = unwrap(t.model), nullcontext()
    if run.reference is not None:
        model = run.reference
    elif run.separate or (not cfg.lora_r and t.state["step"] > 0):
        model = _load_reference(run, cfg)
    else:  # the policy as it starts (LoRA: its base, adapter off)
        model, context = policy, adapter_disabled(policy) if cfg.lora_r else nullcontext()
    packing = (
        run.packing
        if model is policy
        else choose_packing(model, cfg.packing, "dpo", rank=run.dist.rank, what="the reference")
    )
    with context:
        logprobs = compute_reference(
            model, examples, pad_id=run.tokenizer.pad_token_id, packing=packing,
            max_len=cfg.max_len, batch_size=cfg.batch_size, bf16=cfg.bf16, dist=run.dist,
            device=run.device,
        )  # fmt: skip
    run.reference = None  # its log-probs are all the loop needs from it
    if run.dist.is_main:
        write_cache(run.out, logprobs, key, run.reference_source)
    barrier(run.dist)
    return logprobs.to(run.device)


def _load_reference(run: DPORun, cfg: DPOConfig) -> torch.nn.Module:
    """The reference folder as a frozen model, no dropout, sharded like the policy."""
    model = load_reference(
        run.reference_source, run.device, trust_remote_code=cfg.trust_remote_code
    )
    disable_dropout(model)
    use_onednn_linears(model)
    if cfg.strategy == "fsdp2" and run.dist.enabled:
        shard(model, run.device, bf16=cfg.bf16, cpu_offload=cfg.cpu_offload)
    return model


def accumulate_gradients(
    model: torch.nn.Module,
    micro: Sequence[Sequence[PreferenceExample]],
    n_global: int,
    run: DPORun,
    ref: torch.Tensor,
    cfg: DPOConfig,
) -> torch.Tensor:
    """Forward + backward of this rank's micro-batches of one optimizer step.

    A micro-batch's loss (the mean over its prompts) is weighted by its share of the
    step's `n_global` prompts (all ranks), so any split into micro-batches or ranks gives
    the same gradient. Returns this rank's SUMS (the caller adds `cpu_s` and reduces).
    """
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    for k, examples in enumerate(micro):
        batch = _collate(examples, run, cfg)
        with no_sync(model, sync=k == len(micro) - 1):
            loss, stats = batch_loss(model, batch, ref, cfg)
            # DDP averages gradients over ranks, hence * world_size.
            (loss * (len(examples) * run.dist.world_size / n_global)).backward()
        _add(sums, loss, stats)
    return sums


def _collate(examples: Sequence[PreferenceExample], run: DPORun, cfg: DPOConfig) -> PreferenceBatch:
    return collate(examples, run.tokenizer.pad_token_id, run.packing, cfg.max_len, run.device)


def batch_loss(
    model: torch.nn.Module, batch: PreferenceBatch, ref: torch.Tensor, cfg: DPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO / IPO loss of one batch (mean over its prompts) and its stats."""
    logprobs = response_logprobs(model, batch, cfg.bf16)  # (N,): one forward per response
    ref_logprobs = ref[batch.index].to(logprobs)  # (N,)
    loss_fn = PREFERENCE_LOSSES[cfg.loss]
    return loss_fn(logprobs, ref_logprobs, batch.lengths, batch.pairs, cfg.beta, batch.pair_prompt)


def _add(sums: torch.Tensor, loss: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
    """Add one batch to the SUMS vector: per-pair means back to sums."""
    n_pairs, n_prompts = float(stats["n_pairs"]), float(stats["n_prompts"])
    row = {
        "loss": float(loss.detach()) * n_prompts,
        "prompts": n_prompts,
        "pairs": n_pairs,
        "correct": float(stats["accuracy"]) * n_pairs,
    }
    row.update({k: float(stats[k]) * n_pairs for k in PER_PAIR})
    sums += torch.tensor([row.get(k, 0.0) for k in SUMS], dtype=torch.float64)


def _reduce(sums: torch.Tensor, run: DPORun) -> torch.Tensor:
    """Sum over processes (a collective: every process calls)."""
    return all_reduce(sums.to(run.device)).cpu() if run.dist.enabled else sums


def _means(sums: torch.Tensor) -> dict[str, float]:
    s = dict(zip(SUMS, sums.tolist(), strict=True))
    pairs = max(s["pairs"], 1.0)
    out = {"loss": s["loss"] / max(s["prompts"], 1.0), "accuracy": s["correct"] / pairs}
    out.update({k: s[k] / pairs for k in PER_PAIR})
    return {**out, "n_prompts": int(s["prompts"]), "n_pairs": int(s["pairs"])}


def _end_epoch(t: Trainer, run: DPORun, cfg: DPOConfig, epoch: int, ref: torch.Tensor) -> None:
    """Held-out metrics (printed and logged), the history row, the checkpoint `epoch-N/`."""
    metrics = evaluate_dpo(t.model, run.eval, run, ref, cfg) if run.eval else None
    pairs = t.state["epoch_pairs"]
    train_accuracy = t.state["epoch_correct"] / pairs if pairs else None
    t.state.update(epoch_correct=0.0, epoch_pairs=0)  # the next epoch counts afresh
    row = t.record_epoch(epoch, train_accuracy=train_accuracy, eval=metrics)
    line = f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}"
    if train_accuracy is not None:
        line += f", accuracy {train_accuracy:.4f}"
    if metrics is not None:
        t.logger.log(
            t.state["step"], {**{f"eval/{k}": v for k, v in metrics.items()}, "epoch": epoch + 1}
        )
        line += (
            f"; eval loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}, "
            f"margin {metrics['margin']:.4f}, log-probs chosen {metrics['chosen_logprob']:.2f} "
            f"rejected {metrics['rejected_logprob']:.2f} ({metrics['n_pairs']} pairs)"
        )
    rank0_print(line, rank=run.dist.rank)
    t.save(epoch_dir(t.out, epoch + 1))


@torch.no_grad()
def evaluate_dpo(
    model: torch.nn.Module,
    examples: Sequence[PreferenceExample],
    run: DPORun,
    ref: torch.Tensor,
    cfg: DPOConfig,
) -> dict[str, float]:
    """Held-out loss (training's formula), preference accuracy, reward margin, chosen /
    rejected rewards and log-probs, prompt and pair counts; over all ranks."""
    model = unwrap(model)  # no DDP hooks: ranks may run different numbers of forwards
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    with eval_mode(model):
        for idx in even_micro_batches(len(examples), run.dist, cfg.batch_size, model):
            batch = _collate([examples[i] for i in (idx or [0])], run, cfg)
            loss, stats = batch_loss(model, batch, ref, cfg)
            if idx:  # an empty share's forward only keeps FSDP2's collectives in step
                _add(sums, loss, stats)
    return _means(_reduce(sums, run))
