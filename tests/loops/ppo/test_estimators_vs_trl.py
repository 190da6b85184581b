"""The critic-free estimators against TRL 1.16's own code on the same inputs: GRPOTrainer
and RLOOTrainer instances on a tiny saved Llama, whose `_generate_and_score_completions`
(sampling, rewards, advantages) and `_compute_loss` (the loss) run unchanged. For the loss,
the trainer's log-prob forward (`_get_per_token_logps_and_entropies`) is given the
log-probs to use, so that both sides see the same numbers, also off-policy (ratios != 1,
some clipped); the loss and its gradient with respect to those log-probs are compared.

Where TRL 1.16 departs from the papers, and which settings reproduce ours:
- GRPO (Shao et al. 2024). TRL's `scale_rewards="group"` (default) divides by the group's
  unbiased std + 1e-4: our `grpo`; `scale_rewards="none"` is Dr. GRPO's (Liu et al. 2025)
  advantage, our `dr-grpo`; `"batch"` (the batch's std) has no equivalent here. TRL's
  `loss_type` picks the aggregation: "grpo" (each response's token mean, then the mean:
  the paper's) = our seq-mean-token-mean; "dr_grpo" (token sums / (B x
  max_completion_length)) = seq-mean-token-sum-norm with --max-new-tokens as the constant;
  "bnpo" (token mean of the local batch) and "dapo" (TRL's default: token mean over the
  global batch) = token-mean. The KL is a loss term, beta x k3 per token, as the paper,
  but TRL's default `use_bias_correction_kl=True` multiplies k3 by the importance ratio
  (DeepSeek-V3.2): the same value, another gradient; ours is the paper's plain k3,
  TRL's `use_bias_correction_kl=False`. TRL's default beta is 0 (no reference); the paper
  uses 0.04. TRL's default `num_iterations=1` makes every ratio 1 (one update per batch).
- RLOO (Ahmadian et al. 2024). TRL subtracts beta x the summed k1 KL from the score
  (sequence reward) and uses the leave-one-out baseline, as the paper and our `rloo`;
  `normalize_advantages=False` (default) = ours. Its loss clips ONE ratio per response
  (exp of the summed log-ratio: the response is one action): our `--loss-agg sequence`,
  equal for any ratio. Our rloo default, seq-mean-token-sum, clips each token's ratio
  (the PPO loss on every response token) and sums them: at ratio 1 (TRL's default
  num_iterations=1) its gradient is TRL's exactly, its value is not (sum_t A_i vs A_i).

Skipped, with the reason printed, where trl is not installed (`pip install .[test]`).
"""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl (the test extra) is not installed")

from rlhfkit.losses import POLICY_LOSSES, sequence_policy_loss  # noqa: E402
from rlhfkit.ops.advantages import group_advantages, rloo_advantages  # noqa: E402
from rlhfkit.ops.kl import kl_penalized_rewards  # noqa: E402

N = 4  # responses per prompt
NEW = 8  # max new tokens
BETA = 0.04


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_tokenizer):
    """A tiny saved Llama, two prompts of the same token length (no left padding) and a
    reward function that records what it returned, in order."""
    from tests.conftest import _synthetic_sentences

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model

    if trl.__version__ != "1.16.0":
        pytest.skip(f"these checks are written against trl 1.16.0, not {trl.__version__}")
    tok = copy.deepcopy(tiny_tokenizer)
    folder = tmp_path_factory.mktemp("trl") / "policy"
    save_hf(build_model("test", tok, seed=0), tok, folder)
    texts = [" ".join(t.split()[:4]) for t in _synthetic_sentences(50, seed=3)]
    by_len: dict[int, list[str]] = {}
    for t in texts:
        by_len.setdefault(len(tok(t).input_ids), []).append(t)
    prompts = next(v for v in by_len.values() if len(v) >= 2)[:2]
    recorded: list[float] = []

    def reward(completions, **kwargs):
        scores = [float(len(c) % 7) + 0.1 * c.count("e") for c in completions]
        recorded.extend(scores)
        return scores

    from datasets import Dataset

    return {"folder": str(folder), "tok": tok, "prompts": prompts, "reward": reward,
            "recorded": recorded, "out": tmp_path_factory.mktemp("trl-out"),
            "data": Dataset.from_dict({"prompt": prompts})}  # fmt: skip


