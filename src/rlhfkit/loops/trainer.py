"""The skeleton of the single-model training loops (`fit_lm`, `fit_rm`), written once.

A loop keeps only its own step math (forward, loss, backward of its micro-batches, and its
metrics) and its end-of-epoch evaluation; everything else lives here: the model wrapped for
training, AdamW and the lr schedule over the run's `total` steps, resume from the latest
complete checkpoint, the seeded data order, --max-steps, the progress bar, `metrics.jsonl`,
and the periodic, mid-epoch and end-of-epoch checkpoints. A loop reads:

    t = start_training(run, opts)             # run: a TrainRun (model, data, where to write)
    for epoch in t.epochs():                  # stops once `total` steps are done
        for step in t.steps(epoch):           # global example indices of one optimizer step
            ...forward / backward of t.micro_batches(step, train)...
            grad_norm = t.optimizer_step()
            t.step_done(metrics, shown=(...))  # bar, log, --save-every checkpoint (pruned)
        if not t.end_epoch(epoch):            # --max-steps hit mid-epoch: checkpoint kept
            break
        ...evaluate, t.record_epoch(epoch, ...), t.save(epoch_dir(...))...
    wall = t.finish()
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from rlhfkit.config import TrainOptions
from rlhfkit.distributed import Dist, barrier
from rlhfkit.files import write_json
from rlhfkit.logging import MetricsLogger, format_metrics, progress, rank0_print
from rlhfkit.loops.common import (
    build_optimizer,
    build_scheduler,
    epoch_order,
    global_batches,
    optimizer_step,
    rank_micro_batches,
)
from rlhfkit.models.resume import latest_checkpoint, prune_checkpoints, step_dir
from rlhfkit.models.sharded import export_model, read_checkpoint, write_checkpoint
from rlhfkit.models.wrap import enable_gradient_checkpointing, wrap_for_training

T = TypeVar("T")


@dataclass
class TrainRun:
    """What a single-model loop needs besides the options: the model, its data and where to
    write. Each loop's run (`loops.lm.LMRun`, `loops.reward.train.RMRun`, `loops.dpo.DPORun`)
    adds its own fields."""

    model: torch.nn.Module
    tokenizer: Any
    train: Sequence[Any]
    eval: Sequence[Any] = ()
    out: Path = Path(".")
    dist: Dist = field(default_factory=Dist)
    device: torch.device = torch.device("cpu")
    packing: bool = False  # padding-free packed rows (resolved: `loops.lm.choose_packing`)


@dataclass
class Trainer:
    """One single-model training run in progress: its roles, its position and its outputs.

    `state` is what a checkpoint saves and a resume restores: `step`, `epoch`,
    `step_in_epoch` (the data position), `history` (one row per finished epoch) and any
    counters of the loop's own.
    """

    model: torch.nn.Module  # wrapped for training (DDP under torchrun)
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    opts: TrainOptions
    out: Path
    dist: Dist
    n_examples: int
    global_batch: int  # examples per optimizer step, all ranks
    steps_per_epoch: int
    total: int  # optimizer steps of the whole run (epochs, capped by --max-steps)
    state: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)  # metrics of the latest step
    logger: MetricsLogger | None = None
    bar: Any = None
    t_start: float = 0.0

    # --- the loop's position ------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.state["step"] >= self.total

    def epochs(self) -> Iterator[int]:
        """The epochs left to run (0-based), ending once `total` steps are done."""
        for epoch in range(self.state["epoch"], self.opts.epochs):
            yield epoch
            if self.done:
                return

    def steps(self, epoch: int) -> Iterator[list[int]]:
        """This epoch's remaining optimizer steps, each the global indices of its examples
        (the seeded order of `common.epoch_order`, so a resume continues it exactly). The
        loop calls `step_done` once per step, which advances the data position."""
        order = epoch_order(self.n_examples, self.opts.seed, epoch)
        batches = global_batches(order, self.global_batch, drop_last=self.dist.enabled)
        for i in range(self.state["step_in_epoch"], len(batches)):
            if self.done:
                return
            yield batches[i]

    def micro_batches(self, step: Sequence[int], examples: Sequence[T]) -> list[list[T]]:
        """This rank's share of one optimizer step, cut into micro-batches of examples."""
        mine = rank_micro_batches(step, self.dist, self.opts.batch_size)
        return [[examples[j] for j in mb] for mb in mine]

    # --- one optimizer step ---------------------------------------------------------------

    def optimizer_step(self) -> float:
        """Clip, AdamW step, schedule step. Returns the pre-clip gradient norm."""
        return optimizer_step(self.model, self.optimizer, self.scheduler, self.opts.max_grad_norm)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def elapsed(self) -> float:
        """Seconds since training started (after building and resuming)."""
        return time.perf_counter() - self.t_start

    def step_done(self, metrics: dict[str, Any], shown: Sequence[str]) -> None:
        """Count the step, show `shown` metrics on the bar, log every --log-every steps
        (and the last), and write a checkpoint every --save-every steps."""
        self.state["step"] += 1
        self.state["step_in_epoch"] += 1
        self.last = metrics
        step = self.state["step"]
        self.bar.update(1)
        self.bar.set_postfix(format_metrics(metrics, tuple(shown)))
        if step % self.opts.log_every == 0 or step == self.total:
            self.logger.log(step, {f"train/{k}": v for k, v in metrics.items()})
        if self._periodic_save_due():
            self.save_step()

    def _periodic_save_due(self) -> bool:
        return bool(self.opts.save_every) and self.state["step"] % self.opts.save_every == 0

    # --- epoch ends -------------------------------------------------------------------------

    def end_epoch(self, epoch: int) -> bool:
        """Close `epoch` after its steps. False when --max-steps stopped it midway: a
        resumable step checkpoint is then kept (unless --save-every just wrote it)."""
        if self.state["step_in_epoch"] < self.steps_per_epoch:
            if not self._periodic_save_due():
                self.save_step()
            return False
        self.state.update(epoch=epoch + 1, step_in_epoch=0)
        return True

    def record_epoch(self, epoch: int, **evals: Any) -> dict[str, Any]:
        """Append the history row of a finished epoch (saved in every later checkpoint)."""
        row = {
            "epoch": epoch + 1,
            "step": self.state["step"],
            "train_loss": self.last.get("loss"),
            **evals,
        }
        self.state["history"].append(row)
        return row

    # --- checkpoints --------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write a resumable checkpoint, atomically; every process calls (models.sharded)."""
        write_checkpoint(
            path,
            models={"model": self.model},
            tokenizer=self.tokenizer,
            optimizers={"model": self.optimizer},
            schedulers={"model": self.scheduler},
            state=dict(self.state),
            dist=self.dist,
            adapter=self.opts.save_adapter,
        )

    def save_step(self) -> None:
        """The step checkpoint `checkpoints/step-N/`; then only the newest --keep-checkpoints
        of them stay (epoch-N/ folders always do)."""
        self.save(step_dir(self.out, self.state["step"]))
        if self.dist.is_main:
            prune_checkpoints(self.out, self.opts.keep_checkpoints)
        barrier(self.dist)

    def restore(self) -> dict[str, Any] | None:
        """Load the latest complete checkpoint of `out` (all processes); its state, or None."""
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return None
        state = read_checkpoint(
            ckpt,
            models={"model": self.model},
            optimizers={"model": self.optimizer},
            schedulers={"model": self.scheduler},
            dist=self.dist,
        )
        rank0_print(f"resuming from {ckpt} at step {state['step']}", rank=self.dist.rank)
        return state

    def export(self, folder: Path, extra_json: dict[str, Any] | None = None) -> None:
        """The trained model as a plain Hugging Face folder (gathered when sharded; with
        LoRA merged, and the adapter folder too with --save-adapter)."""
        export_model(
            self.model,
            self.tokenizer,
            folder,
            dist=self.dist,
            extra_json=extra_json,
            adapter=self.opts.save_adapter,
        )

    # --- the end ------------------------------------------------------------------------

    def finish(self) -> float:
        """Close the bar and the logs; returns the training wall time in seconds."""
        self.bar.close()
        self.logger.close()
        return time.perf_counter() - self.t_start

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.dist.is_main:
            write_json(self.out / "summary.json", summary)


