"""scoring/command.py: `rlhfkit score` on conversational records scores what the RM trained
on, and refuses them for an RM without a chat template."""

from __future__ import annotations

import json

import torch
from tests.helpers import SYSTEM, rm_training_sequences, user, write_jsonl

from rlhfkit import cli
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.reward import load_reward_model
from rlhfkit.scoring.rm import score_sequences, score_texts


def test_rlhfkit_score_on_conversational_records(tmp_path, rm_dir, tiny_tokenizer):
    prompt = [SYSTEM, user("what is two and two?")]
    rows = [{"prompt": prompt, "response": "four"}, {"messages": prompt, "response": "five"}]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    argv = ["score", "--rm", f"help={rm_dir}", "--data", str(data), "--out", str(out)]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    # the RM's score of the sequence it trains on for this conversation
    model, tok = load_reward_model(rm_dir, "cpu")
    expected = score_sequences(
        model, rm_training_sequences(prompt, ["four", "five"], tiny_tokenizer), tok.pad_token_id
    )
    got = torch.tensor([r["score"] for r in scored])
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got, score_texts(model, tok, [prompt, prompt], ["four", "five"]))
    assert scored[0]["prompt"] == prompt  # the record is written back as it was


def test_rlhfkit_score_refuses_conversations_for_an_rm_without_template(tmp_path, rm_dir, capsys):
    rm = tmp_path / "rm"
    model, tok = load_reward_model(rm_dir, "cpu")
    tok.chat_template = None
    save_hf(model, tok, rm)
    (rm / "chat_template.jinja").unlink(missing_ok=True)
    data = write_jsonl(tmp_path / "s.jsonl", [{"prompt": [user("hi")], "response": "yo"}])
    argv = ["score", "--rm", f"help={rm}", "--data", str(data), "--out", str(tmp_path / "o")]
    assert cli.main([*argv, "--device", "cpu"]) == 2
    assert (
        f"{data}:1: a conversational prompt (a list of messages) needs a chat template, "
        "and reward model 'help' has none" in capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()
