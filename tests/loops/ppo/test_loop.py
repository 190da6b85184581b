"""`rlhfkit ppo`: one step trains every parameter, PPO raises a rule reward, gamma = 0 ptx is
plain PPO, resume equals an uninterrupted run, the command's files and 2-process runs.
(The update's own steps: test_update.py; the run's construction: test_run.py.)"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import _synthetic_sentences
from tests.helpers import SYSTEM, user, write_jsonl

from rlhfkit import cli
from rlhfkit.config import PPOConfig
from rlhfkit.data.records import PromptRecord
from rlhfkit.data.tokenize import trained_on_chat
from rlhfkit.errors import UserError
from rlhfkit.loops.ppo.loop import build_run, ppo_step
from rlhfkit.loops.ppo.roles import build_value_model
from rlhfkit.loops.ppo.rollout import RolloutSettings
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.load import freeze, load_tokenizer
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model
from rlhfkit.scoring.build import build_scorer

ROOT = Path(__file__).resolve().parents[3]


class TokenSetReward:
    """Rule reward on token ids: the share of response tokens whose id is a multiple of
    `mod` (about 1/mod for a random policy)."""

    def __init__(self, mod: int = 4) -> None:
        self.mod = mod

    def score(self, prompts, responses, safety):  # pragma: no cover - ids path is used
        raise AssertionError("score_tokens should be preferred")

    def score_tokens(self, prompt_ids, prompt_mask, response_ids, response_mask, tok, safety):
        hit = (response_ids % self.mod == 0) & response_mask
        return hit.sum(1).float() / response_mask.sum(1).clamp_min(1)


def _prompts(n: int = 64) -> list[PromptRecord]:
    return [PromptRecord(t) for t in _synthetic_sentences(n, seed=1)]


def _roles(tok, seed: int = 0, head_init: str = "zeros"):
    policy = build_model("test", tok, seed=seed).eval()
    reference = freeze(copy.deepcopy(policy))
    value, _ = init_reward_model(policy, copy.deepcopy(tok), head_init=head_init, seed=seed)
    return policy, reference, value.eval()


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


# ---------------------------------------------------------------------------------------
# Library level
# ---------------------------------------------------------------------------------------


def test_one_step_changes_every_parameter_and_all_stats_are_finite(tiny_tokenizer):
    policy, reference, value = _roles(tiny_tokenizer, head_init="normal")
    before_p, before_v = _params(policy), _params(value)
    cfg = PPOConfig(batch_size=8, max_new_tokens=8, ppo_epochs=1, lr=1e-3, weight_decay=0.0)
    run = build_run(cfg, policy, reference, value, TokenSetReward(), tiny_tokenizer, _prompts())
    rollout, metrics = ppo_step(run, 0, cfg.batch_size, cfg.seed)
    for name, p in policy.named_parameters():
        assert not torch.equal(p, before_p[name]), f"policy {name} did not change"
    for name, p in value.named_parameters():
        assert not torch.equal(p, before_v[name]), f"value {name} did not change"
    for k, v in metrics.items():
        if v is not None and k != "explained_variance":  # EV is NaN for constant returns
            assert torch.isfinite(torch.tensor(float(v))), (k, v)
    expected = {
        "score/mean", "score/std", "kl", "kl_k3", "kl_coef", "entropy", "response_length",
        "approx_kl", "clipfrac", "value_clipfrac", "value_loss", "policy_loss",
        "explained_variance", "tokens_per_s", "time/generate", "time/score",
        "time/reference", "time/value", "time/update", "grad_norm", "lr", "eos_rate",
    }  # fmt: skip
    assert expected <= set(metrics)
    assert abs(metrics["kl"]) < 1e-4  # first rollout: policy == reference
    assert run.policy_steps == 1


def test_ppo_raises_a_rule_reward(tiny_tokenizer):
    """A tiny random policy learns to emit more tokens of a target set (~25% at start)."""
    torch.manual_seed(0)
    policy, reference, value = _roles(tiny_tokenizer)
    cfg = PPOConfig(
        steps=40, batch_size=16, max_new_tokens=16, lr=3e-3, kl_coef=0.0,
        ppo_epochs=4, num_mini_batches=2,
    )  # fmt: skip
    run = build_run(cfg, policy, reference, value, TokenSetReward(4), tiny_tokenizer, _prompts())
    scores = [ppo_step(run, step, cfg.batch_size, cfg.seed)[1]["score/mean"] for step in range(40)]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    print(f"rule reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert first < 0.35 and last > first + 0.2, scores


def _two_steps(tok, corpus, ptx_coef: float) -> dict[str, torch.Tensor]:
    policy, reference, value = _roles(tok)
    cfg = PPOConfig(
        batch_size=8, max_new_tokens=8, ppo_epochs=2, lr=1e-3, ptx_coef=ptx_coef,
        ptx_batch_size=4, ptx_seq_len=16,
    )  # fmt: skip
    run = build_run(cfg, policy, reference, value, TokenSetReward(), tok, _prompts(), corpus)
    for step in range(2):
        ppo_step(run, step, cfg.batch_size, cfg.seed)
    return {**_params(policy), **{f"v.{k}": v for k, v in _params(value).items()}}


def test_ptx_with_gamma_zero_is_plain_ppo(tiny_tokenizer, tiny_texts):
    plain = _two_steps(tiny_tokenizer, None, 0.0)
    zero = _two_steps(tiny_tokenizer, tiny_texts, 0.0)
    for k in plain:
        assert torch.equal(plain[k], zero[k]), k
    ptx = _two_steps(tiny_tokenizer, tiny_texts, 1.0)
    assert any(not torch.equal(plain[k], ptx[k]) for k in plain)


def test_ignore_eos_option_reaches_the_rollout_settings():
    assert RolloutSettings.from_config(PPOConfig()).stop_at_eos
    cfg = cli.parse("ppo", ["--policy", "p", "--prompts", "x", "--rm", "a=b", "--out", "o",
                            "--ignore-eos"])  # fmt: skip
    assert cfg.ignore_eos and not RolloutSettings.from_config(cfg).stop_at_eos


def test_value_model_starts_from_the_rm_or_the_policy(tmp_path, tiny_tokenizer):
    base = build_model("test", tiny_tokenizer, seed=0)
    rm, rm_tok = init_reward_model(base, copy.deepcopy(tiny_tokenizer), head_init="normal")
    save_hf(rm, rm_tok, tmp_path / "rm")
    cfg = PPOConfig(rm=(f"helpfulness={tmp_path / 'rm'}",))
    scorer = build_scorer(cfg, torch.device("cpu"), None)
    from_rm = build_value_model(cfg, base, tiny_tokenizer, scorer, torch.device("cpu"))
    for (k, a), b in zip(from_rm.state_dict().items(), rm.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert all(p.requires_grad for p in from_rm.parameters())
    from_policy = build_value_model(
        replace(cfg, value_init="policy"), base, tiny_tokenizer, scorer, torch.device("cpu")
    )
    assert from_policy.score.weight.abs().sum() == 0  # values start at 0
    assert torch.equal(
        from_policy.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    )

    other_tok = copy.deepcopy(tiny_tokenizer)
    other_tok.add_tokens(["zzzqqq"])  # a tokenizer the RM does not share
    scorer._shared.clear()
    with pytest.raises(UserError, match="another tokenizer"):
        build_value_model(cfg, base, other_tok, scorer, torch.device("cpu"))


def test_every_role_runs_without_dropout_and_says_so_in_its_config(tmp_path, tiny_tokenizer):
    """N+ details: no dropout in PPO. GPT-2 configs carry dropout 0.1; after build_roles the
    policy, reference, value model and reward model all have 0 in their configs (what a
    saved checkpoint writes) and give equal train-mode forwards."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhfkit.loops.ppo.roles import build_roles

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=len(tiny_tokenizer),
        bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    ))  # fmt: skip
    save_hf(gpt2, tiny_tokenizer, tmp_path / "policy")
    rm, rm_tok = init_reward_model(gpt2, copy.deepcopy(tiny_tokenizer), head_init="normal")
    save_hf(rm, rm_tok, tmp_path / "rm")
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["attn_pdrop"] == 0.1
    cfg = PPOConfig(policy=str(tmp_path / "policy"), rm=(f"h={tmp_path / 'rm'}",))
    _, policy, reference, value, scorer = build_roles(cfg, torch.device("cpu"))
    ids = torch.tensor([[1, 20, 30, 40, 2]])
    for name, model in [("policy", policy), ("reference", reference), ("value", value),
                        ("rm", scorer.models["h"].model)]:  # fmt: skip
        cfg_pdrop = {k: getattr(model.config, k) for k in ("attn_pdrop", "resid_pdrop")}
        assert cfg_pdrop == {"attn_pdrop": 0.0, "resid_pdrop": 0.0}, name
        model.train()
        with torch.no_grad():
            a, b = (model(input_ids=ids).logits for _ in range(2))
        assert torch.equal(a, b), name
        model.eval()


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(ppo_files):
    """A base policy, a reward model from it, world prompts (train / eval) and a corpus
    (session-wide: tests/conftest.py)."""
    return ppo_files


