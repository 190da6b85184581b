"""The reward of a command, built from its config: one or several reward models combined by
`--combine` (`RewardScorer`), or a rule (`--rule-reward`). `ppo`, `rs`, `select` and
`score` build their scorers here."""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.config.base import parse_weights
from rlhfkit.config.checks import one_reward
from rlhfkit.scoring.remote import RemoteSettings
from rlhfkit.scoring.rm import RewardScorer
from rlhfkit.scoring.rules import rule_scorer


def check_reward(cfg: Any) -> None:
    """Exactly one reward: --rm (one or more) or --rule-reward (`config.checks.one_reward`)."""
    one_reward(cfg)


def combine_options(cfg: Any, whiten: bool | None) -> dict[str, Any]:
    """The combiner options a config sets for its --combine (`whiten` None: the combiner default)."""
    opts: dict[str, Any] = {}
    if whiten is not None:
        opts["whiten"] = whiten
    if cfg.combine == "llama2":
        opts.update(helpfulness=cfg.helpfulness_rm, safety=cfg.safety_rm, threshold=cfg.threshold)
    elif cfg.combine == "weighted-sum" and cfg.weights:
        opts["weights"] = parse_weights(cfg.weights)
    return opts


def build_scorer(cfg: Any, device: torch.device, whiten: bool | None) -> Any:
    """The reward role: `--rule-reward NAME`, or the `--rm` models with `--combine`."""
    check_reward(cfg)
    if cfg.rule_reward:
        return rule_scorer(cfg.rule_reward)
    return RewardScorer.from_specs(
        list(cfg.rm),
        cfg.combine,
        combine_options(cfg, whiten),
        device=device,
        trust_remote_code=cfg.trust_remote_code,
        remote=RemoteSettings.from_config(cfg),
    )


def unwhitened(scorer: Any, cfg: Any) -> Any:
    """The same reward models without batch whitening (evaluation: means must compare)."""
    if not isinstance(scorer, RewardScorer):
        return scorer
    return RewardScorer(scorer.sources, cfg.combine, combine_options(cfg, False), scorer.batch_size)
