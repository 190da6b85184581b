"""Reward-model evaluation: the batch loss shared with training, pairwise accuracy overall
and per strength bucket, on adjacent pairs and on all pairs (ties count half), mean score
gap, and `rlhfkit rm eval`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import RMEvalConfig
from rlhfkit.data.chat import resolve_chat
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.reward_data import (
    BUCKETS,
    RankingBatch,
    RankingExample,
    collate_rankings,
    encode_rankings,
    resolve_margin_table,
)
from rlhfkit.distributed import Dist, all_reduce_sum, pick_device
from rlhfkit.errors import UserError
from rlhfkit.files import write_json
from rlhfkit.loops.common import rank_micro_batches
from rlhfkit.losses import kwise_ranking_loss
from rlhfkit.models.load import autocast_context
from rlhfkit.models.reward import load_reward_model, reward_scores
from rlhfkit.models.reward_packed import attention_cost, packed_reward_scores
from rlhfkit.scoring.rm import packs_exactly, saved_max_len

# ---------------------------------------------------------------------------------------
# The loss of one batch
# ---------------------------------------------------------------------------------------


def ranking_batch_loss(
    model: torch.nn.Module, batch: RankingBatch, bf16: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, stats, scores (N,)): one forward over all N responses (right-padded rows, or
    packed ones: `collate_rankings(..., packing=True)`), then the K-wise loss."""
    device = batch.input_ids.device
    with autocast_context(device, bf16):
        if batch.packed:
            scores = packed_reward_scores(model, batch.input_ids, batch.position_ids, batch.last)
        else:
            scores = reward_scores(model, batch.input_ids, batch.attention_mask)  # (N,)
    # At least float32 (bf16 autocast scores are cast up); a float64 model stays float64.
    scores_hp = scores.to(torch.promote_types(scores.dtype, torch.float32))  # (N,)
    loss, stats = kwise_ranking_loss(scores_hp, batch.pairs, batch.margins, batch.pair_prompt)
    return loss, stats, scores


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------


