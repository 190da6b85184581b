"""PPO memory and step time at scale on CPU: DDP vs FSDP2 (2 processes), full vs LoRA, with
and without gradient checkpointing (issue 12's benchmark).

    .venv/bin/python bench/scale.py                       # base preset (~25M per model)
    .venv/bin/python bench/scale.py --preset small --steps 2 --rounds 1   # quick

One driver builds the four models once (policy and reference: the preset's Llama; reward
and value: its backbone with a seeded one-output head, saved as a reward model folder) and
prompts, then runs `rlhfkit ppo` once per configuration and round (alternating order), one
torch thread per process. Inside each run a hook around `ppo_step` (no change to rlhfkit)
records, per process:

- bytes of model weights, gradients and optimizer states held by this process: every
  parameter of the four roles once (an FSDP2 parameter counts its local shard), the
  optimizers' state tensors (local shards), measured after the first step;
- peak resident memory of the PPO steps above the process's resident memory once the
  libraries are imported, before any model loads (torch's CPU allocator has no peak
  counter: the kernel's high-water mark VmHWM, reset through /proc/self/clear_refs when the
  first step starts, after `malloc_trim(0)` hands the heap that loading freed back to the
  kernel, read after each step; loading and the final export are not counted);
- step time (wall and process CPU time) of steps 2.. (step 1 warms up).

Targets (issue 12): FSDP2 model + optimizer bytes per process <= 0.55x DDP's; LoRA PPO
peak memory <= 0.4x full PPO's; a LoRA step no slower than a full one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CONFIGS = {  # name -> (processes, extra ppo flags)
    "ddp": (2, ["--strategy", "ddp"]),
    "fsdp2": (2, ["--strategy", "fsdp2"]),
    "full": (1, []),
    "lora": (1, ["--lora-r", "16", "--lora-alpha", "32"]),
    "full+gc": (1, ["--gradient-checkpointing"]),
    "lora+gc": (1, ["--lora-r", "16", "--lora-alpha", "32", "--gradient-checkpointing"]),
    "fsdp2+lora": (2, ["--strategy", "fsdp2", "--lora-r", "16", "--lora-alpha", "32"]),
}

HOOK = r"""
import json, os, sys, time
import torch

def _rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

import rlhfkit.loops.ppo.loop as L  # torch, transformers, peft: before the baseline
from rlhfkit import cli

START_RSS = _rss_kib()

_orig, _times, _done = L.ppo_step, [], {}

def _local_bytes(t):
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()

def _model_bytes(run):
    seen, weights, grads = set(), 0, 0
    models = [run.trainables.policy, run.trainables.value_model, run.reference]
    models += [rm.model for rm in getattr(run.scorer, "models", {}).values()]
    for m in models:
        for p in m.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            weights += _local_bytes(p)
            if p.grad is not None:
                grads += _local_bytes(p.grad)
    opt = 0
    for o in (run.trainables.policy_optimizer, run.trainables.value_optimizer):
        for state in o.state.values():
            opt += sum(_local_bytes(v) for v in state.values() if torch.is_tensor(v) and v.dim())
    return weights, grads, opt

def _hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))

_peaks = []

def ppo_step(run, *a, **k):
    if not _times:  # the peak of the PPO steps, not of loading: reset the high-water mark
        import ctypes, gc
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back: RSS = live memory
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    t0, c0 = time.perf_counter(), time.process_time()
    out = _orig(run, *a, **k)
    _times.append((time.perf_counter() - t0, time.process_time() - c0))
    _peaks.append(_hwm_kib())
    if not _done:
        _done.update(zip(("weights", "grads", "optimizer"), _model_bytes(run)))
    return out

L.ppo_step = ppo_step
code = cli.main(sys.argv[1:])
rank = int(os.environ.get("RANK", "0"))
peak = max(_peaks)  # VmHWM over the steps (loading and the final export excluded)
with open(os.environ["SCALE_OUT"] + f".rank{rank}.json", "w") as f:
    json.dump({**_done, "peak_kib": peak - START_RSS, "times": _times}, f)
