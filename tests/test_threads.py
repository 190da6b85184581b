"""Torch's thread count on a shared machine (`rlhfkit.threads`): the count for a given load,
/proc/stat read by hand, the governor's arithmetic and timing on made-up readings, the
environment overrides, progress bars calling it, and one real competing process seen."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from rlhfkit import threads
from rlhfkit.errors import UserError
from rlhfkit.logging import progress


def test_threads_for_leaves_the_cores_others_use():
    assert threads.threads_for(2, 0.0) == 2
    assert threads.threads_for(2, 0.4) == 2  # a little background work is not a core
    assert threads.threads_for(2, 0.6) == 1
    assert threads.threads_for(2, 1.0) == 1
    assert threads.threads_for(2, 3.7) == 1  # never below one
    assert threads.threads_for(16, 5.2) == 11
    assert threads.threads_for(1, 0.9) == 1
    assert threads.threads_for(4, -0.1) == 4


def test_read_busy_seconds_sums_the_busy_fields(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 9000 50 4 6 10 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    assert threads.read_busy_seconds(str(stat)) == pytest.approx((100 + 20 + 30 + 4 + 6 + 10) / 100)
    assert threads.read_busy_seconds(str(tmp_path / "missing")) is None
    stat.write_text("intr 1 2 3\n")
    assert threads.read_busy_seconds(str(stat)) is None


class Fake:
    """Readings a test moves by hand: wall clock, the machine's busy CPU s, ours."""

    def __init__(self):
        self.wall, self.busy, self.mine, self.set = 0.0, 0.0, 0.0, []

    def run(self, seconds: float, others: float, ours: float) -> None:
        """`seconds` pass with other processes on `others` cores and us on `ours`."""
        self.wall += seconds
        self.busy += (others + ours) * seconds
        self.mine += ours * seconds

    def governor(self, cores: int = 2) -> threads.Governor:
        return threads.Governor(
            cores=cores, reader=lambda: self.busy, own=lambda: self.mine,
            clock=lambda: self.wall, set_threads=self.set.append,
        )  # fmt: skip


def test_governor_follows_the_other_processes_load(capsys):
    f = Fake()
    g = f.governor()
    assert g.begin()
    f.run(1.0, others=1.0, ours=2.0)
    assert g.check() is None and f.set == []  # before FIRST: nothing measured
    f.run(threads.FIRST, others=1.0, ours=2.0)  # a competitor on one core, we use two
    assert g.check() == 1 and f.set == [1]
    assert "~1.0 of 2 cores busy" in capsys.readouterr().err
    f.run(threads.INTERVAL / 2, others=0.0, ours=1.0)
    assert g.check() is None  # within the interval: no work, nothing set
    f.run(threads.INTERVAL / 2, others=0.0, ours=1.0)  # the competitor left
    assert g.check() == 2 and f.set == [1, 2]
    f.run(threads.INTERVAL, others=0.1, ours=2.0)  # background noise: unchanged, not re-set
    assert g.check() == 2 and f.set == [1, 2]
    f.run(threads.INTERVAL, others=1.3, ours=1.0)
    assert g.check() == 1 and f.set == [1, 2, 1]
    assert capsys.readouterr().err == ""  # the note is said once


def test_governor_without_proc_stat_does_nothing():
    g = threads.Governor(cores=2, reader=lambda: None, set_threads=lambda n: None)
    assert not g.begin() and g.check() is None


def test_start_honours_the_environment(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("RLHFKIT_THREADS", "1")
    set_to = []
    monkeypatch.setattr("torch.set_num_threads", set_to.append)
    threads.start()
    assert threads._GOVERNOR is None and set_to == [1]
    assert threads.os.environ["OMP_NUM_THREADS"] == "1"
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("RLHFKIT_THREADS", bad)
        with pytest.raises(UserError, match="RLHFKIT_THREADS"):
            threads.start()
    monkeypatch.delenv("RLHFKIT_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    threads.start()
    assert threads._GOVERNOR is None  # the user's count stands
    monkeypatch.delenv("OMP_NUM_THREADS")
    try:
        threads.start()
        assert (threads._GOVERNOR is not None) == (threads.read_busy_seconds() is not None)
    finally:
        threads._GOVERNOR = None


def test_progress_bars_check_on_every_update(monkeypatch):
    calls = []
    monkeypatch.setattr(threads, "check", lambda: calls.append(1))
    bar = progress(3, desc="x", enabled=False)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert len(calls) == 3


@pytest.mark.skipif(
    threads.read_busy_seconds() is None or threads.usable_cores() < 2,
    reason="needs /proc/stat and 2 cores",
)
def test_a_real_competing_process_is_seen():
    """A `while True: pass` process for ~1.5 s: the governor measures about one busy core
    besides ours (>= 0.5 of one, whatever else the machine runs) and leaves it a core."""
    f_set = []
    g = threads.Governor(set_threads=f_set.append)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter is up
        assert g.begin()
        g.next_check = 0.0  # check as soon as asked
        time.sleep(1.5)
        before = g.last
        n = g.check()
    finally:
        spin.kill()
        spin.wait()
    wall0, busy0, own0 = before
    wall1, busy1, own1 = g.last
    others = ((busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    assert others >= 0.5, others
    assert n == threads.threads_for(g.cores, others) <= g.cores - 1 and f_set == [n]
