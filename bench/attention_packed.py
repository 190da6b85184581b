"""Attention over packed rows: what variable-length attention would save in a PPO update.

    .venv/bin/python bench/attention_packed.py            # small and base shapes, 3 rounds
    .venv/bin/python bench/attention_packed.py --rounds 1 --minibatches 4   # quick

Issue 16 asks whether the PPO update can run twice as fast as TRL's. Profiled on the
realistic workload (bench/RESULTS.md), matrix multiplies are ~60% of both libraries' step
and attention ~22% of ours. Packing already removes the padding from the matrix
multiplies; what is left in attention is that transformers attends to a packed row with a
block-diagonal mask over the whole row (`_scaled_dot_product_flash_attention_for_cpu`
computes every block of a masked row), where a variable-length kernel would attend within
each sequence only, causally. This script measures the three ways on the same sequences,
forward and backward of one attention call (q, k, v of shape (rows, heads, width, 64)):

  padded   TRL: each sequence in its own row, left-padded prompt + right-padded response
           to the batch's widest prompt and response (256 + 128), with a padding mask
  packed   rlhfkit today (`models/packing.py`): sequences in rows of at most the
           minibatch's trimmed width, longest first into the emptiest row
           (`ROW_PLANS["balanced"]`), a block-diagonal causal mask over each row
  varlen   the same rows, one causal SDPA per sequence (what a variable-length kernel,
           or transformers' flash-attention path with cu_seqlens, would compute)

Sequences as bench/ppo_vs_trl.py's realistic workload: minibatches of 8, prompts of 16-256
tokens (uniform), responses of 64-128 (uniform; that workload's mean is ~105 of 128).
Shapes: `small` 4 heads x 64, `base` 8 heads x 64 (models/presets.py). One torch thread,
CPU time (`time.process_time`), the three ways alternating within each round in a rotated
order; the printed figure is the median over rounds of the time per minibatch.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn.functional as F

from rlhfkit.data.collate import ROW_PLANS

SHAPES = {"small": 4, "base": 8}  # heads; head dim 64 in both presets
HEAD_DIM = 64
PROMPTS, RESPONSES = (16, 256), (64, 128)


def minibatches(n: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    """n minibatches of 8 (prompt length, response length)."""
    rng = random.Random(seed)
    return [[(rng.randint(*PROMPTS), rng.randint(*RESPONSES)) for _ in range(8)] for _ in range(n)]


def padded(mb: list[tuple[int, int]], heads: int) -> None:
    p_w, r_w = PROMPTS[1], RESPONSES[1]  # TRL pads to the batch of 32's widest: ~256 + 128
    w = p_w + r_w
    keep = torch.zeros(len(mb), w, dtype=torch.bool)
    for i, (p, r) in enumerate(mb):
        keep[i, p_w - p : p_w + r] = True
    causal = torch.ones(w, w, dtype=torch.bool).tril()
    mask = causal[None] & keep[:, None, :]
    mask |= torch.eye(w, dtype=torch.bool)[None]  # pad queries attend to themselves (no NaN)
    q, k, v = (torch.randn(len(mb), heads, w, HEAD_DIM, requires_grad=True) for _ in range(3))
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None]).sum().backward()


def _rows(mb: list[tuple[int, int]]) -> list[list[int]]:
    lengths = [p + r for p, r in mb]
    width = max(p for p, _ in mb) + max(r for _, r in mb)  # update.py's `_trim`
    return [[lengths[i] for i in row] for row in ROW_PLANS["balanced"](lengths, width)]


def packed(mb: list[tuple[int, int]], heads: int) -> None:
    rows = _rows(mb)
    w = max(sum(r) for r in rows)
    mask = torch.zeros(len(rows), w, w, dtype=torch.bool)
    for i, row in enumerate(rows):
        start = 0
        for n in row + [w - sum(row)]:  # the row's tail is a segment of its own
            mask[i, start : start + n, start : start + n] = torch.ones(n, n).tril().bool()
            start += n
    q, k, v = (torch.randn(len(rows), heads, w, HEAD_DIM, requires_grad=True) for _ in range(3))
    F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None]).sum().backward()


def varlen(mb: list[tuple[int, int]], heads: int) -> None:
    rows = _rows(mb)
    w = max(sum(r) for r in rows)
    q, k, v = (torch.randn(len(rows), heads, w, HEAD_DIM, requires_grad=True) for _ in range(3))
    outs = []
    for i, row in enumerate(rows):
        start = 0
        for n in row:
            s = slice(start, start + n)
            outs.append(
                F.scaled_dot_product_attention(
                    q[i : i + 1, :, s], k[i : i + 1, :, s], v[i : i + 1, :, s], is_causal=True
                )
            )
            start += n
    torch.cat([o.flatten() for o in outs]).sum().backward()


WAYS = {"padded": padded, "packed": packed, "varlen": varlen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--minibatches", type=int, default=16, help="per way and round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mbs = minibatches(args.minibatches)
    cells = {
        "padded": sum(8 * (PROMPTS[1] + RESPONSES[1]) for _ in mbs),
        "packed": sum(len(r) * max(sum(x) for x in r) for r in map(_rows, mbs)),
        "tokens": sum(p + r for mb in mbs for p, r in mb),
    }
    print(f"cells per way: {cells} (rows x width; tokens: real ones)")
    for shape, heads in SHAPES.items():
        for way in WAYS.values():  # warm-up
            way(mbs[0], heads)
        times: dict[str, list[float]] = {w: [] for w in WAYS}
        names = list(WAYS)
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                t0 = time.process_time()
                for mb in mbs:
                    WAYS[name](mb, heads)
                times[name].append((time.process_time() - t0) / len(mbs) * 1e3)
        med = {w: statistics.median(t) for w, t in times.items()}
        print(
            f"{shape} ({heads} heads x {HEAD_DIM}): ms per minibatch of 8, fwd + bwd, median of "
            f"{args.rounds}: padded {med['padded']:.1f}, packed {med['packed']:.1f}, varlen "
            f"{med['varlen']:.1f}; padded/packed {med['padded'] / med['packed']:.2f}x, "
            f"packed/varlen {med['packed'] / med['varlen']:.2f}x"
        )


if __name__ == "__main__":
    main()
