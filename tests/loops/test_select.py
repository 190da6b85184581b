"""`rlhfkit select`: samples every epoch checkpoint on the same prompts with the same seed,
scores them, writes select.json and names the checkpoint the reward prefers."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from rlhfkit import cli
from rlhfkit.errors import UserError
from rlhfkit.loops.select import find_candidates
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import init_reward_model
from tests.helpers import SYSTEM, template_ids, user, write_jsonl


def repeating_model(tokenizer, token_id: int, seed: int = 0):
    """A 'test' Llama that emits `token_id` after any token: every block's output is
    zeroed (the last hidden state is the token's embedding), every embedding is about the
    same vector v, and the target's (tied) embedding is 3v, so its logit is ~3x any other."""
    model = build_model("test", tokenizer, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        g = torch.Generator().manual_seed(seed)
        emb.copy_(0.5 + 0.01 * torch.randn(emb.shape, generator=g))
        emb[token_id] = 1.5
    return model


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_tokenizer):
    """A run folder like `rlhfkit sft` writes: epoch-1, epoch-2 (repeats " cat"),
    epoch-3 (= epoch-1), epoch-10; and prompts."""
    root = tmp_path_factory.mktemp("select")
    (cat,) = tiny_tokenizer.encode(" cat")
    random_model = build_model("test", tiny_tokenizer, seed=0)
    save_hf(random_model, tiny_tokenizer, root / "sft" / "epoch-1")
    save_hf(repeating_model(tiny_tokenizer, cat), tiny_tokenizer, root / "sft" / "epoch-2")
    save_hf(random_model, tiny_tokenizer, root / "sft" / "epoch-3")
    save_hf(build_model("test", tiny_tokenizer, seed=5), tiny_tokenizer, root / "sft" / "epoch-10")
    prompts = [{"prompt": f"The dog {i} sat on the mat.", "safety": i % 3 == 0} for i in range(6)]
    write_jsonl(root / "prompts.jsonl", prompts)
    return root


def _argv(root, out, *extra) -> list[str]:
    return [
        "select", "--checkpoints", str(root / "sft"), "--prompts", str(root / "prompts.jsonl"),
        "--out", str(out), "--device", "cpu", "--max-new-tokens", "8", *extra,
    ]  # fmt: skip


def test_select_picks_the_checkpoint_the_rule_prefers(sft_run, tmp_path, capsys):
    out = tmp_path / "select"
    assert (
        cli.main(_argv(sft_run, out, "--rule-reward", "count:cat", "--samples-per-prompt", "2"))
        == 0
    )
    result = json.loads((out / "select.json").read_text())
    names = [r["name"] for r in result["checkpoints"]]
    assert names == ["epoch-1", "epoch-2", "epoch-3", "epoch-10"]  # numeric epoch order
    assert result["best"]["name"] == "epoch-2"
    assert result["best"]["path"].endswith("epoch-2")
    rows = {r["name"]: r for r in result["checkpoints"]}
    assert rows["epoch-2"]["mean"] == 8.0  # " cat" x 8 new tokens
    assert all(r["n"] == 12 and "std" in r for r in rows.values())
    # Same prompts, same seed for every checkpoint: identical models score identically.
    assert rows["epoch-1"]["mean"] == rows["epoch-3"]["mean"]
    printed = capsys.readouterr().out
    assert "<- best" in printed and "epoch-2" in printed
    # select.json is not replaced silently.
    assert cli.main(_argv(sft_run, out, "--rule-reward", "count:cat")) == 2
    assert cli.main(_argv(sft_run, out, "--rule-reward", "count:cat", "--overwrite")) == 0


def test_select_with_two_reward_models_combined_llama2(sft_run, tmp_path, tiny_tokenizer):
    specs = []
    for i, name in enumerate(("helpfulness", "safety")):
        rm, rm_tok = init_reward_model(
            build_model("test", tiny_tokenizer, seed=10 + i), copy.deepcopy(tiny_tokenizer),
            head_init="normal", seed=i,
        )  # fmt: skip
        save_hf(rm, rm_tok, tmp_path / name)
        specs += ["--rm", f"{name}={tmp_path / name}"]
    out = tmp_path / "select"
    assert cli.main(_argv(sft_run, out, *specs, "--combine", "llama2")) == 0
    result = json.loads((out / "select.json").read_text())
    rows = result["checkpoints"]
    assert all(set(r["per_rm"]) == {"helpfulness", "safety"} for r in rows)
    # Not whitened: a whitened score would have mean 0 for every checkpoint.
    assert max(abs(r["mean"]) for r in rows) > 1e-3
    assert result["best"]["name"] == max(rows, key=lambda r: r["mean"])["name"]
    assert result["combine"] == "llama2"


def test_candidates_and_errors(sft_run, tmp_path):
    single = find_candidates([str(sft_run / "sft" / "epoch-2")])
    assert single == [("epoch-2", sft_run / "sft" / "epoch-2")]
    with pytest.raises(UserError, match="no such folder"):
        find_candidates([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no epoch"):
        find_candidates([str(tmp_path / "empty")])
    argv = ["select", "--prompts", str(sft_run / "prompts.jsonl"), "--out", str(tmp_path / "o"),
            "--rule-reward", "length"]  # fmt: skip
    assert cli.main(argv) == 2  # no --checkpoints


def test_rlhfkit_select_samples_conversational_prompts_through_the_template(
    tmp_path, tiny_tokenizer, chat_tokenizer, rm_dir, monkeypatch, capsys
):
    """A real command on conversational prompts: `select` samples from the chat-rendered
    prompt ids; the same chat-trained checkpoint renders plain prompts as user turns."""
    import rlhfkit.loops.select as select

    seen = []
    real = select.encode_prompts

    def recording(prompts, tok, max_prompt_len):
        ids = real(prompts, tok, max_prompt_len)
        seen.append(ids)
        return ids

    monkeypatch.setattr(select, "encode_prompts", recording)
    save_hf(
        build_model("test", tiny_tokenizer, seed=0), chat_tokenizer, tmp_path / "sft" / "epoch-1"
    )
    convo = [[SYSTEM, user(f"count to {i}")] for i in range(3)]
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in convo])
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"count to {i}"} for i in range(3)])

    def run(prompts, out):
        argv = [
            "select", "--checkpoints", str(tmp_path / "sft"), "--prompts", str(prompts),
            "--out", str(tmp_path / out), "--device", "cpu", "--max-new-tokens", "4",
            "--rm", f"help={rm_dir}",
        ]  # fmt: skip
        assert cli.main(argv) == 0
        return capsys.readouterr().out

    printed = run(chat, "a")
    assert seen[-1] == [template_ids(tiny_tokenizer, m) for m in convo]
    assert "warning" not in printed
    printed = run(plain, "b")
    assert "warning" not in printed
    assert seen[-1] == [template_ids(tiny_tokenizer, [user(f"count to {i}")]) for i in range(3)]
    result = json.loads((tmp_path / "a" / "select.json").read_text())
    assert result["checkpoints"][0]["n"] == 3
