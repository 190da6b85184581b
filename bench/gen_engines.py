"""Rollout tokens/s of the generation engines: `--generator vllm` vs our path (`hf`) vs HF
`model.generate`, on the `base` preset (Llama hidden 512 x 8 layers, head_dim 64, vocab
2048, random init, fp32).

Every engine samples (temperature 1, no top-k/top-p) exactly N new tokens per row from the
same left-padded prompts (ours and vLLM with `stop_at_eos=False`, HF with no EOS token), at
batch 8, 32 and 128 x 128 new tokens. Tokens/s = B x N / wall seconds of one `generate`
call, the best of `--reps` calls after one warm-up call. Also printed: vLLM's start-up
time and the time of one `sync_weights` (the in-place weight push after a PPO update).

Run it in the vLLM venv (`make install-vllm`); without vLLM the vllm row is skipped:

    .venv-vllm/bin/python bench/gen_engines.py                  # all batches, ~5 min on 2 cores
    .venv-vllm/bin/python bench/gen_engines.py --batches 8 --new-tokens 32 --reps 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rlhfkit.models.presets import PRESETS
from rlhfkit.sampling.generator import EngineSettings, GenerationSettings, make_generator

PAD, BOS, EOS, VOCAB = 0, 1, 2, 2048


class StubTokenizer:
    """What a generator needs of a tokenizer: ids of EOS and pad, and decode."""

    eos_token_id, pad_token_id = EOS, PAD

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(map(str, ids))


def build() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        **{**PRESETS["base"], "vocab_size": VOCAB}, pad_token_id=PAD, bos_token_id=BOS,
        eos_token_id=EOS,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def prompts(batch: int, seed: int = 0) -> list[list[int]]:
    """`batch` prompts of 12 to 24 random non-special tokens (real left padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(12, 25, (batch,), generator=g).tolist()
    return [[BOS] + torch.randint(3, VOCAB, (n - 1,), generator=g).tolist() for n in lengths]


def hf_generate(model, ids: list[list[int]], new_tokens: int) -> None:
    from rlhfkit.models.generate import left_pad

    x, mask = left_pad(ids, PAD)
    with torch.inference_mode():
        out = model.generate(
            input_ids=x, attention_mask=mask.long(), do_sample=True, temperature=1.0, top_k=0,
            top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
            pad_token_id=PAD,
        )  # fmt: skip
    assert out.shape[1] == x.shape[1] + new_tokens


def best_time(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--engines", nargs="+", default=["vllm", "hf", "hf-generate"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = build(), StubTokenizer()
    settings = GenerationSettings(max_new_tokens=args.new_tokens, stop_at_eos=False)
    engines = {}
    info: dict = {"threads": args.threads, "cpu": platform.processor() or platform.machine()}
    if "vllm" in args.engines and importlib.util.find_spec("vllm") is not None:
        t = time.perf_counter()
        engine = EngineSettings("vllm", vllm_dtype="float32", vllm_enforce_eager=True,
                                vllm_gpu_memory_utilization=0.05)  # fmt: skip
        engines["vllm"] = make_generator(model, tok, engine)
        info["vllm_startup_s"] = round(time.perf_counter() - t, 2)
        info["vllm_sync_s"] = round(best_time(engines["vllm"].sync_weights, 3), 4)
        print(f"vllm: start-up {info['vllm_startup_s']} s, sync_weights {info['vllm_sync_s']} s")
    elif "vllm" in args.engines:
        print("vllm: not installed here (make install-vllm; run with .venv-vllm/bin/python)")
    if "hf" in args.engines:
        engines["hf"] = make_generator(model, tok, "hf")
    rows = []
    for batch in args.batches:
        ids = prompts(batch)
        row = {"batch": batch, "new_tokens": args.new_tokens}
        calls = {
            name: (
                lambda g=gen, ids=ids: g.generate(ids, settings, torch.Generator().manual_seed(0))
            )
            for name, gen in engines.items()
        }
        if "hf-generate" in args.engines:
            calls["hf-generate"] = lambda ids=ids: hf_generate(model, ids, args.new_tokens)
        for name, call in calls.items():
            row[name] = batch * args.new_tokens / best_time(call, args.reps)
        rows.append(row)
        print(" | ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in row.items()), "(tokens/s)", flush=True)  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
