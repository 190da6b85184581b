"""`rlhfkit eval`: how a model answers a set of prompts, any prompts.

One response per prompt from --model (greedy at --temperature 0, else sampled with --seed),
then, on those responses:
- length: `mean_response_tokens` (EOS not counted) and `eos_rate`, the share of responses
  that ended with EOS within --max-new-tokens (the rest were cut off);
- with --rm: `rm_score`, the mean combined score (--combine, never whitened: means must
  compare across models), its std, and each RM's mean raw score (`rm_scores`);
- with --reference: `kl_to_reference`, the mean over prompts of the sum over the response's
  tokens (EOS included) of log pi(y_t) - log pi_ref(y_t), both log-probs from one full
  forward pass at the sampling temperature (1 when greedy), so a model against itself gives
  0. On sampled responses it is the k1 estimate of KL(pi || pi_ref); on greedy responses it
  is the log-ratio of those responses, not an unbiased KL estimate (`KL_NOTE`);
- with --baseline (and --rm): the baseline's responses to the same prompts with the same
  seed, scored by the same RMs; per prompt the model wins (1) if its combined score is
  higher, ties (1/2) if equal, loses (0) otherwise. `win_rate` is the mean outcome and
  `win_rate_se` its standard error (`WIN_RATE_NOTE`);
- gold metrics of the built-in world (`world.summarize`) when every prompt is one of
  the world's prompts.

Prints a table and writes --out (JSON: the metrics, the responses and the per-prompt rows).

Steps (`run_eval`, each numbered step marked in the code):
  1. the options and the prompts, checked before torch loads;
  2. the reward models of --rm (never whitened) and the --reference model (same tokenizer
     as --model, checked);
  3. one response per prompt from --model, scored, with its KL to the reference
     (`respond`); then the baseline's to the same prompts with the same seed;
  4. the metrics above and one row per prompt (`eval_metrics`), and the world's gold
     metrics when every prompt is the world's;
  5. the table printed, --out written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from rlhfkit.config import EvalConfig
from rlhfkit.config.checks import check_options
from rlhfkit.data.records import PromptRecord, read_prompts
from rlhfkit.errors import UserError
from rlhfkit.files import write_json
from rlhfkit.world import format_table, is_world_prompt, summarize

MAX_PROMPT_LEN = 128
"""Prompt tokens kept (from the left), as `world label` and the old `eval` kept them."""

KL_NOTE = (
    "mean over prompts of sum_t [log pi(y_t) - log pi_ref(y_t)] over the response tokens "
    "(EOS included), full forwards of both models at the sampling temperature (1 when greedy); "
    "on sampled responses the k1 estimate of KL(pi || pi_ref), on greedy ones their log-ratio"
)
WIN_RATE_NOTE = (
    "per prompt 1 if the model's RM score beats the baseline's, 1/2 on a tie, 0 otherwise; "
    "win_rate is the mean, win_rate_se the standard error of that mean over prompts "
    "(sample std with n - 1, divided by sqrt(n); without ties sqrt(p (1 - p) / (n - 1)))"
)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """`rlhfkit eval` (steps 1-5 of the module docstring). Returns the summary that --out
    holds, less the responses and the per-prompt rows."""
    # 1. the options and the prompts, before torch loads
    prompts = _read_inputs(cfg)

    from rlhfkit.distributed import pick_device

    device = pick_device(cfg.device)
    t0 = time.perf_counter()
    # 2. the reward models and the reference
    scorer, reference = _scorer(cfg, device), _reference(cfg, device)
    # 3. the model's responses (KL to the reference), then the baseline's
    mine = respond(cfg.model, prompts, cfg, device, scorer=scorer, reference=reference)
    del reference  # freed before the baseline loads
    theirs = respond(cfg.baseline, prompts, cfg, device, scorer=scorer) if cfg.baseline else None
    # 4. the metrics, a row per prompt, and the gold metrics of the world's prompts
    summary, rows = eval_metrics(cfg, prompts, mine, theirs)
    gold = _gold(prompts, mine, cfg.show)
    if gold is not None:
        summary.update({k: v for k, v in gold.items() if k not in summary})
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    # 5. the table, then --out
    _print_table(summary, rows, gold, prompts, cfg.show)
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, {**summary, "responses": mine.texts, "per_prompt": rows})
        print(f"\nwrote {out}")
    return summary


# ---------------------------------------------------------------------------------------
# 1-3. The inputs, the roles, the responses
# ---------------------------------------------------------------------------------------


def _read_inputs(cfg: EvalConfig) -> list[PromptRecord]:
    """The options checked, then the first --max-prompts prompts of --prompts."""
    _check_options(cfg)
    prompts = read_prompts(cfg.prompts)[: cfg.max_prompts]
    if not prompts:
        raise UserError(f"{cfg.prompts}: no prompts to evaluate on")
    return prompts


def _check_options(cfg: EvalConfig) -> None:
    if not cfg.model:
        raise UserError("give the model to evaluate as --model DIR")
    if not cfg.prompts:
        raise UserError("give the prompts as --prompts FILE")
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    if cfg.out and Path(cfg.out).exists() and not cfg.overwrite:
        raise UserError(f"{cfg.out} already exists; pass --overwrite to replace it")


def _scorer(cfg: EvalConfig, device: Any) -> Any:
    """The reward models of --rm combined by --combine, never whitened (None without --rm)."""
    if not cfg.rm:
        return None
    from rlhfkit.scoring.build import combine_options
    from rlhfkit.scoring.remote import RemoteSettings
    from rlhfkit.scoring.rm import RewardScorer

    return RewardScorer.from_specs(
        list(cfg.rm),
        cfg.combine,
        combine_options(cfg, whiten=False),
        device=device,
        trust_remote_code=cfg.trust_remote_code,
        remote=RemoteSettings.from_config(cfg),
    )


def _reference(cfg: EvalConfig, device: Any) -> Any:
    """The --reference model, frozen, once its tokenizer is checked (None without it)."""
    if not cfg.reference:
        return None
    from rlhfkit.models.load import load_reference

    _check_same_vocab(cfg.model, cfg.reference, cfg.trust_remote_code)
    return load_reference(cfg.reference, device, trust_remote_code=cfg.trust_remote_code)


def _check_same_vocab(model: str, reference: str, trust_remote_code: bool) -> None:
    from rlhfkit.models.load import load_tokenizer

    a = load_tokenizer(model, trust_remote_code=trust_remote_code).get_vocab()
    b = load_tokenizer(reference, trust_remote_code=trust_remote_code).get_vocab()
    if a != b:
        raise UserError(
            f"--reference {reference} has another tokenizer than --model {model}: "
            "KL needs both models to read the same tokens"
        )


def respond(
    path: str,
    prompts: list[PromptRecord],
    cfg: EvalConfig,
    device: Any,
    *,
    scorer: Any = None,
    reference: Any = None,
) -> Any:
    """One response per prompt from the causal LM at `path` (`sampling.sample_score.Samples`):
    scored by `scorer`, with the per-prompt KL to `reference` from full forwards of both."""
    import torch

    from rlhfkit.data.chat import resolve_chat
    from rlhfkit.models.load import load_causal_lm, load_tokenizer
    from rlhfkit.sampling.generator import GenerationSettings, make_generator
    from rlhfkit.sampling.sample_score import encode_prompts, sample_and_score

    tokenizer = load_tokenizer(path, trust_remote_code=cfg.trust_remote_code)
    resolve_chat(tokenizer, cfg.chat, what=path)  # --chat / --no-chat: model and baseline
    model = load_causal_lm(path, device, trust_remote_code=cfg.trust_remote_code)
    model.eval()
    settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
    return sample_and_score(
        make_generator(model, tokenizer, cfg), prompts,
        encode_prompts(prompts, tokenizer, MAX_PROMPT_LEN), settings,
        torch.Generator(device=device).manual_seed(cfg.seed), batch_size=cfg.batch_size,
        scorer=scorer, tokenizer=tokenizer, reference=reference,
        policy=model if reference is not None else None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# 4-5. The metrics and the table
# ---------------------------------------------------------------------------------------


def eval_metrics(
    cfg: EvalConfig, prompts: Sequence[PromptRecord], mine: Any, theirs: Any = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary of the model's responses `mine` (`sampling.sample_score.Samples`):
    length, RM score with --rm, KL with --reference, and with a baseline's `theirs` its
    metrics beside them and the win rate; and one row per prompt."""
    summary: dict[str, Any] = {
        "model": cfg.model,
        "prompts_file": cfg.prompts,
        "n": len(prompts),
        "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        **length_summary(mine.tokens, mine.ended),
    }
    rows: list[dict[str, Any]] = [
        {"prompt": p.prompt, "response": r, "tokens": t, "eos": e}
        for p, r, t, e in zip(prompts, mine.texts, mine.tokens, mine.ended, strict=True)
    ]
    if mine.scores is not None:
        summary.update(_rm_summary(mine, cfg))
        for row, s in zip(rows, mine.scores.tolist(), strict=True):
            row["rm_score"] = s
    if mine.kl is not None:
        kl = mine.kl.tolist()
        mean, se = mean_and_se(kl)
        summary.update(
            reference=cfg.reference, kl_to_reference=mean, kl_to_reference_se=se, kl_note=KL_NOTE
        )
        for row, v in zip(rows, kl, strict=True):
            row["kl"] = v
    if theirs is not None:
        _add_baseline(summary, rows, mine, theirs, cfg)
    return summary, rows


