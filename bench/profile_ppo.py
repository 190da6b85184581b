"""One PPO step of each library under torch.profiler, operator by operator.

    .venv/bin/python bench/profile_ppo.py setup /tmp/prof          # models + spec (once)
    .venv/bin/python bench/profile_ppo.py ours /tmp/prof > ours.txt
    bench/.venv-trl112/bin/python bench/profile_ppo.py trl /tmp/prof > trl.txt

The realistic workload of bench/ppo_vs_trl.py (batch 32, prompts of 16-256 tokens,
responses stopping at EOS, 4 epochs x 4 minibatches) on the `small` preset, one torch
thread, one step per side with no warm-up (the profile includes loading the models; the
step's own split is printed as JSON first). Prints the 30 operators with the most self
time. The profiler's self time is wall time inside each operator: compare the two sides
measured under the same load.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo_vs_trl as bench  # noqa: E402

os.environ.update(bench.ENV)


def main() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    side, workdir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if side == "setup":
        workdir.mkdir(parents=True, exist_ok=True)
        bench.setup(workdir, ["small"], 32, 128, "realistic")
        return
    spec = json.loads((workdir / "spec.json").read_text())
    run = bench.run_ours if side == "ours" else bench.run_trl
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            records = run(spec, "small", 0, 1, Path(tmp))
    print(json.dumps(records))
    ops = prof.key_averages()
    print(
        f"profiled self time, all operators: {sum(e.self_cpu_time_total for e in ops) / 1e6:.1f} s"
    )
    for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:30]:
        print(f"{e.key[:60]:60s} {e.self_cpu_time_total / 1e6:8.2f} s {e.count:8d} calls")


if __name__ == "__main__":
    main()
