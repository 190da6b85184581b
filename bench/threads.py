"""Torch intra-op threads on a busy machine: 1 vs 2 threads, quiet vs one competing process.

    uptime; lscpu | grep 'Model name'                     # note the load and the CPU
    .venv/bin/python bench/threads.py                     # small preset, 3 rounds: ~20-30 min
    .venv/bin/python bench/threads.py --quick             # smoke run: tiny, 1 round, ~2-3 min
    .venv/bin/python bench/threads.py --wait-policy-passive --json threads.json

Issue 16: a thread count that is fastest on a quiet machine can be the slowest once another
process takes a core (an OpenMP team of 2 threads on 2 cores waits at every barrier for
the thread that lost its core). This script measures, for each stage of the pipeline, the
time of a fixed amount of work with torch using 1 and with 2 intra-op threads, on a quiet
machine and with one "busy core" (a separate process running `while True: pass`, started
before and killed after each measurement), and optionally with OMP_WAIT_POLICY=PASSIVE
(2 threads only: one thread never waits at a barrier).

Stages (the unit of work in brackets; rlhfkit's own code paths, fp32, CPU):
  pretrain   causal-LM step on the world's corpus packed into 256-token blocks, batch 16
             (`loops.lm.accumulate_nll` + `loops.common.optimizer_step`, as `rlhfkit pretrain`)
  sft        SFT step on the world's sft.jsonl, batch 16, packed rows as `train_sft` picks
             them (the same model folder and data as bench/sft_vs_trl.py) [optimizer step]
  rm         pairwise reward-model step, batch 8 prompts x 2 responses (the SFT completion
             against another prompt's), `loops.reward.train.accumulate_gradients` [step]
  ppo        one `ppo_step` (rollout with rlhfkit's sampler, scoring, reference, value,
             policy/value update) on bench/ppo_vs_trl.py's "fixed" workload: 8 prompts x
             48 new tokens, vocab 512 (`run_ours` of that script) [PPO step]
  gen        generation alone: `models.generate.sample` on the same PPO policy and the same
             8 prompts, 48 new tokens, KV cache, no early stop [one call]

Every measurement is a fresh `python bench/threads.py --worker STAGE --threads N` process,
with OMP_NUM_THREADS / MKL_NUM_THREADS (and OMP_WAIT_POLICY for the passive variants) set
in its environment before torch is imported, plus `torch.set_num_threads(N)`. It loads
the model and data (untimed), runs --warmup untimed units, then the fixed number of timed
units, and prints one JSON line: wall seconds and process CPU seconds (all threads) per
unit. The number of units per stage is fixed once, in the setup process (1 thread), so
that a measurement takes about --seconds at 1 thread on the setup's machine state; every
condition then runs exactly that work. Rounds rotate the order of the conditions so that
load drift hits them alike; the table shows the median over rounds of wall time per unit,
the slowdown busy/quiet for each thread count and the speedup of 2 threads over 1 when
quiet. A second table gives process CPU s per unit: OpenMP threads that wait actively
(the default policy) burn CPU that the busy process or another job could have used; CPU
above wall x 1 thread's means spinning. A measurement that goes past --cap-seconds stops
after the unit in progress (marked '*'; per-unit times stay comparable, the batches cover
fewer units).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAGES = ("pretrain", "sft", "rm", "ppo", "gen")
PPO_MODEL = {"tiny": "ppo-small", "small": "ppo-large"}  # bench/ppo_vs_trl.py's names
BATCH = {"pretrain": 16, "sft": 16, "rm": 8}
SEQ_LEN = 256  # pretrain block length; SFT/RM max length
GEN_TOKENS = 48  # ppo_vs_trl.py "fixed": 8 prompts x 48 new tokens
BASE_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}
MARK = "THREADS-RESULT "
# The busy core: a tight single-threaded loop that also ends if its parent dies.
BUSY = """import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(10_000_000):
        pass
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset of {','.join(STAGES)} (default: all)",
    )
    p.add_argument(
        "--preset",
        default="small",
        help="rlhfkit model preset(s), comma-separated: tiny, small (default: small)",
    )
    p.add_argument("--rounds", type=int, default=3, help="measurements per condition (default 3)")
    p.add_argument(
        "--seconds",
        type=float,
        default=10.0,
        help="target work per measurement, in seconds at 1 thread on the setup's machine\n"
        "state: sets the number of timed units per stage (default 10)",
    )
    p.add_argument(
        "--cap-seconds",
        type=float,
        default=None,
        help="stop a measurement's timed units after this many wall seconds (at least one\n"
        "unit): bounds the run when a condition is many times slower than 1 thread;\n"
        "cut cells are marked '*' (default 5 x --seconds; 0: never)",
    )
    p.add_argument(
        "--warmup", type=int, default=2, help="untimed units per measurement (default 2)"
    )
    p.add_argument(
        "--threads",
        default="1,2",
        help="torch intra-op thread counts to compare, and 'auto' for rlhfkit's default\n"
        "(no OMP_NUM_THREADS: rlhfkit.threads governs the count, checked before every unit\n"
        "as the progress bars do) (default 1,2; the slowdown and speedup columns assume\n"
        "1 and 2)",
    )
    p.add_argument(
        "--wait-policy-passive",
        action="store_true",
        help="also run every thread count > 1 with OMP_WAIT_POLICY=PASSIVE (quiet and busy)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --preset tiny --rounds 1 --seconds 2 --warmup 0 --cap-seconds 4",
    )
    p.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write every measurement here")
    p.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter for the workers and the busy process (default: this one)",
    )
    # Internal: the setup process and the workers.
    p.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=STAGES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--units", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.rounds, args.seconds, args.warmup = "tiny", 1, 2.0, 0
        if args.cap_seconds is None:
            args.cap_seconds = 4.0
    if args.cap_seconds is None:
        args.cap_seconds = 5 * args.seconds
    return args


