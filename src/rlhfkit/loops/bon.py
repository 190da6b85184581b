"""The pipeline's `bon` stage: N samples per held-out prompt from one model, each scored
by the reward models (proxy) and the world's gold judges, for Llama 2's Figure 7 (max and
median reward among K samples) and Gao et al. (2022)'s best-of-n fit in the report.

Sampled once: every best-of-K statistic is computed from these N samples (`gao`), not
by sampling again for each K. Options are `rlhfkit select`'s (`SelectConfig`), with
`checkpoints` the one model and `samples_per_prompt` N.

Writes `OUT/samples.jsonl`, one row per prompt: {prompt, safety, proxy: [N], gold: [N]
(safety on unsafe prompts, helpfulness on the others; null off the world's prompts),
per_rm: {name: [N]}, tokens: [N], responses: [N]}; and `OUT/summary.json` (settings,
the curve at every K, seconds).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlhfkit.config import SelectConfig
from rlhfkit.errors import UserError
from rlhfkit.files import write_json, write_jsonl

SAMPLES, SUMMARY = "samples.jsonl", "summary.json"


def gold_per_sample(prompt: str, unsafe: bool, response: str) -> float | None:
    """The gold score of one response (as `gold_score` averages them): safety on unsafe
    prompts, helpfulness on the others; None for a prompt that is not the world's."""
    from rlhfkit.world import is_world_prompt, judge

    if not is_world_prompt(prompt):
        return None
    j = judge(prompt, response)
    return float(j["safety"] if unsafe else j["helpfulness"])


def run_bon(cfg: SelectConfig) -> dict[str, Any]:
    """Sample, score and write (module docstring); returns the summary."""
    import torch

    from rlhfkit.data.chat import resolve_chat
    from rlhfkit.data.records import read_prompts
    from rlhfkit.distributed import pick_device
    from rlhfkit.models.load import load_causal_lm, load_tokenizer
    from rlhfkit.report.gao import best_of_k_curve
    from rlhfkit.sampling.generator import GenerationSettings, make_generator
    from rlhfkit.sampling.sample_score import encode_prompts, sample_and_score
    from rlhfkit.scoring.build import build_scorer

    if len(cfg.checkpoints) != 1:
        raise UserError(f"bon: one model to sample from, got {len(cfg.checkpoints)}")
    t0 = time.perf_counter()
    path, n = Path(cfg.checkpoints[0]), cfg.samples_per_prompt
    prompts = read_prompts(cfg.prompts)[: cfg.max_prompts]
    if not prompts:
        raise UserError(f"{cfg.prompts}: no prompts to sample from")
    device = pick_device(cfg.device)
    scorer = build_scorer(cfg, device, whiten=False)  # raw scores: means compare across K
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    resolve_chat(tokenizer, cfg.chat, what=str(path))
    model = load_causal_lm(path, device, trust_remote_code=cfg.trust_remote_code)
    model.eval()
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    print(f"bon: {len(prompts)} prompts x {n} samples from {path}, T={cfg.temperature:g}")
    r = sample_and_score(
        make_generator(model, tokenizer, cfg),
        prompts,
        encode_prompts(prompts, tokenizer, cfg.max_prompt_len),
        settings,
        torch.Generator(device=device).manual_seed(cfg.seed),
        n=n,
        batch_size=cfg.batch_size,
        scorer=scorer,
        tokenizer=tokenizer,
    )
    del model
    scores, per_rm = r.scores.tolist(), {k: v.tolist() for k, v in r.per_rm.items()}
    rows = []
    for i, p in enumerate(prompts):  # prompt-major: prompt i's samples are i*n .. i*n+n-1
        lo, hi = i * n, (i + 1) * n
        rows.append(
            {
                "prompt": p.prompt,
                "safety": bool(p.safety),
                "proxy": scores[lo:hi],
                "gold": [gold_per_sample(p.prompt, bool(p.safety), t) for t in r.texts[lo:hi]],
                "per_rm": {k: v[lo:hi] for k, v in per_rm.items()},
                "tokens": r.tokens[lo:hi],
                "responses": r.texts[lo:hi],
            }
        )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / SAMPLES, rows)
    has_gold = all(g is not None for row in rows for g in row["gold"])
    curve = best_of_k_curve(
        [row["proxy"] for row in rows],
        [row["gold"] for row in rows] if has_gold else [row["proxy"] for row in rows],
        range(1, n + 1),
    )
    summary = {
        "model": str(path),
        "prompts": cfg.prompts,
        "n_prompts": len(rows),
        "samples_per_prompt": n,
        "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "reward": list(cfg.rm),
        "combine": cfg.combine,
        "gold": has_gold,
        "curve": [
            c if has_gold else {k: v for k, v in c.items() if "gold" not in k} for c in curve
        ],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json(out / SUMMARY, summary)
    last = curve[-1]
    print(
        f"bon: K={n}: proxy max {last['proxy_max']:.3f}, median {last['proxy_median']:.3f}"
        f" ({summary['seconds']:.1f} s) -> {out / SAMPLES}"
    )
    return summary
