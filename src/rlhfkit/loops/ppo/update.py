"""PPO steps 4-6: values, advantages and returns, then epochs of clipped policy and value
steps, with the PPO-ptx language-modelling gradient added to every policy step.

`add_advantages` (the `gae` estimator; the critic-free ones are `estimators.py`'s) runs the
value model over the rollout's sequences, then GAE; it returns the rollout grown by
`values`, `advantages` and `returns`. When the update makes a single
pass (one epoch, one minibatch, one micro-batch: `reuses_value_forward`), that value
forward keeps its autograd graph and the value loss backpropagates through it: one value
forward per step instead of two (8-9% of such a step, bench/RESULTS.md).

One optimizer step of the policy (per minibatch):
    grad = d/dphi [ PPO clipped loss on the minibatch ]  +  ptx_coef * d/dphi [ LM loss on a
           pretraining batch ]                             (InstructGPT's PPO-ptx objective)
then clip the global norm, one AdamW step. The value model (its own parameters and
optimizer) takes one step per minibatch on the clipped value loss, before the policy's
(the two are independent; first frees a reused value graph before the policy forward).

Losses are means over the whole minibatch across micro-batches and processes: each
micro-batch's mean is weighted by its share of the minibatch's tokens (or responses, for a
`--loss-agg` that averages over responses: `losses.LOSS_UNITS`), times the world size,
which DDP's gradient averaging divides back out; so micro-batching and the number of
processes change nothing but rounding. Minibatches are whole groups (the responses to one
prompt), shuffled. No Python loop over tokens: every loss is a masked tensor expression
over (B, R). Without a value model (the critic-free estimators) there is no value step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from rlhfkit.config.rl import estimator_options
from rlhfkit.distributed import all_reduce, rank, world_size
from rlhfkit.errors import UserError
from rlhfkit.logging import sync_time
from rlhfkit.loops.common import optimizer_step
from rlhfkit.losses import LOSS_UNITS, POLICY_LOSSES, ppo_value_loss, sft_nll
from rlhfkit.models.forward import policy_logits, response_values
from rlhfkit.models.load import autocast_context
from rlhfkit.models.wrap import no_sync, unwrap
from rlhfkit.ops.advantages import gae
from rlhfkit.ops.logprobs import entropy_from_logits, logprob_temperature, response_logprobs
from rlhfkit.ops.masking import global_whiten, masked_mean
from rlhfkit.types import Rollout


@dataclass(frozen=True)
class UpdateSettings:
    """Options of the PPO update (names as in the paper / config)."""

    ppo_epochs: int = 4
    num_mini_batches: int = 1
    micro_batch_size: int = 0  # sequences per forward; 0 = the whole minibatch
    clip_eps: float = 0.2
    value_clip: float | None = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    whiten_rewards: bool = False
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # of the log-probs: the sampling temperature (greedy -> 1)
    ptx_coef: float = 0.0
    bf16: bool = False
    seed: int = 0
    packed: frozenset[str] = frozenset()  # roles ("policy", "value") run padding-free
    estimator: str = "gae"  # `estimators.ESTIMATORS`
    kl_in: str = "reward"  # "loss": kl_coef x k3 per token in the policy loss (GRPO)
    loss_agg: str = "token-mean"  # `losses.POLICY_LOSSES`
    group_size: int = 1  # responses per prompt: consecutive rows, kept in one minibatch
    norm_length: int | None = None  # seq-mean-token-sum-norm's constant (max_new_tokens)

    @classmethod
    def from_config(cls, cfg: Any) -> UpdateSettings:
        """The update options of a `PPOConfig` (estimator defaults resolved)."""
        kl_in, loss_agg, group_size = estimator_options(cfg)
        return cls(
            estimator=cfg.estimator,
            kl_in=kl_in,
            loss_agg=loss_agg,
            group_size=group_size,
            norm_length=cfg.max_new_tokens,
            ppo_epochs=cfg.ppo_epochs,
            num_mini_batches=cfg.num_mini_batches,
            micro_batch_size=cfg.micro_batch_size,
            clip_eps=cfg.clip_eps,
            value_clip=cfg.value_clip,
            gamma=cfg.gamma,
            lam=cfg.lam,
            whiten_advantages=cfg.whiten_advantages,
            whiten_rewards=cfg.whiten_rewards,
            max_grad_norm=cfg.max_grad_norm,
            temperature=logprob_temperature(cfg.temperature),
            ptx_coef=cfg.ptx_coef,
            bf16=cfg.bf16,
            seed=cfg.seed,
        )


@dataclass
class Trainables:
    """The trained roles with their optimizers and schedules (models may be DDP-wrapped);
    no value model (None) for the critic-free estimators."""

    policy: torch.nn.Module
    value_model: torch.nn.Module | None
    policy_optimizer: torch.optim.Optimizer
    value_optimizer: torch.optim.Optimizer | None
    policy_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    value_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None


class PtxBatches:
    """Pretraining blocks for PPO-ptx in a seeded order that depends only on the number of
    policy steps taken (so resume is exact and needs no extra state).

    blocks: (N, L) long, packed documents (`data.tokenize.pack_corpus`). Policy step j
    uses global batch j of the endless sequence of shuffled passes; this process takes
    its contiguous slice.
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int) -> None:
        if blocks.shape[0] < batch_size:
            raise UserError(
                f"ptx corpus has {blocks.shape[0]} blocks, fewer than --ptx-batch-size {batch_size}"
            )
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self.per_pass = blocks.shape[0] // batch_size

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """(b, L) blocks of this process for policy step `step` (0-based)."""
        epoch, i = divmod(step, self.per_pass)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 7)
        order = torch.randperm(self.blocks.shape[0], generator=g)
        idx = order[i * self.batch_size : (i + 1) * self.batch_size]
        lo = (self.batch_size * rank) // world_size
        hi = (self.batch_size * (rank + 1)) // world_size
        return self.blocks[idx[lo:hi]]


