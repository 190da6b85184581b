"""The world's commands: `world make`, `world judge` and `world label` (`eval`, on any
prompts, is `rlhfkit.loops.evaluate`).

Thin: read and validate the files, call the world's functions, write the outputs (never
over existing ones without --overwrite), print a short summary.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from statistics import fmean

from rlhfkit.config import WorldJudgeConfig, WorldLabelConfig, WorldMakeConfig
from rlhfkit.config.checks import check_options
from rlhfkit.errors import UserError
from rlhfkit.files import write_jsonl
from rlhfkit.world.generate import WorldSettings
from rlhfkit.world.io import (
    read_responses,
    read_world_prompts,
    refuse_existing,
)
from rlhfkit.world.judges import judge
from rlhfkit.world.label import label_samples
from rlhfkit.world.make import WORLD_FILES, make_world

RANKING_FILES = ("rankings_helpfulness.jsonl", "rankings_safety.jsonl", "samples.jsonl")


def world_make(cfg: WorldMakeConfig) -> dict:
    """`rlhfkit world make`: write the world's files into --out."""
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    out = Path(cfg.out)
    refuse_existing([out / f for f in WORLD_FILES], cfg.overwrite)
    fields = WorldSettings.__dataclass_fields__
    try:
        settings = WorldSettings(**{f: getattr(cfg, f) for f in fields})
    except ValueError as e:
        raise UserError(str(e)) from None
    t0 = time.perf_counter()
    info = make_world(out, cfg.seed, **{f: getattr(settings, f) for f in fields})
    seconds = time.perf_counter() - t0
    print(f"wrote the world (seed {cfg.seed}) to {out} in {seconds:.1f} s")
    for name, f in info["files"].items():
        extra = ""
        if "unsafe" in f:
            extra = f", {f['unsafe']} harmful"
        if "imperfect" in f:
            extra = f", {f['imperfect']} flawed"
        print(f"  {name:<20} {f['records']:>6} records {f['bytes'] / 1e6:7.2f} MB{extra}")
    return info


def world_judge(cfg: WorldJudgeConfig) -> dict:
    """`rlhfkit world judge`: add gold scores to {"prompt","response"} records."""
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    src = Path(cfg.data)
    out = (
        Path(cfg.out)
        if cfg.out
        else src.with_name(src.name.removesuffix(".jsonl") + ".scored.jsonl")
    )
    refuse_existing([out], cfg.overwrite)
    recs = read_responses(src)
    scored = []
    for r in recs:
        s = judge(r.prompt, r.response)
        scored.append({"prompt": r.prompt, "response": r.response, **r.extra, **s})
    write_jsonl(out, scored)
    means = {
        "helpfulness": fmean(s["helpfulness"] for s in scored),
        "safety": fmean(s["safety"] for s in scored),
    }
    print(
        f"scored {len(scored)} responses -> {out}: mean helpfulness {means['helpfulness']:.3f}, "
        f"mean safety {means['safety']:.3f}"
    )
    return means


def world_label(cfg: WorldLabelConfig) -> dict:
    """`rlhfkit world label`: sample K responses per prompt from --policy, rank them with
    simulated labellers, write one rankings file per dimension plus the scored samples."""
    from rlhfkit.world.sampling import ModelSampler

    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    out = Path(cfg.out)
    refuse_existing([out / f for f in RANKING_FILES], cfg.overwrite)
    records = read_world_prompts(cfg.prompts)[: cfg.max_prompts]
    prompts = [r.prompt for r in records]  # the judges read the text (a chat prompt's user turn)
    sampler = ModelSampler(
        cfg.policy,
        device=cfg.device,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        engine=cfg,
        chat=cfg.chat,
    )
    t0 = time.perf_counter()
    # a chat prompt through its template, a plain one too for a model in chat format; the
    # rankings keep the plain text (each model trained on them applies its own format)
    samples = sampler.sample(records, cfg.k)
    seconds = time.perf_counter() - t0
    helpful, safe = label_samples(
        prompts,
        samples,
        judge,
        cfg.noise,
        random.Random(f"rlhfkit-label:{cfg.seed}"),
        cfg.k,
        thresholds=cfg.strength_thresholds,
        safety_tiebreak=cfg.safety_tiebreak,
        safety_mix=cfg.safety_mix,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "rankings_helpfulness.jsonl", helpful)
    write_jsonl(out / "rankings_safety.jsonl", safe)
    write_jsonl(out / "samples.jsonl", _scored_samples(prompts, samples))
    flat = [judge(p, r) for p, rs in zip(prompts, samples, strict=True) for r in rs]
    stats = {
        "prompts": len(prompts),
        "k": cfg.k,
        "rankings_helpfulness": len(helpful),
        "rankings_safety": len(safe),
        "sample_helpfulness": fmean(s["helpfulness"] for s in flat),
        "sample_safety": fmean(s["safety"] for s in flat),
        "sampling_seconds": round(seconds, 2),
    }
    print(
        f"sampled {cfg.k} x {len(prompts)} responses in {seconds:.1f} s (mean gold helpfulness "
        f"{stats['sample_helpfulness']:.3f}, safety {stats['sample_safety']:.3f}); wrote "
        f"{len(helpful)} helpfulness and {len(safe)} safety rankings to {out}"
    )
    return stats


def _scored_samples(prompts: list[str], samples: list[list[str]]) -> list[dict]:
    rows = []
    for p, rs in zip(prompts, samples, strict=True):
        scores = [judge(p, r) for r in rs]
        rows.append(
            {
                "prompt": p,
                "responses": rs,
                "helpfulness": [s["helpfulness"] for s in scores],
                "safety": [s["safety"] for s in scores],
            }
        )
    return rows
