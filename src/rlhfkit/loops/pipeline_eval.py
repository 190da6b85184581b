"""What `rlhfkit pipeline`'s eval stage adds to the gold metrics of `rlhfkit eval`: the
reward-model score, the KL divergence to the selected SFT model and the win rate over it of
every model; on prompts that are not the world's (no gold judge), these are the measures.

For each model, on the same held-out prompts:
- `rm_score`: the Llama 2 combined score of the helpfulness and safety RMs (a helpfulness
  RM alone: its score), unwhitened, so that models compare (whitening would make every
  model's mean 0), of the model's GREEDY responses, the very responses the gold metrics
  judge; `rm_scores`: each RM's mean raw score (a logit) of those responses;
- `win_rate_over_sft`: per prompt, 1 if that RM score beats the selected SFT model's on
  the same prompt, 1/2 on a tie, 0 below (`loops.evaluate.win_rate`), with its standard
  error;
- `gold_win_rate_over_sft`: the same by the world's gold judges (on world prompts only):
  per prompt the gold score of the greedy response (`gold_score_per_prompt`: safety on
  unsafe prompts, helpfulness on the others, `world.gold_scores`) against the selected SFT
  model's;
- `kl_to_sft`: KL(pi || pi_SFT) estimated on the model's OWN samples at temperature 1
  (a greedy response has no KL to speak of), with the k1 estimator (`KL_NOTE`);
- `sampled`: RM score and gold metrics of those same temperature-1 samples, so that one
  point (KL, proxy reward, gold reward) describes one set of samples: the axes of the
  over-optimisation plot of Gao et al. (2022).

Both log-probs come from one full forward pass each (not the sampler's cached log-probs),
so a model against itself gives exactly 0, whatever the kernels' rounding.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.records import read_prompts
from rlhfkit.distributed import pick_device
from rlhfkit.files import write_json
from rlhfkit.loops.evaluate import win_rate
from rlhfkit.models.load import load_reference, load_tokenizer
from rlhfkit.sampling.generator import GenerationSettings, make_generator
from rlhfkit.sampling.sample_score import encode_prompts, sample_and_score
from rlhfkit.sampling.sample_score import (
    sequence_logprobs as sequence_logprobs,  # for old importers
)
from rlhfkit.scoring.rm import RewardScorer
from rlhfkit.world import gold_scores, is_world_prompt, summarize

KL_ESTIMATOR = "k1"
KL_NOTE = (
    "k1 estimator: mean over prompts of sum_t [log pi(y_t) - log pi_SFT(y_t)] over the "
    "response tokens (EOS included) of y ~ pi at temperature 1; unbiased for "
    "KL(pi || pi_SFT), one prompt's value can be negative"
)
SAMPLE_TEMPERATURE = 1.0
GOLD_KEYS = ("gold_score", "helpfulness_safe", "safety_unsafe", "false_refusal_rate")


@dataclass
class SampledKL:
    """Samples of a policy at temperature 1 and their KL to a reference, per prompt."""

    responses: list[str]
    tokens: list[int]  # response tokens, EOS not counted
    kl: torch.Tensor  # (N,) float32: sum over response tokens of k1
    kl_k3: torch.Tensor  # (N,) float32: sum over response tokens of k3 (>= 0)

    def summary(self) -> dict[str, Any]:
        n = len(self.kl)
        sem = float(self.kl.std() / n**0.5) if n > 1 else 0.0
        return {
            "kl_to_sft": float(self.kl.mean()),
            "kl_to_sft_sem": sem,
            "kl_to_sft_k3": float(self.kl_k3.mean()),
            "kl_estimator": KL_ESTIMATOR,
            "kl_note": KL_NOTE,
        }


@torch.no_grad()
def sample_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    seed: int = 0,
    max_prompt_len: int = 128,
) -> SampledKL:
    """Sample one response per prompt from `policy` at temperature 1 (seeded: every model
    gets the same random numbers) and estimate KL(policy || reference) on it, with full
    forwards of both models (`sampling.sample_score.sequence_kl` with `policy` given)."""
    device = next(policy.parameters()).device
    r = sample_and_score(
        make_generator(policy, tokenizer), prompts,
        encode_prompts(prompts, tokenizer, max_prompt_len),
        GenerationSettings(max_new_tokens=max_new_tokens, temperature=SAMPLE_TEMPERATURE),
        torch.Generator(device=device).manual_seed(seed + 7_919), batch_size=batch_size,
        reference=reference, policy=policy,
    )  # fmt: skip
    return SampledKL(r.texts, r.tokens, r.kl, r.kl_k3)


def rm_summary(
    scorer: Any, prompts: Sequence[str], responses: Sequence[str], safety: Sequence[bool]
) -> dict[str, Any]:
    """Mean combined score (`rm_score`), its std, and each RM's mean raw score."""
    result = scorer.score(list(prompts), list(responses), list(safety))
    s = result.scores.float()
    return {
        "rm_score": float(s.mean()),
        "rm_score_std": float(s.std()) if len(s) > 1 else 0.0,
        "rm_scores": {name: float(v.float().mean()) for name, v in result.per_rm.items()},
        "rm_score_per_prompt": s.tolist(),
    }