def reuses_value_forward(s: UpdateSettings, rows: int) -> bool:
    """Whether the update's value forward can be `add_advantages`' own: one epoch, one
    minibatch, one micro-batch (`rows`: this process's rollout rows).

    The update then runs the value model once, before its only optimizer step, in eval
    mode, on the rollout's sequences: the function the rollout evaluated, at the same
    weights on the same inputs. Only the row order and the trimmed all-padding columns
    differ, which change nothing but rounding (positions come from the mask).
    """
    return s.ppo_epochs == 1 and s.num_mini_batches == 1 and not 0 < s.micro_batch_size < rows


def add_advantages(value_model: torch.nn.Module, rollout: Rollout, s: UpdateSettings) -> Rollout:
    """The rollout with `values` (B, R), `advantages` (B, R) and `returns` (B, R).

    Values V(prompt + response[:t]) from one value forward (kept with its graph as
    `value_graph` where `reuses_value_forward`); then optional reward whitening (scale
    only, mean kept: Huang et al. 2024) before GAE and advantage whitening after it, each
    over all valid tokens of all processes.
    """
    t0 = sync_time(rollout.device)
    keep_graph = reuses_value_forward(s, len(rollout))
    with torch.set_grad_enabled(keep_graph), autocast_context(rollout.device, s.bf16):
        model = value_model if keep_graph else unwrap(value_model)  # DDP hooks only if trained
        graph = response_values(
            model,
            rollout.sequences,
            rollout.attention_mask,
            rollout.prompt_len,
            packed="value" in s.packed,
        )
    mask = rollout.response_mask
    values = graph.detach().masked_fill(~mask, 0.0)
    rewards = rollout.rewards
    if s.whiten_rewards:
        rewards = global_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values, mask, s.gamma, s.lam)
    if s.whiten_advantages:
        advantages = global_whiten(advantages, mask)
    timings = {**rollout.timings, "value": sync_time(rollout.device) - t0}
    return replace(
        rollout,
        values=values,
        advantages=advantages,
        returns=returns,
        timings=timings,
        value_graph=graph if keep_graph else None,
    )


