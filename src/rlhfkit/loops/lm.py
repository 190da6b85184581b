"""The language-modelling loop shared by pretrain, SFT and rejection sampling.

Algorithm (one optimizer step):
  1. take the next global batch of examples from the epoch's seeded order;
  2. this rank takes its slice, cut into micro-batches (padding-free packed rows where the
     model keeps packed examples apart, `choose_packing`; else right-padded rows);
  3. each micro-batch: forward, summed next-token NLL over label tokens divided by the
     global number of label tokens in the step, backward (DDP syncs on the last one);
  4. clip, AdamW step, schedule step; log; checkpoint every `save_every` steps.
At the end of each epoch: held-out loss, and (SFT) a complete checkpoint `epoch-N/`; at the
end of the run (pretrain, SFT) the final model at the top of the output folder.
Resume, data order, --max-steps, logging and checkpoints are `loops/trainer.py`'s; this
file holds the step math (`accumulate_nll`) and the end-of-epoch evaluation.

Departures from a textbook loop, on purpose: the loss is normalised by the global token
count of the whole step rather than averaged per micro-batch, so gradient accumulation and
the number of processes change nothing (an exact equivalence the tests check).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch

from rlhfkit.config import TrainOptions
from rlhfkit.data.collate import collate_packed, collate_right
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.distributed import all_reduce_sum
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.loops.common import rank_micro_batches
from rlhfkit.loops.trainer import Trainer, TrainRun, start_training
from rlhfkit.losses import sft_nll
from rlhfkit.models.forward import head_reads
from rlhfkit.models.load import autocast_context
from rlhfkit.models.probe import packed_forward_error, packing_error
from rlhfkit.models.resume import epoch_dir
from rlhfkit.models.wrap import eval_mode, no_sync, unwrap
from rlhfkit.types import IGNORE_INDEX


@dataclass
class LMRun(TrainRun):
    """`TrainRun` (examples: `EncodedExample`) and how the LM loop runs."""

    packing: bool = True  # resolved: `choose_packing` turns the option's auto into on/off
    row_tokens: int | None = None  # packed rows hold at most this many tokens (`row_cap`)
    epoch_checkpoints: bool = False  # SFT: a complete `epoch-N/` folder per epoch
    export: bool = False  # the final model as a plain HF folder at the top of `out`
    desc: str = "train"
    on_epoch_end: Callable[[int, dict], None] | None = None


# Probe results per loaded model and probe kind: rejection sampling fine-tunes one model
# over many rounds.
_PROBED: WeakKeyDictionary[torch.nn.Module, dict[str, tuple[float, float]]] = WeakKeyDictionary()


def choose_packing(
    model: torch.nn.Module,
    packing: bool | None,
    command: str,
    rank: int = 0,
    *,
    kind: str = "lm",
    what: str | None = None,
) -> bool:
    """Resolve --packing (None = auto) for `model` by probing it (`models/probe.py`): kind
    "lm" probes the LM loop's packed rows (`packing_error`), "logits" or "values" a PPO
    role's packed forward (`packed_forward_error`). `what` names the model in messages
    (default: its class).

    Auto packs where packed sequences stay apart and otherwise falls back to padded batches
    with a one-line note; --packing forced on a model that mixes them is a UserError (before
    any training). --no-packing skips the probe.
    """
    if packing is False:
        return False
    probes = _PROBED.setdefault(model, {})
    first = kind not in probes
    if first:
        probes[kind] = packing_error(model) if kind == "lm" else packed_forward_error(model, kind)
    diff, tol = probes[kind]
    if diff <= tol:
        return True
    what = what or type(unwrap(model)).__name__
    noun = "examples" if kind == "lm" else "sequences"
    if packing:
        raise UserError(
            f"{command}: --packing: {what} mixes packed {noun} (later ones in a row attend to "
            f"earlier ones: outputs differ by {diff:.2g}); drop --packing or pass --no-packing"
        )
    if first:
        rank0_print(
            f"{command}: {what} mixes packed {noun}: padded batches instead (--no-packing)",
            rank=rank,
        )
    return False


def _num_label_tokens(examples: Sequence[EncodedExample]) -> int:
    # The first label can never be predicted (nothing precedes it): the shift drops it.
    return sum(sum(1 for t in ex.labels[1:] if t != -100) for ex in examples)


# Packed rows hold at most this many times the micro-batch's longest example (and at most
# `row_tokens`): attention costs each token the length of its row (the block-diagonal mask
# does not skip work), while rows of two or more examples still fill up nearly evenly.
ROW_EXAMPLES = 2


def row_cap(examples: Sequence[EncodedExample], row_tokens: int | None) -> int:
    """The packed-row width cap of one micro-batch. On the world's SFT data (11-36 tokens,
    16 per micro-batch, 1 thread) a 96-token cap took 0.093 / 0.319 CPU s per step of
    `tiny` / `small` against 0.122 / 0.347 s under 256 (the --max-len default)."""
    cap = ROW_EXAMPLES * max(len(ex.input_ids) for ex in examples)
    return cap if row_tokens is None else min(cap, row_tokens)


def _collate(examples: Sequence[EncodedExample], run: LMRun):
    if run.packing:
        # Nearly equally full rows: in-order filling padded a short last row to full width.
        cap = row_cap(examples, run.row_tokens)
        return collate_packed(examples, cap, run.tokenizer.pad_token_id, rows="balanced")
    return collate_right(examples, run.tokenizer.pad_token_id)


# Per loaded model: whether its output head can run on the label positions alone.
_HEAD_ROWS: WeakKeyDictionary[torch.nn.Module, bool] = WeakKeyDictionary()


def _head_on_rows(model: torch.nn.Module, keep: torch.Tensor | None):
    """Inside, the output head of `model` gets only the hidden states where `keep` (B, T)
    is True, so `.logits` is (N, V) in row-major order. Only label positions carry loss:
    the rest of the (B, T, V) logits (prompts, padding; ~70% of the positions of the
    world's SFT data) and their log-softmax are work for nothing."""
    return nullcontext() if keep is None else head_reads(model, lambda h: h[keep])


@torch.no_grad()
def head_rows_work(model: torch.nn.Module) -> bool:
    """Probe (once per model): with `_head_on_rows`, are the logits the full forward's
    rows at the kept positions? False for a model without an output-embedding module or
    whose code reshapes the head's output by (B, T); its loss then uses full logits."""
    inner = unwrap(model)
    if inner not in _HEAD_ROWS:
        ok = False
        try:
            device = next(inner.parameters()).device
            vocab = inner.get_output_embeddings().weight.shape[0]
            ids = (torch.arange(3, 11, device=device) % vocab)[None]  # (1, 8)
            keep = torch.zeros_like(ids, dtype=torch.bool)
            keep[0, [1, 4, 6]] = True
            with eval_mode(inner):
                full = inner(input_ids=ids, use_cache=False).logits[keep]  # (3, V)
                with _head_on_rows(inner, keep):
                    rows = inner(input_ids=ids, use_cache=False).logits
            ok = rows.shape == full.shape and torch.allclose(rows, full, rtol=1e-4, atol=1e-5)
        except (AttributeError, TypeError, IndexError, RuntimeError, ValueError):
            ok = False
        _HEAD_ROWS[inner] = ok
    return _HEAD_ROWS[inner]


def _label_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose next token is a label (what `sft_nll` sums)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def _forward_nll_sum(model, batch, run: LMRun, opts: TrainOptions) -> tuple[torch.Tensor, int]:
    batch = batch.to(run.device)
    keep = _label_positions(batch.labels) if head_rows_work(model) else None
    with autocast_context(run.device, opts.bf16), _head_on_rows(model, keep):
        # model_inputs() sets use_cache=False: with a cache, transformers 5 skips the
        # block-diagonal mask of packed rows and examples would attend to each other.
        logits = model(**batch.model_inputs()).logits  # (N, V) at the label positions
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


def accumulate_nll(
    model: torch.nn.Module,
    micro: Sequence[Sequence[EncodedExample]],
    run: LMRun,
    opts: TrainOptions,
) -> tuple[float, float, int]:
    """Forward + backward of this rank's micro-batches of one optimizer step.

    Each micro-batch's summed NLL is divided by the step's label-token count over all
    ranks, so any split into micro-batches or ranks gives the same gradient. Returns the
    step's mean NLL (all ranks), its global label-token count and this rank's input tokens.
    """
    d = run.dist
    n_global = all_reduce_sum(sum(_num_label_tokens(mb) for mb in micro), d, run.device)
    loss_total, tokens = 0.0, 0
    for k, examples in enumerate(micro):
        batch = _collate(examples, run)
        tokens += int(batch.input_ids.numel())
        with no_sync(model, sync=k == len(micro) - 1):
            loss_sum, _ = _forward_nll_sum(model, batch, run, opts)
            # DDP averages gradients over ranks: scale back to a sum over tokens.
            (loss_sum * (d.world_size / max(n_global, 1.0))).backward()
        loss_total += float(loss_sum.detach())
    loss = all_reduce_sum(loss_total, d, run.device) / max(n_global, 1.0)
    return loss, n_global, tokens


def _end_epoch(t: Trainer, run: LMRun, opts: TrainOptions, epoch: int) -> None:
    """Held-out loss (None without held-out data: no loss is printed or logged then), the
    history row, and (SFT) the complete checkpoint `epoch-N/`."""
    eval_loss = evaluate_lm(t.model, run.eval, run, opts) if run.eval else None
    row = t.record_epoch(epoch, eval_loss=eval_loss)
    line = f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}"
    if eval_loss is not None:
        t.logger.log(t.state["step"], {"eval/loss": eval_loss, "epoch": epoch + 1})
        line += f", eval loss {eval_loss:.4f}"
    rank0_print(line, rank=run.dist.rank)
    if run.epoch_checkpoints:
        t.save(epoch_dir(t.out, epoch + 1))
    if run.on_epoch_end is not None:
        run.on_epoch_end(epoch + 1, row)