def _args(config_cls, out, **kw):
    return config_cls(
        output_dir=str(out), use_cpu=True, per_device_train_batch_size=2 * N, num_generations=N,
        max_completion_length=NEW, report_to="none", save_strategy="no", seed=0, bf16=False,
        disable_tqdm=True, logging_steps=1, **kw,
    )  # fmt: skip


def _score(trainer, setup) -> tuple[dict, torch.Tensor]:
    """TRL's sampling, rewards and advantages on two prompts x N; the rewards it used."""
    setup["recorded"].clear()
    inputs = [{"prompt": p} for p in setup["prompts"] for _ in range(N)]
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(inputs)
    return out, torch.tensor(setup["recorded"], dtype=torch.float32)


def _given_logprobs(monkeypatch, trainer, logprobs: torch.Tensor) -> None:
    """TRL's log-prob forward, replaced by `logprobs` (B, R) for this test (entropies 0,
    no aux loss)."""
    given = (logprobs, torch.zeros_like(logprobs.detach()), None)
    monkeypatch.setattr(trainer, "_get_per_token_logps_and_entropies", lambda *a, **k: given)


def _loss_inputs(out: dict, seed: int, off_policy: bool):
    """Policy log-probs (a leaf), old log-probs (equal, or shifted: ratios != 1) and a
    ragged response mask (lengths 1..R: the tiny policy rarely stops by itself), for
    `out`'s completions; `out` with that mask as its completion mask."""
    shape = out["completion_mask"].shape
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, shape[1] + 1, (shape[0],), generator=gen)
    lengths[0] = shape[1]
    mask = torch.arange(shape[1])[None] < lengths[:, None]
    logprobs = (-3 * torch.rand(shape, generator=gen)).masked_fill(~mask, 0.0)
    shift = 0.3 * torch.randn(shape, generator=gen) if off_policy else 0.0
    old = (logprobs + shift).masked_fill(~mask, 0.0)
    out = {**out, "completion_mask": mask.long(), "num_items_in_batch": mask.sum()}
    return logprobs.requires_grad_(True), old, mask, out


@pytest.fixture(scope="module")
def grpo(setup):
    from trl import GRPOConfig, GRPOTrainer

    args = _args(GRPOConfig, setup["out"] / "grpo", beta=BETA, loss_type="grpo",
                 use_bias_correction_kl=False)  # fmt: skip
    return GRPOTrainer(model=setup["folder"], reward_funcs=setup["reward"], args=args,
                       train_dataset=setup["data"], processing_class=setup["tok"])  # fmt: skip


@pytest.mark.parametrize("scale_rewards", ["group", "none"])
def test_grpo_and_dr_grpo_advantages_equal_trl(grpo, setup, monkeypatch, scale_rewards):
    monkeypatch.setattr(grpo, "scale_rewards", scale_rewards)  # TRL reads it at each call
    out, rewards = _score(grpo, setup)
    assert rewards.numel() == 2 * N and rewards.view(2, N).std(1).min() > 0  # some signal
    ours = group_advantages(rewards, N, scale=scale_rewards == "group")
    torch.testing.assert_close(ours, out["advantages"].float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "loss_type,agg",
    [("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm"),
     ("bnpo", "token-mean"), ("dapo", "token-mean")],
)  # fmt: skip
@pytest.mark.parametrize("off_policy", [False, True])
def test_grpo_losses_equal_trl(grpo, setup, monkeypatch, loss_type, agg, off_policy):
    """TRL's `_compute_loss` (KL term beta x k3, no bias correction) = ours with --kl-in
    loss and the matching --loss-agg, value and gradient, on- and off-policy."""
    out, _ = _score(grpo, setup)
    logprobs, old, mask, out = _loss_inputs(out, seed=1, off_policy=off_policy)
    ref = out["ref_per_token_logps"].float()
    assert (ref - logprobs).abs()[mask].min() > 0.1  # the KL term matters
    adv = out["advantages"].float()
    inputs = {**out, "old_per_token_logps": old if off_policy else None}
    if not off_policy:
        inputs.pop("old_per_token_logps")  # TRL then takes the policy's own, detached
    monkeypatch.setattr(grpo, "loss_type", loss_type)
    _given_logprobs(monkeypatch, grpo, logprobs)
    theirs = grpo._compute_loss(grpo.model, inputs)
    (g_theirs,) = torch.autograd.grad(theirs, logprobs)
    per_token_adv = torch.where(mask, adv[:, None].expand_as(mask), 0.0)
    ours, stats = POLICY_LOSSES[agg](
        logprobs, old, per_token_adv, mask, 0.2, ref_logprobs=ref, kl_coef=BETA, norm_length=NEW
    )
    (g_ours,) = torch.autograd.grad(ours, logprobs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-8)
    if off_policy:
        assert 0 < stats["clipfrac"] < 1  # the clipped branch is exercised


