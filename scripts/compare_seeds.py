"""Did PPO, RS, RLOO and DPO beat the selected SFT model, over several pipeline runs (seeds)?

    .venv/bin/python scripts/compare_seeds.py runs/seed0 runs/seed1 runs/seed2

For each model and metric: the gain over `sft-selected` per seed (a table), then (a) the
mean over seeds with the standard error ACROSS seeds (stdev of the per-seed gains /
sqrt(seeds)), and (b) the gain pooled over every held-out prompt of every seed, with the
standard error of the paired per-prompt differences (the same prompt answered by both
models, judged by the world's gold judges). Then a plain verdict per model and metric:
"beats" when the gain is positive on every seed and the mean gain exceeds 2 standard
errors across seeds (with one seed: 2 pooled standard errors), else "not significant".

Metrics: gold helpfulness on safe prompts, gold safety on unsafe prompts (the two the
exit status is about: 0 when PPO and RS both beat SFT on both), and false refusals on safe
prompts (lower is better; a gain is a drop). The models are those of MODELS whose eval
file every run has (runs made before the dpo and rloo stages compare PPO and RS).

Then the gold win rate over SFT per model: per prompt 1 if the model's gold score (safety
on unsafe prompts, helpfulness on the others) beats SFT's, 1/2 on a tie, 0 below; per seed
its mean, then the mean over seeds ± SE across seeds, and pooled over every prompt ± SE.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, stdev

from rlhfkit.data.records import read_prompts
from rlhfkit.world import judge

BASELINE = "sft-selected"
MODELS = ("ppo", "rs", "rloo", "dpo")
HEADLINE_MODELS = ("ppo", "rs")  # the exit status
# (name, judge key, prompts: "safe" | "unsafe", sign: +1 higher is better, -1 lower is)
METRICS = (
    ("gold helpfulness (safe prompts)", "helpfulness", "safe", +1),
    ("gold safety (unsafe prompts)", "safety", "unsafe", +1),
    ("fewer false refusals (safe prompts)", "refusal", "safe", -1),
)
HEADLINE = METRICS[:2]  # the exit status


def per_prompt(run: Path, model: str) -> dict[str, dict[str, float]]:
    """prompt -> {"helpfulness", "safety", "refusal", "unsafe"} of the model's eval responses."""
    data = json.loads((run / "eval" / f"{model}.json").read_text())
    # responses[i] answers the i-th record of the eval prompts file
    prompts = read_prompts(run / "world" / "prompts_eval.jsonl")
    out = {}
    for rec, response in zip(prompts, data["responses"], strict=False):
        j = judge(rec.prompt, response)
        out[rec.prompt] = {
            "helpfulness": float(j["helpfulness"]),
            "safety": float(j["safety"]),
            "refusal": float(j["refusal"]),
            "unsafe": rec.safety,
            "gold": float(j["safety"] if rec.safety else j["helpfulness"]),
        }
    return out


def models_in(runs: list[Path]) -> tuple[str, ...]:
    """The models of MODELS that every run evaluated."""
    return tuple(m for m in MODELS if all((r / "eval" / f"{m}.json").exists() for r in runs))


def outcome(mine: float, base: float) -> float:
    """1 if the model's score beats the baseline's, 1/2 on a tie, 0 below."""
    return 1.0 if mine > base else 0.5 if mine == base else 0.0


def se(xs: list[float]) -> float:
    """Standard error of the mean: stdev / sqrt(n); nan for fewer than 2 values."""
    return stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


@dataclass
class Comparison:
    """One model against SFT on one metric, over the runs. Gains are signed so that a
    positive gain is better (a drop in false refusals is a positive gain)."""

    model: str
    metric: str
    seed_gains: list[float]
    pooled: list[float]  # per-prompt paired gains of every seed

    @property
    def mean(self) -> float:
        return fmean(self.seed_gains)

    @property
    def se_seeds(self) -> float:
        return se(self.seed_gains)

    @property
    def se_pooled(self) -> float:
        return se(self.pooled)

    @property
    def wins(self) -> int:
        return sum(g > 0 for g in self.seed_gains)

    def beats(self) -> bool:
        """Better on every seed, and the mean gain over 2 SE across seeds (pooled SE when
        there is one seed)."""
        bound = self.se_seeds if len(self.seed_gains) > 1 else self.se_pooled
        return self.wins == len(self.seed_gains) and self.mean > 2 * bound

    def verdict(self) -> str:
        """One line: 'PPO beats SFT on <metric> on 3/3 seeds; mean gain +0.050 > 2 SE
        (2 x 0.010, across seeds)', or 'PPO vs SFT on <metric>: not significant (...)'."""
        n, model = len(self.seed_gains), self.model.upper()
        bound, which = (self.se_seeds, "across seeds") if n > 1 else (self.se_pooled, "pooled")
        rel = ">" if self.mean > 2 * bound else "<="
        why = f"mean gain {self.mean:+.3f} {rel} 2 SE (2 x {bound:.3f}, {which})"
        if self.beats():
            return f"{model} beats SFT on {self.metric} on {self.wins}/{n} seeds; {why}"
        return (f"{model} vs SFT on {self.metric}: not significant (better on {self.wins}/{n} "
                f"seeds; {why})")  # fmt: skip


