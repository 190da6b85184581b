"""SFT training throughput: rlhfkit's `train_sft` against TRL's `SFTTrainer`, one process.

    bash bench/setup_trl_venv.sh                      # once: bench/.venv-trl (TRL + rlhfkit)
    bench/.venv-trl/bin/python bench/sft_vs_trl.py    # ~2-4 min on 2 CPU cores
    OMP_NUM_THREADS=1 bench/.venv-trl/bin/python bench/sft_vs_trl.py \\
        --model /work/models/smollm2-135m-instruct     # a pretrained model (bench/_models.py)

Same model (rlhfkit presets, built from the same seed, or `--model DIR`: an existing
Hugging Face causal LM folder and its own tokenizer), same data (the built-in world's
sft.jsonl, prompt-masked completion-only loss), same tokenizer, fp32, no gradient
checkpointing, same micro-batch size, same step count, same AdamW hyper-parameters and
warmup + cosine-to-10% schedule, same thread count. Configurations:

  rlhfkit              `train_sft` defaults: padding-free packed micro-batches (rows of at
                       most --max-len tokens, nearly equally full), the LM head run on the
                       label positions only, oneDNN linears only on AVX-512 CPUs
  rlhfkit-padded       the same with packing=False (right-padded micro-batches)
  trl                  `SFTTrainer` as tuned: its defaults (padded batches, fused AdamW,
                       fused LM head, entropy/accuracy metrics) with the settings above
                       pinned (trl_tuned: fp32, no gradient checkpointing, betas, ...)
  trl-padding-free     the same with TRL's own `padding_free=True` (no packing)
  trl-shipped          `SFTTrainer` as shipped: SFTConfig's defaults (bf16 autocast,
                       gradient checkpointing, AdamW betas (0.9, 0.999), max_length 1024)
                       except trl_needed (CPU, steps, batch, lr and schedule, no saving)
  trl+S, trl-shipped-S one suspect S (TRL_SUSPECTS: bf16, ckpt) flipped: tuned with S at
                       TRL's default, or shipped with S as tuned (bench/_models.py)
The fields each TRL configuration sets away from SFTConfig's defaults are printed.

Tokens are the real (non-pad) tokens of the examples each step consumed: for every
example, len(BOS + prompt + completion + EOS); padding never counts. Seconds are wall time
from the end of the last warm-up optimizer step to the end of the last timed one (both
sides timed by the same hook: after each optimizer step), so model loading, tokenization,
trainer construction and the final checkpoint are excluded. Each configuration is a fresh
run; rounds rotate the order of configurations so load drift hits them alike, and the
reported ratio is the median over rounds of tokens/s vs TRL default in the same round.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
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
    p.add_argument("--presets", default="tiny,small", help="comma-separated rlhfkit presets")
    _models.add_model_option(p, "--presets")
    p.add_argument(
        "--data",
        choices=["sft", "corpus"],
        default="sft",
        help="sft: the world's sft.jsonl (short, 11-36 tokens); corpus: longer records "
        "cut from the world's corpus documents (48-177 tokens)",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=256, help="sequence cap (no example exceeds it)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps per run")
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--rounds", type=int, default=3, help="fresh runs per configuration")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (1: robust when other processes share the cores)",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--configs",
        default=None,
        help="comma-separated, 'trl' included (the baseline): rlhfkit, rlhfkit-padded, "
        "trl-padding-free and "
        + _models.variant_names_help(TRL_SUSPECTS)
        + ". Default: rlhfkit,rlhfkit-padded,trl,trl-padding-free; with --model: "
        "rlhfkit,trl,trl-shipped",
    )
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


# --------------------------------------------------------------------------------------
# Shared setup: world, tokenizer, model folders
# --------------------------------------------------------------------------------------


def corpus_as_sft(corpus: Path, out: Path, n: int) -> Path:
    """Longer SFT records (--data corpus): each world corpus document cut after its first
    "A:", the rest (several Q/A pairs; 48-177 tokens, mean ~100) being the completion."""
    with open(corpus) as src, open(out, "w") as dst:
        kept = 0
        for line in src:
            text = json.loads(line)["text"]
            cut = text.find("\nA:")
            if cut < 0:
                continue
            cut += len("\nA:")
            dst.write(json.dumps({"prompt": text[:cut], "completion": text[cut:]}) + "\n")
            kept += 1
            if kept == n:
                break
    return out


def setup(
    work: Path, presets: list[str], max_len: int, data: str = "sft", model: str | None = None
) -> dict:
    """World, tokenizer and model folders: a folder per preset (a tokenizer trained on the
    world's corpus), or `model`, an existing folder, with its own tokenizer."""
    from rlhfkit.data.records import read_sft
    from rlhfkit.data.tokenize import encode_sft_many
    from rlhfkit.models.load import load_tokenizer
    from rlhfkit.models.presets import build_model, train_tokenizer

    _models.world(work)
    if model is not None:
        tokenizer = load_tokenizer(model)  # as train_sft loads it
        presets = []
    else:
        texts = [json.loads(line)["text"] for line in open(work / "world" / "corpus.jsonl")]
        tokenizer = train_tokenizer(texts, vocab_size=2048)
    sft_path = work / "world" / "sft.jsonl"
    if data == "corpus":
        sft_path = corpus_as_sft(work / "world" / "corpus.jsonl", work / "corpus_sft.jsonl", 2000)
    records = read_sft(sft_path)
    examples, stats = encode_sft_many(records, tokenizer, max_len, overlong="error")
    models = {_models.label(model): Path(model)} if model is not None else {}
    for preset in presets:
        folder = work / f"model-{preset}"
        model = build_model(preset, tokenizer, seed=0)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        models[preset] = folder
    return {
        "tokenizer": tokenizer,
        "records": records,
        "sft_path": sft_path,
        "rlhfkit_examples": examples,
        "models": models,
        "built": set(presets),  # rebuilt in memory for TRL; the others loaded from the folder
    }


# --------------------------------------------------------------------------------------
# Timing: the end of every optimizer step, and the real tokens of every batch in order
# --------------------------------------------------------------------------------------


class StepClock:
    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.cpu_ends: list[float] = []  # process CPU time (all threads): robust to load
        self.batch_tokens: list[int] = []  # one entry per collated micro-batch, in order

    def tick(self) -> None:
        self.step_ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())

    def result(self, warmup: int, steps: int) -> dict:
        if len(self.step_ends) != warmup + steps:
            raise RuntimeError(f"expected {warmup + steps} steps, saw {len(self.step_ends)}")
        # Batch k feeds step k (grad_accum 1); later entries are a loader's prefetch.
        return {
            "tokens": sum(self.batch_tokens[warmup : warmup + steps]),
            "seconds": self.step_ends[-1] - self.step_ends[warmup - 1],
            "cpu_seconds": self.cpu_ends[-1] - self.cpu_ends[warmup - 1],
        }