# --------------------------------------------------------------------------------------
# Child side: setup (data, models, units per stage) and one measurement per process
# --------------------------------------------------------------------------------------


def _bench_module(name: str):
    """Import a sibling benchmark (bench/ is no package) to reuse its helpers."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return __import__(name)


def setup_main(args) -> None:
    """Write the world, tokenizer, model folders and PPO spec into --work, calibrate the
    units per stage at 1 thread and write spec.json."""
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    presets = args.preset.split(",")
    stages = args.stages.split(",")
    with contextlib.redirect_stdout(sys.stderr):
        ctx = _bench_module("sft_vs_trl").setup(work, presets, SEQ_LEN, "sft")
        spec = {
            "world": str(work / "world"),
            "sft_path": str(ctx["sft_path"]),
            "models": {p: str(f) for p, f in ctx["models"].items()},
            "units": {},
        }
        if {"ppo", "gen"} & set(stages):
            ppo = _bench_module("ppo_vs_trl")
            names = [PPO_MODEL[p] for p in presets]
            spec["ppo"] = ppo.setup(work / "ppo", names, 8, GEN_TOKENS, "fixed")
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    for preset in presets:
        for stage in stages:
            wall, _, _ = run_stage(stage, spec, preset, work, max(args.warmup, 1), 2)
            units = max(1, round(args.seconds / max(wall, 1e-6)))
            spec["units"][f"{stage}/{preset}"] = units
            print(f"  {stage:>8} {preset:<5} {wall:7.3f} s/unit at 1 thread -> {units} units")
    (work / "spec.json").write_text(json.dumps(spec, indent=1))


def _timed(unit, warmup: int, units: int, cap: float) -> tuple[float, float, int]:
    """Per-unit wall and CPU seconds over `units` units, or over the units done once `cap`
    wall seconds have passed (at least one), and that count."""
    for _ in range(warmup):
        unit()
    from rlhfkit import threads

    w0, c0 = time.perf_counter(), time.process_time()
    done = 0
    while done < units:
        threads.check()  # what every progress bar update does (nothing unless 'auto')
        unit()
        done += 1
        if cap and time.perf_counter() - w0 > cap:
            break
    return (time.perf_counter() - w0) / done, (time.process_time() - c0) / done, done


def _cycle(examples: list, batch: int):
    """Successive batches of `examples`, wrapping around (a fixed, repeatable order)."""
    i = 0
    while True:
        yield [examples[(i + j) % len(examples)] for j in range(batch)]
        i += batch


def _lm_unit(stage: str, spec: dict, preset: str):
    from rlhfkit.config import PretrainConfig, SFTConfig
    from rlhfkit.data.records import read_corpus, read_sft
    from rlhfkit.data.tokenize import EncodedExample, encode_sft_many, pack_corpus
    from rlhfkit.loops.common import build_optimizer, optimizer_step
    from rlhfkit.loops.lm import LMRun, choose_packing
    from rlhfkit.models.fast_linear import use_onednn_linears
    from rlhfkit.models.load import load_causal_lm, load_tokenizer
    from rlhfkit.models.presets import build_model

    folder = spec["models"][preset]
    tokenizer = load_tokenizer(folder)
    if stage == "pretrain":  # as train_pretrain: a fresh model, packed corpus blocks
        opts = PretrainConfig(data="-", preset=preset, seq_len=SEQ_LEN, batch_size=BATCH[stage])
        texts = read_corpus(Path(spec["world"]) / "corpus.jsonl")
        blocks = pack_corpus(texts, tokenizer, SEQ_LEN).tolist()
        examples = [EncodedExample(input_ids=row, labels=row) for row in blocks]
        model = build_model(preset, tokenizer, seed=0)
        use_onednn_linears(model)
        run = LMRun(model=model, tokenizer=tokenizer, train=examples, packing=False)
    else:  # as train_sft
        opts = SFTConfig(model=folder, data=spec["sft_path"], batch_size=BATCH[stage])
        examples, _ = encode_sft_many(
            read_sft(spec["sft_path"]), tokenizer, SEQ_LEN, overlong="error"
        )
        model = load_causal_lm(folder, "cpu")
        use_onednn_linears(model)
        packing = choose_packing(model, None, "sft")
        run = LMRun(model=model, tokenizer=tokenizer, train=examples, packing=packing)
        run.row_tokens = SEQ_LEN
    return _train_unit(run, opts, examples, build_optimizer, optimizer_step, "lm")


def _train_unit(run, opts, examples, build_optimizer, optimizer_step, kind: str):
    from rlhfkit.loops.lm import accumulate_nll
    from rlhfkit.loops.reward.train import accumulate_gradients

    model = run.model
    model.train()
    optimizer = build_optimizer(
        model, lr=opts.lr, weight_decay=opts.weight_decay, betas=(opts.adam_beta1, opts.adam_beta2)
    )
    batches = _cycle(examples, opts.batch_size)

    def unit() -> None:
        micro = next(batches)
        if kind == "lm":
            accumulate_nll(model, [micro], run, opts)
        else:
            accumulate_gradients(model, [micro], len(micro), run)
        optimizer_step(model, optimizer, None, opts.max_grad_norm)

    return unit


def _rm_unit(spec: dict, preset: str):
    import random

    from rlhfkit.config import RMConfig
    from rlhfkit.data.records import RankingRecord, read_sft
    from rlhfkit.data.reward_data import encode_rankings, resolve_margin_table
    from rlhfkit.loops.common import build_optimizer, optimizer_step
    from rlhfkit.loops.reward.train import RMRun, resolve_packing
    from rlhfkit.models.fast_linear import use_onednn_linears
    from rlhfkit.models.load import load_tokenizer
    from rlhfkit.models.reward import init_reward_model

    folder = spec["models"][preset]
    records = read_sft(spec["sft_path"])
    rng = random.Random(0)
    pairs = []
    for i, r in enumerate(records):
        other = records[rng.randrange(len(records))].completion
        pairs.append(RankingRecord(r.prompt, [r.completion, other], [0, 1], line=i + 1))
    tokenizer = load_tokenizer(folder)
    examples, _ = encode_rankings(
        pairs, tokenizer, max_len=SEQ_LEN, margin_table=resolve_margin_table("none")
    )
    model, tokenizer = init_reward_model(folder, tokenizer, seed=0)
    use_onednn_linears(model)  # as train_rm
    packing = resolve_packing(model, None)
    run = RMRun(model, tokenizer, examples, packing=packing)
    opts = RMConfig(model=folder, data=("-",), batch_size=BATCH["rm"])
    return _train_unit(run, opts, examples, build_optimizer, optimizer_step, "rm")


def _gen_unit(spec: dict, preset: str):
    import torch

    from rlhfkit.models.fast_linear import use_onednn_linears
    from rlhfkit.models.generate import sample
    from rlhfkit.models.load import load_causal_lm, load_tokenizer

    folder = spec["ppo"]["models"][PPO_MODEL[preset]]["policy"]
    tokenizer = load_tokenizer(folder)
    model = load_causal_lm(folder, "cpu").eval()
    use_onednn_linears(model)
    prompts = spec["ppo"]["prompt_ids"]
    seed = [0]

    def unit() -> None:
        seed[0] += 1
        out = sample(
            model, prompts, max_new_tokens=GEN_TOKENS, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(seed[0]),
            stop_at_eos=False,
        )  # fmt: skip
        assert out.response_ids.shape == (len(prompts), GEN_TOKENS)

    return unit


def _ppo_unit(spec: dict, preset: str, work: Path):
    """One `ppo_step`, set up as bench/ppo_vs_trl.py's `run_ours` ("fixed" workload)."""
    import torch

    from rlhfkit.config import PPOConfig
    from rlhfkit.data.records import PromptRecord
    from rlhfkit.loops.ppo.loop import build_run, ppo_step
    from rlhfkit.loops.ppo.roles import build_roles

    ppo = spec["ppo"]
    m, batch, new = ppo["models"][PPO_MODEL[preset]], ppo["batch"], ppo["max_new_tokens"]
    out = tempfile.mkdtemp(dir=work)
    cfg = PPOConfig(
        policy=m["policy"], rm=(f"rm={m['rm']}",), out=out, device="cpu", seed=0,
        steps=10_000, batch_size=batch, num_mini_batches=ppo["num_mini_batches"],
        ppo_epochs=ppo["ppo_epochs"], max_new_tokens=new, ignore_eos=True,
        max_prompt_len=ppo["max_prompt_len"], temperature=1.0, kl_coef=0.05, lr=1e-5,
        sample_every=0,
    )  # fmt: skip
    roles = build_roles(cfg, torch.device("cpu"))
    tokenizer, policy, reference, value_model, scorer = roles
    prompts = [PromptRecord(p) for p in ppo["prompts"]]
    run = build_run(cfg, policy, reference, value_model, scorer, tokenizer, prompts)
    step = [0]

    def unit() -> None:
        rollout, _ = ppo_step(run, step[0], batch, cfg.seed)
        step[0] += 1
        assert rollout.response_mask.shape == (batch, new)

    return unit


