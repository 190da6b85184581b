"""PPO step time: rlhfkit's `ppo_step` against TRL 1.12's `PPOTrainer` (the last TRL with PPO).

One driver run sets up the models (untimed), then for each round launches one process per
side, in alternating order, and prints per-round ratios and their median:

    bash bench/setup_trl112_venv.sh                 # once: bench/.venv-trl112 (trl 1.12.0)
    .venv/bin/python bench/ppo_vs_trl.py            # ~5 min on 2 shared cores
    .venv/bin/python bench/ppo_vs_trl.py --rounds 1 --steps 4 --models ppo-small   # quick
    git worktree add /tmp/before COMMIT                # rlhfkit against an earlier rlhfkit:
    .venv/bin/python bench/ppo_vs_trl.py --peer-src /tmp/before   # the "TRL" column is it
    .venv/bin/python bench/ppo_vs_trl.py --workload realistic     # the work users run (below)

Two workloads. `--workload realistic` (issue 16) is what most users run: batch 32, prompts
of 16 to 256 tokens (uniform, left-padded by both sides), responses that stop at EOS (at
most 128 tokens), `--ppo-epochs 4` with 4 minibatches of 8, on the `small` (256 x 6) and
`base` (512 x 8) presets. Random weights never choose EOS on their own, so the setup gives
the policy's EOS output row the direction of its mean last hidden state, scaled so that
responses end at EOS at varied lengths (`_calibrate_eos`; on `small` after these prompts
they average ~105 of the 128, some cut at the cap; on short prompts ~60): both sides
load the same weights, so they sample from the same distribution; each side's mean
response length is printed beside its time. `--workload fixed` (the default, the earlier
figures) is the same-shape micro-benchmark below.

Same work on both sides (fixed workload):
- four Llama models per size, all the same architecture: policy and reference (a causal LM
  built by `build_model(seed=0)`), reward and value (`AutoModelForSequenceClassification`
  with one output, the policy's backbone and a seeded normal head; the value model starts
  as a copy of the reward model, rlhfkit's `--value-init rm` and TRL's usual setup). They
  are saved once as Hugging Face folders and loaded by both sides: identical weights.
  `ppo-small`: hidden 128 x 4 layers; `ppo-large`: hidden 256 x 6 layers; vocabulary 512
  (a byte-level BPE trained here), fp32, sdpa attention;
- 8 prompts (the same token ids on both sides), exactly 48 response tokens (TRL:
  `stop_token=None`; rlhfkit: `--ignore-eos`), temperature 1, one PPO epoch, one
  minibatch, batch 8;
- one torch thread per process (OMP_NUM_THREADS=1), `--warmup` untimed steps then
  `--steps` timed ones; a step's time runs from the end of the previous step to the end of
  this one (TRL: `on_step_end` callbacks; rlhfkit: around `ppo_step`).

Where they differ, by design of each library: TRL computes full logits in its reference
and training forwards, keeps the generation scores, whitens nothing but advantages, uses
one AdamW (fused) over policy + value with a joint loss (vf_coef 0.1) and no gradient
clipping, and runs `gc.collect()` twice per step; rlhfkit keeps the log-probs of sampling,
computes logits only for response positions, takes separate policy and value steps
(AdamW each), clips gradient norms to 1, and computes entropy and stats. With one epoch and
one minibatch rlhfkit runs the value model once per step (the rollout's forward, kept with
its graph for the value loss) where TRL runs it twice. rlhfkit's large fp32 linear layers
run oneDNN on CPU (`rlhfkit.models.fast_linear`; `--ours-no-onednn` turns that off), TRL's
run MKL, torch's default.

The time split: rlhfkit reports generation / scoring / reference / value / update per step;
for TRL the script wraps `batch_generation` (generation), `get_reward` (scoring for the
reward model, value for the value model), `forward` without gradients (reference) and the
training forward + backward + optimizer step (update); the rest of TRL's step is "other".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRL_PYTHON = HERE / ".venv-trl112" / "bin" / "python"
MODELS = {"ppo-small": "tiny", "ppo-large": "small", "small": "small", "base": "base"}
WORKLOADS = {  # name -> (models, batch, max new tokens, ppo epochs, minibatches)
    "fixed": ("ppo-small,ppo-large", 8, 48, 1, 1),
    "realistic": ("small,base", 32, 128, 4, 4),
}
PROMPT_LENGTHS = (16, 256)  # realistic prompts: token counts drawn uniformly in this range
EOS_LOGIT = 1.6  # realistic: EOS logit at the mean last hidden state (responses end at EOS)
PHASES = ("generation", "scoring", "reference", "value", "update", "gc", "other")
ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
}


# ---------------------------------------------------------------------------------------
# Setup (driver, project venv): tokenizer, models, prompts
# ---------------------------------------------------------------------------------------


def _corpus(n: int = 3000, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(400)]
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(5, 15))).capitalize() + "."
        for _ in range(n)
    ]


def _realistic_prompts(texts: list[str], tokenizer, batch: int, seed: int = 1) -> list[str]:
    """`batch` prompts of PROMPT_LENGTHS[0]..[1] tokens (uniform), whole corpus words."""
    import random

    rng = random.Random(seed)
    words = " ".join(texts).split()
    prompts = []
    for _ in range(batch):
        target, start = rng.randint(*PROMPT_LENGTHS), rng.randrange(len(words) - 400)
        n = 1
        while len(tokenizer(" ".join(words[start : start + n + 1])).input_ids) <= target:
            n += 1
        prompts.append(" ".join(words[start : start + n]))
    return prompts


def _calibrate_eos(policy, tokenizer, texts: list[str]) -> None:
    """Give the EOS output row the direction u of the mean last hidden state over corpus
    text, scaled so that EOS's logit is EOS_LOGIT where h . u is at its mean (random
    weights put all logits near 0: EOS then has probability ~e^1.6 / vocab per token, more
    after tokens whose hidden state leans towards u). Tied embeddings change EOS's input
    row too, which no prompt contains."""
    import torch

    ids = torch.tensor([tokenizer(" ".join(texts[:200])).input_ids[:512]])
    with torch.no_grad():
        h = policy(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]  # (T, d)
        u = h.mean(0) / h.mean(0).norm()
        proj = float((h @ u).mean())
        policy.get_output_embeddings().weight[tokenizer.eos_token_id] = EOS_LOGIT / proj * u


def setup(workdir: Path, models: list[str], batch: int, max_new_tokens: int, workload: str) -> dict:
    """Write tokenizer + policy + reward model folders per size; return the spec."""
    import torch

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import PRESETS, build_model, train_tokenizer
    from rlhfkit.models.reward import init_reward_model
    from rlhfkit.sampling.sample_score import encode_prompts

    torch.set_num_threads(1)
    texts = _corpus()
    tokenizer = train_tokenizer(texts, vocab_size=512)
    if len(tokenizer) != 512:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, expected 512")
    realistic = workload == "realistic"
    if realistic:
        prompts = _realistic_prompts(texts, tokenizer, batch)
    else:
        prompts = [" ".join(t.split()[:12]) for t in texts[:batch]]
    _, _, _, epochs, minibatches = WORKLOADS[workload]
    spec = {
        "workload": workload,
        "batch": batch,
        "max_new_tokens": max_new_tokens,
        "max_prompt_len": PROMPT_LENGTHS[1],
        "ppo_epochs": epochs,
        "num_mini_batches": minibatches,
        "prompts": prompts,
        "prompt_ids": encode_prompts(prompts, tokenizer, PROMPT_LENGTHS[1]),
        "models": {},
    }
    for name in models:
        cfg = dict(PRESETS[MODELS[name]])
        policy = build_model(cfg, tokenizer, seed=0)
        if realistic:
            _calibrate_eos(policy, tokenizer, texts)
        rm, rm_tok = init_reward_model(policy, tokenizer, head_init="normal", seed=1)
        assert len(rm_tok) == 512  # the tokenizer pads with <|pad|>, not EOS: no new token
        folder = workdir / name
        save_hf(policy, tokenizer, folder / "policy")
        save_hf(rm.eval(), rm_tok, folder / "rm")
        spec["models"][name] = {
            "policy": str(folder / "policy"),
            "rm": str(folder / "rm"),
            "hidden": cfg["hidden_size"],
            "layers": cfg["num_hidden_layers"],
            "params": sum(p.numel() for p in policy.parameters()),
        }
    (workdir / "spec.json").write_text(json.dumps(spec, indent=1))
    return spec


# ---------------------------------------------------------------------------------------
# rlhfkit side
# ---------------------------------------------------------------------------------------


def run_ours(spec: dict, name: str, warmup: int, steps: int, out_dir: Path) -> list[dict]:
    import torch

    from rlhfkit.config import PPOConfig
    from rlhfkit.data.records import PromptRecord
    from rlhfkit.loops.ppo.loop import build_run, ppo_step
    from rlhfkit.loops.ppo.roles import build_roles

    m = spec["models"][name]
    batch, new, fixed = spec["batch"], spec["max_new_tokens"], spec["workload"] == "fixed"
    cfg = PPOConfig(
        policy=m["policy"], rm=(f"rm={m['rm']}",), out=str(out_dir), device="cpu", seed=0,
        steps=warmup + steps, batch_size=batch, num_mini_batches=spec["num_mini_batches"],
        ppo_epochs=spec["ppo_epochs"], max_new_tokens=new, ignore_eos=fixed,
        max_prompt_len=spec["max_prompt_len"], temperature=1.0, kl_coef=0.05, lr=1e-5,
        sample_every=0,
    )  # fmt: skip
    device = torch.device("cpu")
    tokenizer, policy, reference, value_model, scorer = build_roles(cfg, device)
    prompts = [PromptRecord(p) for p in spec["prompts"]]
    run = build_run(cfg, policy, reference, value_model, scorer, tokenizer, prompts)
    assert run.prompt_ids == spec["prompt_ids"], "prompt ids differ from the spec"
    records = []
    for step in range(warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        rollout, metrics = ppo_step(run, step, batch, cfg.seed)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        lengths = rollout.response_mask.sum(1).float()
        if fixed:
            assert rollout.response_mask.shape == (batch, new) and bool(lengths.eq(new).all())
        split = {
            "generation": metrics["time/generate"],
            "scoring": metrics["time/score"],
            "reference": metrics["time/reference"],
            "value": metrics["time/value"],
            "update": metrics["time/update"],
            "gc": 0.0,
        }
        split["other"] = wall - sum(split.values())
        rec = {"step": step, "wall": wall, "cpu": cpu, "response_len": float(lengths.mean())}
        records.append({**rec, **split})
    return records[warmup:]


# ---------------------------------------------------------------------------------------
# TRL side
# ---------------------------------------------------------------------------------------


def run_trl(spec: dict, name: str, warmup: int, steps: int, out_dir: Path) -> list[dict]:
    import torch
    import trl.experimental.ppo.ppo_trainer as pt
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    m = spec["models"][name]
    batch, new, fixed = spec["batch"], spec["max_new_tokens"], spec["workload"] == "fixed"
    acc = dict.fromkeys(PHASES[:-1], 0.0)
    lengths: list[float] = []  # mean response length (to the first EOS) per generation call
    roles: dict[str, object] = {}

    def timed(phase_of, fn):
        def wrapper(*a, **kw):
            phase = phase_of(*a, **kw)
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc[phase] += time.perf_counter() - t0

        return wrapper

    def generation(*a, **kw):
        out = _batch_generation(*a, **kw)
        resp = out[0][:, a[1].shape[1] :]
        if fixed:
            assert resp.shape[1] == new, f"TRL generated {resp.shape[1]} tokens, expected {new}"
        is_eos = resp == tok.eos_token_id
        first = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, resp.shape[1])
        lengths.append(float(first.float().mean()))
        return out

    _batch_generation = pt.batch_generation
    pt.batch_generation = timed(lambda *a, **k: "generation", generation)
    pt.get_reward = timed(
        lambda model, *a, **k: "scoring" if model is roles["reward"] else "value", pt.get_reward
    )
    pt.forward = timed(
        lambda *a, **k: "update" if torch.is_grad_enabled() else "reference", pt.forward
    )
    # PPOTrainer.train calls gc.collect() twice per step; `pt.gc` is the module itself.
    gc_collect = pt.gc.collect
    pt.gc = type(pt.gc)("gc")
    pt.gc.collect = timed(lambda *a, **k: "gc", gc_collect)

    tok = AutoTokenizer.from_pretrained(m["policy"])
    tok.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(m["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(m["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(m["rm"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(m["rm"], dtype=torch.float32)
    roles["reward"] = reward
    data = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    minibatches = spec["num_mini_batches"]
    args = PPOConfig(  # TRL 1.12: batch = per-device batch x grad. accumulation, then split
        output_dir=str(out_dir), per_device_train_batch_size=batch,  # into the minibatches
        gradient_accumulation_steps=1, num_mini_batches=minibatches,
        num_ppo_epochs=spec["ppo_epochs"], total_episodes=batch * (warmup + steps),
        response_length=new, stop_token=None if fixed else "eos",
        temperature=1.0, learning_rate=1e-5, kl_coef=0.05, bf16=False,
        gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=1, num_sample_generations=0, seed=0, disable_tqdm=True,
        local_rollout_forward_batch_size=batch, dataloader_num_workers=0,
    )  # fmt: skip
    marks: list[tuple[float, float, dict]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append((time.perf_counter(), time.process_time(), dict(acc)))

        def on_step_end(self, *a, **k):
            marks.append((time.perf_counter(), time.process_time(), dict(acc)))

    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
        train_dataset=data, value_model=value, eval_dataset=data, callbacks=[Clock()],
    )  # fmt: skip
    opt = trainer.optimizer
    opt.step = timed(lambda *a, **k: "update", opt.step)
    trainer.accelerator.backward = timed(lambda *a, **k: "update", trainer.accelerator.backward)
    trainer.train()
    records = []
    for i, ((w0, c0, a0), (w1, c1, a1)) in enumerate(itertools.pairwise(marks)):
        split = {k: a1[k] - a0[k] for k in acc}
        split["other"] = (w1 - w0) - sum(split.values())
        rec = {"step": i, "wall": w1 - w0, "cpu": c1 - c0, "response_len": lengths[i]}
        records.append({**rec, **split})
    assert len(records) == warmup + steps, f"{len(records)} steps recorded"
    return records[warmup:]


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def side_main(args) -> None:
    import torch

    torch.set_num_threads(1)
    spec = json.loads((Path(args.workdir) / "spec.json").read_text())
    fn = run_ours if args.side == "ours" else run_trl
    result = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            result[name] = fn(spec, name, args.warmup, args.steps, Path(tmp))
    result["versions"] = _versions(args.side)
    Path(args.result).write_text(json.dumps(result))


def _versions(side: str) -> dict:
    import torch
    import transformers

    v = {"python": sys.version.split()[0], "torch": torch.__version__}
    v["transformers"] = transformers.__version__
    if side == "trl":
        import trl

        v["trl"] = trl.__version__
    return v


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        return ""


def _launch(side: str, python: str, args, workdir: Path, round_: int) -> dict:
    result = workdir / f"{side}-{round_}.json"
    log = workdir / f"{side}-{round_}.log"
    cmd = [python, __file__, "--side", side, "--workdir", str(workdir), "--result", str(result)]
    cmd += ["--models", args.models, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    env = {**os.environ, **ENV}
    if side == "trl" and args.peer_src:  # the peer is rlhfkit from another checkout
        peer = Path(args.peer_src).resolve()
        cmd[0:4] = [args.ours_python, str(peer / "bench" / "ppo_vs_trl.py"), "--side", "ours"]
        env["PYTHONPATH"] = str(peer / "src")
    if side == "ours" and args.ours_no_onednn:
        env["RLHFKIT_ONEDNN"] = "0"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{side} side failed (rc {proc.returncode}), log {log}:\n{tail}")
    out = json.loads(result.read_text())
    out["process_s"] = time.perf_counter() - t0
    return out


def _median(records: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in records)


def driver(args) -> None:
    workdir = Path(args.workdir) if args.workdir else HERE / "out" / "ppo_vs_trl"
    workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = str(workdir)
    models = args.models.split(",")
    t_start = time.perf_counter()
    info = {"nproc": os.cpu_count(), "cpu": _cpu_model(), "uptime_start": _uptime()}
    print(f"machine: nproc {info['nproc']}, {info['cpu']}; {info['uptime_start']}", flush=True)
    spec = setup(workdir, models, args.batch, args.new_tokens, args.workload)
    print(f"setup: {time.perf_counter() - t_start:.0f} s; models {spec['models']}", flush=True)
    pythons = {"ours": args.ours_python, "trl": args.trl_python}
    if args.peer_src:
        print(f"peer: rlhfkit from {args.peer_src} in the TRL columns", flush=True)
    rounds = []
    for r in range(args.rounds):
        order = ["ours", "trl"] if r % 2 == 0 else ["trl", "ours"]
        res = {"uptime": _uptime()}
        for side in order:
            res[side] = _launch(side, pythons[side], args, workdir, r)
        rounds.append(res)
        line = []
        for name in models:
            o, t = res["ours"][name], res["trl"][name]
            ratio = _median(t, "wall") / _median(o, "wall")
            line.append(f"{name} {ratio:.2f}x")
        print(f"round {r + 1} ({' then '.join(order)}; {res['uptime']}): " + ", ".join(line))
    info["uptime_end"] = _uptime()
    summary = _report(rounds, models, spec)
    print(f"\nversions: ours {rounds[0]['ours']['versions']}, trl {rounds[0]['trl']['versions']}")
    print(f"load at end: {info['uptime_end']}")
    print(f"total: {time.perf_counter() - t_start:.0f} s")
    if args.json:
        payload = {"machine": info, "args": vars(args), "spec": spec, "summary": summary}
        payload["rounds"] = rounds
        Path(args.json).write_text(json.dumps(payload, indent=1))


def _mean(records: list[dict], key: str) -> float:
    return statistics.fmean(r.get(key, float("nan")) for r in records)


def _report(rounds: list[dict], models: list[str], spec: dict) -> dict:
    summary = {}
    for name in models:
        m = spec["models"][name]
        print(f"\n{name}: hidden {m['hidden']} x {m['layers']} layers, {m['params']:,} params")
        print(
            f"{'round':>5} {'rlhfkit s/step':>14} {'TRL s/step':>11} {'ratio':>7} {'cpu ratio':>9}"
            f" {'resp. len ours / TRL':>21}"
        )
        ratios, cratios = [], []
        for i, res in enumerate(rounds):
            o, t = res["ours"][name], res["trl"][name]
            ow, tw = _median(o, "wall"), _median(t, "wall")
            ratio, cratio = tw / ow, _median(t, "cpu") / _median(o, "cpu")
            ratios.append(ratio)
            cratios.append(cratio)
            lens = f"{_mean(o, 'response_len'):.1f} / {_mean(t, 'response_len'):.1f}"
            print(f"{i + 1:>5} {ow:14.3f} {tw:11.3f} {ratio:6.2f}x {cratio:8.2f}x {lens:>21}")
        med, cmed = statistics.median(ratios), statistics.median(cratios)
        print(f"{'median':>5} {'':14s} {'':11s} {med:6.2f}x {cmed:8.2f}x")
        split = {}
        for side in ("ours", "trl"):
            split[side] = {
                ph: statistics.median(_median(res[side][name], ph) for res in rounds)
                for ph in PHASES
            }
            split[side]["step"] = statistics.median(
                _median(res[side][name], "wall") for res in rounds
            )
        print("time split, s/step (median over rounds of per-round medians):")
        print(f"{'side':8s} " + " ".join(f"{p:>10s}" for p in (*PHASES, "step")))
        for side, label in (("ours", "rlhfkit"), ("trl", "TRL")):
            print(f"{label:8s} " + " ".join(f"{split[side][p]:10.3f}" for p in (*PHASES, "step")))
        summary[name] = {"ratios": ratios, "cpu_ratios": cratios, "median": med}
        summary[name].update(cpu_median=cmed, split=split)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=list(WORKLOADS), default="fixed", help="see above")
    ap.add_argument("--models", default=None, help="default: the workload's")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed PPO steps per process")
    ap.add_argument("--batch", type=int, default=None, help="default: the workload's")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: the workload's")
    ap.add_argument("--workdir", default=None, help="default: bench/out/ppo_vs_trl")
    ap.add_argument("--ours-python", default=sys.executable)
    ap.add_argument("--trl-python", default=str(TRL_PYTHON))
    ap.add_argument("--json", default=None, help="write every step's record here")
    ap.add_argument(
        "--ours-no-onednn",
        action="store_true",
        help="rlhfkit with RLHFKIT_ONEDNN=0: MKL for every linear layer (as TRL), to compare",
    )
    ap.add_argument(
        "--peer-src",
        default=None,
        help="compare with rlhfkit from this checkout instead of TRL (a before/after check)",
    )
    ap.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models, batch, new, _, _ = WORKLOADS[args.workload]
    args.models = args.models or models
    args.batch, args.new_tokens = args.batch or batch, args.new_tokens or new
    if args.side:
        side_main(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