@pytest.fixture(scope="module")
def rloo(setup):
    from trl import RLOOConfig, RLOOTrainer

    args = _args(RLOOConfig, setup["out"] / "rloo", beta=BETA)
    trainer = RLOOTrainer(model=setup["folder"], reward_funcs=setup["reward"], args=args,
                          train_dataset=setup["data"], processing_class=setup["tok"])  # fmt: skip
    # record the policy's and the reference's per-token log-probs that TRL computes
    seen: list[torch.Tensor] = []
    forward = trainer._get_per_token_logps_and_entropies

    def spy(*a, **k):
        result = forward(*a, **k)
        seen.append(result[0].detach().clone())
        return result

    trainer._get_per_token_logps_and_entropies = spy
    return trainer, seen


def test_rloo_advantages_equal_trl(rloo, setup):
    """TRL: R_i = score - beta x sum_t (logp - ref_logp), A_i = R_i - mean of the others."""
    trainer, seen = rloo
    seen.clear()
    out, scores = _score(trainer, setup)
    old, ref = seen  # the policy's, then the reference's
    mask = out["completion_mask"].bool()
    rewards, _ = kl_penalized_rewards(scores, old, ref, mask, BETA, "k1")  # our rollout's
    ours = rloo_advantages(rewards.sum(1), N)
    torch.testing.assert_close(ours, out["advantages"].float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["old_logps"], (old * mask).sum(1))


@pytest.mark.parametrize("off_policy", [False, True])
def test_rloo_loss_equals_trl(rloo, setup, monkeypatch, off_policy):
    """TRL's RLOO loss = ours with --loss-agg sequence, value and gradient, any ratio; our
    default (seq-mean-token-sum) has TRL's gradient at ratio 1."""
    trainer, seen = rloo
    out, _ = _score(trainer, setup)
    logprobs, old, mask, out = _loss_inputs(out, seed=2, off_policy=off_policy)
    adv = out["advantages"].float()
    _given_logprobs(monkeypatch, trainer, logprobs)
    theirs = trainer._compute_loss(trainer.model, {**out, "old_logps": (old * mask).sum(1)})
    (g_theirs,) = torch.autograd.grad(theirs, logprobs)
    per_token_adv = torch.where(mask, adv[:, None].expand_as(mask), 0.0)
    ours, stats = sequence_policy_loss(logprobs, old, per_token_adv, mask, 0.2)
    (g_ours,) = torch.autograd.grad(ours, logprobs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-5, atol=1e-8)
    default, _ = POLICY_LOSSES["seq-mean-token-sum"](logprobs, old, per_token_adv, mask, 0.2)
    (g_default,) = torch.autograd.grad(default, logprobs)
    if off_policy:
        assert 0 < stats["clipfrac"] < 1
    else:
        torch.testing.assert_close(g_default, g_theirs, rtol=1e-5, atol=1e-8)
