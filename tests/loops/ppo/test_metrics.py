"""loops/ppo/metrics.py: what a rollout logs (the score before whitening)."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.loops.ppo.test_rollout import PROMPTS, _collect

from rlhfkit.loops.ppo.rollout import RolloutSettings
from rlhfkit.models.load import freeze
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model
from rlhfkit.ops.masking import masked_whiten
from rlhfkit.scoring.rm import LoadedRM, RewardScorer


def test_llama2_score_is_logged_before_whitening_and_the_reward_is_unchanged(tiny_tokenizer):
    """`--combine llama2` whitens over the batch: the reward must keep using the whitened
    score, while score/mean (and so the summary's first / final score) is the combined
    score before whitening, which the whitened one (mean 0 every batch) cannot show."""
    from rlhfkit.loops.ppo.metrics import rollout_metrics

    policy = build_model("test", tiny_tokenizer, seed=0).eval()
    reference = freeze(copy.deepcopy(policy))
    value, _ = init_reward_model(policy, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=1)
    rms = {}
    for name, seed in (("helpfulness", 2), ("safety", 4)):
        rm, rm_tok = init_reward_model(
            build_model("test", tiny_tokenizer, seed=seed), copy.deepcopy(tiny_tokenizer),
            head_init="normal", seed=seed + 1,
        )  # fmt: skip
        rms[name] = LoadedRM(freeze(rm), rm_tok, 512)
    whitening = RewardScorer(rms, "llama2")  # whitens by default
    plain = RewardScorer(rms, "llama2", {"whiten": False})
    settings = RolloutSettings(max_new_tokens=6)
    prompts = PROMPTS * 2
    r = _collect(
        policy, reference, value.eval(), whitening, prompts, tokenizer=tiny_tokenizer,
        settings=settings, kl_coef=0.05, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    ids = (r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask)
    combined = plain.score_tokens(*ids, tiny_tokenizer).scores  # same samples, not whitened
    torch.testing.assert_close(r.raw_scores, combined)
    # what enters the reward did not change: the whitening combiner's own output
    torch.testing.assert_close(r.scores, whitening.score_tokens(*ids, tiny_tokenizer).scores)
    torch.testing.assert_close(r.scores, masked_whiten(combined, torch.ones_like(r.ended)))
    m = rollout_metrics(r)
    assert m["score/mean"] == pytest.approx(float(combined.mean()), abs=1e-5)
    assert m["score/std"] == pytest.approx(float(combined.std()), abs=1e-4)
    assert abs(m["score/shaped_mean"]) < 1e-5  # the whitened reward: 0 every batch
    assert abs(m["score/mean"]) > 0.05, m["score/mean"]  # and the headline is not
