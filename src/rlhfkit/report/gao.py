"""Over-optimisation math (pure: numpy, no torch): best-of-K curves from one set of samples
(Llama 2, Figure 7) and Gao et al. (2022)'s functional forms fitted by least squares.

- `order_stat_weights(n, k, j)`: the chance that the sample of rank i (1 = lowest of n)
  is the j-th lowest of a uniformly random k-subset; so the expected j-th lowest of a
  random k-subset is `weights @ sorted(values)`, exact, with no resampling.
- `best_of_k_curve(proxy, gold, ks)`: per K, mean over prompts of the max and the median
  proxy reward among K of a prompt's samples, and the gold reward of those same picks
  (the samples ranked by proxy), each averaged over every K-subset of the N samples.
- `kl_bon(n)` = log n - (n - 1) / n: the KL of best-of-n sampling to the sampler.
- `fit_bon(d, r)`: R(d) = d (a - b d);  `fit_rl(d, r)`: R(d) = d (a - b log d), with
  d = sqrt(KL). Both are linear in (a, b): one `numpy.linalg.lstsq` each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def order_stat_weights(n: int, k: int, j: int) -> np.ndarray:
    """(n,) weights: w[i - 1] = C(i - 1, j - 1) C(n - i, k - j) / C(n, k), the chance that the
    i-th lowest of n values is the j-th lowest of a uniformly random k-subset. Sums to 1."""
    if not 1 <= j <= k <= n:
        raise ValueError(f"need 1 <= j <= k <= n, got j={j}, k={k}, n={n}")
    total = math.comb(n, k)
    return np.array([math.comb(i - 1, j - 1) * math.comb(n - i, k - j) / total
                     for i in range(1, n + 1)])  # fmt: skip


def median_weights(n: int, k: int) -> np.ndarray:
    """(n,) weights of the median of a random k-subset (the mean of the two middle values
    when k is even)."""
    if k % 2:
        return order_stat_weights(n, k, (k + 1) // 2)
    return 0.5 * (order_stat_weights(n, k, k // 2) + order_stat_weights(n, k, k // 2 + 1))


def best_of_k_curve(
    proxy: Sequence[Sequence[float]], gold: Sequence[Sequence[float]], ks: Sequence[int]
) -> list[dict[str, float]]:
    """[{k, proxy_max, proxy_median, gold_max, gold_median}] for each k in `ks`.

    proxy[p][s], gold[p][s]: the proxy (RM) and gold reward of sample s of prompt p, N
    samples per prompt. Per prompt the samples are ranked by proxy (a stable sort); the
    max pick is the top-ranked of the k-subset, the median pick its middle one(s); gold_*
    is the gold reward of those same picks. Expected values over every k-subset, then the
    mean over prompts."""
    P, G = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)  # (prompts, N)
    if P.ndim != 2 or P.shape != G.shape or P.shape[1] == 0:
        raise ValueError(f"proxy {P.shape} and gold {G.shape}: need the same (prompts, N)")
    n = P.shape[1]
    order = np.argsort(P, axis=1, kind="stable")
    P_sorted = np.take_along_axis(P, order, axis=1)
    G_sorted = np.take_along_axis(G, order, axis=1)  # gold, in the proxy's order
    rows = []
    for k in ks:
        w_max, w_med = order_stat_weights(n, k, k), median_weights(n, k)
        rows.append({
            "k": int(k),
            "proxy_max": float((P_sorted @ w_max).mean()),
            "proxy_median": float((P_sorted @ w_med).mean()),
            "gold_max": float((G_sorted @ w_max).mean()),
            "gold_median": float((G_sorted @ w_med).mean()),
        })  # fmt: skip
    return rows


def kl_bon(n: int | float) -> float:
    """KL(best-of-n || sampler) = log n - (n - 1) / n (nats; Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n


@dataclass(frozen=True)
class Fit:
    """a, b of a fitted form, R^2 = 1 - SS_res / SS_tot (about the mean) and the points."""

    a: float
    b: float
    r2: float
    n: int


def r_squared(y: Sequence[float], fitted: Sequence[float]) -> float:
    """1 - sum (y - fitted)^2 / sum (y - mean y)^2; nan when every y is equal."""
    y, f = np.asarray(y, dtype=float), np.asarray(fitted, dtype=float)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - f) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def _lstsq(columns: list[np.ndarray], y: np.ndarray) -> tuple[float, float]:
    (a, b), *_ = np.linalg.lstsq(np.stack(columns, axis=1), y, rcond=None)
    return float(a), float(b)


def _points(d: Sequence[float], r: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    d_arr, r_arr = np.asarray(d, dtype=float), np.asarray(r, dtype=float)
    if d_arr.shape != r_arr.shape or d_arr.ndim != 1 or (d_arr < 0).any():
        raise ValueError("d and r: two equal-length lists, d >= 0")
    return d_arr, r_arr


def bon_form(d: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """R_bon(d) = d (a - b d)."""
    d = np.asarray(d, dtype=float)
    return d * (a - b * d)


def _d_log_d(d: np.ndarray) -> np.ndarray:
    """d log d, with its limit 0 at d = 0."""
    return np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)


def rl_form(d: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """R_RL(d) = d (a - b log d), 0 at d = 0 (its limit)."""
    d = np.asarray(d, dtype=float)
    return a * d - b * _d_log_d(d)


def fit_bon(d: Sequence[float], r: Sequence[float]) -> Fit:
    """Least-squares a, b of R(d) = a d - b d^2 (no intercept: R(0) = 0)."""
    d_arr, r_arr = _points(d, r)
    a, b = _lstsq([d_arr, -(d_arr**2)], r_arr)
    return Fit(a, b, r_squared(r_arr, bon_form(d_arr, a, b)), len(d_arr))


def fit_rl(d: Sequence[float], r: Sequence[float]) -> Fit:
    """Least-squares a, b of R(d) = a d - b d log d (d log d = 0 at d = 0)."""
    d_arr, r_arr = _points(d, r)
    a, b = _lstsq([d_arr, -_d_log_d(d_arr)], r_arr)
    return Fit(a, b, r_squared(r_arr, rl_form(d_arr, a, b)), len(d_arr))


def peak_d(form: str, a: float, b: float) -> float | None:
    """Where the fitted curve peaks (dR/dd = 0), or None when it only rises: d = a / (2b)
    for best-of-n, d = exp(a / b - 1) for RL; both need b > 0 (and a > 0 for best-of-n)."""
    if b <= 0:
        return None
    if form == "bon":
        return a / (2 * b) if a > 0 else None
    return math.exp(a / b - 1) if a / b - 1 < 700 else None