sys.exit(code)
"""


def build(work: Path, preset: str) -> dict[str, Path]:
    import copy
    import random

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model, train_tokenizer
    from rlhfkit.models.reward import init_reward_model
    from rlhfkit.world.generate import WorldSettings, make_prompts, prompt_record

    rng = random.Random(0)
    made = make_prompts(64, WorldSettings(), rng, set(), unique=True)
    records = [prompt_record(name, q) for name, q, _ in made]
    tok = train_tokenizer([r["prompt"] for r in records] * 4, vocab_size=2048)
    policy = build_model(preset, tok, seed=0)
    save_hf(policy, tok, work / "policy")
    rm, rm_tok = init_reward_model(policy, copy.deepcopy(tok), head_init="normal", seed=1)
    save_hf(rm, rm_tok, work / "rm")
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"policy": work / "policy", "rm": work / "rm", "prompts": prompts}


def run_one(name: str, files: dict[str, Path], work: Path, args, rnd: int) -> list[dict]:
    procs, extra = CONFIGS[name]
    out = work / f"run-{name}-{rnd}"
    hook = work / "hook.py"
    hook.write_text(HOOK)
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        if procs == 2
        else [sys.executable]
    )
    argv = [
        *launcher, str(hook), "ppo", "--policy", str(files["policy"]),
        "--rm", f"reward={files['rm']}", "--prompts", str(files["prompts"]),
        "--out", str(out), "--device", "cpu", "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
        "--ppo-epochs", "1", "--num-mini-batches", "1", "--sample-every", "0",
        "--save-every", "1000", "--report-to", "none", *extra,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", SCALE_OUT=str(out), PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run(argv, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{name} failed:\n{r.stderr[-3000:]}")
    return [json.loads(Path(f"{out}.rank{i}.json").read_text()) for i in range(procs)]


def planned(name: str, files: dict[str, Path], args) -> float:
    """`rlhfkit plan ppo`'s weights + optimizer bytes per process for this configuration."""
    from rlhfkit import cli
    from rlhfkit.plan import make_plan

    procs, extra = CONFIGS[name]
    argv = ["--policy", str(files["policy"]), "--rm", f"reward={files['rm']}",
            "--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens),
            "--nproc", str(procs), *extra]  # fmt: skip
    plan = make_plan(cli.parse("plan ppo", argv))
    return sum(r["weights"] + r["optimizer"] for r in plan["roles"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--steps", type=int, default=3, help="PPO steps per run (first untimed)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = build(work, args.preset)
        results: dict[str, list[list[dict]]] = {n: [] for n in args.configs}
        plans = {n: planned(n, files, args) for n in args.configs}
        for rnd in range(args.rounds):
            order = args.configs if rnd % 2 == 0 else list(reversed(args.configs))
            for name in order:
                results[name].append(run_one(name, files, work, args, rnd))
                print(f"round {rnd + 1}: {name} done", file=sys.stderr, flush=True)
    mib = 1 / 2**20
    print(f"\npreset {args.preset}, batch {args.batch_size} x {args.max_new_tokens} new tokens, "
          f"{args.steps} steps (first untimed), {args.rounds} rounds, 1 thread/process\n")  # fmt: skip
    print(
        "| config | procs | weights MiB/proc | optimizer MiB/proc | weights+opt MiB/proc "
        "| `plan` weights+opt | peak RSS above start MiB/proc | step s (wall) | step s (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, runs in results.items():
        ranks = runs[0]
        w = statistics.mean(r["weights"] for r in ranks) * mib
        o = statistics.mean(r["optimizer"] for r in ranks) * mib
        peak = statistics.median(max(r["peak_kib"] for r in rr) for rr in runs) / 1024
        steps = [t for rr in runs for t in rr[0]["times"][1:]]
        wall = statistics.median(t[0] for t in steps)
        cpu = statistics.median(t[1] for t in steps)
        summary[name] = dict(wo=w + o, peak=peak, wall=wall, cpu=cpu)
        print(f"| {name} | {CONFIGS[name][0]} | {w:.1f} | {o:.1f} | {w + o:.1f} "
              f"| {plans[name] * mib:.1f} | {peak:.0f} | {wall:.2f} | {cpu:.2f} |")  # fmt: skip
    s = summary
    print()
    if "ddp" in s and "fsdp2" in s:
        print(f"FSDP2 / DDP weights+optimizer per process: {s['fsdp2']['wo'] / s['ddp']['wo']:.2f}x"
              " (target <= 0.55x)")  # fmt: skip
    if "full" in s and "lora" in s:
        print(
            f"LoRA / full peak memory: {s['lora']['peak'] / s['full']['peak']:.2f}x "
            f"(target <= 0.4x); step CPU time: {s['lora']['cpu'] / s['full']['cpu']:.2f}x, "
            f"wall: {s['lora']['wall'] / s['full']['wall']:.2f}x (target <= 1x)"
        )
    if "full" in s and "full+gc" in s:
        print(f"gradient checkpointing, full: peak {s['full+gc']['peak'] / s['full']['peak']:.2f}x,"
              f" step CPU {s['full+gc']['cpu'] / s['full']['cpu']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