def ppo_update(
    t: Trainables,
    rollout: Rollout,
    s: UpdateSettings,
    *,
    step: int,
    policy_steps: int = 0,
    ptx: PtxBatches | None = None,
) -> tuple[dict[str, float], int]:
    """`s.ppo_epochs` passes over shuffled minibatches of `rollout` (this process's rows,
    with advantages: `add_advantages`).

    `step` seeds the minibatch order; `policy_steps` counts policy optimizer steps so far
    (it picks the ptx batches). Returns (mean stats over all minibatches and processes,
    policy_steps after this update).
    """
    if rollout.advantages is None:
        raise ValueError("ppo_update needs a rollout with advantages (add_advantages)")
    if rollout.value_graph is not None and not reuses_value_forward(s, len(rollout)):
        raise ValueError("a kept value graph needs one epoch, one minibatch and one micro-batch")
    data = rollout.row_tensors()
    world, use_ptx = world_size(), ptx is not None and s.ptx_coef > 0
    one = torch.ones((), device=rollout.device)
    sums: dict[str, torch.Tensor] = {}

    def add(stats: dict[str, torch.Tensor], weight: torch.Tensor) -> None:
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0 * one) + v.detach().float() * weight

    count, per_token = 0, LOSS_UNITS[s.loss_agg] == "token"
    for epoch in range(s.ppo_epochs):
        for mb_idx in _minibatches(len(rollout), s, step, epoch):
            micro = [
                _trim({k: v[i] for k, v in data.items()})
                for i in _micro(mb_idx, s.micro_batch_size)
            ]
            # Each micro-batch's mean, weighted by its share of the minibatch's tokens (x world:
            # DDP averages gradients over processes); a per-response policy loss by its share
            # of the responses.
            if per_token or t.value_model is not None:
                n_tokens = all_reduce(rollout.response_mask[mb_idx].sum().float()).clamp_min(1)
                token_weights = [mb["response_mask"].sum() * world / n_tokens for mb in micro]
            weights = token_weights if per_token else _row_weights(micro, len(mb_idx), one)
            vnorm = None
            if t.value_model is not None:
                graph = None  # one minibatch, one micro-batch: the kept graph's rows, columns
                if rollout.value_graph is not None:
                    graph = rollout.value_graph[mb_idx, : micro[0]["response_mask"].shape[1]]
                vnorm = _value_step(t, micro, token_weights, s, add, graph)
            for k, (mb, w) in enumerate(zip(micro, weights, strict=True)):
                with no_sync(t.policy, sync=k == len(micro) - 1 and not use_ptx):
                    stats = _policy_backward(t.policy, mb, s, w, epoch == 0, rollout.kl_coef)
                    add(stats, w / world)
            if use_ptx:
                blocks = ptx.batch(policy_steps, rank(), world)
                add(_ptx_backward(t.policy, blocks, s, rollout.device), one / world)
            norm = optimizer_step(t.policy, t.policy_optimizer, t.policy_scheduler, s.max_grad_norm)
            policy_steps += 1
            norms = {"grad_norm": one * norm}
            if vnorm is not None:
                norms["value_grad_norm"] = one * vnorm
            add(norms, one / world)
            count += 1
    return _mean_stats(sums, count, s, use_ptx), policy_steps


def _mean_stats(
    sums: dict[str, torch.Tensor], count: int, s: UpdateSettings, use_ptx: bool
) -> dict[str, float]:
    """Per-minibatch means over all processes (one all-reduce)."""
    keys = sorted(sums)
    totals = all_reduce(torch.stack([sums[k] for k in keys])).tolist()
    stats = {k: v / count for k, v in zip(keys, totals, strict=True)}
    if "entropy" in stats:  # measured in the first epoch only
        stats["entropy"] *= s.ppo_epochs
    if use_ptx:
        stats["ptx_loss"] = stats.pop("ptx_nll")
    return stats