def _args(files, out, *extra) -> list[str]:
    return [
        "ppo", "--policy", str(files["base"]), "--rm", f"helpfulness={files['rm']}",
        "--prompts", str(files["prompts"]), "--out", str(out), "--device", "cpu",
        "--batch-size", "4", "--max-new-tokens", "6", "--lr", "1e-3", "--sample-every", "0",
        *extra,
    ]  # fmt: skip


def test_command_writes_checkpoints_metrics_and_an_evaluable_policy(files, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["--steps", "3", "--save-every", "2", "--eval-prompts", str(files["eval"]),
             "--ptx-data", str(files["corpus"]), "--ptx-coef", "0.5", "--ptx-seq-len", "16",
             "--sample-every", "2", "--kl-target", "0.5"]  # fmt: skip
    assert cli.main(_args(files, out, *extra)) == 0
    printed = capsys.readouterr().out
    assert "eval @ step 0" in printed and "eval @ step 3" in printed
    assert "| prompt" in printed  # the sample table
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/kl" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for key in ("train/ptx_loss", "score/mean", "train/kl_k3", "train/entropy", "time/generate",
                "train/explained_variance", "train/value_clipfrac", "train/tokens_per_s"):  # fmt: skip
        assert key in train[-1], key
    evals = [r for r in rows if "eval/score" in r]
    assert len(evals) == 2 and "eval/gold_score" in evals[0]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-000002", "step-000003"]
    state = json.loads((out / "checkpoints" / "step-000003" / "trainer_state.json").read_text())
    assert state["state"]["policy_steps"] == 3 * 4 and "target" in state["state"]["kl_controller"]
    assert (out / "checkpoints" / "step-000003" / "value" / "model.safetensors").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and set(summary["time_split_s"]) >= {"generate", "update"}
    # The final policy is a plain HF folder at the top of --out: `rlhfkit eval` reads it.
    final = load_file(str(out / "model.safetensors"))
    last = load_file(str(out / "checkpoints" / "step-000003" / "policy" / "model.safetensors"))
    assert all(torch.equal(final[k], last[k]) for k in final)
    argv = ["eval", "--model", str(out), "--prompts", str(files["eval"]), "--device", "cpu",
            "--max-new-tokens", "4"]  # fmt: skip
    assert cli.main(argv) == 0