def count_steps(n_examples: int, global_batch: int, d: Dist, opts: TrainOptions) -> tuple[int, int]:
    """(optimizer steps per epoch, steps of the whole run). Under torchrun a short last
    global batch is dropped, so that every rank has the same number of steps."""
    per_epoch = len(global_batches(range(n_examples), global_batch, drop_last=d.enabled))
    total = per_epoch * opts.epochs
    if opts.max_steps is not None:
        total = min(total, opts.max_steps)
    return per_epoch, total


def start_training(
    run: TrainRun, opts: TrainOptions, desc: str = "train", counters: dict[str, Any] | None = None
) -> Trainer:
    """Wrap `run.model` (with LoRA adapters when --lora-r > 0: the model is adapted in place
    and only the adapters train), build AdamW and the schedule over `run.train`, resume
    (with --resume) and open the logs in `run.out`.

    `counters` are the loop's own state entries (e.g. {"train_tokens": 0}), saved and
    restored with the step. One optimizer step takes `batch_size * grad_accum *
    world_size` examples.
    """
    model, dist, n_examples = run.model, run.dist, len(run.train)
    if opts.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    wrapped = wrap_for_training(
        model.to(run.device),
        dist,
        run.device,
        opts.strategy,
        bf16=opts.bf16,
        cpu_offload=opts.cpu_offload,
        lora=opts,
    )
    wrapped.train()
    optimizer = build_optimizer(
        wrapped,
        lr=opts.lr,
        weight_decay=opts.weight_decay,
        betas=(opts.adam_beta1, opts.adam_beta2),
        eps=opts.adam_eps,
    )
    global_batch = opts.batch_size * opts.grad_accum * dist.world_size
    per_epoch, total = count_steps(n_examples, global_batch, dist, opts)
    scheduler = build_scheduler(
        optimizer,
        schedule=opts.schedule,
        warmup=opts.warmup_steps,
        total=total,
        min_ratio=opts.min_lr_ratio,
    )
    t = Trainer(
        model=wrapped,
        tokenizer=run.tokenizer,
        optimizer=optimizer,
        scheduler=scheduler,
        opts=opts,
        out=Path(run.out),
        dist=dist,
        n_examples=n_examples,
        global_batch=global_batch,
        steps_per_epoch=per_epoch,
        total=total,
    )
    fresh = {"step": 0, "epoch": 0, "step_in_epoch": 0, **(counters or {}), "history": []}
    restored = t.restore() if opts.resume else None
    t.state = {**fresh, **(restored or {})}  # counters newer than the checkpoint start fresh
    t.logger = MetricsLogger(t.out, enabled=dist.is_main, report_to=opts.report_to)
    t.bar = progress(total, desc=desc, enabled=dist.is_main, initial=t.state["step"])
    t.t_start = time.perf_counter()
    return t