def _row_weights(
    micro: list[dict[str, torch.Tensor]], rows: int, one: torch.Tensor
) -> list[torch.Tensor]:
    """Each micro-batch's share of the minibatch's responses over all processes, x world."""
    world = world_size()
    n_rows = all_reduce(one * rows)
    return [one * len(mb["response_mask"]) * world / n_rows for mb in micro]


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop columns that are padding in every row: left prompt padding, right response
    padding. Results do not change (positions come from the mask); work shrinks."""
    pm, rm = batch["prompt_mask"], batch["response_mask"]
    first = int(pm.any(0).long().argmax())
    last = int(rm.any(0).long().cumsum(0).argmax()) + 1
    out = {}
    for k, v in batch.items():
        if k.startswith("prompt_"):
            out[k] = v[:, first:]
        elif v.dim() == 2:
            out[k] = v[:, :last]
        else:
            out[k] = v
    return out


def _minibatches(n: int, s: UpdateSettings, step: int, epoch: int) -> list[torch.Tensor]:
    """Row indices of each minibatch: whole groups of `s.group_size` consecutive rows (the
    responses to one prompt), groups in a seeded random order, split into
    `s.num_mini_batches` parts."""
    g = torch.Generator().manual_seed((s.seed * 1_000_003 + step) * 1009 + epoch)
    order = torch.randperm(n // s.group_size, generator=g)  # (G,) groups
    parts = torch.tensor_split(order, s.num_mini_batches)
    if s.group_size > 1:  # each group's rows, together and in order
        parts = [
            (p[:, None] * s.group_size + torch.arange(s.group_size)).reshape(-1) for p in parts
        ]
    return [c for c in parts if c.numel()]


def _micro(idx: torch.Tensor, size: int) -> Sequence[torch.Tensor]:
    return torch.split(idx, size) if size > 0 else (idx,)


def _policy_backward(
    policy: torch.nn.Module,
    mb: dict[str, torch.Tensor],
    s: UpdateSettings,
    weight,
    entropy: bool,
    kl_coef: float = 0.0,
) -> dict[str, torch.Tensor]:
    seq = torch.cat([mb["prompt_ids"], mb["response_ids"]], 1)
    attn = torch.cat([mb["prompt_mask"], mb["response_mask"]], 1)
    P, R = mb["prompt_ids"].shape[1], mb["response_ids"].shape[1]
    device = seq.device
    with autocast_context(device, s.bf16):
        logits = policy_logits(policy, seq, attn, R, packed="policy" in s.packed)
    logprobs = response_logprobs(logits, seq, P, s.temperature)  # (b, R)
    kl_loss = s.kl_in == "loss" and kl_coef > 0  # GRPO: kl_coef x k3 per token
    loss, stats = POLICY_LOSSES[s.loss_agg](
        logprobs,
        mb["logprobs"],
        mb["advantages"],
        mb["response_mask"],
        s.clip_eps,
        ref_logprobs=mb["ref_logprobs"] if kl_loss else None,
        kl_coef=kl_coef if kl_loss else 0.0,
        norm_length=s.norm_length,
    )
    (loss * weight).backward()
    if entropy:
        with torch.no_grad():
            h = entropy_from_logits(logits[:, -(R + 1) : -1].detach(), s.temperature)  # (b, R)
            stats["entropy"] = masked_mean(h, mb["response_mask"])
    return stats


def _value_step(
    t: Trainables,
    micro: list[dict[str, torch.Tensor]],
    weights: list[torch.Tensor],
    s: UpdateSettings,
    add: Any,
    graph: torch.Tensor | None = None,
) -> float:
    """The value model's step on one minibatch (its micro-batches); the grad norm. `graph`:
    the minibatch's values with their autograd graph (`add_advantages`), else a forward."""
    for k, (mb, w) in enumerate(zip(micro, weights, strict=True)):
        with no_sync(t.value_model, sync=k == len(micro) - 1):
            add(_value_backward(t.value_model, mb, s, w, graph), w / world_size())
    return optimizer_step(t.value_model, t.value_optimizer, t.value_scheduler, s.max_grad_norm)


def _value_backward(
    value_model: torch.nn.Module,
    mb: dict[str, torch.Tensor],
    s: UpdateSettings,
    weight,
    values: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Backward of the value loss; `values` (b, R) with their graph, else a forward."""
    if values is None:
        seq = torch.cat([mb["prompt_ids"], mb["response_ids"]], 1)
        attn = torch.cat([mb["prompt_mask"], mb["response_mask"]], 1)
        with autocast_context(seq.device, s.bf16):
            values = response_values(
                value_model, seq, attn, mb["prompt_ids"].shape[1], packed="value" in s.packed
            )
    loss, stats = ppo_value_loss(
        values, mb["values"], mb["returns"], mb["response_mask"], s.value_clip
    )
    (loss * weight).backward()
    return stats


def _ptx_backward(
    policy: torch.nn.Module, blocks: torch.Tensor, s: UpdateSettings, device: torch.device
) -> dict[str, torch.Tensor]:
    """Add ptx_coef * grad of the mean next-token NLL of the pretraining batch (all
    processes together) to the policy's gradients."""
    blocks = blocks.to(device)
    n_global = all_reduce(torch.tensor(float(blocks.numel() - blocks.shape[0]), device=device))
    chunks = _micro(torch.arange(blocks.shape[0]), s.micro_batch_size)
    nll = torch.zeros((), device=device)
    for k, idx in enumerate(chunks):
        with no_sync(policy, k == len(chunks) - 1):
            with autocast_context(device, s.bf16):
                logits = policy(input_ids=blocks[idx], use_cache=False).logits
            loss_sum, _ = sft_nll(logits, blocks[idx], reduction="sum")
            (loss_sum * (s.ptx_coef * world_size() / n_global)).backward()
        nll = nll + loss_sum.detach() / n_global * world_size()
    return {"ptx_nll": nll}
