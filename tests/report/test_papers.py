"""report/papers.py: the papers' figures from a run's files (Gao et al.'s fitted points
here; the rendered sections in test_render.py)."""

from __future__ import annotations

import pytest
from tests.report.test_render import PPO_GOLD_AB, PPO_PROXY_AB, _bon_rows, make_run

from rlhfkit.report.gao import best_of_k_curve, kl_bon
from rlhfkit.report.papers import gao_fits, gao_points
from rlhfkit.report.render import load_run


def test_gao_points_from_the_run(tmp_path):
    """The fitted points: best-of-n at KL = log n - (n-1)/n, the best-of-n pick's reward
    relative to n = 1; PPO's evaluations relative to the first one; a, b as made."""
    run = load_run(make_run(tmp_path / "run", stages=("rm", "ppo")))
    rows = _bon_rows()
    points = gao_points(run, rows)
    curve = best_of_k_curve([r["proxy"] for r in rows], [r["gold"] for r in rows], range(1, 33))
    assert points["bon"]["d"] == pytest.approx([kl_bon(n) ** 0.5 for n in range(1, 33)])
    assert points["bon"]["gold"] == pytest.approx([c["gold_max"] - curve[0]["gold_max"]
                                                   for c in curve])  # fmt: skip
    assert points["rl"]["d"] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    fits = gao_fits(points)
    for what, (a, b) in (("proxy", PPO_PROXY_AB), ("gold", PPO_GOLD_AB)):
        fit = fits[("rl", what)]
        assert (fit.a, fit.b) == pytest.approx((a, b), abs=1e-6) and fit.r2 == pytest.approx(1)
    assert gao_fits(gao_points(load_run(tmp_path / "nothing"), [])) == {}
