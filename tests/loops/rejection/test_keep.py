"""loops/rejection/keep.py: best-of-K selection and best-of-all-rounds bookkeeping against naive
loops, the gap to the pool's median, the KL-regularised ranking, the greedy candidate,
truncated samples, the round statistics and the max/median curve (its plot:
tests/report/test_plots.py)."""

from __future__ import annotations

import math
import random

import pytest

from rlhfkit.loops.rejection.keep import (
    KEEP_RULES,
    confident,
    drop_truncated,
    keep_best,
    keep_best_of_all_rounds,
    max_median_curve,
    ranking_values,
    round_stats,
    with_greedy,
)
from rlhfkit.loops.rejection.samples import SampleRecord


def _rec(prompt: str, scores: list[float]) -> SampleRecord:
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    return SampleRecord(prompt, [f"{prompt}-r{i}" for i in range(len(scores))], scores, best)


def test_keep_best_is_a_naive_first_maximum_ties_included():
    rng = random.Random(0)
    for _ in range(50):
        k = rng.randint(1, 9)
        # few distinct values: ties are common
        rounds = [[_rec(f"p{p}", [float(rng.randint(0, 3)) for _ in range(k)]) for p in range(6)]]
        kept = keep_best(rounds)
        for rec, got in zip(rounds[0], kept, strict=True):
            best = 0
            for i in range(k):  # the naive loop: strictly greater replaces, so ties -> first
                if rec.scores[i] > rec.scores[best]:
                    best = i
            assert (got.round, got.index) == (1, best)
            assert got.completion == rec.responses[best] and got.score == rec.scores[best]
            assert got.prompt == rec.prompt
    # hand-made: a tie at the top goes to the lowest index, negatives and -inf are fine
    (a, b, c) = keep_best(
        [[_rec("a", [1, 3, 3, 2]), _rec("b", [-5, -5]), _rec("c", [-math.inf, -1e300])]]
    )
    assert (a.index, b.index, c.index) == (1, 0, 1)


def test_keep_best_uses_only_the_latest_round():
    history = [[_rec("p", [9.0, 0.0])], [_rec("p", [1.0, 2.0])]]
    (kept,) = keep_best(history)
    assert (kept.round, kept.index, kept.score) == (2, 1, 2.0)


def test_best_of_all_rounds_takes_the_max_over_rounds_earliest_on_ties():
    history = [
        [_rec("p0", [1, 2, 0]), _rec("p1", [0, 0, 5]), _rec("p2", [4, 4, 4]), _rec("p3", [7, 1, 1])],
        [_rec("p0", [3, 9, 9]), _rec("p1", [5, 1, 1]), _rec("p2", [0, 4, 0]), _rec("p3", [1, 1, 1])],
        [_rec("p0", [8, 0, 9]), _rec("p1", [2, 2, 2]), _rec("p2", [4, 4, 4]), _rec("p3", [6, 7, 2])],
    ]  # fmt: skip
    kept = keep_best_of_all_rounds(history)
    # p0: 9 in rounds 2 (index 1, 2) and 3 (index 2) -> round 2 index 1
    # p1: 5 in round 1 index 2 and round 2 index 0 -> round 1; p2: all 4s -> round 1 index 0
    # p3: 7 in round 1 index 0 and round 3 index 1 -> round 1
    assert [(k.round, k.index) for k in kept] == [(2, 1), (1, 2), (1, 0), (1, 0)]
    assert [k.score for k in kept] == [9, 5, 4, 7]
    assert kept[0].completion == "p0-r1"
    # after one round it is plain best-of-K
    assert keep_best_of_all_rounds(history[:1]) == keep_best(history[:1])

    rng = random.Random(1)
    for _ in range(30):
        n_rounds, k = rng.randint(1, 4), rng.randint(1, 5)
        hist = [
            [_rec(f"p{p}", [float(rng.randint(0, 4)) for _ in range(k)]) for p in range(5)]
            for _ in range(n_rounds)
        ]
        for p, got in enumerate(keep_best_of_all_rounds(hist)):
            best = (1, 0)
            for r in range(n_rounds):  # naive: rounds in order, then samples in order
                for i in range(k):
                    if hist[r][p].scores[i] > hist[best[0] - 1][p].scores[best[1]]:
                        best = (r + 1, i)
            assert (got.round, got.index) == best


