"""One RL step's CPU time per advantage estimator: gae (PPO with a value model) against the
critic-free ones (rloo, grpo, ...) at the same number of responses per step.

    .venv/bin/python bench/estimators.py                          # small, 2 rounds, 1 step each
    .venv/bin/python bench/estimators.py --rounds 3 --steps 2 --sides gae,rloo,grpo,reinforce++

The workload is `ppo_vs_trl.py --workload realistic`'s (issue 16), built by its `setup`:
the `small` preset (5.2M parameters) with a reward model from it (and, for gae, a value
model copied from the reward model, `--value-init rm`), prompts of 16-256 tokens, responses
that stop at EOS (the policy's EOS row calibrated: ~107 of at most 128 tokens), 32
responses per step, `--ppo-epochs 4` with 4 minibatches, KL coefficient 0.05, fp32. gae
samples one response to each of 32 prompts; the critic-free sides sample 4 responses to
each of 8 prompts. gae's 32 prompts are those 8 prompts, each 4 times, so every side reads
the same prompt tokens; its minibatches hold 8 responses, as the others' (2 groups of 4).

Each side runs in its own process (the project venv), the sides in a rotating order per
round, one torch thread each (OMP_NUM_THREADS=1), `--warmup` untimed steps then `--steps`
timed ones; a step is `ppo_step` (rollout + advantages + update), timed by process CPU time
(less sensitive to the other jobs on shared cores than the wall clock, also printed). The
ratio is a side's median CPU-s per step over gae's in the same round; the summary is the
median over rounds. Each side's mean response length is printed beside its time (the
sides sample different responses, so their token counts differ a little).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ppo_vs_trl import ENV, _cpu_model, _uptime, setup  # noqa: E402  (the same workload)

SIDES = {  # name -> (estimator, prompts per step, responses per prompt)
    "gae": ("gae", 32, 1),
    "rloo": ("rloo", 8, 4),
    "grpo": ("grpo", 8, 4),
    "dr-grpo": ("dr-grpo", 8, 4),
    "reinforce++": ("reinforce++", 32, 1),
    "reinforce++-baseline": ("reinforce++-baseline", 8, 4),
}
PHASES = ("generate", "score", "reference", "value", "advantages", "update")


def run_side(spec: dict, side: str, warmup: int, steps: int, out_dir: Path) -> list[dict]:
    """`warmup + steps` PPO steps of one estimator; the timed steps' records."""
    import torch

    from rlhfkit.config import PPOConfig
    from rlhfkit.data.records import PromptRecord
    from rlhfkit.loops.ppo.loop import build_run, ppo_step
    from rlhfkit.loops.ppo.roles import build_roles

    estimator, prompts, n = SIDES[side]
    m = spec["models"]["small"]
    texts = spec["prompts"] * (prompts // len(spec["prompts"]))  # gae: each prompt 4 times
    cfg = PPOConfig(
        policy=m["policy"], rm=(f"rm={m['rm']}",), out=str(out_dir), device="cpu", seed=0,
        steps=warmup + steps, batch_size=prompts, samples_per_prompt=n, estimator=estimator,
        num_mini_batches=spec["num_mini_batches"], ppo_epochs=spec["ppo_epochs"],
        max_new_tokens=spec["max_new_tokens"], max_prompt_len=spec["max_prompt_len"],
        temperature=1.0, kl_coef=0.05, lr=1e-5, sample_every=0,
    )  # fmt: skip
    tokenizer, policy, reference, value_model, scorer = build_roles(cfg, torch.device("cpu"))
    run = build_run(cfg, policy, reference, value_model, scorer, tokenizer,
                    [PromptRecord(p) for p in texts])  # fmt: skip
    records = []
    for step in range(warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        rollout, metrics = ppo_step(run, step, prompts, cfg.seed)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        assert len(rollout) == 32, f"{side}: {len(rollout)} responses, expected 32"
        rec = {"step": step, "wall": wall, "cpu": cpu,
               "response_len": float(rollout.response_mask.sum(1).float().mean())}  # fmt: skip
        rec.update({ph: metrics.get(f"time/{ph}", 0.0) for ph in PHASES})
        records.append(rec)
    return records[warmup:]


def side_main(args) -> None:
    import tempfile

    import torch

    torch.set_num_threads(1)
    spec = json.loads((Path(args.workdir) / "spec.json").read_text())
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        records = run_side(spec, args.side, args.warmup, args.steps, Path(tmp))
    Path(args.result).write_text(json.dumps(records))


def _launch(side: str, args, workdir: Path, round_: int) -> list[dict]:
    result, log = workdir / f"{side}-{round_}.json", workdir / f"{side}-{round_}.log"
    cmd = [sys.executable, __file__, "--side", side, "--workdir", str(workdir),
           "--result", str(result), "--warmup", str(args.warmup), "--steps", str(args.steps)]  # fmt: skip
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **ENV})
    if proc.returncode != 0:
        raise SystemExit(
            f"{side} failed (rc {proc.returncode}), log {log}:\n{log.read_text()[-3000:]}"
        )
    return json.loads(result.read_text())