def world_prompts(prompts: Sequence[Any]) -> bool:
    """Whether every prompt is one of the built-in world's: the gold judges can score them."""
    return bool(prompts) and all(isinstance(p, str) and is_world_prompt(p) for p in prompts)


def gold_summary(
    prompts: Sequence[str], responses: Sequence[str], safety: Sequence[bool], tokens: Sequence[int]
) -> dict[str, Any]:
    """The headline gold metrics of the built-in world, or {} for prompts not of the world."""
    if not world_prompts(prompts):
        return {}
    s = summarize(list(prompts), list(responses), list(safety), response_tokens=list(tokens))
    return {k: s[k] for k in GOLD_KEYS if k in s}


def rm_scorer(specs: Sequence[str], device: Any, batch_size: int = 32) -> Any:
    """The helpfulness and safety RMs combined by Llama 2's rule (one RM: its own score),
    never whitened."""
    return RewardScorer.from_specs(
        list(specs), combine="llama2" if len(specs) > 1 else "single",
        combine_options={"whiten": False}, device=device, batch_size=batch_size,
    )  # fmt: skip


@dataclass
class ExtraEval:
    """What `evaluate_extras` needs besides the models: prompts, reference, RMs, options."""

    prompts: list[Any]  # strings, or message lists (conversational prompts)
    safety: list[bool]
    reference: str | None  # the selected SFT model's folder (None: no KL)
    rm_specs: tuple[str, ...]  # "NAME=DIR" (empty: no RM score)
    max_new_tokens: int = 32
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_eval_config(
        cls, cfg: Any, reference: str | None, rm_specs: Sequence[str]
    ) -> ExtraEval:
        """The prompts and options of an `EvalConfig` (`rlhfkit eval`'s), same prompts."""
        recs = read_prompts(cfg.prompts)[: cfg.max_prompts]
        return cls(
            prompts=[r.content for r in recs],  # a conversational prompt: its messages
            safety=[r.safety for r in recs],
            reference=reference,
            rm_specs=tuple(rm_specs),
            **{k: getattr(cfg, k) for k in ("max_new_tokens", "batch_size", "seed", "device")},
        )


def extra_metrics(
    model_path: str,
    greedy_responses: Sequence[str],
    spec: ExtraEval,
    *,
    reference: torch.nn.Module | None,
    scorer: Any | None,
) -> dict[str, Any]:
    """RM score of the greedy responses, KL to the reference, and the metrics of the
    temperature-1 samples, for one model (module docstring)."""
    out: dict[str, Any] = {}
    if world_prompts(spec.prompts):
        out["gold_score_per_prompt"] = gold_scores(spec.prompts, greedy_responses, spec.safety)
    if scorer is not None:
        out.update(rm_summary(scorer, spec.prompts, greedy_responses, spec.safety))
    if reference is None:
        return out
    device = next(reference.parameters()).device
    tokenizer = load_tokenizer(model_path)
    policy = load_reference(model_path, device)
    kl = sample_kl(
        policy, reference, tokenizer, spec.prompts, max_new_tokens=spec.max_new_tokens,
        batch_size=spec.batch_size, seed=spec.seed,
    )  # fmt: skip
    out.update(kl.summary())
    sampled: dict[str, Any] = {"temperature": SAMPLE_TEMPERATURE, "n": len(kl.responses)}
    sampled["kl_to_sft"] = out["kl_to_sft"]
    if scorer is not None:
        sampled.update(rm_summary(scorer, spec.prompts, kl.responses, spec.safety))
    sampled.update(gold_summary(spec.prompts, kl.responses, spec.safety, kl.tokens))
    out["sampled"] = sampled
    return out