def pair_credit(scores: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """((M,) gap s_w - s_l, (M,) credit): 1 if the RM prefers the winner, 0.5 for a tie.

    A tie (equal scores: in practice two identical responses, which noisy labellers
    still order) counts half, the expected accuracy of breaking it at random, so chance
    is 0.5 in every bucket. `losses.kwise_ranking_loss`'s own accuracy counts ties as 0.
    """
    gap = (scores[pairs[:, 0]] - scores[pairs[:, 1]]).detach().float()  # (M,)
    return gap, (gap > 0).float() + 0.5 * (gap == 0).float()


def _empty_buckets() -> dict[str, list[float]]:
    return {b: [0.0, 0.0, 0.0] for b in BUCKETS}


def _bucket_metrics(buckets: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {
        b: {"accuracy": c / k, "n_pairs": int(k), "n_ties": int(t)}
        for b, (k, c, t) in buckets.items()
        if k
    }


@dataclass
class EvalTotals:
    """Sums over prompts and pairs, reducible over ranks; `metrics()` makes the report.

    Two tallies per strength: over ALL C(K,2) pairs (a non-adjacent pair in the bucket of
    the strongest label on its path), and over ADJACENT pairs only (the K - 1 pairs a
    labeller graded, each label counted once: comparable with Llama 2's Table 8).
    """

    loss_sum: float = 0.0  # sum over prompts of the prompt's mean pair loss
    n_prompts: float = 0
    gap_sum: float = 0.0
    # per bucket: [pairs, credit (correct + ties / 2), ties]
    buckets: dict[str, list[float]] = field(default_factory=_empty_buckets)
    adjacent_buckets: dict[str, list[float]] = field(default_factory=_empty_buckets)

    def add(self, loss: torch.Tensor, scores: torch.Tensor, batch: RankingBatch) -> None:
        gap, credit = pair_credit(scores, batch.pairs)
        n_prompts = int(batch.pair_prompt.max()) + 1
        self.loss_sum += float(loss) * n_prompts
        self.n_prompts += n_prompts
        self.gap_sum += float(gap.sum())
        adjacent = batch.adjacent or [True] * len(batch.buckets)
        for bucket, adj, c, g in zip(
            batch.buckets, adjacent, credit.tolist(), gap.tolist(), strict=True
        ):
            for tally in (self.buckets, self.adjacent_buckets) if adj else (self.buckets,):
                row = tally[bucket]
                row[0], row[1], row[2] = row[0] + 1, row[1] + c, row[2] + (g == 0)

    def reduce(self, d: Dist, device: torch.device) -> EvalTotals:
        def r(x: float) -> float:
            return all_reduce_sum(x, d, device)

        def rb(buckets: dict[str, list[float]]) -> dict[str, list[float]]:
            return {b: [r(x) for x in row] for b, row in buckets.items()}

        return EvalTotals(
            r(self.loss_sum), r(self.n_prompts), r(self.gap_sum),
            rb(self.buckets), rb(self.adjacent_buckets),
        )  # fmt: skip

    def metrics(self) -> dict[str, Any]:
        """loss, accuracy, score_gap, n_prompts, n_pairs, n_ties over all pairs; `buckets`:
        per strength {accuracy, n_pairs, n_ties} over all pairs; `adjacent_accuracy`,
        `n_adjacent_pairs` and `adjacent_buckets`: the same over adjacent pairs only (the
        headline per-strength figure). Buckets without pairs are left out."""
        n_pairs = sum(row[0] for row in self.buckets.values())
        n_adj = sum(row[0] for row in self.adjacent_buckets.values())
        return {
            "loss": self.loss_sum / max(self.n_prompts, 1),
            "accuracy": sum(row[1] for row in self.buckets.values()) / max(n_pairs, 1),
            "score_gap": self.gap_sum / max(n_pairs, 1),
            "n_prompts": int(self.n_prompts),
            "n_pairs": int(n_pairs),
            "n_ties": int(sum(row[2] for row in self.buckets.values())),
            "buckets": _bucket_metrics(self.buckets),
            "adjacent_accuracy": sum(row[1] for row in self.adjacent_buckets.values())
            / max(n_adj, 1),
            "n_adjacent_pairs": int(n_adj),
            "adjacent_buckets": _bucket_metrics(self.adjacent_buckets),
        }


@torch.no_grad()
def evaluate_rm(
    model: torch.nn.Module,
    examples: Sequence[RankingExample],
    pad_id: int,
    *,
    batch_size: int = 16,
    device: torch.device = torch.device("cpu"),
    dist: Dist | None = None,
    bf16: bool = False,
    packing: bool = False,
) -> dict[str, Any]:
    """Ranking loss (training's formula), pairwise accuracy overall and per strength
    bucket, mean score gap s_w - s_l, prompt and pair counts; over all ranks. `packing`:
    padding-free rows (only for a model that keeps packed sequences apart)."""
    d = dist or Dist()
    was_training = model.training
    model.eval()
    totals = EvalTotals()
    cost = attention_cost(model) if packing else None  # packed rows' width
    for idx in rank_micro_batches(range(len(examples)), d, batch_size):
        batch = collate_rankings([examples[i] for i in idx], pad_id, packing, cost).to(device)
        loss, _, scores = ranking_batch_loss(model, batch, bf16)
        totals.add(loss, scores, batch)
    model.train(was_training)
    return totals.reduce(d, device).metrics()


def format_eval(metrics: dict[str, Any]) -> str:
    """A small table: overall numbers, then accuracy per strength bucket on adjacent pairs
    (each label once: the headline) and on all pairs (non-adjacent ones included)."""
    adjacent = metrics.get("adjacent_buckets", {})
    lines = [
        f"loss {metrics['loss']:.4f}   accuracy {metrics['accuracy']:.4f}   "
        f"score gap {metrics['score_gap']:.4f}   prompts {metrics['n_prompts']}   "
        f"pairs {metrics['n_pairs']} ({metrics['n_ties']} ties, "
        f"{metrics.get('n_adjacent_pairs', 0)} adjacent)",
        f"  {'strength':<22}{'adjacent':>9}{'pairs':>8}{'all':>9}{'pairs':>8}{'ties':>7}",
    ]
    for bucket, row in metrics["buckets"].items():
        adj = adjacent.get(bucket)
        left = f"{adj['accuracy']:>9.4f}{adj['n_pairs']:>8}" if adj else f"{'-':>9}{0:>8}"
        lines.append(
            f"  {bucket:<22}{left}{row['accuracy']:>9.4f}{row['n_pairs']:>8}{row['n_ties']:>7}"
        )
    return "\n".join(lines)


def flat_eval(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalars for metrics.jsonl / TensorBoard: accuracy_<strength> over all pairs,
    adjacent_accuracy_<strength> over adjacent pairs."""
    nested = ("buckets", "adjacent_buckets")
    out = {f"{prefix}/{k}": v for k, v in metrics.items() if k not in nested}
    for b, row in metrics["buckets"].items():
        out[f"{prefix}/accuracy_{b}"] = row["accuracy"]
    for b, row in metrics.get("adjacent_buckets", {}).items():
        out[f"{prefix}/adjacent_accuracy_{b}"] = row["accuracy"]
    return out


def eval_rm(cfg: RMEvalConfig) -> dict[str, Any]:
    """`rlhfkit rm eval`: the ranking metrics of a saved RM on ranking / pairwise files."""
    if not cfg.data:
        raise UserError("--data is required: ranking / pairwise JSONL file(s)")
    margin_table = resolve_margin_table(cfg.margin)
    records = read_preferences(list(cfg.data))
    device = pick_device(cfg.device)
    model, tokenizer = load_reward_model(cfg.model, device, trust_remote_code=cfg.trust_remote_code)
    resolve_chat(tokenizer, cfg.chat, what=cfg.model)  # as it trained, unless told
    max_len = cfg.max_len or saved_max_len(Path(cfg.model), model)
    examples, _ = encode_rankings(records, tokenizer, max_len, margin_table)
    metrics = evaluate_rm(
        model, examples, tokenizer.pad_token_id, batch_size=cfg.batch_size, device=device,
        packing=packs_exactly(model),  # padding-free where the RM keeps sequences apart
    )  # fmt: skip
    result = {"model": cfg.model, "data": list(cfg.data), "margin": cfg.margin, **metrics}
    print(format_eval(metrics))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(cfg.out, result)
    return result
