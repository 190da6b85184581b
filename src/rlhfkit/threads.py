"""Torch's intra-op thread count, kept right on a machine that other jobs share (issue 16).

Measured on this project's 2-core machine (bench/threads.py, bench/RESULTS.md "Threads on a
busy machine"): with torch's default of one thread per core, one other CPU-bound process
slowed every stage 2.7-6.4x, because an OpenMP team waits at every barrier for the thread
that lost its core; with one thread less than the cores, the same competitor cost
1.0-1.2x. `OMP_WAIT_POLICY=PASSIVE` also bounded the slowdown (1.0-1.6x) but made a quiet
machine slower (generation 0.13 -> 0.30 s a call), so it is not used.

So, unless the user fixed the count (`OMP_NUM_THREADS` or `RLHFKIT_THREADS` in the
environment), rlhfkit uses as many threads as the cores that other processes leave free:
`Governor.check` measures, from /proc/stat, the CPU time every process but this one used
since the last check, and sets `torch.set_num_threads(max(1, cores - busy))`. The command
line starts it (`start`) and every progress bar calls `check` on each update (at most
every `INTERVAL` seconds it does any work; the first check comes `FIRST` seconds after the
start). Without /proc/stat (not Linux) nothing changes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rlhfkit.errors import UserError

FIRST = 2.0
"""Seconds from `start` to the first check (model loading runs in between)."""
INTERVAL = 10.0
"""Seconds between later checks."""


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def threads_for(cores: int, others_busy: float) -> int:
    """Threads to use when other processes keep `others_busy` cores busy on average: the
    cores they leave free (a competitor using 0.6 of a core counts as one), at least 1."""
    return max(1, cores - round(max(0.0, others_busy)))


def read_busy_seconds(stat: str = "/proc/stat") -> float | None:
    """CPU seconds all processes spent busy since boot (user, nice, system, irq, softirq,
    steal), from the first line of /proc/stat; None where there is no such file."""
    try:
        with open(stat, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Governor:
    """The running command's thread count (module docstring). `reader` gives the machine's
    busy CPU seconds (`read_busy_seconds`), `own` this process's (`time.process_time`),
    `clock` the wall time, `set_threads` applies a count: all replaceable in tests."""

    cores: int = field(default_factory=usable_cores)
    reader: Callable[[], float | None] = read_busy_seconds
    own: Callable[[], float] = time.process_time
    clock: Callable[[], float] = time.monotonic
    set_threads: Callable[[int], None] | None = None
    last: tuple[float, float, float] | None = None  # (wall, machine busy, own) at the last check
    next_check: float = 0.0
    threads: int | None = None  # the count set by the last check (None: not set yet)
    said: bool = False

    def begin(self) -> bool:
        """Take the first readings; False where /proc/stat cannot be read."""
        busy = self.reader()
        if busy is None:
            return False
        now = self.clock()
        self.last = (now, busy, self.own())
        self.next_check = now + FIRST
        return True

    def check(self) -> int | None:
        """If `INTERVAL` has passed: the other processes' mean busy cores since the last
        check, and the thread count set for them. Returns the count set, else None."""
        now = self.clock()
        if self.last is None or now < self.next_check:
            return None
        busy, own = self.reader(), self.own()
        wall0, busy0, own0 = self.last
        self.last, self.next_check = (now, busy, own), now + INTERVAL
        if busy is None or now <= wall0:
            return None
        others = max(0.0, (busy - busy0) - (own - own0)) / (now - wall0)
        want = threads_for(self.cores, others)
        if want != self.threads:
            self._apply(want, others)
        return want

    def _apply(self, n: int, others: float) -> None:
        setter = self.set_threads
        if setter is None:
            import torch

            setter = torch.set_num_threads
        setter(n)
        if n < self.cores and not self.said:
            self.said = True
            print(
                f"note: other processes keep ~{others:.1f} of {self.cores} cores busy: torch "
                f"uses {n} thread(s) while they do (RLHFKIT_THREADS=N fixes the count)",
                file=sys.stderr,
                flush=True,
            )
        self.threads = n


_GOVERNOR: Governor | None = None


def start() -> None:
    """Called by the command line before a command runs: fix the count from
    `RLHFKIT_THREADS` (as OMP_NUM_THREADS, set before torch loads), leave a count the user
    set through OMP_NUM_THREADS alone, or else govern it (module docstring)."""
    global _GOVERNOR
    _GOVERNOR = None
    fixed = os.environ.get("RLHFKIT_THREADS", "").strip()
    if fixed:
        if not fixed.isdigit() or int(fixed) < 1:
            raise UserError(f"RLHFKIT_THREADS must be a whole number >= 1, got {fixed!r}")
        os.environ["OMP_NUM_THREADS"] = fixed
        if "torch" in sys.modules:  # too late for the variable to count
            sys.modules["torch"].set_num_threads(int(fixed))
        return
    if os.environ.get("OMP_NUM_THREADS"):
        return
    governor = Governor()
    if governor.begin():
        _GOVERNOR = governor


def check() -> None:
    """Re-check the thread count if a governor runs and its interval has passed (cheap:
    one clock read otherwise). Progress bars call it on every update."""
    if _GOVERNOR is not None:
        _GOVERNOR.check()
