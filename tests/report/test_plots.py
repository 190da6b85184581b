"""report/plots.py: the plots are PNG files of a sensible size, written atomically."""

from __future__ import annotations

import struct

from tests.loops.rejection.test_keep import _rec

from rlhfkit.loops.rejection.keep import max_median_curve
from rlhfkit.report.plots import plot_max_median


def test_plot_is_a_png_with_one_line_pair_per_round(tmp_path):
    rounds = [
        {"round": r, "temperature": t, "max_median_at_k": max_median_curve([_rec("a", s)])}
        for r, t, s in [(1, 0.7, [1.0, 2.0, 0.5]), (2, 1.0, [2.0, 2.5, 3.0])]
    ]
    path = plot_max_median(rounds, tmp_path / "rs_max_median.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200
    assert not list(tmp_path.glob(".*"))  # no temp file left
