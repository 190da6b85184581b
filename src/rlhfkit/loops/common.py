"""Plumbing every training loop shares: seeding, devices, torchrun, optimizer, schedule,
one optimizer step, and the deterministic data order that makes resume exact.

Distributed training follows one rule: the global order of examples depends only on the
seed and the epoch, never on the number of processes. Rank r of W takes its slice of each
global batch, and gradients are summed over tokens and divided by the global token count,
so W processes x batch b step exactly like 1 process x batch W*b.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rlhfkit.config import save_config
from rlhfkit.distributed import Dist, barrier
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.models.run_folder import prepare_output_dir
from rlhfkit.models.wrap import unwrap

log = logging.getLogger("rlhfkit")
T = TypeVar("T")


def start_output(cfg: Any, d: Dist, command: str) -> Path:
    """--out made for a run (new, resumed or overwritten: `models.run_folder`) with the
    resolved config.yaml in it, by rank 0; every rank waits for it. Returns --out."""
    out = Path(cfg.out)
    if d.is_main:
        prepare_output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite, command=command)
        save_config(cfg, out / "config.yaml")
    barrier(d)
    return out


def print_saved_lm(out: Path, d: Dist, extra: str = "") -> None:
    """The line a causal-LM stage ends with: the final model and its epoch checkpoints."""
    epochs = sorted(out.glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    rank0_print(
        f"model: {out} (AutoModelForCausalLM); epoch checkpoints: "
        f"{', '.join(p.name for p in epochs) or 'none'}{extra}",
        rank=d.rank,
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# Dropout off (reward models and every PPO role)
# ---------------------------------------------------------------------------------------


def _is_dropout(name: str, value: Any) -> bool:
    """A dropout probability: a non-zero float named *dropout* or *pdrop* (GPT-2's
    attn_pdrop, Llama's attention_dropout, BERT's hidden_dropout_prob, ...)."""
    name = name.lower()
    named = "dropout" in name or name.endswith("pdrop")
    return named and isinstance(value, float) and value != 0.0


def _configs(config: Any) -> list[Any]:
    """A model config and its nested sub-configs (text_config, vision_config, ...)."""
    out, todo = [], [config]
    while todo:
        c = todo.pop()
        out.append(c)
        todo += [v for v in vars(c).values() if hasattr(v, "to_json_string") and v is not c]
    return out


@torch.no_grad()
def _dropout_probe(model: torch.nn.Module) -> float:
    """Max |difference| of two train-mode forwards of one short input (0: no dropout)."""
    vocab = int(getattr(model.config.get_text_config(), "vocab_size", 0) or 2)
    device = next(model.parameters()).device
    ids = (torch.arange(1, 9, device=device) % vocab)[None]  # (1, 8)
    was_training = model.training
    model.train()
    # The probe must not move the caller's random streams (sampling, data order).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        a, b = (model(input_ids=ids, use_cache=False).logits.float() for _ in range(2))
    model.train(was_training)
    return float((a - b).abs().max())


def disable_dropout(model: torch.nn.Module, probe: bool = True) -> list[str]:
    """Set every dropout probability of `model` to 0, in place; returns what changed.

    Reward models and PPO's roles train without dropout (Huang et al. 2024, N+ details:
    with dropout, two forwards of one sequence disagree, so PPO's ratios and the RM's
    scores are noise). Both places are set: the config (so the saved config.json says 0)
    and the modules that copied it at construction (`nn.Dropout.p`, float attributes
    such as `attention_dropout`). Found by name, not by model family, then checked by a
    probe: two train-mode forwards of the same input must agree; a warning says if not
    (a model whose code hard-codes its dropout).
    """
    m = unwrap(model)
    changed = []
    for config in _configs(m.config):
        for name, value in list(vars(config).items()):
            if _is_dropout(name, value):
                setattr(config, name, 0.0)
                changed.append(f"{name}={value:g}")
    for module in m.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p != 0:
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if _is_dropout(name, value):
                setattr(module, name, 0.0)
    if probe:
        diff = _dropout_probe(m)
        if diff > 1e-5:
            log.warning(
                "%s: two train-mode forwards still differ by %.3g after setting its "
                "dropout to 0: its code applies dropout that no config value controls",
                type(m).__name__,
                diff,
            )
    return changed


# ---------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------


def build_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, norms or 1-d gains).

    `eps` is Adam's denominator term (--adam-eps): PyTorch's 1e-8 for the supervised
    stages, 1e-5 for PPO (Huang et al. 2024, N+ details: OpenAI's baselines' value).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernel updates all parameters at once instead of one Python loop per tensor.
    fused = all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in decay + no_decay
    )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def lr_factor(step: int, *, schedule: str, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then
    cosine or linear decay to `min_ratio` at `total`, or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        return 1.0 - (1 - min_ratio) * progress
    raise ValueError(f"unknown schedule {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: str, warmup: int, total: int, min_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        return lr_factor(step, schedule=schedule, warmup=warmup, total=total, min_ratio=min_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, f)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    max_grad_norm: float,
) -> float:
    """Clip, step, advance the schedule, zero the grads. Returns the pre-clip grad norm."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


# ---------------------------------------------------------------------------------------
# Data order
# ---------------------------------------------------------------------------------------


def split_held_out(records: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, held out): a seeded share `fraction` of `records` held out (at least one),
    for --eval-fraction where no --eval-data is given."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(records) * fraction))
    if n_eval >= len(records):
        raise UserError(f"--eval-fraction {fraction} leaves no training records")
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The global order of example indices in one epoch: a function of (seed, epoch) only."""
    if not shuffle:
        return list(range(n))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def global_batches(
    order: Sequence[int], global_batch: int, drop_last: bool = False
) -> list[list[int]]:
    """Cut an epoch's order into optimizer steps of `global_batch` examples."""
    steps = [list(order[i : i + global_batch]) for i in range(0, len(order), global_batch)]
    if drop_last and steps and len(steps[-1]) < global_batch:
        steps.pop()
    return steps


def rank_micro_batches(step_indices: Sequence[int], d: Dist, micro: int) -> Iterator[list[int]]:
    """This rank's micro-batches of one optimizer step.

    The step's examples are split into contiguous, equal-as-possible slices per rank,
    each cut into micro-batches of at most `micro` examples.
    """
    n = len(step_indices)
    lo = (n * d.rank) // d.world_size
    hi = (n * (d.rank + 1)) // d.world_size
    mine = list(step_indices[lo:hi])
    for i in range(0, len(mine), micro):
        yield mine[i : i + micro]