def test_gap_is_the_best_minus_the_median_of_its_pool_and_min_gap_filters_on_it():
    history = [
        [_rec("p0", [1, 2, 0, 5]), _rec("p1", [3, 3, 3, 3]), _rec("p2", [0, 1, 4])],
        [_rec("p0", [0, 0, 0, 0]), _rec("p1", [3, 9, 3, 3]), _rec("p2", [2, 2, 2])],
    ]  # fmt: skip
    # latest round: p0 best 0, median 0; p1 best 9, median of (3, 3, 3, 9) = 3; p2 2 - 2
    assert [k.gap for k in keep_best(history)] == [0.0, 6.0, 0.0]
    # all rounds: p0 pool (1,2,0,5,0,0,0,0) median 0 -> 5; p1 median 3 -> 6;
    # p2 pool (0,1,4,2,2,2) median 2 -> 2
    kept = keep_best_of_all_rounds(history)
    assert [k.gap for k in kept] == [5.0, 6.0, 2.0]
    assert [k.prompt for k in confident(kept, 2.0)] == ["p0", "p1", "p2"]  # >= keeps ties
    assert [k.prompt for k in confident(kept, 5.5)] == ["p1"]
    assert confident(kept, 0.0) == kept
    assert kept[1].to_json()["gap"] == 6.0
    with pytest.raises(ValueError, match="min_gap"):
        confident(kept, -1.0)


def test_kl_coef_ranks_by_reward_plus_beta_logprob_against_a_naive_loop():
    """--kl-coef beta: argmax of r + beta log pi over the candidates (first on ties), in
    both rules; the kept record keeps its reward as `score` and its log-prob."""
    rng = random.Random(2)
    for _ in range(40):
        k, beta = rng.randint(1, 6), rng.choice([0.0, 0.05, 0.5, 2.0])
        hist = []
        for _ in range(rng.randint(1, 3)):
            rnd = []
            for p in range(4):
                rec = _rec(f"p{p}", [float(rng.randint(0, 3)) / 4 for _ in range(k)])
                rec.logprobs = [-float(rng.randint(1, 8)) / 2 for _ in range(k)]
                rnd.append(rec)
            hist.append(rnd)
        last = [(len(hist), i) for i in range(k)]
        every = [(r + 1, i) for r in range(len(hist)) for i in range(k)]
        for rule, pool in ((keep_best, last), (keep_best_of_all_rounds, every)):
            for p, got in enumerate(rule(hist, beta)):
                best, best_v = None, None
                for r, i in pool:  # naive: strictly greater replaces
                    rec = hist[r - 1][p]
                    v = rec.scores[i] + beta * rec.logprobs[i]
                    if best_v is None or v > best_v:
                        best, best_v = (r, i), v
                assert (got.round, got.index) == best
                rec = hist[best[0] - 1][p]
                assert got.score == rec.scores[best[1]] and got.logprob == rec.logprobs[best[1]]
    # by hand: rewards tie at 0.5, the likelier one wins; a big enough reward gap still wins
    rec = _rec("q", [0.5, 0.5, 0.9])
    rec.logprobs = [-3.0, -1.0, -6.0]
    assert ranking_values(rec, 0.1) == pytest.approx([0.2, 0.4, 0.3])
    assert keep_best([[rec]], 0.0)[0].index == 2  # Llama 2: the highest reward
    assert keep_best([[rec]], 0.1)[0].index == 1  # 0.4 > 0.3 > 0.2
    assert keep_best([[rec]], 0.01)[0].index == 2  # 0.84 > 0.49
    assert keep_best([[rec]], 0.1)[0].to_json()["logprob"] == -1.0
    with pytest.raises(ValueError, match="log-prob"):
        keep_best([[_rec("q", [1.0, 2.0])]], 0.1)


