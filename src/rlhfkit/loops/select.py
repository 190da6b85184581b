"""`rlhfkit select`: pick the SFT checkpoint whose samples the reward model scores highest.

InstructGPT (appendix C) trained SFT for 16 epochs and chose the checkpoint by the RM
score of its samples on a validation set, not by validation loss: that checkpoint,
pi^SFT, is both PPO's starting policy and its KL reference.

Steps:
  1. read the prompts; find the candidates (every `epoch-N/` under a run folder, in epoch
     order, or model folders given directly);
  2. for each candidate, sample `--samples-per-prompt` responses to the SAME prompts with
     the SAME seed (common random numbers: the comparison sees model differences, not
     sampling luck);
  3. score them with the reward model(s) (never whitened here: a whitened score has mean 0
     for every checkpoint), and with the world's gold judges when the prompts are its;
  4. write `select.json` (per checkpoint: mean, std, n, per-RM means) and print a table
     naming the best.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

import torch

from rlhfkit.config import SelectConfig
from rlhfkit.config.checks import check_options
from rlhfkit.data.chat import resolve_chat
from rlhfkit.data.records import PromptRecord, read_prompts
from rlhfkit.distributed import pick_device
from rlhfkit.errors import UserError
from rlhfkit.files import write_json
from rlhfkit.models.gguf_header import is_gguf_path
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.sampling.generator import GenerationSettings, make_generator
from rlhfkit.sampling.sample_score import encode_prompts, gold_metrics, sample_and_score
from rlhfkit.scoring.build import build_scorer
from rlhfkit.scoring.rules import check_rule_prompts

_EPOCH_RE = re.compile(r"^epoch-(\d+)$")


def find_candidates(paths: tuple[str, ...] | list[str]) -> list[tuple[str, Path]]:
    """(name, folder) of every candidate: the `epoch-N/` children of a run folder (by N),
    or a model folder itself, or a .gguf file."""
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if is_gguf_path(p) and p.is_file():
            found.append((p.stem, p))
            continue
        if not p.is_dir():
            raise UserError(f"--checkpoints {p}: no such folder")
        epochs = sorted(
            (int(m.group(1)), c)
            for c in p.iterdir()
            if (m := _EPOCH_RE.match(c.name)) and (c / "config.json").is_file()
        )
        if epochs:
            found += [(f"{p.name}/{c.name}" if len(paths) > 1 else c.name, c) for _, c in epochs]
        elif (p / "config.json").is_file():
            found.append((p.name, p))
        else:
            raise UserError(f"--checkpoints {p}: holds no epoch-*/ checkpoint and no config.json")
    if not found:
        raise UserError("no checkpoints to select from: give --checkpoints RUN_DIR")
    return found


@torch.no_grad()
def score_checkpoint(
    path: Path, prompts: list[PromptRecord], scorer: Any, cfg: SelectConfig, device: torch.device
) -> dict[str, Any]:
    """Sample from the model at `path` and score the samples: {mean, std, n, per_rm, ...}."""
    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    resolve_chat(tokenizer, cfg.chat, what=str(path))
    model = load_causal_lm(path, device, trust_remote_code=cfg.trust_remote_code)
    model.eval()
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    r = sample_and_score(
        make_generator(model, tokenizer, cfg), prompts,
        encode_prompts(prompts, tokenizer, cfg.max_prompt_len), settings,
        torch.Generator(device=device).manual_seed(cfg.seed), n=cfg.samples_per_prompt,
        batch_size=cfg.batch_size, scorer=scorer, tokenizer=tokenizer,
    )  # fmt: skip
    del model
    flat = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
    scores, responses, tokens = r.scores.tolist(), r.texts, r.tokens
    row: dict[str, Any] = {
        "mean": fmean(scores),
        "std": stdev(scores) if len(scores) > 1 else 0.0,
        "n": len(scores),
        "per_rm": {name: fmean(v.tolist()) for name, v in r.per_rm.items()},
        "mean_response_tokens": fmean(tokens),
    }
    gold = gold_metrics([p.prompt for p in flat], responses, [p.safety for p in flat], tokens)
    if gold:
        row["gold"] = gold
    row["samples"] = [
        {"prompt": p.prompt, "response": r, "score": sc}
        for p, r, sc in list(zip(flat, responses, scores, strict=True))[:3]
    ]
    return row


def format_select_table(rows: list[dict[str, Any]], best: str) -> str:
    gold = any("gold" in r for r in rows)
    head = f"  {'checkpoint':<28} {'mean':>9} {'std':>8} {'n':>6}" + (
        f" {'gold':>7}" if gold else ""
    )
    lines = [head]
    for r in rows:
        mark = "  <- best" if r["name"] == best else ""
        g = f" {r['gold'].get('gold_score', float('nan')):>7.3f}" if "gold" in r else ""
        if gold and not g:
            g = f" {'-':>7}"
        lines.append(f"  {r['name']:<28} {r['mean']:>9.4f} {r['std']:>8.4f} {r['n']:>6}{g}{mark}")
    return "\n".join(lines)


def run_select(cfg: SelectConfig) -> dict[str, Any]:
    """`rlhfkit select` (module docstring). Returns what select.json holds."""
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    out = Path(cfg.out)
    target = out / "select.json"
    if target.exists() and not cfg.overwrite:
        raise UserError(f"{target} exists: pass --overwrite to replace it")
    prompts = read_prompts(cfg.prompts)[: cfg.max_prompts]
    if not prompts:
        raise UserError(f"{cfg.prompts}: no prompts to sample from")
    check_rule_prompts(cfg.rule_reward, prompts)
    candidates = find_candidates(cfg.checkpoints)
    device = pick_device(cfg.device)
    scorer = build_scorer(cfg, device, whiten=False)
    print(
        f"select: {len(candidates)} checkpoint(s) x {len(prompts)} prompts x "
        f"{cfg.samples_per_prompt} sample(s), reward {cfg.rule_reward or ', '.join(cfg.rm)}"
    )
    rows = []
    t0 = time.perf_counter()
    for name, path in candidates:
        row = {
            "name": name,
            "path": str(path),
            **score_checkpoint(path, prompts, scorer, cfg, device),
        }
        rows.append(row)
        print(f"  {name}: mean score {row['mean']:.4f} (n={row['n']})", flush=True)
    best = max(rows, key=lambda r: r["mean"])  # ties: the earliest checkpoint
    result = {
        "best": {"name": best["name"], "path": best["path"], "mean": best["mean"]},
        "checkpoints": rows,
        "prompts": cfg.prompts,
        "n_prompts": len(prompts),
        "samples_per_prompt": cfg.samples_per_prompt,
        "temperature": cfg.temperature,
        "seed": cfg.seed,
        "reward": cfg.rule_reward or list(cfg.rm),
        "combine": None if cfg.rule_reward else cfg.combine,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(target, result)
    print(format_select_table(rows, best["name"]))
    print(f"best: {best['name']} ({best['path']}) -> {target}")
    return result
