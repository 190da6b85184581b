"""GGUF checkpoints (llama.cpp): the header check before torch, loading a .gguf wherever a
causal LM folder is read, and `rlhfkit convert`. On a tiny Llama GGUF written here with
llama.cpp's `gguf` package (Q8_0 weights, the test tokenizer in its metadata): the
converted folder and the file loaded directly give the same logits, the weights are the
`gguf` package's own dequantization of the file, and the tokenizer encodes as the one the
file was written from."""

from __future__ import annotations

import json
import random

import numpy as np
import torch
from tests.helpers import sft_rows, write_jsonl
from transformers import AutoModelForCausalLM

from rlhfkit import cli
from rlhfkit.models.load import load_causal_lm

TEXTS = ["Q: what is the cat?\nA: red", "The dog sat under the big tree.", "one two 3 + 4 = 7"]


def _logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    return out * batch["attention_mask"][..., None]  # padding positions zeroed


def test_weights_are_the_gguf_packages_dequantization(ggufs):
    """Against an independent reading: llama.cpp's own Python reader and dequantizer."""
    import gguf

    model = load_causal_lm(ggufs["untied"])
    reader = gguf.GGUFReader(str(ggufs["untied"]))
    tensors = {t.name: t for t in reader.tensors}

    def dequantized(name: str) -> torch.Tensor:
        t = tensors[name]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        return torch.from_numpy(np.array(values)).reshape(
            tuple(reversed([int(d) for d in t.shape]))
        )

    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    expected = {
        "model.embed_tokens.weight": "token_embd.weight",
        "lm_head.weight": "output.weight",
        "model.layers.1.mlp.gate_proj.weight": "blk.1.ffn_gate.weight",
        "model.layers.0.self_attn.v_proj.weight": "blk.0.attn_v.weight",
        "model.layers.0.input_layernorm.weight": "blk.0.attn_norm.weight",
        "model.norm.weight": "output_norm.weight",
    }
    state = model.state_dict()
    for ours, theirs in expected.items():
        torch.testing.assert_close(state[ours], dequantized(theirs), rtol=0, atol=0)
    assert model.dtype == torch.float32 and not hasattr(model.config, "quantization_config")


def test_a_model_trained_from_a_gguf_saves_as_a_plain_folder(ggufs, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4))
    out = tmp_path / "sft"
    argv = ["sft", "--model", str(ggufs["tied"]), "--data", str(data), "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not hasattr(model.config, "quantization_config")
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    before = load_causal_lm(ggufs["tied"]).state_dict()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items()), "no update"


def test_plan_and_select_read_a_gguf(ggufs, tmp_path, capsys):
    """`rlhfkit plan` counts the model of the file's config (the same parameters as the
    loaded model); `rlhfkit select` takes the file as a candidate."""
    from rlhfkit.world.generate import WorldSettings, make_prompts, prompt_record

    assert cli.main(["plan", "sft", "--model", str(ggufs["untied"]), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n = sum(p.numel() for p in load_causal_lm(ggufs["untied"]).parameters())
    assert plan["roles"][0]["params"] == n
    made = make_prompts(4, WorldSettings(), random.Random(0), set(), unique=True)
    prompts = write_jsonl(tmp_path / "p.jsonl", [prompt_record(a, q) for a, q, _ in made])
    argv = ["select", "--checkpoints", str(ggufs["tied"]), "--rule-reward", "length",
            "--prompts", str(prompts), "--out", str(tmp_path / "sel"), "--max-new-tokens", "4",
            "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0
    best = json.loads((tmp_path / "sel" / "select.json").read_text())["best"]
    assert (best["name"], best["path"]) == ("tied", str(ggufs["tied"]))