def test_with_greedy_appends_the_greedy_response_as_candidate_k():
    a = _rec("a", [1.0, 2.0])
    a.logprobs, a.ended, a.response_tokens = [-2.0, -3.0], [True, True], [3, 4]
    a.per_rm = {"h": [1.0, 2.0]}
    g = SampleRecord("a", ["a-greedy"], [5.0], 0, logprobs=[-0.5], ended=[True],
                     response_tokens=[2], per_rm={"h": [5.0]})  # fmt: skip
    (m,) = with_greedy([a], [g])
    assert m.responses == ["a-r0", "a-r1", "a-greedy"] and m.scores == [1.0, 2.0, 5.0]
    assert m.logprobs == [-2.0, -3.0, -0.5] and m.response_tokens == [3, 4, 2]
    assert m.per_rm == {"h": [1.0, 2.0, 5.0]} and m.best == 2 and m.ended == [True] * 3
    assert (keep_best([[m]])[0].index, keep_best([[m]])[0].completion) == (2, "a-greedy")
    assert a.responses == ["a-r0", "a-r1"]  # the round's own record is unchanged
    with pytest.raises(ValueError, match="does not match"):
        with_greedy([a], [SampleRecord("b", ["x"], [0.0], 0)])


def test_best_of_all_rounds_refuses_rounds_with_other_prompts():
    with pytest.raises(ValueError, match="differs"):
        keep_best_of_all_rounds([[_rec("a", [1.0])], [_rec("b", [1.0])]])


def test_round_stats_and_the_max_median_curve_by_hand():
    records = [_rec("a", [1.0, 3.0, 2.0]), _rec("b", [4.0, 0.0, 0.0])]
    for r in records:
        r.response_tokens = [2, 4, 6]
    # a: k=1 (1, 1), k=2 (3, 2), k=3 (3, 2); b: k=1 (4, 4), k=2 (4, 2), k=3 (4, 0)
    assert max_median_curve(records) == [
        {"k": 1, "max": 2.5, "median": 2.5},
        {"k": 2, "max": 3.5, "median": 2.0},
        {"k": 3, "max": 3.5, "median": 1.0},
    ]
    kept = KEEP_RULES["best"]([records])
    stats = round_stats(records, kept, 1)
    assert stats["mean_reward_all"] == pytest.approx(10 / 6)
    assert stats["mean_reward_kept"] == 3.5 == stats["mean_reward_best_of_round"]
    assert stats["mean_response_tokens_kept"] == 3.0  # a keeps index 1 (4), b index 0 (2)
    assert stats["kept_from_earlier_rounds"] == 0 and "gold_all" not in stats  # not world


def test_truncated_kept_samples_are_dropped_and_counted_old_files_still_read():
    a, b = _rec("a", [1.0, 3.0, 2.0]), _rec("b", [4.0, 0.0, 0.0])
    a.ended, b.ended = [True, False, True], [True, True, False]  # a's best (index 1) was cut
    a.response_tokens, b.response_tokens = [2, 8, 5], [3, 1, 8]
    kept = keep_best([[a, b]])
    assert [k.ended for k in kept] == [False, True]
    assert [k.to_json()["ended"] for k in kept] == [False, True]
    assert [k.prompt for k in drop_truncated(kept)] == ["b"]
    stats = round_stats([a, b], kept, 1)
    assert stats["truncated_rate_all"] == pytest.approx(2 / 6) and stats["kept_truncated"] == 1
    # samples.jsonl keeps "ended"; a file written before it existed is read as before...
    row = a.to_json()
    assert row["ended"] == [True, False, True]
    assert SampleRecord.from_json(row).ended == a.ended
    del row["ended"]
    old = SampleRecord.from_json(row)
    assert old.ended == [] and [old.response_ended(i) for i in range(3)] == [True] * 3
    assert [k.ended for k in keep_best([[old]])] == [True]
    # ...or, knowing --max-new-tokens, with "ended" from the token counts (8 tokens: cut)
    assert SampleRecord.from_json(row, max_new_tokens=8).ended == [True, False, True]