def run_stage(
    stage: str, spec: dict, preset: str, work: Path, warmup: int, units: int, cap: float = 0
) -> tuple[float, float, int]:
    """Wall and CPU seconds per unit of `stage` (setup untimed), and the units timed."""
    with contextlib.redirect_stdout(sys.stderr):
        if stage == "ppo":
            unit = _ppo_unit(spec, preset, work)
        elif stage in ("pretrain", "sft"):
            unit = _lm_unit(stage, spec, preset)
        elif stage == "rm":
            unit = _rm_unit(spec, preset)
        else:
            unit = _gen_unit(spec, preset)
        return _timed(unit, warmup, units, cap)


def worker_main(args) -> None:
    import torch

    if args.threads == "auto":
        from rlhfkit import threads as governor

        governor.start()  # as the command line does
    else:
        torch.set_num_threads(int(args.threads))
    work = Path(args.work)
    spec = json.loads((work / "spec.json").read_text())
    wall, cpu, done = run_stage(
        args.worker, spec, args.preset, work, args.warmup, args.units, args.cap_seconds
    )
    result = {
        "wall": wall,
        "cpu": cpu,
        "units": done,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    print(MARK + json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------
# Parent side: conditions, busy core, rounds, table
# --------------------------------------------------------------------------------------


def _env(threads: int | str, passive: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_"))}
    env.update(BASE_ENV)
    env.pop("RLHFKIT_THREADS", None)
    if threads != "auto":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def _conditions(thread_counts: list[int], passive: bool) -> list[tuple[str, int, bool]]:
    """(load, threads, passive): quiet-1, quiet-2, busy-1, busy-2 [, quiet-2p, busy-2p]."""
    out = [(load, t, False) for load in ("quiet", "busy") for t in thread_counts]
    if passive:
        out += [
            (load, t, True)
            for load in ("quiet", "busy")
            for t in thread_counts
            if t != "auto" and t > 1
        ]
    return out


def _label(cond: tuple[str, int, bool]) -> str:
    load, t, passive = cond
    return f"{load}-{t}{'p' if passive else ''}"


@contextlib.contextmanager
def _busy_core(python: str, on: bool):
    """A separate process spinning one core for the duration (nothing when `on` is False)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([python, "-c", BUSY], env=_env(1, False))
    time.sleep(0.3)  # let it start spinning
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def _measure(args, stage: str, preset: str, cond, units: int) -> dict:
    load, threads, passive = cond
    cmd = [args.python, str(Path(__file__).resolve()), "--worker", stage, "--threads", str(threads)]
    cmd += ["--preset", preset, "--work", args.work, "--warmup", str(args.warmup)]
    cmd += ["--units", str(units), "--cap-seconds", str(args.cap_seconds)]
    t0 = time.perf_counter()
    with _busy_core(args.python, load == "busy"):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads, passive))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(
            f"worker {stage}/{preset} {_label(cond)} failed (rc {proc.returncode}):\n{tail}"
        )
    out = json.loads(lines[-1][len(MARK) :])
    if threads != "auto" and out["torch_threads"] != threads:
        raise SystemExit(f"worker ran {out['torch_threads']} threads, asked for {threads}")
    out["process_s"] = time.perf_counter() - t0
    return out


def _cpu_info() -> dict:
    model, flags = "", ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for ln in text.splitlines():
            key, _, val = ln.partition(":")
            if key.strip() == "Model name":
                model = val.strip()
            elif key.strip() == "Flags":
                flags = val
    except OSError:
        pass
    if not flags:  # lscpu missing or without flags
        with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("flags"):
                    flags = ln.split(":", 1)[1]
                    break
                if ln.startswith("model name") and not model:
                    model = ln.split(":", 1)[1].strip()
    avx512 = sorted(f for f in flags.split() if f.startswith("avx512"))
    return {"model": model, "nproc": os.cpu_count(), "avx512": avx512}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _versions(python: str) -> str:
    code = "import torch, transformers; print(torch.__version__, transformers.__version__)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=_env(1, False))
    torch_v, _, tf_v = out.stdout.strip().partition(" ")
    return f"torch {torch_v}, transformers {tf_v}, python {sys.version.split()[0]}"


def report(rows: list[dict], stages, presets, conds, spec: dict) -> dict:
    med: dict[tuple[str, str, str], float] = {}
    med_cpu: dict[tuple[str, str, str], float] = {}
    cut: set[tuple[str, str, str]] = set()  # some round timed fewer units than asked
    for stage in stages:
        for preset in presets:
            for c in conds:
                sel = [
                    r
                    for r in rows
                    if (r["stage"], r["preset"], r["condition"]) == (stage, preset, _label(c))
                ]
                med[stage, preset, _label(c)] = statistics.median(r["wall"] for r in sel)
                med_cpu[stage, preset, _label(c)] = statistics.median(r["cpu"] for r in sel)
                if any(r["units"] < spec["units"][f"{stage}/{preset}"] for r in sel):
                    cut.add((stage, preset, _label(c)))
    labels = [_label(c) for c in conds]
    extra = []
    if "quiet-1" in labels and "busy-1" in labels:
        extra.append(("busy/quiet 1t", "busy-1", "quiet-1"))
    if "quiet-2" in labels and "busy-2" in labels:
        extra.append(("busy/quiet 2t", "busy-2", "quiet-2"))
    if "quiet-2p" in labels and "busy-2p" in labels:
        extra.append(("busy/quiet 2tp", "busy-2p", "quiet-2p"))
    if "quiet-auto" in labels and "busy-auto" in labels:
        extra.append(("busy/quiet auto", "busy-auto", "quiet-auto"))
    if "quiet-2" in labels and "busy-auto" in labels:
        extra.append(("busy-auto/quiet-2", "busy-auto", "quiet-2"))
    if "quiet-1" in labels and "quiet-2" in labels:
        extra.append(("2t speedup", "quiet-1", "quiet-2"))
    print("\nwall s per unit (median over rounds); 'p' = OMP_WAIT_POLICY=PASSIVE")
    head = f"{'stage':<9}{'preset':<7}{'units':>6}" + "".join(f"{lab:>12}" for lab in labels)
    head += "".join(f"{name:>19}" for name, _, _ in extra)
    print(head)
    summary = {}
    for stage in stages:
        for preset in presets:
            units = spec["units"][f"{stage}/{preset}"]
            line = f"{stage:<9}{preset:<7}{units:>6}"
            line += "".join(
                f"{med[stage, preset, lab]:>11.3f}{'*' if (stage, preset, lab) in cut else ' '}"
                for lab in labels
            )
            ratios = {name: med[stage, preset, a] / med[stage, preset, b] for name, a, b in extra}
            line += "".join(f"{ratios[name]:>18.2f}x" for name, _, _ in extra)
            print(line)
            summary[f"{stage}/{preset}"] = {
                "units": units,
                "wall": {lab: med[stage, preset, lab] for lab in labels},
                "cpu": {lab: med_cpu[stage, preset, lab] for lab in labels},
                "ratios": ratios,
                "cut": sorted(lab for lab in labels if (stage, preset, lab) in cut),
            }
    if cut:
        print("* fewer units than 'units' in some round (--cap-seconds)")
    print("\nprocess CPU s per unit (all threads; median):")
    print(f"{'stage':<9}{'preset':<7}{'':>6}" + "".join(f"{lab:>12}" for lab in labels))
    for stage in stages:
        for preset in presets:
            line = f"{stage:<9}{preset:<7}{'':>6}"
            print(line + "".join(f"{med_cpu[stage, preset, lab]:>12.3f}" for lab in labels))
    return summary


def driver(args) -> None:
    t_start = time.perf_counter()
    stages = args.stages.split(",")
    presets = args.preset.split(",")
    thread_counts = [t if t == "auto" else int(t) for t in args.threads.split(",")]
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"unknown stage {s!r}: choose from {', '.join(STAGES)}")
    for p in presets:
        if p not in PPO_MODEL:
            raise SystemExit(f"unknown preset {p!r}: choose from {', '.join(PPO_MODEL)}")
    cpu = _cpu_info()
    avx = ("yes: " + " ".join(cpu["avx512"])) if cpu["avx512"] else "no"
    print(f"cpu: {cpu['model']}; nproc {cpu['nproc']}; avx512: {avx}")
    load_start = _loadavg()
    print(f"load average at start: {load_start}")
    print(f"versions: {_versions(args.python)}", flush=True)
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="rlhfkit-threads-")
        args.work = tmp.name
    Path(args.work).mkdir(parents=True, exist_ok=True)
    print(f"setup (world, tokenizer, models; units per stage at 1 thread, ~{args.seconds:g} s):")
    cmd = [args.python, str(Path(__file__).resolve()), "--setup", "--work", args.work]
    cmd += ["--preset", args.preset, "--stages", args.stages, "--seconds", str(args.seconds)]
    cmd += ["--warmup", str(args.warmup)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(1, False))
    print(proc.stdout, end="")
    if proc.returncode != 0:
        raise SystemExit(f"setup failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    spec = json.loads((Path(args.work) / "spec.json").read_text())
    print(f"setup: {time.perf_counter() - t_start:.0f} s", flush=True)

    conds = _conditions(thread_counts, args.wait_policy_passive)
    rows = []
    for r in range(args.rounds):
        order = conds[r % len(conds) :] + conds[: r % len(conds)]
        print(
            f"round {r + 1}/{args.rounds} (order {', '.join(map(_label, order))}; load {_loadavg()})"
        )
        for stage in stages:
            for preset in presets:
                units = spec["units"][f"{stage}/{preset}"]
                res = []
                for cond in order:
                    out = _measure(args, stage, preset, cond, units)
                    res.append(f"{_label(cond)} {out['wall']:.3f}")
                    rows.append(
                        {"round": r, "stage": stage, "preset": preset, "condition": _label(cond)}
                        | out
                    )
                print(f"  {stage:>8} {preset:<5} s/unit: " + ", ".join(res), flush=True)
    summary = report(rows, stages, presets, conds, spec)
    load_end = _loadavg()
    print(f"\nload average at start: {load_start}; at end: {load_end}")
    print(f"total: {time.perf_counter() - t_start:.0f} s")
    if args.json:
        payload = {
            "cpu": cpu,
            "load_start": load_start,
            "load_end": load_end,
            "args": {k: v for k, v in vars(args).items() if k not in ("setup", "worker", "units")},
            "units": spec["units"],
            "summary": summary,
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if tmp is not None:
        tmp.cleanup()


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args)
    elif args.setup:
        setup_main(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
