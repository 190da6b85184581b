"""Reward-model metrics: pairwise accuracy overall and per strength bucket, on adjacent
pairs and on all pairs (ties count half), mean score gap; the table `rm` and `rm eval`
print and the scalars they log. Sums over batches and ranks (`EvalTotals`); the forward
passes that feed them are `loops.reward.train.evaluate_rm`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data.reward_data import BUCKETS, RankingBatch
from rlhfkit.distributed import Dist, all_reduce_sum
from rlhfkit.losses import pair_credit


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
            loss_sum=r(self.loss_sum),
            n_prompts=r(self.n_prompts),
            gap_sum=r(self.gap_sum),
            buckets=rb(self.buckets),
            adjacent_buckets=rb(self.adjacent_buckets),
        )

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
