"""`gao`: best-of-K curves from one set of samples against brute-force enumeration of every
K-subset, and the Gao et al. (2022) fits recovering known a, b (R^2 computed by hand)."""

from __future__ import annotations

import itertools
import math
import random
from statistics import fmean, median

import numpy as np
import pytest

from rlhfkit.report.gao import (
    best_of_k_curve,
    bon_form,
    fit_bon,
    fit_rl,
    kl_bon,
    order_stat_weights,
    peak_d,
    r_squared,
    rl_form,
)


def _brute_force(proxy, gold, k):
    """Mean over prompts of the mean over every k-subset: max/median proxy, gold of those."""
    rows = []
    for p, g in zip(proxy, gold, strict=True):
        stats = []
        for subset in itertools.combinations(range(len(p)), k):
            ranked = sorted(subset, key=lambda i: p[i])  # by proxy (distinct values here)
            mid = [ranked[(k - 1) // 2], ranked[k // 2]]
            stats.append((p[ranked[-1]], median(p[i] for i in subset),
                          g[ranked[-1]], fmean(g[i] for i in mid)))  # fmt: skip
        rows.append([fmean(s[j] for s in stats) for j in range(4)])
    return [fmean(r[j] for r in rows) for j in range(4)]


def test_best_of_k_curve_matches_every_subset():
    rng = random.Random(0)
    proxy = [[rng.gauss(0, 1) for _ in range(7)] for _ in range(3)]
    gold = [[rng.random() for _ in range(7)] for _ in range(3)]
    curve = best_of_k_curve(proxy, gold, range(1, 8))
    for row in curve:
        want = _brute_force(proxy, gold, row["k"])
        got = [row["proxy_max"], row["proxy_median"], row["gold_max"], row["gold_median"]]
        assert got == pytest.approx(want, abs=1e-12), row["k"]
    assert curve[0]["proxy_max"] == pytest.approx(fmean(x for p in proxy for x in p))
    assert curve[-1]["proxy_max"] == pytest.approx(fmean(max(p) for p in proxy))
    assert curve[-1]["gold_max"] == pytest.approx(fmean(g[p.index(max(p))]
                                                        for p, g in zip(proxy, gold, strict=True)))  # fmt: skip


def test_order_stat_weights_sum_to_one_and_reject_bad_k():
    for n, k, j in ((32, 32, 32), (32, 1, 1), (10, 4, 2)):
        assert order_stat_weights(n, k, j).sum() == pytest.approx(1.0)
    assert order_stat_weights(5, 5, 5).tolist() == [0, 0, 0, 0, 1]
    with pytest.raises(ValueError):
        order_stat_weights(4, 5, 1)


def test_kl_bon():
    assert kl_bon(1) == 0.0
    assert kl_bon(32) == pytest.approx(math.log(32) - 31 / 32)


def _r2_by_hand(y, f):
    mean = sum(y) / len(y)
    return 1 - sum((a - b) ** 2 for a, b in zip(y, f, strict=True)) / sum(
        (a - mean) ** 2 for a in y
    )


@pytest.mark.parametrize("a, b", [(0.8, 0.3), (-0.2, 0.05), (1.5, -0.4)])
def test_fits_recover_known_coefficients(a, b):
    d = [math.sqrt(kl_bon(n)) for n in range(1, 33)]
    fit = fit_bon(d, [x * (a - b * x) for x in d])
    assert (fit.a, fit.b) == pytest.approx((a, b), abs=1e-6)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 32
    d_rl = [0.0, 0.3, 0.7, 1.1, 1.6, 2.2, 3.0]
    fit = fit_rl(d_rl, [0.0 if x == 0 else x * (a - b * math.log(x)) for x in d_rl])
    assert (fit.a, fit.b) == pytest.approx((a, b), abs=1e-6)


def test_fits_with_noise_and_r_squared_by_hand():
    rng = random.Random(1)
    a, b = 0.6, 0.2
    d = [0.1 * i for i in range(1, 41)]
    y_bon = [x * (a - b * x) + rng.gauss(0, 0.01) for x in d]
    y_rl = [x * (a - b * math.log(x)) + rng.gauss(0, 0.01) for x in d]
    for fit, form, y in ((fit_bon(d, y_bon), bon_form, y_bon), (fit_rl(d, y_rl), rl_form, y_rl)):
        assert fit.a == pytest.approx(a, abs=0.02) and fit.b == pytest.approx(b, abs=0.02)
        fitted = [float(form(x, fit.a, fit.b)) for x in d]
        assert fit.r2 == pytest.approx(_r2_by_hand(y, fitted), abs=1e-12)
        assert 0.95 < fit.r2 < 1.0
        # least squares: nudging a or b only makes the residuals larger
        sse = sum((u - v) ** 2 for u, v in zip(y, fitted, strict=True))
        for da, db in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):
            other = [float(form(x, fit.a + da, fit.b + db)) for x in d]
            assert sum((u - v) ** 2 for u, v in zip(y, other, strict=True)) > sse


def test_r_squared_constant_and_peaks():
    assert math.isnan(r_squared([1.0, 1.0], [1.0, 1.0]))
    assert r_squared(np.array([0.0, 1.0, 2.0]), [0.0, 1.0, 2.0]) == 1.0
    assert peak_d("bon", 0.8, 0.2) == pytest.approx(2.0)  # d (0.8 - 0.2 d): top at d = 2
    assert peak_d("rl", 1.0, 0.5) == pytest.approx(math.exp(1.0))
    assert peak_d("bon", 0.8, -0.1) is None and peak_d("rl", 1.0, 0.0) is None
    with pytest.raises(ValueError):
        fit_bon([-1.0, 1.0], [0.0, 1.0])