def fit_lm(run: LMRun, opts: TrainOptions) -> dict[str, Any]:
    """Train `run.model` on `run.train` with next-token NLL. Returns the summary dict."""
    d = run.dist
    t = start_training(run, opts, desc=run.desc, counters={"train_tokens": 0})
    tokens_seen = 0
    for epoch in t.epochs():
        for step in t.steps(epoch):
            micro = t.micro_batches(step, run.train)
            loss, n_global, tokens = accumulate_nll(t.model, micro, run, opts)
            grad_norm = t.optimizer_step()
            tokens_seen += tokens
            t.state["train_tokens"] += int(n_global)
            metrics = {
                "loss": loss,
                "lr": t.lr(),
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_seen * d.world_size / max(t.elapsed(), 1e-9),
                "epoch": epoch,
            }
            t.step_done(metrics, shown=("loss", "lr", "tokens_per_s"))
        if not t.end_epoch(epoch):  # --max-steps reached mid-epoch
            break
        _end_epoch(t, run, opts, epoch)
    wall = t.finish()
    if run.export:
        t.export(t.out)
    summary = {
        "final_loss": t.last.get("loss"),
        "steps": t.state["step"],
        "epochs": t.state["history"],
        "train_tokens": t.state["train_tokens"],
        "wall_time_s": round(wall, 2),
        "tokens_per_s": round(tokens_seen * d.world_size / max(wall, 1e-9), 1),
        "world_size": d.world_size,
        "device": str(run.device),
        "packing": run.packing,
    }
    t.write_summary(summary)
    return summary
