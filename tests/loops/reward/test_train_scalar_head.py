"""`rlhfkit rm` on a family transformers has no sequence-classification class for (a
Granite-shaped model): it says so in one line, learns a separable ranking, and its folder is
accepted by `rm eval` and `score`; --normalize-with, LoRA and --resume work as on Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tests.helpers import NO_SEQ_CLS_ARCH, make_base_model, write_jsonl
from tests.loops.reward.test_train import keyword_rankings

from rlhfkit.cli import main
from rlhfkit.models.reward import load_reward_model
from rlhfkit.models.scalar_head import is_score_head_model
from rlhfkit.scoring.rm import score_texts

NOTE = (
    "note: transformers has no sequence-classification class for granite: reward model = "
    "its backbone + a linear score head (GraniteWithScoreHead; loads with rlhfkit; see "
    "docs/reward-models-any-architecture.md)"
)


@pytest.fixture(scope="module")
def granite(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("granite")
    return make_base_model(root / "base", tiny_tokenizer, preset=NO_SEQ_CLS_ARCH["granite"]())


def _rm(base, data, out, *extra) -> list[str]:
    return ["rm", "--model", str(base), "--data", *map(str, data), "--out", str(out),
            "--device", "cpu", *extra]  # fmt: skip


def test_rm_learns_a_separable_ranking_and_rm_eval_and_score_read_it(granite, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(48, 3, seed=0))
    held = write_jsonl(tmp_path / "eval.jsonl", keyword_rankings(16, 3, seed=1))
    out = tmp_path / "rm"
    assert main(_rm(granite, [train], out, "--eval-data", str(held), "--epochs", "3",
                    "--lr", "3e-3", "--batch-size", "8")) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.count(NOTE) == 1
    assert f"reward model: {out} (GraniteWithScoreHead: backbone + score head" in printed
    summary = json.loads((out / "summary.json").read_text())
    evals = [epoch["eval"] for epoch in summary["epochs"]]
    # Before training the zero head ties every pair: accuracy 0.5 (ties half), loss log 2.
    losses = [e["loss"] for e in evals]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.6 < math.log(2)
    assert evals[-1]["accuracy"] >= 0.85
    assert summary["packing"] is True  # the probe found Granite keeps packed sequences apart

    rm, tok = load_reward_model(out)
    assert is_score_head_model(rm)
    report = tmp_path / "eval.json"
    assert main(["rm", "eval", "--model", str(out), "--data", str(held), "--out", str(report),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(evals[-1]["accuracy"])
    records = [{"prompt": "Say cat", "response": r} for r in ("please please cat", "the cat")]
    scored = tmp_path / "scored.jsonl"
    data = write_jsonl(tmp_path / "gen.jsonl", records)
    assert main(["score", "--data", str(data), "--rm", str(out), "--out", str(scored),
                 "--device", "cpu"]) == 0  # fmt: skip
    rows = [json.loads(x) for x in scored.read_text().splitlines()]
    ours = score_texts(rm, tok, [r["prompt"] for r in records], [r["response"] for r in records])
    assert [r["score"] for r in rows] == pytest.approx(ours.tolist(), abs=1e-5)
    assert rows[0]["score"] > rows[1]["score"]  # more "please" is better


def test_normalize_with_gives_mean_0_in_the_saved_folder(granite, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(8, 3, seed=0))
    demos = [{"prompt": f"Say cat {i}", "completion": " please" * (i % 3) + " the cat"}
             for i in range(10)]  # fmt: skip
    demo_file = write_jsonl(tmp_path / "sft.jsonl", demos)
    out = tmp_path / "rm"
    assert main(_rm(granite, [data], out, "--head-init", "normal",
                    "--normalize-with", str(demo_file))) == 0  # fmt: skip
    info = json.loads((out / "rlhfkit_reward.json").read_text())["normalization"]
    assert abs(info["mean"]) > 1e-3 and info["shift_in"].startswith("score.bias")
    rm, tok = load_reward_model(out)  # scored afresh from the saved folder
    scores = score_texts(rm, tok, [d["prompt"] for d in demos], [d["completion"] for d in demos])
    assert abs(scores.double().mean().item()) < 1e-5
    assert scores.double().std(unbiased=False).item() == pytest.approx(info["std"], rel=1e-4)


def test_lora_rm_trains_the_head_and_saves_a_merged_model(granite, tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(8, 3, seed=0))
    out = tmp_path / "rm"
    assert main(_rm(granite, [data], out, "--lora-r", "4", "--lora-alpha", "8",
                    "--lr", "1e-2", "--head-init", "normal")) == 0  # fmt: skip
    saved = load_file(str(out / "model.safetensors"))
    assert not any("lora_" in k or "modules_to_save" in k for k in saved)  # merged, plain
    base = load_file(str(granite / "model.safetensors"))
    moved = [k for k in base if k.startswith("model.layers") and not torch.equal(saved[k], base[k])]
    assert moved  # the adapters, merged into the backbone's linear layers
    assert torch.equal(saved["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    state = load_file(str(out / "epoch-1" / "lora_state.safetensors"))
    assert {k for k in state if "lora_" not in k} == {"score.modules_to_save.default.weight"}
    assert torch.equal(state["score.modules_to_save.default.weight"], saved["score.weight"])
    load_reward_model(out)


def test_resume_ends_like_an_uninterrupted_run(granite, tmp_path):
    data = write_jsonl(tmp_path / "r.jsonl", keyword_rankings(12, 3, seed=3))
    opts = ["--epochs", "2", "--batch-size", "4", "--lr", "1e-3", "--schedule", "constant",
            "--warmup-steps", "0", "--head-init", "normal"]  # fmt: skip
    assert main(_rm(granite, [data], tmp_path / "full", *opts)) == 0
    part = tmp_path / "part"
    assert main(_rm(granite, [data], part, *opts, "--max-steps", "2")) == 0  # mid-epoch 1
    assert main(_rm(granite, [data], part, *opts, "--resume")) == 0
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(part / "model.safetensors"))
    assert set(full) == set(resumed)
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], atol=1e-6, rtol=0, msg=k)