def run_rlhfkit(ctx: dict, preset: str, args, packing: bool) -> dict:
    import rlhfkit.loops.lm as lm
    from rlhfkit.config import SFTConfig
    from rlhfkit.loops.sft import train_sft

    try:  # since issue 11 the step lives in the training skeleton (loops/trainer.py)
        import rlhfkit.loops.trainer as stepper
    except ImportError:
        stepper = lm
    clock = StepClock()
    orig_step, orig_packed, orig_right = (
        stepper.optimizer_step,
        lm.collate_packed,
        lm.collate_right,
    )

    def timed_step(*a, **k):
        out = orig_step(*a, **k)
        clock.tick()
        return out

    expected = {tuple(ex.input_ids) for ex in ctx["rlhfkit_examples"]}

    def counting(fn):
        def collate(examples, *a, **k):
            # train_sft encodes on its own: the sequences TRL was checked against, or stop
            assert all(tuple(ex.input_ids) in expected for ex in examples), (
                "train_sft encoded differently"
            )
            clock.batch_tokens.append(sum(len(ex.input_ids) for ex in examples))
            return fn(examples, *a, **k)

        return collate

    cfg = SFTConfig(
        model=str(ctx["models"][preset]),
        data=str(ctx["sft_path"]),
        out=str(args.work / f"run-rlhfkit-{preset}"),
        overwrite=True,
        device="cpu",
        batch_size=args.batch_size,
        grad_accum=1,
        max_len=args.max_len,
        max_steps=args.warmup_steps + args.steps,
        lr=args.lr,
        warmup_steps=10,
        schedule="cosine",
        min_lr_ratio=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        log_every=10,
        packing=packing,
        seed=0,
    )
    stepper.optimizer_step = timed_step
    lm.collate_packed, lm.collate_right = counting(orig_packed), counting(orig_right)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            summary = train_sft(cfg)
    finally:
        stepper.optimizer_step = orig_step
        lm.collate_packed, lm.collate_right = orig_packed, orig_right
    assert summary["steps"] == args.warmup_steps + args.steps
    return clock.result(args.warmup_steps, args.steps)