def _add_baseline(
    summary: dict[str, Any], rows: list[dict[str, Any]], mine: Any, theirs: Any, cfg: EvalConfig
) -> None:
    """The baseline's length and RM scores beside the model's, the model's win rate over
    it, and each prompt's baseline response and score in its row."""
    summary["baseline"] = {
        "model": cfg.baseline,
        **length_summary(theirs.tokens, theirs.ended),
        **_rm_summary(theirs, cfg),
    }
    summary.update(win_rate(mine.scores.tolist(), theirs.scores.tolist()))
    summary["win_rate_note"] = WIN_RATE_NOTE
    for row, r, s in zip(rows, theirs.texts, theirs.scores.tolist(), strict=True):
        row.update(baseline_response=r, baseline_rm_score=s)


def _rm_summary(samples: Any, cfg: EvalConfig) -> dict[str, Any]:
    scores = samples.scores.tolist()
    return {
        "rm_score": fmean(scores),
        "rm_score_std": stdev(scores) if len(scores) > 1 else 0.0,
        "rm_scores": {name: fmean(v.tolist()) for name, v in samples.per_rm.items()},
        "reward_models": list(cfg.rm),
        "combine": cfg.combine,
    }


def _gold(prompts: Sequence[PromptRecord], mine: Any, show: int) -> dict[str, Any] | None:
    """The built-in world's gold metrics of the responses (with `show` samples), or None
    unless every prompt is one of the world's."""
    if _world_prompts(prompts) != len(prompts):
        return None
    texts, safety = [p.prompt for p in prompts], [p.safety for p in prompts]
    return summarize(texts, mine.texts, safety, response_tokens=mine.tokens, n_samples=show)