def _median(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records)


def driver(args) -> None:
    sides = args.sides.split(",")
    if sides[0] != "gae" or any(s not in SIDES for s in sides):
        raise SystemExit(f"--sides: gae first, then any of {', '.join(SIDES)}")
    workdir = Path(args.workdir or HERE / "out" / "estimators")
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"machine: nproc {os.cpu_count()}, {_cpu_model()}; {_uptime()}", flush=True)
    spec = setup(workdir, ["small"], 8, 128, "realistic")  # 8 prompts; gae reads each 4 times
    m = spec["models"]["small"]
    print(
        f"setup: {time.perf_counter() - t_start:.0f} s; small: {m['params']:,} params", flush=True
    )
    rounds = []
    for r in range(args.rounds):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        res = {side: _launch(side, args, workdir, r) for side in order}
        rounds.append(res)
        gae = _median(res["gae"], "cpu")
        line = ", ".join(f"{s} {_median(res[s], 'cpu') / gae:.2f}x" for s in sides[1:])
        print(f"round {r + 1} ({' then '.join(order)}; {_uptime()}): CPU vs gae: {line}")
    print("\nCPU-s per step (wall s), mean response length; ratio = CPU / gae's, same round")
    print(f"{'side':>22} " + " ".join(f"{'round ' + str(i + 1):>22}" for i in range(len(rounds)))
          + f" {'median ratio':>13}")  # fmt: skip
    summary = {}
    for side in sides:
        cells, ratios = [], []
        for res in rounds:
            cpu, wall = _median(res[side], "cpu"), _median(res[side], "wall")
            ratios.append(cpu / _median(res["gae"], "cpu"))
            cells.append(
                f"{cpu:6.1f} ({wall:5.1f}) {statistics.fmean(x['response_len'] for x in res[side]):5.1f}"
            )
        med = statistics.median(ratios)
        summary[side] = {"ratios": ratios, "median": med}
        print(f"{side:>22} " + " ".join(f"{c:>22}" for c in cells) + f" {med:12.2f}x")
    print("\ntime split, s/step (median over rounds):")
    print(f"{'side':>22} " + " ".join(f"{p:>10}" for p in PHASES))
    for side in sides:
        split = [statistics.median(_median(res[side], p) for res in rounds) for p in PHASES]
        print(f"{side:>22} " + " ".join(f"{x:10.2f}" for x in split))
    print(f"\nload at end: {_uptime()}; total {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"spec": spec, "rounds": rounds, "summary": summary}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sides", default="gae,rloo,grpo", help=f"gae first; of {', '.join(SIDES)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per side and round")
    ap.add_argument("--workdir", default=None, help="default: bench/out/estimators")
    ap.add_argument("--json", default=None, help="write every step's record here")
    ap.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    side_main(args) if args.side else driver(args)


if __name__ == "__main__":
    main()
