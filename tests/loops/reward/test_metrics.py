"""loops/reward/metrics.py: pairwise accuracy per strength bucket on adjacent and on all pairs,
the table and the flat scalars."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import collate_rankings, encode_rankings, resolve_margin_table
from rlhfkit.loops.reward.metrics import EvalTotals, flat_eval, format_eval


def test_accuracy_per_strength_on_adjacent_and_on_all_pairs(tiny_tokenizer):
    # Ranking best..worst = responses [2, 0, 3, 1]; adjacent strengths significantly,
    # slightly, slightly. By rank position (i, j) the six pairs and their strengths
    # (strongest on the path) are (0,1) sig ADJ, (0,2) sig, (0,3) sig, (1,2) sl ADJ,
    # (1,3) sl, (2,3) sl ADJ. Scores by rank position [1, 0, 3, 2] (response 2 -> 1,
    # 0 -> 0, 3 -> 3, 1 -> 2), so the RM gets right: (0,1) 1>0 yes, (0,2) 1>3 no,
    # (0,3) 1>2 no, (1,2) 0>3 no, (1,3) 0>2 no, (2,3) 3>2 yes.
    #   adjacent: significantly 1/1 = 1.0, slightly 1/2 = 0.5, overall 2/3
    #   all:      significantly 1/3,       slightly 1/3,       overall 2/6 = 1/3
    rec = RankingRecord("p", ["a", "b", "c", "d"], [2, 0, 3, 1],
                        ["significantly_better", "slightly_better", "slightly_better"], 1, "f")  # fmt: skip
    (ex,), _ = encode_rankings([rec], tiny_tokenizer, 64, resolve_margin_table("none"))
    assert ex.adjacent == [True, False, False, True, False, True]
    batch = collate_rankings([ex], tiny_tokenizer.pad_token_id)
    scores = torch.tensor([0.0, 2.0, 1.0, 3.0])  # by response index
    totals = EvalTotals()
    totals.add(torch.tensor(0.5), scores, batch)
    m = totals.metrics()
    adj, every = m["adjacent_buckets"], m["buckets"]
    assert adj["significantly_better"] == {"accuracy": 1.0, "n_pairs": 1, "n_ties": 0}
    assert adj["slightly_better"] == {"accuracy": 0.5, "n_pairs": 2, "n_ties": 0}
    assert every["significantly_better"]["accuracy"] == pytest.approx(1 / 3)
    assert every["slightly_better"]["accuracy"] == pytest.approx(1 / 3)
    assert every["significantly_better"]["n_pairs"] == every["slightly_better"]["n_pairs"] == 3
    assert m["adjacent_accuracy"] == pytest.approx(2 / 3) and m["n_adjacent_pairs"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3) and m["n_pairs"] == 6
    flat = flat_eval("eval", m)
    assert flat["eval/adjacent_accuracy_slightly_better"] == 0.5
    assert flat["eval/accuracy_slightly_better"] == pytest.approx(1 / 3)
    table = format_eval(m)
    assert "slightly_better" in table and "adjacent" in table
