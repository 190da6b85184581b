"""`rlhfkit convert FILE.gguf --out DIR` (models/convert.py): the converted folder gives the
logits of the file loaded directly, tied and untied; a folder that is not a model is never
replaced."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit import cli
from rlhfkit.models.load import load_causal_lm, load_tokenizer

TEXTS = ["Q: what is the cat?\nA: red", "The dog sat under the big tree.", "one two 3 + 4 = 7"]


def _logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    return out * batch["attention_mask"][..., None]  # padding positions zeroed


@pytest.mark.parametrize("kind", ["tied", "untied"])
def test_convert_round_trip_gives_the_logits_of_the_file(ggufs, tmp_path, kind, tiny_tokenizer):
    out = tmp_path / "hf"
    assert cli.main(["convert", str(ggufs[kind]), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is (kind == "tied")
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]

    plain = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no rlhfkit
    plain_tok = AutoTokenizer.from_pretrained(out)
    direct, direct_tok = load_causal_lm(ggufs[kind]), load_tokenizer(ggufs[kind])
    if kind == "tied":
        for m in (plain, direct):
            assert m.get_output_embeddings().weight is m.get_input_embeddings().weight
    torch.testing.assert_close(_logits(plain, plain_tok), _logits(direct, direct_tok))

    # the tokenizer is the one the file was written from: ids, specials, chat template
    for text in TEXTS:
        ids = tiny_tokenizer(text)["input_ids"]
        assert plain_tok(text)["input_ids"] == direct_tok(text)["input_ids"] == ids
    assert (plain_tok.bos_token, plain_tok.eos_token, plain_tok.pad_token) == (
        tiny_tokenizer.bos_token, tiny_tokenizer.eos_token, tiny_tokenizer.pad_token
    )  # fmt: skip
    chat = [{"role": "user", "content": "hi"}]
    assert plain_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        tiny_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )


def test_convert_refuses_to_replace_what_is_not_a_model(ggufs, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["convert", str(ggufs["tied"]), "--out", str(out)]
    assert cli.main(argv) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 2
    assert "holds files but no model" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    folder = tmp_path / "folder"
    folder.mkdir()
    assert cli.main(["convert", str(folder), "--out", str(tmp_path / "x")]) == 2
    assert "not a .gguf file (a folder" in capsys.readouterr().err