def _world_prompts(prompts: Sequence[PromptRecord]) -> int:
    """How many prompts are the built-in world's (a string of its; never messages)."""
    return sum(isinstance(p.prompt, str) and is_world_prompt(p.prompt) for p in prompts)


def _print_table(
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    gold: dict[str, Any] | None,
    prompts: Sequence[PromptRecord],
    show: int,
) -> None:
    """The table, then the gold metrics' (or why there are none)."""
    print(format_eval(summary, rows, show if gold is None else 0))
    n_world = _world_prompts(prompts)
    if gold is not None:
        print("\n" + format_table(gold))
    elif n_world:
        print(
            f"\nno gold metrics: {len(prompts) - n_world} of {len(prompts)} prompts are not "
            "the built-in world's"
        )


# ---------------------------------------------------------------------------------------
# The arithmetic (plain Python: tested against hand computations)
# ---------------------------------------------------------------------------------------


def win_outcomes(model_scores: Sequence[float], baseline_scores: Sequence[float]) -> list[float]:
    """Per prompt: 1.0 if the model's score is higher, 0.5 if equal, 0.0 if lower."""
    if len(model_scores) != len(baseline_scores):
        raise ValueError(f"{len(model_scores)} model scores but {len(baseline_scores)} baseline's")
    outcomes = []
    for m, b in zip(model_scores, baseline_scores, strict=True):
        if m > b:
            outcomes.append(1.0)
        elif m == b:
            outcomes.append(0.5)
        else:
            outcomes.append(0.0)
    return outcomes


