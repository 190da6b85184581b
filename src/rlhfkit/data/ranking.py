"""Rankings -> comparisons, preference strength -> margin, best-of-K selection.

Plain Python, no torch: this runs while records are read and validated, and in the
rejection-sampling selection, where tensors would be noise.
"""

from __future__ import annotations

import math
from bisect import insort
from collections.abc import Mapping, Sequence

# Llama 2's preference strengths, strongest first (its "negligibly better / unsure"
# is one bucket).
STRENGTHS: tuple[str, ...] = (
    "significantly_better",
    "better",
    "slightly_better",
    "negligibly_better",
)

# Llama 2 Table 27: margin m(r) subtracted inside the sigmoid, per strength.
MARGIN_PRESETS: dict[str, dict[str, float]] = {
    "none": dict.fromkeys(STRENGTHS, 0.0),
    "llama2-small": dict(zip(STRENGTHS, (1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0), strict=True)),
    "llama2-large": dict(zip(STRENGTHS, (3.0, 2.0, 1.0, 0.0), strict=True)),
}

Comparison = tuple[int, int, str | None]  # (winner, loser, strength or None)


def _check_strength(name: object) -> str:
    if name not in STRENGTHS:
        raise ValueError(f"unknown preference strength {name!r}; expected one of {STRENGTHS}")
    return name  # type: ignore[return-value]


def resolve_margins(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """A full strength -> margin table from a preset name, a dict, or "k=v,k=v".

    None is the "none" preset (all margins 0). A dict or "k=v" string may name only
    some strengths; the others get margin 0. Unknown strengths, unknown presets and
    non-finite numbers raise ValueError naming the culprit.
    """
    if spec is None:
        return dict(MARGIN_PRESETS["none"])
    if isinstance(spec, str):
        text = spec.strip()
        if "=" not in text:
            if text not in MARGIN_PRESETS:
                raise ValueError(
                    f"unknown margin preset {text!r}; use one of {sorted(MARGIN_PRESETS)} "
                    f"or 'strength=value,...'"
                )
            return dict(MARGIN_PRESETS[text])
        items: list[tuple[str, object]] = []
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"margin entry {part!r} is not 'strength=value'")
            items.append((key.strip(), value.strip()))
    else:
        items = list(spec.items())

    table = dict(MARGIN_PRESETS["none"])
    for key, value in items:
        _check_strength(key)
        try:
            margin = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"margin for {key!r} is not a number: {value!r}") from None
        if not math.isfinite(margin):
            raise ValueError(f"margin for {key!r} must be finite, got {margin}")
        table[key] = margin
    return table


def ranking_to_comparisons(
    ranking: Sequence[int], strengths: Sequence[str] | None = None
) -> list[Comparison]:
    """All C(K,2) (winner, loser, strength) comparisons implied by one K-wise ranking.

    ranking: [best, ..., worst] indices of the K responses (distinct, >= 0, K >= 2).
    strengths: None, or K - 1 labels where strengths[i] grades the adjacent pair
    (ranking[i], ranking[i + 1]). Pairs come in rank order: (r0, r1), (r0, r2), ...,
    (r1, r2), ..., the winner always the higher-ranked response.

    A non-adjacent pair gets the STRONGEST label on the path between them: if A is
    significantly better than B and B slightly better than C, then A is at least
    significantly better than C. Formally, for rank positions i < j,

        strength(r_i, r_j) = strongest(strengths[i], ..., strengths[j - 1]).
    """
    ranking = list(ranking)
    if len(ranking) < 2:
        raise ValueError(f"a ranking needs at least 2 responses, got {ranking}")
    for idx in ranking:
        if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
            raise ValueError(f"ranking entries must be non-negative ints, got {idx!r}")
    if len(set(ranking)) != len(ranking):
        raise ValueError(f"ranking has a repeated index: {ranking}")
    if strengths is not None:
        strengths = list(strengths)
        if len(strengths) != len(ranking) - 1:
            raise ValueError(
                f"{len(ranking)} ranked responses need {len(ranking) - 1} adjacent "
                f"strengths, got {len(strengths)}"
            )
        for name in strengths:
            _check_strength(name)

    comparisons: list[Comparison] = []
    for i, winner in enumerate(ranking):
        # Walking j outwards keeps the strongest label of the path i..j so far.
        strongest: int | None = None
        for j in range(i + 1, len(ranking)):
            if strengths is not None:
                rank = STRENGTHS.index(strengths[j - 1])
                strongest = rank if strongest is None else min(strongest, rank)
            label = None if strongest is None else STRENGTHS[strongest]
            comparisons.append((winner, ranking[j], label))
    return comparisons


def adjacent_flags(ranking: Sequence[int], comparisons: Sequence[Comparison]) -> list[bool]:
    """Per comparison, True if its two responses are NEIGHBOURS in `ranking`.

    Those K - 1 pairs are the comparisons a labeller graded, each strength label once;
    the others inherit the strongest label of their path (`ranking_to_comparisons`), so
    one "significantly better" step in a K = 9 ranking labels 20 of its 36 pairs
    (positions i <= 3 < j: 4 * 5). Accuracy per strength over adjacent pairs counts each
    label once, the figure comparable with Llama 2's Table 8 (pairwise data).
    """
    position = {r: i for i, r in enumerate(ranking)}
    return [abs(position[w] - position[lo]) == 1 for w, lo, _ in comparisons]


def comparisons_with_margins(
    comparisons: Sequence[Comparison], margin_table: Mapping[str, float]
) -> list[tuple[int, int, float, str | None]]:
    """(winner, loser, margin, strength bucket) per comparison.

    margin_table: strength -> margin, e.g. from ``resolve_margins``. A comparison
    without a strength gets margin 0.0 and bucket None.
    """
    out: list[tuple[int, int, float, str | None]] = []
    for winner, loser, strength in comparisons:
        if strength is None:
            out.append((winner, loser, 0.0, None))
            continue
        _check_strength(strength)
        if strength not in margin_table:
            raise ValueError(f"margin table has no entry for strength {strength!r}")
        out.append((winner, loser, float(margin_table[strength]), strength))
    return out


def best_of_k(scores: Sequence[float]) -> int:
    """Index of the highest score; ties go to the lowest index (deterministic).

    Rejection sampling keeps this sample. Empty or NaN scores raise ValueError.
    """
    if len(scores) == 0:
        raise ValueError("best_of_k needs at least one score")
    best = 0
    for i, score in enumerate(scores):
        if math.isnan(score):
            raise ValueError(f"score {i} is NaN")
        if score > scores[best]:
            best = i
    return best


def best_of_k_batch(scores: Sequence[Sequence[float]]) -> list[int]:
    """``best_of_k`` for each prompt's list of scores."""
    return [best_of_k(row) for row in scores]


def max_and_median_at_k(scores: Sequence[float]) -> list[tuple[int, float, float]]:
    """(k, max, median) of the first k scores, for k = 1 .. K (Llama 2, Figure 7).

    The gap between max and median as k grows is what rejection sampling exploits.
    The median of an even count is the mean of the two middle values.
    """
    ordered: list[float] = []
    out: list[tuple[int, float, float]] = []
    for k, score in enumerate(scores, start=1):
        if math.isnan(score):
            raise ValueError(f"score {k - 1} is NaN")
        insort(ordered, float(score))
        mid = k // 2
        median = ordered[mid] if k % 2 else (ordered[mid - 1] + ordered[mid]) / 2
        out.append((k, ordered[-1], median))
    return out
