"""Reward-model training throughput on K-wise rankings: rlhfkit's `fit_rm` (K-wise loss, one
forward per response) against TRL's `RewardTrainer` on the same rankings expanded into
C(K,2) (chosen, rejected) pairs. One process.

    bash bench/setup_trl_venv.sh                     # once: bench/.venv-trl (TRL + rlhfkit)
    OMP_NUM_THREADS=1 bench/.venv-trl/bin/python bench/rm_vs_trl.py --rounds 3   # ~3 min
    OMP_NUM_THREADS=1 bench/.venv-trl/bin/python bench/rm_vs_trl.py \\
        --model /work/models/smollm2-135m-instruct --ks 2,4   # a pretrained model's RM

Data, per K:
  K = 2   pairwise preferences on realistic, variable-length text (HH-RLHF-like): a
          context of 16-192 tokens (log-uniform) of world corpus text before the world
          prompt, and each of chosen / rejected a world answer followed by 2-64 tokens
          (log-uniform, independently) of corpus text; sequences 20-256 tokens. Padding is a
          large share of a padded batch here, as on real preference data.
  K > 2   the world's short prompts with K synthetic responses (about 11-41 tokens).

What is the same on both sides: the reward model (the `tiny` preset LM built from seed 0,
or with `--model DIR` that existing causal LM folder, turned into a sequence-classification
model by `init_reward_model`, which gives a tokenizer whose pad is its EOS a pad token of
its own; TRL loads that exact model and tokenizer back from the saved RM folder with
`AutoModelForSequenceClassification` / `AutoTokenizer.from_pretrained`), the tokenizer and
the token sequences (`[bos] + prompt + response + [eos]`, encoded once by rlhfkit's
`encode_rankings`; TRL gets them pre-tokenized as `chosen_ids` / `rejected_ids`), fp32, no
gradient checkpointing, AdamW with the same lr / betas / weight decay / clipping and a
constant schedule, one torch thread, and the work per optimizer step: the same B prompts
(rlhfkit's seeded epoch order; TRL reads its pairs in that order with the sequential
sampler), i.e. all B * C(K,2) comparisons of those prompts, so both take the same optimizer
step on the same loss (mean over the step's pairs; every prompt has C(K,2) of them).

Configurations:
  rlhfkit     `fit_rm`, batch_size B prompts: one forward over the B*K responses, as
              `rlhfkit rm` runs it: padding-free packed rows where the model keeps packed
              sequences apart (Llama here: `resolve_packing`), else right-padded
  rlhfkit-padded  the same with --no-packing (right-padded batches; not in the default set)
  trl         `RewardTrainer` as tuned (TRL_TUNED pinned: fp32, no gradient checkpointing,
              betas, ...), per_device_train_batch_size = B*C(K,2) pairs, no
              accumulation: one forward over 2*B*C(K,2) sequences (chosen then rejected)
  trl-shipped `RewardTrainer` as shipped: RewardConfig's defaults (bf16 autocast, gradient
              checkpointing, ...) except trl_needed (CPU, steps, the batch of `trl`, lr
              and schedule, sequential order, no saving)
  trl+S, trl-shipped-S  one suspect S (TRL_SUSPECTS: bf16, ckpt) flipped: tuned with S at
              TRL's default, or shipped with S as tuned (bench/_models.py)
  trl-accum   `RewardTrainer` at its default per-device batch of 8 pairs with
              gradient_accumulation_steps = B*C(K,2)/8: the same pairs per optimizer step in
              smaller micro-batches (less padding per forward, more Python per step)

"Prompts/s" is the same on both sides: prompts whose C(K,2) comparisons were all trained
on, per second of training-step wall time; for TRL that is pairs/s / C(K,2). Seconds run
from the end of the untimed warm-up optimizer step(s) to the end of the last timed one
(after each optimizer step: rlhfkit's `optimizer_step`, TRL's `on_step_end` callback), so
world, tokenizer, model building, trainer construction and saving are not timed. Each
configuration is a fresh run; configurations alternate (rotated per round), and the ratio
is rlhfkit's prompts/s over each TRL configuration's in the same round and K. Process CPU
seconds are reported beside wall seconds: on shared cores they are the load-robust view.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import _models


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ks", default="2,4,9", help="comma-separated ranking sizes K")
    _models.add_model_option(p, "the tiny preset")
    p.add_argument("--batch-prompts", type=int, default=8, help="prompts per optimizer step (B)")
    p.add_argument(
        "--steps",
        default="2=16,4=12,9=3",
        help="timed optimizer steps per run, per K (K=steps,...; a bare number for all K)",
    )
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per run")
    p.add_argument("--rounds", type=int, default=3, help="fresh runs per configuration and K")
    p.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--trl-micro", type=int, default=8, help="pairs per micro-batch in trl-accum")
    p.add_argument(
        "--configs",
        default=None,
        help="comma-separated, 'rlhfkit' included: rlhfkit-padded, trl-accum (tuned) and "
        + _models.variant_names_help(TRL_SUSPECTS)
        + ". Default: rlhfkit,trl,trl-accum; with --model: rlhfkit,trl,trl-shipped",
    )
    p.add_argument("--n-prompts", type=int, default=400, help="rankings built from the world")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write all rows here")
    args = p.parse_args()
    args.ks = [int(k) for k in args.ks.split(",")]
    if "=" in args.steps:
        args.steps = {int(k): int(v) for k, v in (x.split("=") for x in args.steps.split(","))}
    else:
        args.steps = {k: int(args.steps) for k in args.ks}
    missing = [k for k in args.ks if k not in args.steps]
    if missing:
        sys.exit(f"--steps gives no step count for K = {missing}")
    if args.model:
        _models.check_model_dir(args.model)
    default = "rlhfkit,trl,trl-shipped" if args.model else "rlhfkit,trl,trl-accum"
    args.configs = (args.configs or default).split(",")
    if not all(known(c) for c in args.configs) or "rlhfkit" not in args.configs:
        sys.exit(f"--configs must include 'rlhfkit', the others known (see --help): {args.configs}")
    return args


# --------------------------------------------------------------------------------------
# Data: the world's prompts with K synthetic responses each and a random ranking
# --------------------------------------------------------------------------------------


def synthetic_responses(prompt: str, k: int, others: list[str], rng: random.Random) -> list[str]:
    """K distinct responses: the reference answer, wrong answers (other prompts'), filler,
    refusals, repetitions. Only their lengths matter here (about 1-30 tokens)."""
    from rlhfkit.world import reference_answer
    from rlhfkit.world.base import REFUSAL, VERBOSE_PREFIXES, VERBOSE_SUFFIXES

    right = reference_answer(prompt)

    def variant() -> str:
        a = right if rng.random() < 0.4 else reference_answer(rng.choice(others))
        kind = rng.randrange(5)
        if kind == 0:
            return a
        if kind == 1:
            return rng.choice(VERBOSE_PREFIXES) + a
        if kind == 2:
            return a + rng.choice(VERBOSE_SUFFIXES)
        if kind == 3:
            return rng.choice(VERBOSE_PREFIXES) + a + rng.choice(VERBOSE_SUFFIXES)
        return rng.choice([REFUSAL, f"{a} {a}", f"{a}{rng.choice(VERBOSE_SUFFIXES)} {REFUSAL}"])

    out = {" " + right}
    while len(out) < k:
        out.add(" " + variant())
    responses = sorted(out)
    rng.shuffle(responses)
    return responses


def log_uniform_int(rng: random.Random, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def realistic_pairs(prompts: list[str], stream: list[int], tokenizer, rng: random.Random):
    """K = 2 records on variable-length text (module docstring): the lengths of real
    preference data, where a padded batch is largely padding."""
    from rlhfkit.data.records import RankingRecord
    from rlhfkit.world import reference_answer

    def text(n: int) -> str:
        start = rng.randrange(len(stream) - n)
        return tokenizer.decode(stream[start : start + n], skip_special_tokens=True).strip()

    records = []
    for i, prompt in enumerate(prompts):
        context = text(log_uniform_int(rng, 16, 192))
        answer = " " + reference_answer(prompt)
        responses = [answer + " " + text(log_uniform_int(rng, 2, 64)) for _ in range(2)]
        ranking = [0, 1] if rng.random() < 0.5 else [1, 0]
        records.append(
            RankingRecord(f"{context}\n{prompt}", responses, ranking, line=i + 1, source="pairs")
        )
    return records


def setup(work: Path, args) -> dict:
    from rlhfkit.data.records import RankingRecord
    from rlhfkit.data.reward_data import encode_rankings, resolve_margin_table
    from rlhfkit.models.load import load_tokenizer
    from rlhfkit.models.presets import build_model, train_tokenizer
    from rlhfkit.models.reward import ensure_distinct_pad, init_reward_model

    _models.world(work)
    texts = [json.loads(line)["text"] for line in open(work / "world" / "corpus.jsonl")]
    prompts = [json.loads(line)["prompt"] for line in open(work / "world" / "prompts_train.jsonl")]
    prompts = prompts[: args.n_prompts]

    if args.model:  # an existing causal LM and its own tokenizer
        lm_dir, rm_dir = Path(args.model), work / f"rm-{_models.label(args.model)}"
        tokenizer = load_tokenizer(lm_dir)  # as `rlhfkit rm` loads it
    else:
        lm_dir, rm_dir = work / "lm-tiny", work / "rm-tiny"
        tokenizer = train_tokenizer(texts, vocab_size=2048)
        assert not ensure_distinct_pad(tokenizer), "the preset tokenizer pads with its own token"
        build_model("tiny", tokenizer, seed=0).save_pretrained(lm_dir)
        tokenizer.save_pretrained(lm_dir)
    # A pad that is EOS gets a pad token of its own here (SmolLM2: <|rm_pad|>): from now on
    # `tokenizer` is the RM's, which encodes the data and is saved beside the RM for TRL.
    rm, tokenizer = init_reward_model(lm_dir, tokenizer, seed=0)
    rm.save_pretrained(rm_dir)  # what TRL loads: the very weights fit_rm starts from
    tokenizer.save_pretrained(rm_dir)
    del rm

    stream = [t for line in texts[:2000] for t in tokenizer(line)["input_ids"]]
    data = {}
    for k in args.ks:
        rng = random.Random(k)
        records = []
        if k == 2:
            records = realistic_pairs(prompts, stream, tokenizer, rng)
        for i, prompt in enumerate(prompts if k > 2 else []):
            responses = synthetic_responses(prompt, k, prompts, rng)
            ranking = list(range(k))
            rng.shuffle(ranking)
            records.append(
                RankingRecord(prompt, responses, ranking, line=i + 1, source="synthetic")
            )
        examples, _ = encode_rankings(
            records,
            tokenizer,
            max_len=256,
            margin_table=resolve_margin_table("none"),
            overlong="truncate" if k == 2 else "error",  # K = 2: a long context loses its start
        )
        lengths = [len(s) for ex in examples for s in ex.sequences]
        assert all(len(ex.pairs) == math.comb(k, 2) for ex in examples)
        data[k] = {
            "examples": examples,
            "tokens_min": min(lengths),
            "tokens_mean": statistics.mean(lengths),
            "tokens_max": max(lengths),
        }
    return {"tokenizer": tokenizer, "lm_dir": lm_dir, "rm_dir": rm_dir, "data": data}


# --------------------------------------------------------------------------------------
# Timing: the end of each optimizer step; what each step's batches held
# --------------------------------------------------------------------------------------


class StepClock:
    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.cpu_ends: list[float] = []  # process CPU time: robust to other processes' load
        self.batches: list[dict] = []  # per collated micro-batch, in order

    def tick(self) -> None:
        self.step_ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def count(self, input_ids: torch.Tensor, tokens: int, sequences: int, pairs: int) -> None:
        self.batches.append(
            {
                "rows": int(input_ids.shape[0]),  # forward rows (packed: fewer than sequences)
                "sequences": sequences,
                "cells": int(input_ids.numel()),
                "tokens": tokens,
                "pairs": pairs,
            }
        )

    def result(self, warmup: int, steps: int, micro_per_step: int) -> dict:
        if len(self.step_ends) != warmup + steps:
            raise RuntimeError(f"expected {warmup + steps} steps, saw {len(self.step_ends)}")
        # Micro-batch j feeds step j // micro_per_step; later entries are a loader's prefetch.
        timed = self.batches[warmup * micro_per_step : (warmup + steps) * micro_per_step]
        keys = ("rows", "sequences", "cells", "tokens", "pairs")
        out = {k: sum(b[k] for b in timed) for k in keys}
        out["seconds"] = self.step_ends[-1] - self.step_ends[warmup - 1]
        out["cpu_seconds"] = self.cpu_ends[-1] - self.cpu_ends[warmup - 1]
        ends, cpus = self.step_ends[warmup - 1 :], self.cpu_ends[warmup - 1 :]
        out["step_seconds"] = [round(b - a, 4) for a, b in itertools.pairwise(ends)]
        out["step_cpu_seconds"] = [round(b - a, 4) for a, b in itertools.pairwise(cpus)]
        return out


def run_rlhfkit(ctx: dict, k: int, args, packing: bool | None = None) -> dict:
    import rlhfkit.loops.reward.train as rw
    from rlhfkit.config import RMConfig
    from rlhfkit.loops.trainer import Trainer
    from rlhfkit.models.fast_linear import use_onednn_linears
    from rlhfkit.models.reward import init_reward_model

    clock = StepClock()
    orig_step, orig_collate = Trainer.optimizer_step, rw.collate_rankings

    def timed_step(self):
        out = orig_step(self)
        clock.tick()
        return out

    def counting_collate(examples, pad_id, *a, **kw):
        batch = orig_collate(examples, pad_id, *a, **kw)
        n_seqs = sum(len(ex.sequences) for ex in examples)
        tokens = sum(len(s) for ex in examples for s in ex.sequences)
        clock.count(batch.input_ids, tokens, n_seqs, int(batch.pairs.shape[0]))
        return batch

    steps = args.warmup_steps + args.steps[k]
    out = args.work / f"run-rlhfkit-k{k}"
    opts = RMConfig(
        model=str(ctx["lm_dir"]),
        data=("synthetic",),
        out=str(out),
        overwrite=True,
        device="cpu",
        batch_size=args.batch_prompts,
        grad_accum=1,
        max_steps=steps,
        lr=args.lr,
        schedule="constant",
        warmup_steps=0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        log_every=10,
        seed=0,
    )
    model, tokenizer = init_reward_model(ctx["lm_dir"], ctx["tokenizer"], seed=0)
    use_onednn_linears(model)  # as `rlhfkit rm` (train_rm) does; RLHFKIT_ONEDNN=0: off
    with contextlib.redirect_stdout(io.StringIO()):
        packed = rw.resolve_packing(model, packing)  # as train_rm: probe, auto = on for Llama
    run = rw.RMRun(model, tokenizer, ctx["data"][k]["examples"], out=out, packing=packed)
    Trainer.optimizer_step, rw.collate_rankings = timed_step, counting_collate
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            summary = rw.fit_rm(run, opts)
    finally:
        Trainer.optimizer_step, rw.collate_rankings = orig_step, orig_collate
    assert summary["steps"] == steps and summary["packing"] is packed
    result = clock.result(args.warmup_steps, args.steps[k], 1)
    result["packing"] = packed
    from rlhfkit.loops.common import build_optimizer

    probe = build_optimizer(torch.nn.Linear(2, 2), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    result["optim"] = f"build_optimizer: torch.optim.AdamW, fused={probe.defaults.get('fused')}"
    return result


def trl_dataset(ctx: dict, k: int):
    """Every ranking's C(K,2) (chosen, rejected) pairs, prompts in rlhfkit's epoch-0 order."""
    from datasets import Dataset

    from rlhfkit.loops.common import epoch_order

    examples = ctx["data"][k]["examples"]
    rows = []
    for i in epoch_order(len(examples), seed=0, epoch=0):
        ex = examples[i]
        for win, lose in ex.pairs:
            rows.append({"chosen_ids": ex.sequences[win], "rejected_ids": ex.sequences[lose]})
    return Dataset.from_list(rows)


# What every TRL configuration sets: to run here at all, and the same work per step as
# rlhfkit's (pairs of the same prompts, in its order), learning rate and schedule.
def trl_needed(args, k: int, micro: int, pairs_per_step: int) -> dict:
    return dict(
        output_dir=str(args.work / f"run-trl-k{k}"),
        use_cpu=True,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=pairs_per_step // micro,
        train_sampling_strategy="sequential",  # the same prompts per step as rlhfkit
        max_steps=args.warmup_steps + args.steps[k],
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=0,
    )


# "As tuned": the same arithmetic as rlhfkit's side (fp32, no recomputation, its optimizer).
TRL_TUNED = dict(
    bf16=False,  # TRL defaults to bf16 autocast: fp32 here, as on our side
    fp16=False,
    gradient_checkpointing=False,  # TRL defaults to gradient checkpointing
    adam_beta1=0.9,
    adam_beta2=0.95,
    weight_decay=0.0,
    max_grad_norm=1.0,
    logging_steps=10,
    max_length=None,
)
TRL_SUSPECTS = {"bf16": ("bf16", "fp16"), "ckpt": ("gradient_checkpointing",)}


def run_trl(ctx: dict, k: int, args, variant: str) -> dict:
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    clock = StepClock()

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, *a, **kw):
            clock.tick()

    pairs_per_step = args.batch_prompts * math.comb(k, 2)
    micro = args.trl_micro if variant == "trl-accum" else pairs_per_step
    if pairs_per_step % micro:
        raise SystemExit(f"--trl-micro {micro} does not divide {pairs_per_step} pairs per step")
    steps = args.warmup_steps + args.steps[k]
    needed = trl_needed(args, k, micro, pairs_per_step)
    name = "trl" if variant == "trl-accum" else variant
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = RewardConfig(**_models.trl_variant(name, needed, TRL_TUNED, TRL_SUSPECTS))
        pins = _models.differs_from_defaults(config)
        model = AutoModelForSequenceClassification.from_pretrained(
            ctx["rm_dir"], dtype=torch.float32
        )
    tokenizer = AutoTokenizer.from_pretrained(ctx["rm_dir"])  # saved beside the RM
    assert tokenizer.pad_token_id == ctx["tokenizer"].pad_token_id == model.config.pad_token_id
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = RewardTrainer(
            model=model,
            args=config,
            train_dataset=trl_dataset(ctx, k),
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
    collator = trainer.data_collator

    def counting_collator(features):
        batch = collator(features)
        mask = batch["attention_mask"]
        clock.count(batch["input_ids"], int(mask.sum()), int(mask.shape[0]), len(features))
        return batch

    trainer.data_collator = counting_collator
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.train()
    checkpointing = getattr(trainer.model, "is_activation_checkpointing", None)
    if checkpointing is None:
        checkpointing = trainer.model.is_gradient_checkpointing
    assert checkpointing == config.gradient_checkpointing, "TRL changed gradient checkpointing"
    assert trainer.state.global_step == steps
    assert next(trainer.model.parameters()).dtype == torch.float32  # bf16: autocast only
    result = clock.result(args.warmup_steps, args.steps[k], pairs_per_step // micro)
    result["optim"] = str(trainer.args.optim)
    result["trl_settings"] = _models.format_settings(pins)
    return result


CONFIGS = {
    "rlhfkit": ("rlhfkit", "fit_rm, K-wise", lambda c, k, a: run_rlhfkit(c, k, a)),
    "rlhfkit-padded": (
        "rlhfkit",
        "fit_rm, K-wise, --no-packing",
        lambda c, k, a: run_rlhfkit(c, k, a, False),
    ),
    "trl": ("trl", "RewardTrainer, 1 micro-batch", lambda c, k, a: run_trl(c, k, a, "trl")),
    "trl-accum": (
        "trl",
        "RewardTrainer, grad accum",
        lambda c, k, a: run_trl(c, k, a, "trl-accum"),
    ),
}


def config_entry(name: str) -> tuple:
    """(library, description, run function) of a configuration name."""
    if name in CONFIGS:
        return CONFIGS[name]
    desc = "RewardTrainer " + _models.variant_description(name, TRL_SUSPECTS)
    return ("trl", desc, lambda c, k, a: run_trl(c, k, a, name))


def known(name: str) -> bool:
    return name in CONFIGS or _models.is_trl_variant(name, TRL_SUSPECTS)


def check_same_model(ctx: dict) -> float:
    """Largest |difference| between the weights fit_rm starts from and TRL's."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.reward import init_reward_model

    ours, _ = init_reward_model(ctx["lm_dir"], ctx["tokenizer"], seed=0)
    theirs = AutoModelForSequenceClassification.from_pretrained(ctx["rm_dir"], dtype=torch.float32)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys(), set(a) ^ set(b)
    assert type(ours) is type(theirs)
    assert ours.config._attn_implementation == theirs.config._attn_implementation
    return max(float((a[n] - b[n]).abs().max()) for n in a)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import transformers
    import trl

    flags = next(
        (ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), []
    )
    isa = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "vnni", "sse4"))]
    return {
        "cpu": cpu,
        "isa": " ".join(isa),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_all(ctx: dict, args) -> list[dict]:
    rows, names = [], args.configs
    for k in args.ks:
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                if name == "trl-accum" and args.batch_prompts * math.comb(k, 2) == args.trl_micro:
                    continue  # one micro-batch of --trl-micro pairs: the `trl` run itself
                torch.set_num_threads(args.threads)
                res = config_entry(name)[2](ctx, k, args)
                assert torch.get_num_threads() == args.threads
                pairs_per_prompt = math.comb(k, 2)
                res.update(round=r, k=k, config=name, steps=args.steps[k])
                res["prompts"] = res["pairs"] / pairs_per_prompt
                assert res["prompts"] == args.batch_prompts * args.steps[k], res
                res["prompts_per_s"] = res["prompts"] / res["seconds"]
                res["prompts_per_cpu_s"] = res["prompts"] / res["cpu_seconds"]
                rows.append(res)
                print(
                    f"  K={k} round {r} {name:13s} {res['prompts_per_s']:7.2f} prompts/s wall, "
                    f"{res['prompts_per_cpu_s']:7.2f} /cpu-s; {res['sequences'] / res['prompts']:.0f} "
                    f"seqs/prompt in {res['rows']} rows, pad {1 - res['tokens'] / res['cells']:.0%} "
                    f"(load {load()})",
                    flush=True,
                )
    for row in rows:
        base = next(
            x
            for x in rows
            if (x["round"], x["k"], x["config"]) == (row["round"], row["k"], "rlhfkit")
        )
        row["speedup"] = base["prompts_per_s"] / row["prompts_per_s"]  # rlhfkit over this config
        row["speedup_cpu"] = base["prompts_per_cpu_s"] / row["prompts_per_cpu_s"]
    return rows


def report(rows: list[dict], args) -> dict:
    print(
        f"\nB = {args.batch_prompts} prompts (all their C(K,2) pairs) per optimizer step, "
        f"{args.warmup_steps} warm-up step(s) untimed, fp32, {args.threads} torch thread(s); "
        "ratio = rlhfkit prompts/s over this configuration's, same K and round"
    )
    print(
        "| K | side | config | round | steps | prompts | seqs/prompt | real tokens | padded cells "
        "| seconds | prompts/s | ratio | CPU s | ratio (CPU time) |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = sorted(rows, key=lambda x: (x["k"], args.configs.index(x["config"]), x["round"]))
    for row in rows:
        lib, desc, _ = config_entry(row["config"])
        print(
            f"| {row['k']} | {lib} | {desc} | {row['round']} | {row['steps']} | {row['prompts']:.0f} "
            f"| {row['sequences'] / row['prompts']:.0f} | {row['tokens']} | {row['cells']} "
            f"| {row['seconds']:.2f} | {row['prompts_per_s']:.1f} | {row['speedup']:.2f}x "
            f"| {row['cpu_seconds']:.2f} | {row['speedup_cpu']:.2f}x |"
        )
    summary = {}
    print("\nmedian over rounds (ratio = rlhfkit over the configuration):")
    for k in args.ks:
        for name in args.configs:
            sel = [x for x in rows if x["k"] == k and x["config"] == name]
            if not sel:
                continue
            med = {
                key: statistics.median(x[key] for x in sel)
                for key in ("prompts_per_s", "speedup", "speedup_cpu")
            }
            summary[f"K{k}/{name}"] = med
            print(
                f"  K={k} {name:13s} {med['prompts_per_s']:7.2f} prompts/s  ratio {med['speedup']:.2f}x"
                f"  (CPU time {med['speedup_cpu']:.2f}x)"
            )
    print("\nTRL configurations: the RewardConfig fields each sets away from TRL's defaults")
    for name in args.configs:
        settings = [x["trl_settings"] for x in rows if x["config"] == name and "trl_settings" in x]
        if settings:
            print(f"  {name} (K = {rows[-1]['k']}): {settings[-1]}")
    return summary


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    info = machine()
    print(
        f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}; "
        f"{info['nproc']} x {info['cpu']}; torch threads {args.threads}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; load {load()}",
        flush=True,
    )
    print(f"CPU instruction sets (/proc/cpuinfo flags): {info['isa']}", flush=True)
    print(_models.cpu_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(args.out) if args.out else Path(tmp)
        args.work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        ctx = setup(args.work, args)
        if args.model:
            from rlhfkit.models.load import load_tokenizer

            print(_models.describe(args.model, load_tokenizer(args.model)))
        tok = ctx["tokenizer"]
        print(
            f"reward model: {ctx['rm_dir']}, {len(tok)} tokens, pad {tok.pad_token!r} (id {tok.pad_token_id})"
        )
        diff = check_same_model(ctx)
        print(f"same RM weights on both sides: max |diff| {diff:.1e}")
        for k, d in ctx["data"].items():
            print(
                f"K={k}: {len(d['examples'])} rankings, {math.comb(k, 2)} pairs each; sequence "
                f"(bos+prompt+response+eos) tokens min {d['tokens_min']} / mean "
                f"{d['tokens_mean']:.1f} / max {d['tokens_max']}",
                flush=True,
            )
        rows = run_all(ctx, args)
        total = time.perf_counter() - t0
    summary = report(rows, args)
    optims = {row["config"]: row["optim"] for row in rows}
    print(f"optimizers: {optims}")
    print(f"total benchmark time {total:.0f}s; load now {load()}")
    if args.json:
        result = {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "rows": rows,
            "median": summary,
            "total_s": total,
        }
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
