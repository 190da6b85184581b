"""loops/reward/normalize.py: `rlhfkit rm --normalize-with` centres (and scales) the final RM on
reference responses in its weights; plain from_pretrained reads what rlhfkit scores where
the shift can live in the architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.helpers import make_base_model, write_jsonl
from tests.loops.reward.test_train import keyword_rankings
from transformers import AutoModelForSequenceClassification

from rlhfkit.cli import main
from rlhfkit.models.reward import load_reward_model
from rlhfkit.scoring.rm import encode_responses, score_texts


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_base_model(tmp_path_factory.mktemp("llama") / "lm", tiny_tokenizer)


def _rm_args(base, data, out, *extra):
    return ["rm", "--model", str(base), "--data", *map(str, data), "--out", str(out),
            "--device", "cpu", "--max-steps", "2", "--batch-size", "4", *extra]  # fmt: skip


def _demos(n: int) -> list[dict]:
    rows = keyword_rankings(n, 2, seed=5)
    return [{"prompt": r["prompt"], "completion": r["responses"][0]} for r in rows]


def _hf_scores(folder: Path, prompts, responses) -> torch.Tensor:
    """Plain transformers: from_pretrained, one unpadded sequence at a time."""
    hf = AutoModelForSequenceClassification.from_pretrained(folder)
    _, tok = load_reward_model(folder)
    seqs, _ = encode_responses(tok, prompts, responses, 256)
    with torch.no_grad():
        return torch.stack([hf(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])


def test_normalize_with_scale_gives_mean_0_std_1_and_from_pretrained_agrees(gpt2_dir, tmp_path):
    """GPT-2's final LayerNorm has a bias: the shift lives there, and plain
    AutoModelForSequenceClassification.from_pretrained gives the normalised scores."""
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(8, 3, seed=0))
    demos = _demos(12)
    demo_file = write_jsonl(tmp_path / "sft.jsonl", demos)
    out = tmp_path / "rm"
    args = _rm_args(gpt2_dir, [data], out, "--head-init", "normal",
                    "--normalize-with", str(demo_file), "--normalize-scale")  # fmt: skip
    assert main(args) == 0
    prompts = [r["prompt"] for r in demos]
    responses = [r["completion"] for r in demos]
    rm, tok = load_reward_model(out)
    scores = score_texts(rm, tok, prompts, responses).double()
    assert abs(scores.mean().item()) < 1e-5
    assert abs(scores.std(unbiased=False).item() - 1) < 1e-5
    torch.testing.assert_close(_hf_scores(out, prompts, responses).double(), scores,
                               atol=1e-5, rtol=0)  # fmt: skip
    info = json.loads((out / "rlhfkit_reward.json").read_text())["normalization"]
    assert info["n"] == 12 and info["file"] == str(demo_file) and info["scaled"] is True
    assert info["std"] > 0 and info["shift_in"] == "transformer.ln_f.bias"
    assert abs(info["after"]["mean"]) < 1e-5 and abs(info["after"]["std"] - 1) < 1e-5
    assert rm.score.bias is None  # same architecture: nothing for from_pretrained to drop


def test_normalize_llama_rm_shift_in_head_bias(llama_dir, tmp_path):
    """Llama's RMSNorm adds nothing after normalising: the shift becomes a new score.bias,
    which rlhfkit's loader restores and plain from_pretrained drops (documented)."""
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(8, 3, seed=0))
    demos = [{"prompt": r["prompt"], "response": r["completion"]} for r in _demos(10)]
    demo_file = write_jsonl(tmp_path / "samples.jsonl", demos)
    out = tmp_path / "rm"
    args = _rm_args(llama_dir, [data], out, "--head-init", "normal",
                    "--normalize-with", str(demo_file))  # fmt: skip
    assert main(args) == 0
    prompts = [r["prompt"] for r in demos]
    responses = [r["response"] for r in demos]
    rm, tok = load_reward_model(out)
    scores = score_texts(rm, tok, prompts, responses).double()
    info = json.loads((out / "rlhfkit_reward.json").read_text())["normalization"]
    assert abs(scores.mean().item()) < 1e-5
    assert scores.std(unbiased=False).item() == pytest.approx(info["std"], rel=1e-4)  # no scale
    assert info["shift_in"].startswith("score.bias") and rm.score.bias is not None
    raw = _hf_scores(out, prompts, responses).double()  # without the bias
    torch.testing.assert_close(raw - info["mean"], scores, atol=1e-5, rtol=0)


def test_normalize_file_errors_name_file_and_line(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "train.jsonl", keyword_rankings(4, 2, seed=0))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"},
                                               {"prompt": "c"}])  # fmt: skip
    out = tmp_path / "rm"
    assert main(_rm_args(llama_dir, [data], out, "--normalize-with", str(bad))) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    assert not out.exists()  # nothing written before the error
    assert main(_rm_args(llama_dir, [data], out, "--normalize-scale")) == 2
