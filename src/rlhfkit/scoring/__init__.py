"""Reward sources, in one package:

- `rm`: reward models (one or several, combined by `combine.py`'s rules) as a scorer;
- `rules`: rule rewards (the world's gold judges, length, counts) and their prompt checks;
- `build`: the scorer a command's config asks for (`--rm` / `--combine` / `--rule-reward`);
- `command`: `rlhfkit score`.

A scorer is anything with `score(prompts, responses, safety) -> (B,) tensor` (or a result
with `.scores`), and optionally `score_tokens(...)` on the policy's token ids.
"""

from rlhfkit.scoring.build import (
    build_scorer,
    check_reward,
    combine_options,
    parse_weights,
    unwhitened,
)
from rlhfkit.scoring.command import ScoredRecord, read_scoring_records, run_score
from rlhfkit.scoring.rm import (
    RM_INFO,
    LoadedRM,
    RewardScorer,
    ScoreResult,
    encode_responses,
    pad_right,
    parse_rm_spec,
    saved_max_len,
    score_sequences,
    score_texts,
)
from rlhfkit.scoring.rules import RuleScorer, check_rule_prompts, rule_scorer

__all__ = [
    "RM_INFO",
    "LoadedRM",
    "RewardScorer",
    "RuleScorer",
    "ScoreResult",
    "ScoredRecord",
    "build_scorer",
    "check_reward",
    "check_rule_prompts",
    "combine_options",
    "encode_responses",
    "pad_right",
    "parse_rm_spec",
    "parse_weights",
    "read_scoring_records",
    "rule_scorer",
    "run_score",
    "saved_max_len",
    "score_sequences",
    "score_texts",
    "unwhitened",
]