def trl_dataset(ctx: dict):
    from datasets import Dataset

    # rlhfkit encodes [BOS] + prompt + completion + [EOS]; TRL adds EOS itself but no BOS
    # (our tokenizer adds no special tokens), so the prompt carries the BOS as text.
    bos = ctx["tokenizer"].bos_token
    rows = [{"prompt": bos + r.prompt, "completion": r.completion} for r in ctx["records"]]
    return Dataset.from_list(rows)


def run_trl(ctx: dict, preset: str, args, variant: str) -> dict:
    import transformers
    from trl import SFTTrainer

    from rlhfkit.models.presets import build_model

    clock = StepClock()

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.tick()

    tokenizer = ctx["tokenizer"]
    if preset in ctx["built"]:
        model = build_model(preset, tokenizer, seed=0)  # the same weights as the saved folder
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            ctx["models"][preset], dtype=torch.float32
        )
    with warnings.catch_warnings():  # transformers 5.23 renames gradient_checkpointing
        warnings.simplefilter("ignore", FutureWarning)
        config = trl_config(args, preset, variant)
        pins = _models.differs_from_defaults(config)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=trl_dataset(ctx),
            processing_class=tokenizer,
            callbacks=[Clock()],
        )
    collator = trainer.data_collator

    def counting_collator(features):
        clock.batch_tokens.append(sum(len(f["input_ids"]) for f in features))
        return collator(features)

    trainer.data_collator = counting_collator
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    checkpointing = getattr(trainer.model, "is_activation_checkpointing", None)  # transformers 5.23
    if checkpointing is None:
        checkpointing = trainer.model.is_gradient_checkpointing
    assert checkpointing == config.gradient_checkpointing, "TRL changed gradient checkpointing"
    assert trainer.state.global_step == args.warmup_steps + args.steps
    result = clock.result(args.warmup_steps, args.steps)
    result["trl_settings"] = _models.format_settings(pins)
    return result


# What every TRL configuration sets: to run here at all, and the same steps, batch, learning
# rate and schedule as rlhfkit's side (its warmup + cosine to 10%); seed: the data order.
def trl_needed(args, preset: str) -> dict:
    return dict(
        output_dir=str(args.work / f"run-trl-{preset}"),
        use_cpu=True,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.warmup_steps + args.steps,
        learning_rate=args.lr,
        warmup_steps=10,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=0,
    )


# "As tuned": the same arithmetic as rlhfkit's side (fp32, no recomputation, its optimizer).
def trl_tuned(args) -> dict:
    return dict(
        bf16=False,  # TRL defaults to bf16 autocast: fp32 here, as on our side
        fp16=False,
        gradient_checkpointing=False,  # TRL defaults to gradient checkpointing
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=10,
        completion_only_loss=True,
        max_length=args.max_len,
        padding_free=False,
    )


TRL_SUSPECTS = {"bf16": ("bf16", "fp16"), "ckpt": ("gradient_checkpointing",)}


def trl_config(args, preset: str, variant: str):
    from trl import SFTConfig

    if variant == "trl-padding-free":
        # padding_free without packing refuses a max_length (it would not be enforced);
        # no example exceeds --max-len (rlhfkit encoded with overlong="error").
        kwargs = _models.trl_variant("trl", trl_needed(args, preset), trl_tuned(args), TRL_SUSPECTS)
        kwargs.update(max_length=None, padding_free=True)
    else:
        kwargs = _models.trl_variant(
            variant, trl_needed(args, preset), trl_tuned(args), TRL_SUSPECTS
        )
    return SFTConfig(**kwargs)


