"""Generation tokens/s: `rlhfkit.models.generate.sample` against HF `model.generate`.

Both sides sample (temperature 1, no top-k/top-p) with a KV cache from the same Llama
model, on the same 8 left-padded prompts, and produce exactly N new tokens per row: ours
with `stop_at_eos=False`, HF with no EOS token (so neither stops early and no logits
processor masks EOS). One process, one torch thread, alternating calls; each round times
`--reps` calls of each side. Tokens/s counts the B x N new tokens; CPU tokens/s divides by
the process's CPU time instead of wall time (steadier on shared cores).

    .venv/bin/python bench/gen_vs_hf.py                      # ~1 min, all three models
    .venv/bin/python bench/gen_vs_hf.py --models ppo-small --rounds 9 --json out.json

Models (random init, seed 0, fp32, sdpa): `ppo-small` = Llama hidden 128 x 4 layers,
vocab 512 (the smaller PPO benchmark model); `ppo-large` = hidden 256 x 6 layers, vocab
512; `tiny` = the `tiny` preset with a 2048-token vocabulary (as the SFT benchmark).
The row "rlhfkit generic" is our sampler forced onto its model-agnostic path (HF forward +
DynamicCache), to show what the Llama fast path adds; "rlhfkit F.linear" is the fast path
with `USE_ONEDNN = False` (MKL's sgemm instead of oneDNN's packed linear).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM  # noqa: E402

from rlhfkit.models import generate as gen_mod  # noqa: E402
from rlhfkit.models import llama_decoder as dec_mod  # noqa: E402
from rlhfkit.models.presets import PRESETS  # noqa: E402

MODELS = {
    "ppo-small": dict(PRESETS["tiny"], vocab_size=512),
    "ppo-large": dict(PRESETS["small"], vocab_size=512),
    "tiny": dict(PRESETS["tiny"], vocab_size=2048),
}
PAD, BOS, EOS = 0, 1, 2


def build(name: str) -> LlamaForCausalLM:
    cfg = LlamaConfig(**MODELS[name], pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def prompts(batch: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """`batch` prompts of 12 to 24 random non-special tokens (real left padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, 25, (batch,), generator=g).tolist()
    return [[BOS] + torch.randint(3, vocab, (n - 1,), generator=g).tolist() for n in lengths]


def sides(model, ps, n_new):
    ids, mask = gen_mod.left_pad(ps, PAD)
    hf_cfg = GenerationConfig(
        do_sample=True, max_new_tokens=n_new, temperature=1.0, top_k=0, top_p=1.0,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=None, use_cache=True,
    )  # fmt: skip
    seed = [0]

    def ours():
        seed[0] += 1
        g = torch.Generator().manual_seed(seed[0])
        out = gen_mod.sample(
            model, ps, max_new_tokens=n_new, eos_token_id=EOS, pad_token_id=PAD,
            generator=g, stop_at_eos=False,
        )  # fmt: skip
        assert out.response_ids.shape == (len(ps), n_new)

    def generic():
        build_fast = dec_mod.LlamaDecoder.build
        dec_mod.LlamaDecoder.build = classmethod(lambda cls, *a: None)
        try:
            ours()
        finally:
            dec_mod.LlamaDecoder.build = build_fast

    def mkl():
        dec_mod.USE_ONEDNN = False
        try:
            ours()
        finally:
            dec_mod.USE_ONEDNN = True

    def hf():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask.long(), generation_config=hf_cfg
            )
        assert out.shape == (len(ps), ids.shape[1] + n_new)

    return {"rlhfkit": ours, "rlhfkit F.linear": mkl, "rlhfkit generic": generic, "hf generate": hf}


def timed(fn, reps: int) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return time.perf_counter() - w0, time.process_time() - c0


def machine() -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    try:
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        load = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "uptime": load,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ppo-small,ppo-large,tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3, help="calls per side per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    print(f"machine: {info}")
    rows = []
    for name in args.models.split(","):
        model = build(name)
        ps = prompts(args.batch, model.config.vocab_size)
        fns = sides(model, ps, args.new_tokens)
        for fn in fns.values():  # warm-up
            fn()
        tokens = args.batch * args.new_tokens * args.reps
        wall = {k: [] for k in fns}
        cpu = {k: [] for k in fns}
        order = list(fns)
        for r in range(args.rounds):
            for k in order[r % len(order) :] + order[: r % len(order)]:  # rotate the order
                w, c = timed(fns[k], args.reps)
                wall[k].append(tokens / w)
                cpu[k].append(tokens / c)
        base_w, base_c = wall["hf generate"], cpu["hf generate"]
        print(f"\n{name}: batch {args.batch}, {args.new_tokens} new tokens, {args.rounds} rounds")
        print(f"{'side':18s} {'tok/s':>8s} {'cpu tok/s':>10s} {'ratio':>7s} {'cpu ratio':>9s}")
        for k in fns:
            ratio = statistics.median(a / b for a, b in zip(wall[k], base_w, strict=True))
            cratio = statistics.median(a / b for a, b in zip(cpu[k], base_c, strict=True))
            row = {
                "model": name,
                "side": k,
                "tok_s": statistics.median(wall[k]),
                "cpu_tok_s": statistics.median(cpu[k]),
                "ratio": ratio,
                "cpu_ratio": cratio,
                "rounds_ratio": [a / b for a, b in zip(wall[k], base_w, strict=True)],
            }
            rows.append(row)
            print(
                f"{k:18s} {row['tok_s']:8.0f} {row['cpu_tok_s']:10.0f} {ratio:6.2f}x {cratio:8.2f}x"
            )
    info["uptime_end"] = machine()["uptime"]
    print(f"\nload at end: {info['uptime_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
