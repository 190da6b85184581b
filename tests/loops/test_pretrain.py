"""`rlhfkit pretrain`: tokenizer + model from scratch, loss falls, the output loads in HF."""

from __future__ import annotations

import json

import torch

from rlhfkit import cli
from tests.helpers import write_jsonl


def _corpus(n: int) -> list[dict]:
    # A tiny regular language: a model that learns it predicts the sums and the pattern.
    return [{"text": f"Q: What is {i % 10} plus {i % 7}?\nA: {i % 10 + i % 7}"} for i in range(n)]


def test_pretrain_learns_and_exports_a_loadable_model(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "corpus.jsonl", _corpus(1500))
    out = tmp_path / "base"
    rc = cli.main(
        [
            "pretrain",
            "--data",
            str(data),
            "--out",
            str(out),
            "--preset",
            "test",
            "--vocab-size",
            "300",
            "--seq-len",
            "64",
            "--max-steps",
            "60",
            "--epochs",
            "5",
            "--batch-size",
            "8",
            "--lr",
            "3e-3",
            "--log-every",
            "1",
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 60
    assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    ids = torch.tensor([tok("Q: What is 3 plus 4?\nA:")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["tokens_per_s"] > 0
    # a base model: marked plain, so later stages give it raw prompts, whatever its template
    assert json.loads((out / "tokenizer_config.json").read_text())["rlhfkit_chat"] is False
    assert tok.chat_template is not None


def test_pretrain_reads_plain_text(tmp_path):
    txt = tmp_path / "corpus.txt"
    txt.write_text("\n\n".join(r["text"] for r in _corpus(400)), encoding="utf-8")
    rc = cli.main(
        [
            "pretrain",
            "--data",
            str(txt),
            "--out",
            str(tmp_path / "b"),
            "--preset",
            "test",
            "--vocab-size",
            "300",
            "--seq-len",
            "32",
            "--max-steps",
            "3",
        ]
    )
    assert rc == 0
    assert (tmp_path / "b" / "model.safetensors").exists()


def test_empty_corpus_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc = cli.main(["pretrain", "--data", str(empty), "--out", str(tmp_path / "b")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "empty.jsonl" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