def check_same_data(ctx: dict, args) -> dict:
    """Both sides must train on the same token sequences with the same loss mask."""
    import transformers
    from trl import SFTConfig, SFTTrainer

    from rlhfkit.models.presets import build_model

    ours = ctx["rlhfkit_examples"]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        trainer = SFTTrainer(
            model=build_model("test", ctx["tokenizer"]),  # only the tokenization is used
            args=SFTConfig(
                output_dir=str(args.work / "check"),
                use_cpu=True,
                bf16=False,
                report_to="none",
                completion_only_loss=True,
                max_length=args.max_len,
            ),
            train_dataset=trl_dataset(ctx),
            processing_class=ctx["tokenizer"],
        )
    theirs = trainer.train_dataset
    same_ids = sum(ex.input_ids == list(t) for ex, t in zip(ours, theirs["input_ids"], strict=True))
    same_labels = sum(ex.labels == list(t) for ex, t in zip(ours, theirs["labels"], strict=True))
    ours_trained = sum(sum(1 for x in ex.labels if x != -100) for ex in ours)
    theirs_trained = sum(sum(1 for x in t if x != -100) for t in theirs["labels"])
    return {
        "examples": len(ours),
        "identical_token_sequences": same_ids,
        "identical_label_sequences": same_labels,
        "tokens_rlhfkit": sum(len(ex.input_ids) for ex in ours),
        "tokens_trl": sum(len(t) for t in theirs["input_ids"]),
        "trained_tokens_rlhfkit": ours_trained,
        "trained_tokens_trl": theirs_trained,
        "max_tokens": max(len(ex.input_ids) for ex in ours),
    }


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------

CONFIGS = {
    "rlhfkit": (
        "rlhfkit",
        "train_sft, packed (default)",
        lambda c, p, a: run_rlhfkit(c, p, a, True),
    ),
    "rlhfkit-padded": (
        "rlhfkit",
        "train_sft, packing=False",
        lambda c, p, a: run_rlhfkit(c, p, a, False),
    ),
    "trl-padding-free": (
        "trl",
        "SFTTrainer padding_free=True (tuned)",
        lambda c, p, a: run_trl(c, p, a, "trl-padding-free"),
    ),
}


def config_entry(name: str) -> tuple:
    """(library, description, run function) of a configuration name."""
    if name in CONFIGS:
        return CONFIGS[name]
    desc = "SFTTrainer " + _models.variant_description(name, TRL_SUSPECTS)
    return ("trl", desc, lambda c, p, a: run_trl(c, p, a, name))


