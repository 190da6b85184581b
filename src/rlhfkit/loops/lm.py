"""The language-modelling loop shared by pretrain, SFT and rejection sampling.

Algorithm (one optimizer step):
  1. take the next global batch of examples from the epoch's seeded order;
  2. this rank takes its slice, cut into micro-batches (padding-free packed rows, or
     right-padded rows);
  3. each micro-batch: forward, summed next-token NLL over label tokens divided by the
     global number of label tokens in the step, backward (DDP syncs on the last one);
  4. clip, AdamW step, schedule step; log; checkpoint every `save_every` steps.
At the end of each epoch: held-out loss, and (SFT) a complete checkpoint `epoch-N/`.

Departures from a textbook loop, on purpose: the loss is normalised by the global token
count of the whole step rather than averaged per micro-batch, so gradient accumulation and
the number of processes change nothing (an exact equivalence the tests check).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import TrainOptions
from rlhfkit.data.collate import collate_packed, collate_right
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.distributed import Dist, all_reduce_sum
from rlhfkit.logging import MetricsLogger, format_metrics, progress, rank0_print, write_json
from rlhfkit.loops.common import (
    SingleModelCheckpointer,
    build_optimizer,
    build_scheduler,
    epoch_order,
    global_batches,
    optimizer_step,
    rank_micro_batches,
)
from rlhfkit.losses import sft_nll
from rlhfkit.models.load import autocast_context
from rlhfkit.models.wrap import no_sync, wrap_for_training


@dataclass
class LMRun:
    """What the loop needs besides the options: the roles, data and where to write."""

    model: torch.nn.Module
    tokenizer: Any
    train: Sequence[EncodedExample]
    eval: Sequence[EncodedExample] = ()
    out: Path = Path(".")
    dist: Dist = field(default_factory=Dist)
    device: torch.device = torch.device("cpu")
    packing: bool = True
    row_tokens: int | None = None  # packed rows hold at most this many tokens (None: one row)
    epoch_checkpoints: bool = False  # SFT: a complete `epoch-N/` folder per epoch
    desc: str = "train"
    on_epoch_end: Callable[[int, dict], None] | None = None


def _num_label_tokens(examples: Sequence[EncodedExample]) -> int:
    # The first label can never be predicted (nothing precedes it): the shift drops it.
    return sum(sum(1 for t in ex.labels[1:] if t != -100) for ex in examples)


def _collate(examples: Sequence[EncodedExample], run: LMRun):
    if run.packing:
        return collate_packed(examples, run.row_tokens, run.tokenizer.pad_token_id)
    return collate_right(examples, run.tokenizer.pad_token_id)


def _forward_nll_sum(model, batch, run: LMRun, opts: TrainOptions) -> tuple[torch.Tensor, int]:
    batch = batch.to(run.device)
    with autocast_context(run.device, opts.bf16):
        # model_inputs() sets use_cache=False: with a cache, transformers 5 skips the
        # block-diagonal mask of packed rows and examples would attend to each other.
        logits = model(**batch.model_inputs()).logits
    loss_sum, stats = sft_nll(logits, batch.labels, reduction="sum")
    return loss_sum, int(stats["n_tokens"])


@torch.no_grad()
def evaluate_lm(model, examples: Sequence[EncodedExample], run: LMRun, opts: TrainOptions) -> float:
    """Mean next-token NLL over all label tokens of `examples` (all ranks together)."""
    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for idx in rank_micro_batches(range(len(examples)), run.dist, opts.batch_size):
        loss_sum, k = _forward_nll_sum(model, _collate([examples[i] for i in idx], run), run, opts)
        total, n = total + float(loss_sum), n + k
    model.train(was_training)
    total, n = all_reduce_sum(total, run.dist, run.device), all_reduce_sum(n, run.dist, run.device)
    return total / max(n, 1)


def fit_lm(run: LMRun, opts: TrainOptions) -> dict[str, Any]:
    """Train `run.model` on `run.train` with next-token NLL. Returns the summary dict."""
    d, out = run.dist, Path(run.out)
    model = wrap_for_training(run.model.to(run.device), d, run.device)
    model.train()
    optimizer = build_optimizer(
        model, lr=opts.lr, weight_decay=opts.weight_decay, betas=(opts.adam_beta1, opts.adam_beta2)
    )
    global_batch = opts.batch_size * opts.grad_accum * d.world_size
    steps_per_epoch = len(global_batches(range(len(run.train)), global_batch, drop_last=d.enabled))
    total = steps_per_epoch * opts.epochs
    if opts.max_steps is not None:
        total = min(total, opts.max_steps)
    scheduler = build_scheduler(
        optimizer,
        schedule=opts.schedule,
        warmup=opts.warmup_steps,
        total=total,
        min_ratio=opts.min_lr_ratio,
    )

    state: dict[str, Any] = {
        "step": 0,
        "epoch": 0,
        "step_in_epoch": 0,
        "train_tokens": 0,
        "history": [],
    }
    ckpt = SingleModelCheckpointer(out, model, run.tokenizer, optimizer, scheduler, d)
    if opts.resume:
        state = ckpt.restore() or state

    def save(path: Path) -> None:
        ckpt.save(path, state)

    logger = MetricsLogger(out, enabled=d.is_main)
    bar = progress(total, desc=run.desc, enabled=d.is_main, initial=state["step"])
    t_start, tokens_seen, last = time.perf_counter(), 0, {}
    for epoch in range(state["epoch"], opts.epochs):
        steps = global_batches(
            epoch_order(len(run.train), opts.seed, epoch), global_batch, d.enabled
        )
        for i in range(state["step_in_epoch"], len(steps)):
            if state["step"] >= total:
                break
            micro = list(rank_micro_batches(steps[i], d, opts.batch_size))
            n_global = all_reduce_sum(
                sum(_num_label_tokens([run.train[j] for j in mb]) for mb in micro), d, run.device
            )
            loss_total = 0.0
            for k, mb in enumerate(micro):
                batch = _collate([run.train[j] for j in mb], run)
                tokens_seen += int(batch.input_ids.numel())
                with no_sync(model, sync=k == len(micro) - 1):
                    loss_sum, _ = _forward_nll_sum(model, batch, run, opts)
                    # DDP averages gradients over ranks: scale back to a sum over tokens.
                    (loss_sum * (d.world_size / max(n_global, 1.0))).backward()
                loss_total += float(loss_sum.detach())
            grad_norm = optimizer_step(model, optimizer, scheduler, opts.max_grad_norm)
            state.update(step=state["step"] + 1, step_in_epoch=i + 1)
            state["train_tokens"] += int(n_global)
            loss = all_reduce_sum(loss_total, d, run.device) / max(n_global, 1.0)
            elapsed = time.perf_counter() - t_start
            last = {
                "loss": loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_seen * d.world_size / max(elapsed, 1e-9),
                "epoch": epoch,
            }
            bar.update(1)
            bar.set_postfix(format_metrics(last, ("loss", "lr", "tokens_per_s")))
            if state["step"] % opts.log_every == 0 or state["step"] == total:
                logger.log(state["step"], {f"train/{k}": v for k, v in last.items()})
            if opts.save_every and state["step"] % opts.save_every == 0:
                save(out / "checkpoints" / f"step-{state['step']:06d}")
        finished_epoch = state["step_in_epoch"] >= len(steps)
        if not finished_epoch:  # max_steps reached mid-epoch: keep a resumable checkpoint
            if not (opts.save_every and state["step"] % opts.save_every == 0):
                save(out / "checkpoints" / f"step-{state['step']:06d}")
            break
        state.update(epoch=epoch + 1, step_in_epoch=0)
        eval_loss = evaluate_lm(model, run.eval, run, opts)
        row = {
            "epoch": epoch + 1,
            "step": state["step"],
            "train_loss": last.get("loss"),
            "eval_loss": eval_loss,
        }
        state["history"].append(row)
        logger.log(state["step"], {"eval/loss": eval_loss, "epoch": epoch + 1})
        rank0_print(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, eval loss {eval_loss:.4f}",
            rank=d.rank,
        )
        if run.epoch_checkpoints:
            save(out / f"epoch-{epoch + 1}")
        if run.on_epoch_end is not None:
            run.on_epoch_end(epoch + 1, row)
        if state["step"] >= total:
            break
    bar.close()
    logger.close()
    wall = time.perf_counter() - t_start
    summary = {
        "final_loss": last.get("loss"),
        "steps": state["step"],
        "epochs": state["history"],
        "train_tokens": state["train_tokens"],
        "wall_time_s": round(wall, 2),
        "tokens_per_s": round(tokens_seen * d.world_size / max(wall, 1e-9), 1),
        "world_size": d.world_size,
        "device": str(run.device),
    }
    if d.is_main:
        write_json(out / "summary.json", summary)
    return summary
