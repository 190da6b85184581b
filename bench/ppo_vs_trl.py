"""PPO step time: rlhfkit's `ppo_step` against TRL 1.12's `PPOTrainer` (the last TRL with PPO).

One driver run sets up the models (untimed), then for each round launches one process per
side, in alternating order, and prints per-round ratios and their median:

    bash bench/setup_trl112_venv.sh                 # once: bench/.venv-trl112 (trl 1.12.0)
    .venv/bin/python bench/ppo_vs_trl.py            # ~5 min on 2 shared cores
    .venv/bin/python bench/ppo_vs_trl.py --rounds 1 --steps 4 --models ppo-small   # quick
    git worktree add /tmp/before COMMIT                # rlhfkit against an earlier rlhfkit:
    .venv/bin/python bench/ppo_vs_trl.py --peer-src /tmp/before   # the "TRL" column is it
    .venv/bin/python bench/ppo_vs_trl.py --workload realistic     # the work users run (below)
    .venv/bin/python bench/ppo_vs_trl.py --model /work/models/smollm2-135m-instruct \\
        --trl-configs trl,trl-shipped                  # a pretrained model, TRL tuned and shipped

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

`--model DIR` (bench/_models.py) replaces the presets by an existing causal LM folder: both
sides load it as policy and reference; the reward model is `init_reward_model(head_init=
"normal", seed=1)` of it, saved with its tokenizer (SmolLM2 pads with its EOS: the RM
tokenizer gets a pad token of its own, `<|rm_pad|>`; every policy token keeps its id, so
rlhfkit scores token ids directly), and the value model starts as a copy of it. Prompts are
the world's training prompts encoded with the model's tokenizer (`--workload realistic`:
corpus text of 16-256 tokens); the model's own EOS is kept (no calibration). In the fixed
workload TRL's policy generates without an EOS (its generation config's eos_token_id
cleared), so that, as rlhfkit with --ignore-eos, it samples exactly --new-tokens tokens.

TRL configurations (`--trl-configs`, each its own process per round; bench/_models.py):
`trl`, as tuned (trl_tuned below: fp32, no gradient checkpointing, rollout forwards in one
batch, no progress bar), `trl-shipped` (PPOConfig's defaults except trl_needed: the workload,
CPU, episodes, lr, no reports, saving or sample generations), and one suspect at a time:
`trl+S` / `trl-shipped-S` for S in TRL_SUSPECTS (bf16, ckpt).

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

import _models

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


def setup(
    workdir: Path,
    models: list[str],
    batch: int,
    max_new_tokens: int,
    workload: str,
    model_dir: str | None = None,
) -> dict:
    """Write tokenizer + policy + reward model folders per size (with `model_dir`: the
    reward model of that folder, which is itself the policy); return the spec."""
    import torch

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import PRESETS, build_model, train_tokenizer
    from rlhfkit.models.reward import init_reward_model
    from rlhfkit.sampling.sample_score import encode_prompts

    torch.set_num_threads(1)
    realistic = workload == "realistic"
    if model_dir is not None:
        return _setup_folder(workdir, Path(model_dir), batch, max_new_tokens, workload)
    texts = _corpus()
    tokenizer = train_tokenizer(texts, vocab_size=512)
    if len(tokenizer) != 512:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, expected 512")
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


def _setup_folder(workdir: Path, folder: Path, batch: int, new: int, workload: str) -> dict:
    """`--model`: the folder is policy and reference; its reward model (the value model's
    start too) is saved with its tokenizer; prompts come from the built-in world."""
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.load import load_causal_lm, load_tokenizer
    from rlhfkit.models.reward import init_reward_model
    from rlhfkit.sampling.sample_score import encode_prompts

    tokenizer = load_tokenizer(folder)
    world = _models.world(workdir)
    if workload == "realistic":
        texts = [json.loads(line)["text"] for line in open(world / "corpus.jsonl")]
        prompts = _realistic_prompts(texts[:2000], tokenizer, batch)
    else:
        lines = open(world / "prompts_train.jsonl").readlines()[:batch]
        prompts = [json.loads(line)["prompt"] for line in lines]
    _, _, _, epochs, minibatches = WORKLOADS[workload]
    policy = load_causal_lm(folder)
    # A separate tokenizer: init_reward_model gives one whose pad is its EOS a pad of its own.
    rm, rm_tok = init_reward_model(policy, load_tokenizer(folder), head_init="normal", seed=1)
    name = _models.label(folder)
    save_hf(rm.eval(), rm_tok, workdir / name / "rm")
    text = policy.config.get_text_config()
    spec = {
        "workload": workload,
        "batch": batch,
        "max_new_tokens": new,
        "max_prompt_len": PROMPT_LENGTHS[1],
        "ppo_epochs": epochs,
        "num_mini_batches": minibatches,
        "prompts": prompts,
        "prompt_ids": encode_prompts(prompts, tokenizer, PROMPT_LENGTHS[1]),
        "models": {
            name: {
                "policy": str(folder.resolve()),
                "rm": str(workdir / name / "rm"),
                "hidden": text.hidden_size,
                "layers": text.num_hidden_layers,
                "params": sum(p.numel() for p in policy.parameters()),
                "describe": _models.describe(folder, tokenizer),
                "rm_tokenizer": f"{len(rm_tok)} tokens, pad {rm_tok.pad_token!r}",
            }
        },
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


# What every TRL configuration sets: to run here at all, and the workload (the same as
# rlhfkit's side); sample generations (TRL's default: 10 per run) are display, not a step.
def trl_needed(spec: dict, steps: int, out_dir: Path) -> dict:
    batch, fixed = spec["batch"], spec["workload"] == "fixed"
    return dict(  # TRL 1.12: batch = per-device batch x grad. accumulation, then split
        output_dir=str(out_dir), use_cpu=True, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_mini_batches=spec["num_mini_batches"],
        num_ppo_epochs=spec["ppo_epochs"], total_episodes=batch * steps,
        response_length=spec["max_new_tokens"], stop_token=None if fixed else "eos",
        temperature=1.0, learning_rate=1e-5, kl_coef=0.05, report_to="none",
        save_strategy="no", num_sample_generations=0, seed=0,
    )  # fmt: skip


# "As tuned": fp32 and no recomputation as on rlhfkit's side, the rollout's forwards in one
# batch, no loader workers, a log line per step, no progress bar.
def trl_tuned(spec: dict) -> dict:
    return dict(
        bf16=False, gradient_checkpointing=False, local_rollout_forward_batch_size=spec["batch"],
        dataloader_num_workers=0, logging_steps=1, disable_tqdm=True,
    )  # fmt: skip


TRL_SUSPECTS = {"bf16": ("bf16",), "ckpt": ("gradient_checkpointing",)}


def trl_config(spec: dict, variant: str, steps: int, out_dir: Path):
    from trl.experimental.ppo import PPOConfig

    needed = trl_needed(spec, steps, out_dir)
    return PPOConfig(**_models.trl_variant(variant, needed, trl_tuned(spec), TRL_SUSPECTS))


def run_trl(
    spec: dict, name: str, warmup: int, steps: int, out_dir: Path, variant: str = "trl"
) -> list[dict]:
    import torch
    import trl.experimental.ppo.ppo_trainer as pt
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOTrainer

    m = spec["models"][name]
    new, fixed = spec["max_new_tokens"], spec["workload"] == "fixed"
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
    if fixed:  # exactly `new` tokens, as rlhfkit's --ignore-eos (a real model does pick EOS)
        policy.generation_config.eos_token_id = None
    ref = AutoModelForCausalLM.from_pretrained(m["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(m["rm"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(m["rm"], dtype=torch.float32)
    roles["reward"] = reward
    data = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    args = trl_config(spec, variant, warmup + steps, out_dir)
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
    # What the settings did: bf16 autocast around the policy's forwards, checkpointing on it
    autocast: set[bool] = set()
    policy.register_forward_pre_hook(lambda *_: autocast.add(torch.is_autocast_enabled("cpu")))
    trainer.train()
    in_effect = {"bf16_autocast": any(autocast), "checkpointing": policy.is_gradient_checkpointing}
    records = []
    for i, ((w0, c0, a0), (w1, c1, a1)) in enumerate(itertools.pairwise(marks)):
        split = {k: a1[k] - a0[k] for k in acc}
        split["other"] = (w1 - w0) - sum(split.values())
        rec = {"step": i, "wall": w1 - w0, "cpu": c1 - c0, "response_len": lengths[i]}
        records.append({**rec, **split, **in_effect})
    assert len(records) == warmup + steps, f"{len(records)} steps recorded"
    return records[warmup:]


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def side_main(args) -> None:
    import torch

    torch.set_num_threads(1)
    spec = json.loads((Path(args.workdir) / "spec.json").read_text())
    result = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            if args.side == "ours":
                result[name] = run_ours(spec, name, args.warmup, args.steps, Path(tmp))
            else:
                steps = (args.warmup, args.steps, Path(tmp), args.trl_config)
                result[name] = run_trl(spec, name, *steps)
    result["versions"] = _versions(args.side)
    if args.side == "trl":  # what the configuration sets away from PPOConfig's defaults
        config = trl_config(spec, args.trl_config, args.warmup + args.steps, Path(args.workdir))
        result["trl_settings"] = _models.format_settings(_models.differs_from_defaults(config))
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


def _launch(config: str, python: str, args, workdir: Path, round_: int) -> dict:
    """One side's process: "ours", or a TRL configuration name."""
    side = "ours" if config == "ours" else "trl"
    result = workdir / f"{config}-{round_}.json"
    log = workdir / f"{config}-{round_}.log"
    cmd = [python, __file__, "--side", side, "--workdir", str(workdir), "--result", str(result)]
    cmd += ["--models", args.models, "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if side == "trl" and not args.peer_src:
        cmd += ["--trl-config", config]
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
        raise SystemExit(f"{config} side failed (rc {proc.returncode}), log {log}:\n{tail}")
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
    spec = setup(workdir, models, args.batch, args.new_tokens, args.workload, args.model)
    print(f"setup: {time.perf_counter() - t_start:.0f} s; models {spec['models']}", flush=True)
    print(_models.cpu_line(), flush=True)
    if args.peer_src:
        print(f"peer: rlhfkit from {args.peer_src} in the TRL columns", flush=True)
    trls = args.trl_configs
    rounds = []
    for r in range(args.rounds):
        order = ["ours", *trls] if r % 2 == 0 else [*trls[::-1], "ours"]
        res = {"uptime": _uptime()}
        for config in order:
            python = args.ours_python if config == "ours" else args.trl_python
            res[config] = _launch(config, python, args, workdir, r)
        rounds.append(res)
        line = []
        for name in models:
            o = res["ours"][name]
            for t in trls:  # CPU time: the load-robust ratio on shared cores
                ratio = _median(res[t][name], "cpu") / _median(o, "cpu")
                line.append(f"{name} vs {t} {ratio:.2f}x")
        print(
            f"round {r + 1} ({' then '.join(order)}; {res['uptime']}): CPU-time " + ", ".join(line)
        )
    info["uptime_end"] = _uptime()
    summary = {t: _report(rounds, models, spec, t) for t in trls}
    print(f"\nversions: ours {rounds[0]['ours']['versions']}, trl {rounds[0][trls[0]]['versions']}")
    print("TRL configurations: the PPOConfig fields each sets away from TRL's defaults")
    for t in trls:
        first = rounds[0][t][models[0]][0]
        effect = ", ".join(
            f"{k} {first[k]}" for k in ("bf16_autocast", "checkpointing") if k in first
        )
        print(f"  {t}: {rounds[0][t].get('trl_settings', '(peer)')}; in effect: {effect or '?'}")
    print(f"load at end: {info['uptime_end']}")
    print(f"total: {time.perf_counter() - t_start:.0f} s")
    if args.json:
        payload = {"machine": info, "args": vars(args), "spec": spec, "summary": summary}
        payload["rounds"] = rounds
        Path(args.json).write_text(json.dumps(payload, indent=1))


def _mean(records: list[dict], key: str) -> float:
    return statistics.fmean(r.get(key, float("nan")) for r in records)


def _report(rounds: list[dict], models: list[str], spec: dict, trl: str = "trl") -> dict:
    """Per-round ratios of rlhfkit against the TRL configuration `trl`, and the time split."""
    summary = {}
    for name in models:
        m = spec["models"][name]
        print(
            f"\n{name} against {trl}: hidden {m['hidden']} x {m['layers']} layers, "
            f"{m['params']:,} params"
        )
        print(
            f"{'round':>5} {'rlhfkit s/step':>14} {'TRL s/step':>11} {'ratio':>7} {'cpu ratio':>9}"
            f" {'resp. len ours / TRL':>21}"
        )
        ratios, cratios = [], []
        for i, res in enumerate(rounds):
            o, t = res["ours"][name], res[trl][name]
            ow, tw = _median(o, "wall"), _median(t, "wall")
            ratio, cratio = tw / ow, _median(t, "cpu") / _median(o, "cpu")
            ratios.append(ratio)
            cratios.append(cratio)
            lens = f"{_mean(o, 'response_len'):.1f} / {_mean(t, 'response_len'):.1f}"
            print(f"{i + 1:>5} {ow:14.3f} {tw:11.3f} {ratio:6.2f}x {cratio:8.2f}x {lens:>21}")
        med, cmed = statistics.median(ratios), statistics.median(cratios)
        print(f"{'median':>5} {'':14s} {'':11s} {med:6.2f}x {cmed:8.2f}x")
        split = {}
        for side in ("ours", trl):
            split[side] = {
                ph: statistics.median(_median(res[side][name], ph) for res in rounds)
                for ph in PHASES
            }
            for key in ("wall", "cpu"):
                split[side][key] = statistics.median(
                    _median(res[side][name], key) for res in rounds
                )
        print("time split, s/step (median over rounds of per-round medians; CPU: process time):")
        print(f"{'side':8s} " + " ".join(f"{p:>10s}" for p in (*PHASES, "wall", "cpu")))
        for side, label in (("ours", "rlhfkit"), (trl, "TRL")):
            cells = " ".join(f"{split[side][p]:10.3f}" for p in (*PHASES, "wall", "cpu"))
            print(f"{label:8s} {cells}")
        summary[name] = {"ratios": ratios, "cpu_ratios": cratios, "median": med}
        summary[name].update(cpu_median=cmed, split=split)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", choices=list(WORKLOADS), default="fixed", help="see above")
    ap.add_argument("--models", default=None, help="default: the workload's")
    _models.add_model_option(ap, "--models")
    ap.add_argument(
        "--trl-configs",
        default=None,
        help="comma-separated; "
        + _models.variant_names_help(TRL_SUSPECTS)
        + ". Default: trl; with --model: trl,trl-shipped",
    )
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
    ap.add_argument("--trl-config", default="trl", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    models, batch, new, _, _ = WORKLOADS[args.workload]
    args.models = args.models or models
    if args.model:
        _models.check_model_dir(args.model)
        args.models = _models.label(args.model)
    default = "trl,trl-shipped" if args.model else "trl"
    args.trl_configs = (args.trl_configs or default).split(",")
    if not all(_models.is_trl_variant(t, TRL_SUSPECTS) for t in args.trl_configs):
        sys.exit(f"--trl-configs: unknown name in {args.trl_configs} (see --help)")
    if args.peer_src and args.trl_configs != ["trl"]:
        sys.exit("--peer-src compares with one peer: --trl-configs trl")
    args.batch, args.new_tokens = args.batch or batch, args.new_tokens or new
    if args.side:
        side_main(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