def known(name: str) -> bool:
    return name in CONFIGS or _models.is_trl_variant(name, TRL_SUSPECTS)


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

    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_all(ctx: dict, args, presets: list[str], names: list[str]) -> list[dict]:
    rows = []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate per round
        for preset in presets:
            for name in order:
                torch.set_num_threads(args.threads)
                res = config_entry(name)[2](ctx, preset, args)
                assert torch.get_num_threads() == args.threads
                res.update(round=r, preset=preset, config=name, steps=args.steps)
                res["tokens_per_s"] = res["tokens"] / res["seconds"]
                res["tokens_per_cpu_s"] = res["tokens"] / res["cpu_seconds"]
                rows.append(res)
                print(
                    f"  round {r} {preset:5s} {name:17s} {res['tokens_per_s']:9.0f} tok/s wall, "
                    f"{res['tokens_per_cpu_s']:9.0f} tok/cpu-s (load {load()})",
                    flush=True,
                )
    for row in rows:
        base = next(
            x
            for x in rows
            if (x["round"], x["preset"], x["config"]) == (row["round"], row["preset"], "trl")
        )
        row["ratio"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["ratio_cpu"] = row["tokens_per_cpu_s"] / base["tokens_per_cpu_s"]
        shipped = [
            x
            for x in rows
            if (x["round"], x["preset"], x["config"])
            == (row["round"], row["preset"], "trl-shipped")
        ]
        if shipped:  # the same, against TRL as shipped
            row["ratio_cpu_shipped"] = row["tokens_per_cpu_s"] / shipped[0]["tokens_per_cpu_s"]
    return rows


def report(rows: list[dict], args, presets: list[str], names: list[str]) -> dict:
    print(
        f"\nbatch {args.batch_size}, {args.steps} timed steps after {args.warmup_steps} warm-up, "
        f"{args.threads} torch threads; tokens = real (non-pad) tokens of the examples "
        "consumed; ratio = tokens/s over TRL as tuned ('trl') in the same round"
    )
    print(
        "| preset | library | config | round | steps | tokens | seconds | tokens/s | ratio "
        "| CPU s | ratio (CPU time) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        lib, desc, _ = config_entry(row["config"])
        print(
            f"| {row['preset']} | {lib} | {desc} | {row['round']} | {row['steps']} | "
            f"{row['tokens']} | {row['seconds']:.2f} | {row['tokens_per_s']:.0f} | "
            f"{row['ratio']:.2f}x | {row['cpu_seconds']:.2f} | {row['ratio_cpu']:.2f}x |"
        )
    print("\nmedian over rounds:")
    summary = {}
    for preset in presets:
        for name in names:
            sel = [x for x in rows if x["preset"] == preset and x["config"] == name]
            keys = ["tokens_per_s", "tokens_per_cpu_s", "ratio", "ratio_cpu"]
            keys += ["ratio_cpu_shipped"] if "ratio_cpu_shipped" in sel[0] else []
            med = {k: statistics.median(x[k] for x in sel) for k in keys}
            summary[f"{preset}/{name}"] = med
            ratios = ", ".join(f"{x['ratio']:.2f}" for x in sel)
            shipped = (
                f"; vs TRL as shipped {med['ratio_cpu_shipped']:.2f}x"
                if "ratio_cpu_shipped" in med
                else ""
            )
            print(
                f"  {preset:5s} {name:17s} {med['tokens_per_s']:8.0f} tok/s  ratio {med['ratio']:.2f}x "
                f"(rounds {ratios}), CPU-time ratio {med['ratio_cpu']:.2f}x "
                f"({med['tokens_per_cpu_s']:.1f} tok/cpu-s){shipped}"
            )
    print("\nTRL configurations: the SFTConfig fields each sets away from TRL's defaults")
    for name in names:
        if config_entry(name)[0] == "trl":
            settings = next(x["trl_settings"] for x in rows if x["config"] == name)
            print(f"  {name}: {settings}")
    return summary


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    if args.model:
        _models.check_model_dir(args.model)
        presets = [_models.label(args.model)]
        args.configs = args.configs or "rlhfkit,trl,trl-shipped"
    else:
        presets = args.presets.split(",")
        args.configs = args.configs or "rlhfkit,rlhfkit-padded,trl,trl-padding-free"
    names = args.configs.split(",")
    if not all(known(n) for n in names) or "trl" not in names:
        sys.exit(f"--configs must include 'trl', the others known (see --help); got {names}")

    info = machine()
    print(
        f"torch {info['torch']}, transformers {info['transformers']}, trl {info['trl']}; "
        f"{info['nproc']} x {info['cpu']}; torch threads {args.threads}; load {load()}"
    )
    print(_models.cpu_line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        args.work = Path(args.out) if args.out else Path(tmp)
        args.work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        ctx = setup(args.work, presets, args.max_len, args.data, args.model)
        if args.model:
            print(_models.describe(args.model, ctx["tokenizer"]), flush=True)
        check = check_same_data(ctx, args)
        print(
            f"data: {check['examples']} examples, identical on both sides: "
            f"{check['identical_token_sequences']} token and {check['identical_label_sequences']} "
            f"label sequences; tokens {check['tokens_rlhfkit']} vs {check['tokens_trl']}, "
            f"trained tokens {check['trained_tokens_rlhfkit']} vs {check['trained_tokens_trl']}, "
            f"longest {check['max_tokens']} (cap {args.max_len})"
        )
        rows = run_all(ctx, args, presets, names)
        total = time.perf_counter() - t0
    summary = report(rows, args, presets, names)
    print(f"total benchmark time {total:.0f}s; load now {load()}")
    if args.json:
        result = {
            "machine": info,
            "args": {k: str(v) for k, v in vars(args).items()},
            "check": check,
            "rows": rows,
            "median": summary,
            "total_s": total,
        }
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
