"""data.ranking: comparisons from rankings, strength rule, margins, best-of-K."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from rlhfkit.data.ranking import (
    MARGIN_PRESETS,
    STRENGTHS,
    adjacent_flags,
    best_of_k,
    best_of_k_batch,
    comparisons_with_margins,
    max_and_median_at_k,
    ranking_to_comparisons,
    resolve_margins,
)

SIG, BETTER, SLIGHT, NEG = STRENGTHS


@pytest.mark.parametrize("k", range(2, 10))
def test_all_pairs_winner_ranked_higher(k: int) -> None:
    ranking = list(range(k))
    random.Random(k).shuffle(ranking)
    comparisons = ranking_to_comparisons(ranking)
    assert len(comparisons) == math.comb(k, 2)
    assert len({(w, loser) for w, loser, _ in comparisons}) == math.comb(k, 2)
    position = {idx: pos for pos, idx in enumerate(ranking)}
    for winner, loser, strength in comparisons:
        assert position[winner] < position[loser]
        assert strength is None


def test_hand_strength_rule_with_non_adjacent_pairs() -> None:
    # ranking 2 > 0 > 3 > 1, adjacent labels: (2,0) slightly, (0,3) significantly, (3,1) negligibly
    # non-adjacent pairs take the strongest label on the path:
    #   (2,3): path slightly, significantly          -> significantly
    #   (2,1): path slightly, significantly, negl.   -> significantly
    #   (0,1): path significantly, negligibly        -> significantly
    comparisons = ranking_to_comparisons([2, 0, 3, 1], [SLIGHT, SIG, NEG])
    assert comparisons == [
        (2, 0, SLIGHT),
        (2, 3, SIG),
        (2, 1, SIG),
        (0, 3, SIG),
        (0, 1, SIG),
        (3, 1, NEG),
    ]
    # A before B "better", B before C "slightly better": A vs C is "better".
    assert ranking_to_comparisons([0, 1, 2], [BETTER, SLIGHT])[1] == (0, 2, BETTER)


def test_strength_rule_vs_naive_path_minimum() -> None:
    rng = random.Random(0)
    for k in range(2, 10):
        ranking = rng.sample(range(k), k)
        labels = [rng.choice(STRENGTHS) for _ in range(k - 1)]
        got = {(w, loser): s for w, loser, s in ranking_to_comparisons(ranking, labels)}
        for i, j in itertools.combinations(range(k), 2):
            path = labels[i:j]
            strongest = min(path, key=STRENGTHS.index)
            assert got[(ranking[i], ranking[j])] == strongest


@pytest.mark.parametrize(
    "ranking,strengths",
    [
        ([0], None),  # fewer than 2
        ([0, 0, 1], None),  # repeated
        ([0, -1], None),  # negative
        ([0, 1.0], None),  # not an int
        ([0, True], None),  # bool is not an index
        ([0, 1, 2], [SIG]),  # wrong number of strengths
        ([0, 1], ["much_better"]),  # unknown strength
    ],
)
def test_bad_rankings(ranking, strengths) -> None:
    with pytest.raises(ValueError):
        ranking_to_comparisons(ranking, strengths)


def test_unknown_strength_is_named() -> None:
    with pytest.raises(ValueError, match="much_better"):
        ranking_to_comparisons([0, 1], ["much_better"])


def test_margin_presets() -> None:
    assert STRENGTHS == ("significantly_better", "better", "slightly_better", "negligibly_better")
    assert [MARGIN_PRESETS["llama2-small"][s] for s in STRENGTHS] == [1.0, 2 / 3, 1 / 3, 0.0]
    assert [MARGIN_PRESETS["llama2-large"][s] for s in STRENGTHS] == [3.0, 2.0, 1.0, 0.0]
    assert set(MARGIN_PRESETS["none"].values()) == {0.0}
    for name, table in MARGIN_PRESETS.items():
        assert resolve_margins(name) == table
        assert resolve_margins(name) is not table  # a copy: callers may not edit the preset
    assert resolve_margins(None) == MARGIN_PRESETS["none"]


def test_resolve_user_margins() -> None:
    expected = {SIG: 2.0, BETTER: 1.5, SLIGHT: 0.0, NEG: 0.0}  # unnamed strengths -> 0
    assert resolve_margins({SIG: 2, BETTER: 1.5}) == expected
    assert resolve_margins(" significantly_better=2, better = 1.5") == expected


@pytest.mark.parametrize(
    "spec,culprit",
    [
        ("llama3", "llama3"),
        ("much_better=1", "much_better"),
        ({"much_better": 1.0}, "much_better"),
        ("better=abc", "abc"),
        ("better=1,slightly_better", "slightly_better"),
        ({"better": float("inf")}, "better"),
    ],
)
def test_resolve_margins_errors_name_the_culprit(spec, culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        resolve_margins(spec)


def test_comparisons_with_margins() -> None:
    comparisons = ranking_to_comparisons([1, 0, 2], [SIG, NEG])
    got = comparisons_with_margins(comparisons, MARGIN_PRESETS["llama2-large"])
    assert got == [(1, 0, 3.0, SIG), (1, 2, 3.0, SIG), (0, 2, 0.0, NEG)]
    unlabeled = comparisons_with_margins(
        ranking_to_comparisons([1, 0]), MARGIN_PRESETS["llama2-large"]
    )
    assert unlabeled == [(1, 0, 0.0, None)]
    with pytest.raises(ValueError):
        comparisons_with_margins([(0, 1, "much_better")], MARGIN_PRESETS["none"])


def _naive_best(scores):
    best_i, best_s = None, None
    for i, s in enumerate(scores):
        if best_s is None or s > best_s:  # strict: the first of equal maxima stays
            best_i, best_s = i, s
    return best_i


def test_best_of_k_ties_and_vs_naive() -> None:
    assert best_of_k([1.0, 3.0, 3.0, 2.0]) == 1
    assert best_of_k([5.0, 5.0]) == 0
    assert best_of_k([-1.0]) == 0
    assert best_of_k([float("-inf"), -1e300]) == 1
    rng = random.Random(0)
    rows = [[float(rng.randint(0, 3)) for _ in range(rng.randint(1, 9))] for _ in range(200)]
    assert best_of_k_batch(rows) == [_naive_best(r) for r in rows]


def test_best_of_k_bad_inputs() -> None:
    with pytest.raises(ValueError):
        best_of_k([])
    with pytest.raises(ValueError):
        best_of_k([1.0, float("nan")])


def test_max_and_median_at_k_hand_and_naive() -> None:
    # first k of [3, 1, 4, 1, 5]:
    #   k=1 [3] max 3 med 3; k=2 [1,3] med 2; k=3 [1,3,4] med 3; k=4 [1,1,3,4] med 2;
    #   k=5 [1,1,3,4,5] max 5 med 3
    got = max_and_median_at_k([3.0, 1.0, 4.0, 1.0, 5.0])
    assert got == [(1, 3.0, 3.0), (2, 3.0, 2.0), (3, 4.0, 3.0), (4, 4.0, 2.0), (5, 5.0, 3.0)]
    rng = random.Random(1)
    scores = [rng.gauss(0, 1) for _ in range(30)]
    for k, top, med in max_and_median_at_k(scores):
        assert top == max(scores[:k])
        assert med == pytest.approx(statistics.median(scores[:k]))
    assert max_and_median_at_k([]) == []


def test_one_significant_step_labels_20_of_36_pairs_but_1_adjacent():
    # K = 9, "significantly better" between rank positions 3 and 4, negligibly elsewhere:
    # every pair (i <= 3 < j) crosses it, 4 * 5 = 20 of the 36; one of them is adjacent.
    strengths = ["negligibly_better"] * 8
    strengths[3] = "significantly_better"
    comps = ranking_to_comparisons(list(range(9)), strengths)
    adjacent = adjacent_flags(list(range(9)), comps)
    sig = [a for (_, _, s), a in zip(comps, adjacent, strict=True) if s == STRENGTHS[0]]
    assert len(comps) == 36 and len(sig) == 20 and sum(sig) == 1 and sum(adjacent) == 8