def test_resume_after_a_stop_equals_an_uninterrupted_run(files, tmp_path, monkeypatch):
    import rlhfkit.models.checkpoint as ckpt_mod

    extra = ["--steps", "4", "--save-every", "2", "--num-mini-batches", "2", "--ppo-epochs", "2",
             "--ptx-data", str(files["corpus"]), "--ptx-coef", "0.5", "--ptx-seq-len", "16",
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
    assert not (cut / "checkpoints" / "step-000004").exists()
    monkeypatch.undo()
    assert cli.main(_args(files, cut, *extra, "--resume")) == 0
    for role in ("policy", "value"):
        a = load_file(str(full / "checkpoints" / "step-000004" / role / "model.safetensors"))
        b = load_file(str(cut / "checkpoints" / "step-000004" / role / "model.safetensors"))
        for k in a:
            assert torch.equal(a[k], b[k]), (role, k)
    sa = json.loads((full / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    sb = json.loads((cut / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert sa["state"]["kl_controller"] == sb["state"]["kl_controller"]
    assert sa["state"]["kl_controller"]["value"] != 0.02  # the adaptive controller moved


def test_bad_options_are_user_errors(files, tmp_path, capsys):
    out = tmp_path / "bad"
    assert cli.main(_args(files, out, "--rule-reward", "length")) == 2
    assert "one of them" in capsys.readouterr().err
    assert cli.main(_args(files, out, "--ptx-coef", "1")) == 2
    assert "--ptx-data" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "not a world prompt"}])
    argv = ["ppo", "--policy", str(files["base"]), "--rule-reward", "gold", "--prompts", str(bad),
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 2
    assert "p.jsonl:1" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_top_k_and_top_p_are_refused_before_models_load(files, tmp_path, capsys, monkeypatch):
    """PPO's behaviour, reference and update log-probs are the full distribution's; a
    top-k / top-p sampler draws from another, so the first ratio would not be 1."""
    import rlhfkit.loops.ppo.loop as ppo_mod

    def no_models(*a, **kw):
        raise AssertionError("models loaded before the options were checked")

    monkeypatch.setattr(ppo_mod, "build_roles", no_models)
    out = tmp_path / "never"
    for flag in (["--top-k", "5"], ["--top-p", "0.9"]):
        assert cli.main(_args(files, out, "--steps", "1", *flag)) == 2
        err = capsys.readouterr().err
        assert "--top-k 0 --top-p 1" in err and "--temperature" in err and "rlhfkit rs" in err
        assert "Traceback" not in err
    assert not out.exists()


def test_llama2_summary_scores_are_the_combined_score_before_whitening(files, tmp_path):
    """With --combine llama2 the reward is whitened per batch (mean 0): the logged
    score/mean and the summary's first / final score are the score before whitening."""
    out = tmp_path / "llama2"
    rms = ["--rm", f"safety={files['rm']}", "--combine", "llama2", "--steps", "2"]
    assert cli.main(_args(files, out, *rms)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "score/mean" in r]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["first_score"] == train[0]["score/mean"]
    assert summary["final_score"] == train[-1]["score/mean"]
    for r in train:
        assert abs(r["score/shaped_mean"]) < 1e-5  # what PPO trains on: whitened
        # one RM under both names: the rule picks it either way, so score/mean is its mean
        assert r["score/mean"] == pytest.approx(r["score/helpfulness"], abs=1e-5)
        assert abs(r["score/mean"]) > 1e-3


@pytest.mark.parametrize("name", ["ppo", "select"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    flags = {
        "ppo": ["--ptx-coef", "--kl-target", "--kl-horizon", "--missing-eos-penalty", "--rm",
                "--value-init", "--eval-prompts", "--resume"],
        "select": ["--checkpoints", "--rm", "--combine", "--prompts", "--rule-reward"],
    }[name]  # fmt: skip
    for flag in flags:
        assert flag in text, flag


# ---------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------


def _env() -> dict:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT / "src"),
    )


@pytest.mark.timeout(300)
def test_two_processes_split_the_batch_and_only_rank0_writes(files, tmp_path):
    out = tmp_path / "ddp"
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "rlhfkit.cli"]  # fmt: skip
    args = _args(files, out, "--steps", "2", "--save-every", "1", "--num-mini-batches", "2",
                 "--eval-prompts", str(files["eval"]), "--eval-max-prompts", "4")  # fmt: skip
    try:  # 12 s alone; once hung under load in a fresh clone (rank output shown if again)
        r = subprocess.run([*ddp, *args], env=_env(), capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"torchrun hung; its output so far:\n{e.stdout}\n{e.stderr}") from e
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "train/kl" in row] == [1, 2]  # one writer
    assert len([row for row in rows if "eval/score" in row]) == 2
    assert r.stdout.count("eval @ step 0") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkilled_run_resumed_equals_uninterrupted(files, tmp_path):
    """The real thing: a `rlhfkit ppo` process killed with SIGKILL, then --resume."""
    import signal
    import time

    extra = ["--steps", "6", "--save-every", "2", "--num-mini-batches", "2",
             "--ptx-data", str(files["corpus"]), "--ptx-coef", "0.5", "--ptx-seq-len", "16",
             "--kl-target", "0.1", "--kl-horizon", "10", "--keep-checkpoints", "0"]  # fmt: skip
    cmd = [sys.executable, "-m", "rlhfkit.cli"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run([*cmd, *_args(files, full, *extra)], env=_env(), check=True, capture_output=True)
    proc = subprocess.Popen(
        [*cmd, *_args(files, cut, *extra)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (cut / "checkpoints" / "step-000002" / "COMPLETE").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "checkpoints" / "step-000006").exists(), "killed too late"
    subprocess.run(
        [*cmd, *_args(files, cut, *extra, "--resume")], env=_env(), check=True, capture_output=True
    )
    for step in ("step-000004", "step-000006"):
        for role in ("policy", "value"):
            a = load_file(str(full / "checkpoints" / step / role / "model.safetensors"))
            b = load_file(str(cut / "checkpoints" / step / role / "model.safetensors"))
            for k in a:
                assert torch.equal(a[k], b[k]), (step, role, k)


def test_ppo_runs_on_conversational_prompts_and_counts_overlong_ones(
    tmp_path, tiny_tokenizer, chat_tokenizer, rm_dir, capsys
):
    policy = tmp_path / "sft"
    save_hf(build_model("test", tiny_tokenizer, seed=0), chat_tokenizer, policy)
    long = "the cat sat on the mat " * 8
    rows = [{"messages": [SYSTEM, user(f"count to {i}")]} for i in range(3)]
    prompts = write_jsonl(tmp_path / "chat.jsonl", [*rows, {"prompt": [user(long)]}])
    out = tmp_path / "ppo"
    argv = [
        "ppo", "--policy", str(policy), "--rm", f"help={rm_dir}", "--prompts", str(prompts),
        "--eval-prompts", str(prompts), "--out", str(out), "--device", "cpu", "--steps", "1",
        "--batch-size", "2", "--max-new-tokens", "4", "--max-prompt-len", "24",
        "--sample-every", "0",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    note = (
        f"note: {prompts}: 1 of 4 prompts are longer than --max-prompt-len=24 tokens; each "
        "keeps its last 24 tokens (the oldest are dropped, a leading BOS kept)"
    )
    assert printed.count(note) == 1  # train and eval prompts are one file: said once
    assert "warning" not in printed
    assert trained_on_chat(load_tokenizer(out))  # the next stage still knows
