"""loops/ppo/run.py: the `PPORun` built from its roles (optimizers, the evaluation's
settings)."""

from __future__ import annotations

from dataclasses import replace

import torch
from tests.loops.ppo.test_loop import TokenSetReward, _prompts, _roles

from rlhfkit import cli
from rlhfkit.config import PPOConfig


def test_adam_eps_defaults_to_1e_5_for_policy_and_value(tiny_tokenizer):
    from rlhfkit.distributed import Dist
    from rlhfkit.loops.ppo.run import _trainables

    assert PPOConfig().adam_eps == 1e-5  # N+ details, not PyTorch's 1e-8
    assert cli.parse("ppo", ["--policy", "p", "--prompts", "q", "--out", "o", "--rm", "r",
                             "--adam-eps", "2e-6"]).adam_eps == 2e-6  # fmt: skip
    for eps in (None, 2e-6):
        policy, _, value = _roles(tiny_tokenizer)
        cfg = PPOConfig() if eps is None else PPOConfig(adam_eps=eps)
        t = _trainables(cfg, policy, value, Dist(), torch.device("cpu"))
        for opt in (t.policy_optimizer, t.value_optimizer):
            assert {g["eps"] for g in opt.param_groups} == {eps or 1e-5}


def test_the_run_holds_its_roles_and_evaluates_greedily_on_raw_scores(tiny_tokenizer):
    """`build_run`: the encoded prompts, the rollout's settings as configured, and the
    evaluation's own: --eval-temperature, scores never normalised, stopping at EOS; a
    critic-free estimator has no value model, optimizer nor schedule."""
    from rlhfkit.loops.ppo.run import build_run
    from rlhfkit.sampling.sample_score import encode_prompts

    policy, reference, value = _roles(tiny_tokenizer)
    cfg = PPOConfig(temperature=0.7, eval_temperature=0.0, score_norm="whiten", ignore_eos=True)
    prompts, held_out = _prompts(8), _prompts(2)
    run = build_run(cfg, policy, reference, value, TokenSetReward(), tiny_tokenizer, prompts,
                    eval_prompts=held_out)  # fmt: skip
    assert run.prompts == prompts and run.eval_prompts == held_out
    assert run.prompt_ids == encode_prompts(prompts, tiny_tokenizer, cfg.max_prompt_len)
    r, e = run.rollout_settings, run.eval_settings
    assert (r.temperature, r.score_norm, r.stop_at_eos) == (0.7, "whiten", False)
    assert (e.temperature, e.score_norm, e.stop_at_eos) == (0.0, "none", True)
    assert run.ptx is None and run.policy_steps == 0 and run.trainables.value_scheduler
    critic_free = build_run(replace(cfg, estimator="rloo"), policy, reference, None,
                            TokenSetReward(), tiny_tokenizer, prompts)  # fmt: skip
    t = critic_free.trainables
    assert t.value_model is t.value_optimizer is t.value_scheduler is None
    assert t.policy_scheduler is not None and critic_free.eval_prompts == []