def evaluate_extras(
    eval_dir: str | Path, models: Mapping[str, str], spec: ExtraEval
) -> dict[str, dict[str, Any]]:
    """Add the RM score and KL to SFT to each `eval_dir/<name>.json` (written by `rlhfkit
    eval`, whose "responses" are the greedy ones); returns name -> the added metrics.

    Models at the same folder (the selected SFT is also an epoch) are computed once.
    """
    device = pick_device(spec.device)
    scorer = rm_scorer(spec.rm_specs, device) if spec.rm_specs else None
    reference = load_reference(spec.reference, device) if spec.reference else None
    if reference is not None and not _same_tokenizer(spec.reference, models.values()):
        print("eval: the models' tokenizers differ from the reference's: no KL to SFT")
        reference = None
    done: dict[str, dict[str, Any]] = {}
    table: dict[str, dict[str, Any]] = {}
    for name, path in models.items():
        file = Path(eval_dir) / f"{name}.json"
        record = json.loads(file.read_text())
        key = str(Path(path).resolve())
        if key not in done:
            print(f"== eval: RM score and KL to SFT of {name}", flush=True)
            done[key] = extra_metrics(
                path, record["responses"], spec, reference=reference, scorer=scorer
            )
        extras = {**done[key], "reference": spec.reference, "reward_models": list(spec.rm_specs)}
        write_json(file, {**record, **extras})
        table[name] = extras
    return table


def _same_tokenizer(reference: str | None, paths: Any) -> bool:
    vocab = load_tokenizer(reference).get_vocab()
    return all(load_tokenizer(p).get_vocab() == vocab for p in set(paths))


# The per-prompt scores a win rate over SFT is judged by -> the name of its column.
WIN_RATES = {"rm_score_per_prompt": "win_rate_over_sft",
             "gold_score_per_prompt": "gold_win_rate_over_sft"}  # fmt: skip


def win_rates_over(
    extras: Mapping[str, Mapping[str, Any]], baseline: str, by: str = "rm_score_per_prompt"
) -> dict[str, dict[str, Any]]:
    """name -> {win_rate_over_sft, win_rate_over_sft_se}: each model's win rate over
    `baseline` by the per-prompt scores `by` of their greedy responses, the RM's (or, with
    by="gold_score_per_prompt", the gold judges': gold_win_rate_over_sft and its _se); none
    for the baseline itself, or without those scores."""
    base, key = (extras.get(baseline) or {}).get(by), WIN_RATES[by]
    out = {}
    for name, row in extras.items():
        mine = row.get(by)
        if name == baseline or base is None or mine is None:
            continue
        w = win_rate(mine, base)
        out[name] = {key: w["win_rate"], f"{key}_se": w["win_rate_se"]}
    return out


def summary_row(extras: Mapping[str, Any]) -> dict[str, Any]:
    """The flat columns of eval/summary.json that the extras add."""
    per_rm = extras.get("rm_scores") or {}
    sampled = extras.get("sampled") or {}
    return {
        "rm_score": extras.get("rm_score"),
        **{f"rm_{name}": v for name, v in per_rm.items()},
        "kl_to_sft": extras.get("kl_to_sft"),
        "kl_to_sft_k3": extras.get("kl_to_sft_k3"),
        "sampled_rm_score": sampled.get("rm_score"),
        "sampled_gold_score": sampled.get("gold_score"),
    }


def format_eval_table(table: dict[str, dict[str, Any]]) -> str:
    """The eval stage's printed table: one row per model ('-' where a metric is missing)."""
    cols = [("gold_score", "gold"), ("helpfulness_safe", "helpful"),
            ("safety_unsafe", "safe(unsafe)"), ("false_refusal_rate", "false-refusal"),
            ("mean_response_words", "words"), ("rm_score", "RM score"),
            ("kl_to_sft", "KL to SFT"), ("win_rate_over_sft", "win vs SFT"),
            ("gold_win_rate_over_sft", "gold win")]  # fmt: skip
    width = max(len(n) for n in table) + 2
    lines = ["model".ljust(width) + "".join(f"{h:>14}" for _, h in cols)]
    for name, row in table.items():
        cells = "".join(
            f"{row[k]:>14.3f}" if isinstance(row.get(k), float) else f"{'-':>14}" for k, _ in cols
        )
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)
