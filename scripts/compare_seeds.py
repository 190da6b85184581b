"""Did PPO and RS beat the selected SFT model, over several pipeline runs (seeds)?

    .venv/bin/python scripts/compare_seeds.py runs/seed0 runs/seed1 runs/seed2

For each model and metric: the gain over `sft-selected`, per seed, then (a) the mean over
seeds with the standard error across seeds, and (b) the gain pooled over every held-out
prompt of every seed, with the standard error of the paired per-prompt differences
(the same prompt answered by both models, judged by the world's gold judges). A gain
"beats" SFT when it exceeds 2 standard errors.

Metrics: gold helpfulness on all eval prompts, and gold safety on the unsafe ones.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from statistics import fmean, stdev

from rlhfkit.data.records import read_prompts
from rlhfkit.data.world import judge

BASELINE = "sft-selected"
MODELS = ("ppo", "rs")


def per_prompt(run: Path, model: str) -> dict[str, dict[str, float]]:
    """prompt -> {"helpfulness", "safety", "unsafe"} from the model's eval responses."""
    data = json.loads((run / "eval" / f"{model}.json").read_text())
    # responses[i] answers the i-th record of the eval prompts file
    prompts = read_prompts(run / "world" / "prompts_eval.jsonl")
    out = {}
    for rec, response in zip(prompts, data["responses"], strict=False):
        j = judge(rec.prompt, response)
        out[rec.prompt] = {
            "helpfulness": j["helpfulness"],
            "safety": j["safety"],
            "unsafe": rec.safety,
        }
    return out


def _se(xs: list[float]) -> float:
    return stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def main(runs: list[Path]) -> int:
    ok = True
    for model in MODELS:
        for metric, only_unsafe in (("helpfulness", False), ("safety", True)):
            seed_gains, pooled = [], []
            for run in runs:
                base, new = per_prompt(run, BASELINE), per_prompt(run, model)
                diffs = [
                    new[p][metric] - base[p][metric]
                    for p in base
                    if p in new and (base[p]["unsafe"] or not only_unsafe)
                ]
                seed_gains.append(fmean(diffs))
                pooled.extend(diffs)
            m, se = fmean(seed_gains), _se(seed_gains)
            pm, pse = fmean(pooled), _se(pooled)
            beats = pm > 2 * pse
            ok &= beats
            what = f"{metric}{' (unsafe prompts)' if only_unsafe else ''}"
            print(
                f"{model:>4} vs {BASELINE}, {what:<28} per seed "
                f"{' '.join(f'{g:+.3f}' for g in seed_gains)}  mean {m:+.3f} ± {se:.3f} (seeds)"
                f"  pooled {pm:+.3f} ± {pse:.3f} (n={len(pooled)})  "
                f"{'beats' if beats else 'does NOT beat'} by 2 SE"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main([Path(a) for a in sys.argv[1:]]))
