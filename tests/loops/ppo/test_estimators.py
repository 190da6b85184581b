"""`rlhfkit ppo --estimator`: the critic-free estimators in the PPO loop. No value model is
built, trained or saved; each estimator's advantages in the loop are its `ops.advantages`
function on the rollout's own fields, with the KL where its paper puts it; groups stay
together in minibatches; each estimator raises a rule reward; the command writes which
estimator ran and its CPU time, resumes exactly, and refuses options an estimator cannot
use before any model loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.loops.ppo.test_loop import TokenSetReward, _args, _params, _prompts, _roles
from tests.loops.ppo.test_loop import files as files  # noqa: F401 (a fixture)

from rlhfkit import cli
from rlhfkit.config import PPOConfig
from rlhfkit.config.rl import ESTIMATOR_DEFAULTS, estimator_options
from rlhfkit.loops.ppo.loop import build_run, ppo_step
from rlhfkit.loops.ppo.update import UpdateSettings, _minibatches
from rlhfkit.ops.advantages import (
    discounted_returns,
    group_advantages,
    group_mean,
    rloo_advantages,
)
from rlhfkit.ops.masking import masked_whiten

CRITIC_FREE = [e for e, d in ESTIMATOR_DEFAULTS.items() if not d.critic]


def _run(tok, estimator: str, **kw):
    policy, reference, value = _roles(tok, head_init="normal")
    opts = dict(batch_size=4, max_new_tokens=8, ppo_epochs=1, lr=1e-3, weight_decay=0.0,
                kl_coef=0.05, estimator=estimator) | kw  # fmt: skip
    cfg = PPOConfig(**opts)
    value = value if estimator == "gae" else None
    return cfg, policy, build_run(cfg, policy, reference, value, TokenSetReward(), tok, _prompts())


@pytest.mark.parametrize("estimator", CRITIC_FREE)
def test_one_critic_free_step_trains_the_policy_alone(tiny_tokenizer, estimator):
    cfg, policy, run = _run(tiny_tokenizer, estimator)
    n = estimator_options(cfg)[2]
    assert run.trainables.value_model is None and run.trainables.value_optimizer is None
    before = _params(policy)
    rollout, metrics = ppo_step(run, 0, cfg.batch_size, cfg.seed)
    for name, p in policy.named_parameters():
        assert not torch.equal(p, before[name]), f"policy {name} did not change"
    assert len(rollout) == cfg.batch_size * n and rollout.group_size == n
    assert rollout.values is None and rollout.value_graph is None
    assert not any("value" in k for k in metrics) and "explained_variance" not in metrics
    for k, v in metrics.items():
        if v is not None:
            assert torch.isfinite(torch.tensor(float(v))), (k, v)
    assert metrics["cpu_s"] > 0 and metrics["time/advantages"] >= 0
    assert ("score/group_std" in metrics) == (n > 1)
    # each prompt's n responses sit in consecutive rows
    assert all(rollout.prompts[i] == rollout.prompts[i - i % n] for i in range(len(rollout)))


@pytest.mark.parametrize(
    "arch,estimator", [("qwen2", "grpo"), ("gpt2", "rloo"), ("llama-tied", "reinforce++-baseline")]
)
def test_a_critic_free_step_on_other_families(tiny_tokenizer, arch, estimator):
    """Qwen2- and GPT-2-shaped policies (their packing decided by the probe) train alone."""
    import copy

    from tests.helpers import CHAIN_ARCH

    from rlhfkit.models.load import freeze
    from rlhfkit.models.presets import build_model

    policy = build_model(CHAIN_ARCH[arch](), tiny_tokenizer, seed=0).eval()
    reference = freeze(copy.deepcopy(policy))
    cfg = PPOConfig(batch_size=4, max_new_tokens=8, ppo_epochs=2, num_mini_batches=2, lr=1e-3,
                    weight_decay=0.0, estimator=estimator)  # fmt: skip
    run = build_run(cfg, policy, reference, None, TokenSetReward(), tiny_tokenizer, _prompts())
    before = _params(policy)
    rollout, metrics = ppo_step(run, 0, cfg.batch_size, cfg.seed)
    assert len(rollout) == 16 and metrics["kl"] == pytest.approx(0.0, abs=1e-4)
    for name, p in policy.named_parameters():
        assert not torch.equal(p, before[name]), f"{arch}: {name} did not change"


def test_each_estimator_in_the_loop_is_its_ops_function_on_the_rollout(tiny_tokenizer):
    """The wiring: A from the rollout's own rewards / scores, repeated on every response
    token, 0 at padding; KL in the reward (rloo, reinforce++) or not (grpo, dr-grpo)."""
    for estimator in CRITIC_FREE:
        cfg, _, run = _run(tiny_tokenizer, estimator)
        r, _ = ppo_step(run, 0, cfg.batch_size, cfg.seed)
        mask, n = r.response_mask, r.group_size
        kl_in = estimator_options(cfg)[0]
        assert r.kl_in == kl_in == ESTIMATOR_DEFAULTS[estimator].kl_in
        # the per-token rewards: -kl_coef x KL only when the KL is in the reward
        seq = r.rewards.sum(1)
        expected_seq = r.scores - (r.kl_coef * r.kl.sum(1) if kl_in == "reward" else 0.0)
        torch.testing.assert_close(seq, expected_seq)
        if estimator == "rloo":
            per_response = rloo_advantages(seq, n)
        elif estimator in ("grpo", "dr-grpo"):
            per_response = group_advantages(seq, n, scale=estimator == "grpo")
        if estimator in ("rloo", "grpo", "dr-grpo"):
            expected = torch.where(mask, per_response[:, None].expand_as(mask), 0.0)
        else:
            baseline = group_mean(r.scores, n) if estimator.endswith("baseline") else None
            returns = discounted_returns(r.rewards, mask, cfg.gamma, baseline=baseline)
            torch.testing.assert_close(r.returns, returns)
            expected = masked_whiten(returns, mask)
        torch.testing.assert_close(r.advantages, expected, msg=estimator)
        assert torch.all(r.advantages[~mask] == 0)


def test_kl_in_loss_adds_k3_to_the_policy_loss(tiny_tokenizer):
    """--kl-in overrides an estimator's default; with the KL in the loss the update logs
    kl_loss (the mean k3) and the rewards carry no KL penalty."""
    for estimator, kl_in in (("rloo", "loss"), ("grpo", "reward")):
        cfg, _, run = _run(tiny_tokenizer, estimator, kl_in=kl_in, ppo_epochs=2)
        r, metrics = ppo_step(run, 0, cfg.batch_size, cfg.seed)
        assert r.kl_in == kl_in
        assert ("kl_loss" in metrics) == (kl_in == "loss")
        if kl_in == "loss":
            torch.testing.assert_close(r.rewards.sum(1), r.scores)
            assert metrics["non_score_reward"] == 0.0 and metrics["kl_loss"] >= 0


def test_minibatches_hold_whole_groups_in_a_seeded_order():
    s = UpdateSettings(num_mini_batches=3, group_size=4, seed=1)
    parts = _minibatches(24, s, step=2, epoch=0)
    rows = torch.cat(parts)
    assert sorted(rows.tolist()) == list(range(24)) and len(parts) == 3
    for part in parts:
        groups = part.view(-1, 4)
        assert torch.equal(groups - groups[:, :1], torch.arange(4).expand_as(groups))
        assert torch.all(groups[:, 0] % 4 == 0)  # each group starts at a group boundary
    assert not torch.equal(rows, torch.arange(24))  # shuffled
    assert all(torch.equal(a, b) for a, b in zip(parts, _minibatches(24, s, 2, 0), strict=True))
    # one response per prompt: the same order as a plain row permutation (gae as before)
    g = torch.Generator().manual_seed((0 * 1_000_003 + 5) * 1009 + 1)
    plain = torch.tensor_split(torch.randperm(8, generator=g), 2)
    ours = _minibatches(8, UpdateSettings(num_mini_batches=2), step=5, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(plain, ours, strict=True))


def test_micro_batches_change_nothing_but_rounding(tiny_tokenizer):
    """A per-response loss (dr-grpo's sums over a constant) weighs each micro-batch by its
    share of the responses: micro-batching gives the same step."""
    results = []
    for micro in (0, 3):
        cfg, policy, run = _run(tiny_tokenizer, "dr-grpo", micro_batch_size=micro)
        _, metrics = ppo_step(run, 0, cfg.batch_size, cfg.seed)
        results.append((metrics, _params(policy)))
    (ma, wa), (mb, wb) = results
    assert ma["policy_loss"] == pytest.approx(mb["policy_loss"], rel=1e-5, abs=1e-7)
    assert ma["grad_norm"] == pytest.approx(mb["grad_norm"], rel=1e-4)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Learning: the reward rises on tiny data
# ---------------------------------------------------------------------------------------


def _learns(tok, estimator: str) -> None:
    """8 prompts x 4 responses, 30 steps of a tiny random policy: the share of response
    tokens in the rewarded set (~25% at start) rises (a fixed seed; CPU, one thread)."""
    torch.manual_seed(0)
    policy, reference, _ = _roles(tok)
    cfg = PPOConfig(
        steps=30, batch_size=8, samples_per_prompt=4, max_new_tokens=16, lr=3e-3,
        kl_coef=0.01, ppo_epochs=4, estimator=estimator,
    )  # fmt: skip
    run = build_run(cfg, policy, reference, None, TokenSetReward(4), tok, _prompts())
    scores = [ppo_step(run, s, cfg.batch_size, cfg.seed)[1]["score/mean"] for s in range(30)]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    print(f"{estimator}: rule reward first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert first < 0.32 and last > first + 0.12, scores


@pytest.mark.parametrize("estimator", ["rloo", "grpo"])
def test_critic_free_estimator_raises_a_rule_reward(tiny_tokenizer, estimator):
    _learns(tiny_tokenizer, estimator)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["dr-grpo", "reinforce++", "reinforce++-baseline"])
def test_other_critic_free_estimators_raise_a_rule_reward(tiny_tokenizer, estimator):
    _learns(tiny_tokenizer, estimator)


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def test_command_saves_no_value_model_and_says_which_estimator_ran(files, tmp_path, capsys):
    out = tmp_path / "grpo"
    extra = ["--estimator", "grpo", "--samples-per-prompt", "2", "--steps", "2",
             "--save-every", "1", "--eval-prompts", str(files["eval"]),
             "--eval-max-prompts", "2", "--rm", f"safety={files['rm']}", "--combine", "llama2",
             "--ptx-data", str(files["corpus"]), "--ptx-coef", "0.5", "--ptx-seq-len", "16",
             "--lora-r", "4"]  # fmt: skip
    assert cli.main(_args(files, out, *extra)) == 0
    printed = capsys.readouterr().out
    assert "estimator grpo (KL in the loss, seq-mean-token-mean), no value model" in printed
    ckpt = out / "checkpoints" / "step-000002"
    assert (ckpt / "policy" / "model.safetensors").is_file() and not (ckpt / "value").exists()
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert set(state["optimizers"]) == {"policy"} and set(state["schedulers"]) == {"policy"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["estimator"] == "grpo" and summary["samples_per_prompt"] == 2
    assert summary["kl_in"] == "loss" and summary["value_model"] is False
    assert 0 < summary["cpu_time_s"] <= summary["cpu_time_total_s"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["run/estimator"] == "grpo" and rows[0]["run/loss_agg"] == "seq-mean-token-mean"
    train = [r for r in rows if "train/kl" in r]
    assert sum(r["train/cpu_s"] for r in train) == pytest.approx(summary["cpu_time_s"], abs=0.02)
    assert "train/kl_loss" in train[-1] and "train/ptx_loss" in train[-1]
    info = json.loads((out / "rlhfkit_ppo.json").read_text())
    assert info["estimator"] == "grpo"
    gae = json.loads((files["base"] / "config.json").read_text())  # the export is an HF model
    assert json.loads((out / "config.json").read_text())["model_type"] == gae["model_type"]


def test_resume_after_a_stop_equals_an_uninterrupted_run(files, tmp_path, monkeypatch):
    import rlhfkit.models.checkpoint as ckpt_mod

    extra = ["--estimator", "rloo", "--samples-per-prompt", "2", "--steps", "4",
             "--save-every", "2", "--num-mini-batches", "2", "--ppo-epochs", "2",
             "--kl-target", "0.1", "--kl-horizon", "10"]  # fmt: skip
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert cli.main(_args(files, full, *extra)) == 0
    save = ckpt_mod.save_checkpoint

    def save_then_die(path, **kw):
        save(path, **kw)
        if Path(path).name == "step-000002":
            raise KeyboardInterrupt  # killed right after the checkpoint of step 2

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save_then_die)
    assert cli.main(_args(files, cut, *extra)) == 130
    monkeypatch.undo()
    assert cli.main(_args(files, cut, *extra, "--resume")) == 0
    a = load_file(str(full / "checkpoints" / "step-000004" / "policy" / "model.safetensors"))
    b = load_file(str(cut / "checkpoints" / "step-000004" / "policy" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = json.loads((full / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    sb = json.loads((cut / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert sa["state"]["kl_controller"] == sb["state"]["kl_controller"]
    # resuming a critic-free run as PPO: the checkpoint has no value model to resume
    assert cli.main(_args(files, cut, "--steps", "6", "--resume")) == 2


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkilled_grpo_run_resumed_equals_uninterrupted(files, tmp_path):
    """A `rlhfkit ppo --estimator grpo` process killed with SIGKILL, then --resume: the
    policy checkpoints after the kill equal the uninterrupted run's bit for bit."""
    import signal
    import subprocess
    import sys
    import time

    from tests.loops.ppo.test_loop import _env

    extra = ["--estimator", "grpo", "--samples-per-prompt", "2", "--steps", "6",
             "--save-every", "2", "--num-mini-batches", "2", "--kl-target", "0.1",
             "--kl-horizon", "10", "--keep-checkpoints", "0"]  # fmt: skip
    cmd = [sys.executable, "-m", "rlhfkit.cli"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([*cmd, *_args(files, full, *extra)], env=_env(), check=True, capture_output=True)
    proc = subprocess.Popen([*cmd, *_args(files, cut, *extra)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "step-000002" / "COMPLETE").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoints" / "step-000006").exists(), "killed too late"
    subprocess.run([*cmd, *_args(files, cut, *extra, "--resume")], env=_env(), check=True,
                   capture_output=True)  # fmt: skip
    for step in ("step-000004", "step-000006"):
        a = load_file(str(full / "checkpoints" / step / "policy" / "model.safetensors"))
        b = load_file(str(cut / "checkpoints" / step / "policy" / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), step
        assert not (cut / "checkpoints" / step / "value").exists()


def test_options_an_estimator_cannot_use_are_refused_before_models_load(
    files, tmp_path, capsys, monkeypatch
):
    import rlhfkit.loops.ppo.loop as ppo_mod

    def no_models(*a, **kw):
        raise AssertionError("models loaded before the options were checked")

    monkeypatch.setattr(ppo_mod, "build_roles", no_models)
    out = tmp_path / "never"
    for flags, message in (
        (["--estimator", "rloo", "--samples-per-prompt", "1"], "--samples-per-prompt must be >= 2"),
        (["--estimator", "reinforce++", "--loss-agg", "sequence"], "one per token"),
        (["--estimator", "grpo", "--batch-size", "4", "--num-mini-batches", "8"], "prompts per"),
    ):
        assert cli.main(_args(files, out, *flags)) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_help_names_each_estimator_and_its_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ppo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--estimator", "--samples-per-prompt", "--kl-in", "--loss-agg"):
        assert flag in text
    for estimator in ESTIMATOR_DEFAULTS:
        assert estimator in text
    assert "Default: loss for grpo and dr-grpo, reward for the others" in text.replace("│ ", "")


def test_estimator_defaults_resolve_and_flags_override():
    assert estimator_options(PPOConfig()) == ("reward", "token-mean", 1)
    assert estimator_options(PPOConfig(estimator="grpo")) == ("loss", "seq-mean-token-mean", 4)
    cfg = replace(PPOConfig(estimator="dr-grpo"), kl_in="reward", samples_per_prompt=8)
    assert estimator_options(cfg) == ("reward", "seq-mean-token-sum-norm", 8)
    parsed = cli.parse("ppo", ["--policy", "p", "--prompts", "x", "--rm", "a=b", "--out", "o",
                               "--estimator", "rloo", "--loss-agg", "sequence"])  # fmt: skip
    assert estimator_options(parsed) == ("reward", "sequence", 4)