def win_rate(model_scores: Sequence[float], baseline_scores: Sequence[float]) -> dict[str, Any]:
    """The model's win rate over the baseline (ties count half) and its standard error
    (`WIN_RATE_NOTE`; None with fewer than 2 prompts), with the counts."""
    outcomes = win_outcomes(model_scores, baseline_scores)
    n = len(outcomes)
    return {
        "win_rate": fmean(outcomes) if n else None,
        "win_rate_se": stdev(outcomes) / math.sqrt(n) if n > 1 else None,
        "wins": outcomes.count(1.0),
        "ties": outcomes.count(0.5),
        "losses": outcomes.count(0.0),
        "n": n,
    }


def mean_and_se(xs: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean and the standard error of the mean (sample std / sqrt(n))."""
    if not xs:
        return None, None
    return fmean(xs), (stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None)


def length_summary(tokens: Sequence[int], ended: Sequence[bool]) -> dict[str, Any]:
    """Mean response length in tokens (EOS not counted) and the share that ended with EOS."""
    if len(tokens) != len(ended):
        raise ValueError(f"{len(tokens)} token counts but {len(ended)} EOS flags")
    if not tokens:
        return {"mean_response_tokens": None, "eos_rate": None}
    return {
        "mean_response_tokens": fmean(float(t) for t in tokens),
        "eos_rate": fmean(1.0 if e else 0.0 for e in ended),
    }


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_eval(summary: dict[str, Any], rows: list[dict[str, Any]], n_samples: int) -> str:
    """The printed table: the model's metrics, the baseline's beside them, the win rate."""
    how = "greedy" if summary["temperature"] == 0 else f"temperature {summary['temperature']:g}"
    lines = [
        f"eval of {summary['model']} on {summary['n']} prompts ({summary['prompts_file']}), "
        f"{how}, at most {summary['max_new_tokens']} new tokens"
    ]
    base = summary.get("baseline")
    lines.append(f"  {'':<34} {'model':>10}" + (f" {'baseline':>10}" if base else ""))

    def line(label: str, key: str, digits: int = 3) -> None:
        cell = f"  {label:<34} {_fmt(summary.get(key), digits):>10}"
        if base:
            cell += f" {_fmt(base.get(key), digits):>10}"
        lines.append(cell)

    line("response length (tokens, mean)", "mean_response_tokens", 1)
    line("EOS rate (ended within the limit)", "eos_rate")
    if "rm_score" in summary:
        line(f"RM score ({summary['combine']}, mean)", "rm_score")
        for name, v in summary["rm_scores"].items():
            cell = f"    {name:<32} {_fmt(v):>10}"
            if base:
                cell += f" {_fmt(base['rm_scores'].get(name)):>10}"
            lines.append(cell)
    if "kl_to_reference" in summary:
        lines.append(
            f"  {'KL to reference (sum over tokens)':<34} "
            f"{_fmt(summary['kl_to_reference']):>10}  (SE {_fmt(summary['kl_to_reference_se'])}, "
            f"{summary['reference']})"
        )
    if base:
        lines.append(
            f"  {'win rate over the baseline':<34} {_fmt(summary['win_rate']):>10}  "
            f"(SE {_fmt(summary['win_rate_se'])}; {summary['wins']} wins, {summary['ties']} "
            f"ties, {summary['losses']} losses; {base['model']})"
        )
    if n_samples and rows:
        lines.append("\n  samples:")
        for row in rows[:n_samples]:
            q = str(row["prompt"]).replace("\n", " ")
            score = f"  (RM {row['rm_score']:.3f})" if "rm_score" in row else ""
            lines.append(f"  {q} -> {row['response'].strip()!r}{score}")
    return "\n".join(lines)