@dataclass
class WinRate:
    """One model's gold win rate over SFT, per seed and pooled over every prompt."""

    model: str
    seed_rates: list[float]
    pooled: list[float]  # per-prompt outcomes (1, 1/2, 0) of every seed

    @property
    def mean(self) -> float:
        return fmean(self.seed_rates)


def win_rates(runs: list[Path], scores: dict | None = None) -> list[WinRate]:
    """The gold win rate over SFT of every model present in all `runs`."""
    models = models_in(runs)
    scores = scores or {run: {m: per_prompt(run, m) for m in (BASELINE, *models)} for run in runs}
    out = []
    for model in models:
        rates, pooled = [], []
        for run in runs:
            base, new = scores[run][BASELINE], scores[run][model]
            wins = [outcome(new[p]["gold"], base[p]["gold"]) for p in base if p in new]
            rates.append(fmean(wins))
            pooled.extend(wins)
        out.append(WinRate(model, rates, pooled))
    return out


def compare(runs: list[Path]) -> list[Comparison]:
    """Every (model, metric) comparison over `runs`, models then metrics in order."""
    models = models_in(runs)
    scores = {run: {m: per_prompt(run, m) for m in (BASELINE, *models)} for run in runs}
    out = []
    for model in models:
        for name, key, which, sign in METRICS:
            seed_gains, pooled = [], []
            for run in runs:
                base, new = scores[run][BASELINE], scores[run][model]
                diffs = [
                    sign * (new[p][key] - base[p][key])
                    for p in base
                    if p in new and base[p]["unsafe"] == (which == "unsafe")
                ]
                seed_gains.append(fmean(diffs))
                pooled.extend(diffs)
            out.append(Comparison(model, name, seed_gains, pooled))
    return out


def format_table(runs: list[Path], rows: list[Comparison]) -> str:
    """Per-seed gains (one column per run), mean ± SE across seeds, pooled ± SE."""
    names = [r.name for r in runs]
    head = ["model", "metric (gain: + is better)", *names, "mean ± SE (seeds)", "pooled ± SE (n)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in rows:
        cells = [c.model, c.metric, *[f"{g:+.3f}" for g in c.seed_gains],
                 f"{c.mean:+.3f} ± {c.se_seeds:.3f}",
                 f"{fmean(c.pooled):+.3f} ± {c.se_pooled:.3f} ({len(c.pooled)})"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_win_rates(runs: list[Path], rows: list[WinRate]) -> str:
    """Gold win rate over SFT per seed, mean ± SE across seeds, pooled ± SE (prompts)."""
    head = ["model", *[r.name for r in runs], "mean ± SE (seeds)", "pooled ± SE (n)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in rows:
        cells = [w.model, *[f"{x:.3f}" for x in w.seed_rates],
                 f"{w.mean:.3f} ± {se(w.seed_rates):.3f}",
                 f"{fmean(w.pooled):.3f} ± {se(w.pooled):.3f} ({len(w.pooled)})"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(runs: list[Path]) -> int:
    rows = compare(runs)
    print(f"Gains over {BASELINE} on the held-out prompts, per run (seed):\n")
    print(format_table(runs, rows))
    print()
    for c in rows:
        print(c.verdict())
    print(f"\nGold win rate over {BASELINE} (ties count half), per run (seed):\n")
    print(format_win_rates(runs, win_rates(runs)))
    headline = {name for name, *_ in HEADLINE}
    judged = [c for c in rows if c.metric in headline and c.model in HEADLINE_MODELS]
    return 0 if judged and all(c.beats() for c in judged) else 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main([Path(a) for a in sys.argv[1:]]))
