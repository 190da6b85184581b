"""models/folders.py: a model folder checked from its config.json and safetensors headers alone
(no torch): its kind, its weights, its positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.errors import UserError
from rlhfkit.models.folders import check_model_folder, check_safetensors, model_kind


def _folder(root: Path, config: dict, weights: bytes | None = None) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    if weights is not None:
        (root / "model.safetensors").write_bytes(weights)
    return root


def _safetensors(n_bytes: int = 8) -> bytes:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [n_bytes // 4], "data_offsets": [0, n_bytes]}}
    )
    return len(header).to_bytes(8, "little") + header.encode() + b"\0" * n_bytes


def test_model_kind_comes_from_config_json(tmp_path):
    rm = {"architectures": ["Qwen2ForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    folder = _folder(tmp_path / "rm", rm, _safetensors())
    assert check_model_folder(folder, "reward") == folder
    assert check_model_folder(folder, "any") == folder
    with pytest.raises(UserError, match="holds a reward model .*not a causal LM"):
        check_model_folder(folder, "causal-lm")
    # No architectures: nothing to go by, accepted for any kind.
    assert check_model_folder(_folder(tmp_path / "bare", {}, _safetensors()), "causal-lm")
    two = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b"}}
    with pytest.raises(UserError, match="is a classifier .*with 2 labels.*not a reward model"):
        check_model_folder(_folder(tmp_path / "cls", two, _safetensors()), "reward")
    junk = _folder(tmp_path / "junk", {})
    (junk / "config.json").write_text("{")
    with pytest.raises(UserError, match="config.json: not a readable config.json"):
        check_model_folder(junk, "any")


def test_a_backbone_score_head_folder_is_a_reward_model_by_its_marker(tmp_path):
    # models/scalar_head.py: the family's config (no ...ForSequenceClassification name),
    # marked; without the marker the same config would be unknown, not a reward model
    config = {"model_type": "granite", "architectures": ["GraniteWithScoreHead"],
              "rlhfkit_score_head": {"format": 1, "backbone": "model", "head": "score"}}  # fmt: skip
    folder = _folder(tmp_path / "rm", config, _safetensors())
    assert model_kind(folder) == ("reward", "GraniteWithScoreHead")
    assert check_model_folder(folder, "reward") == folder
    with pytest.raises(UserError, match="holds a reward model .GraniteWithScoreHead.*not a causal"):
        check_model_folder(folder, "causal-lm")
    del config["rlhfkit_score_head"]
    assert model_kind(_folder(tmp_path / "plain", config, _safetensors()))[0] is None


def test_model_folder_without_weights_passes_only_when_weights_are_not_needed(tmp_path):
    folder = _folder(tmp_path / "m", {"architectures": ["GPT2LMHeadModel"]})
    assert check_model_folder(folder, "causal-lm", weights=False) == folder
    with pytest.raises(UserError, match="no .safetensors weights"):
        check_model_folder(folder, "causal-lm")


def test_safetensors_header_and_length_are_checked(tmp_path):
    good = tmp_path / "good.safetensors"
    good.write_bytes(_safetensors(16))
    check_safetensors(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(_safetensors(16)[:-4])
    with pytest.raises(UserError, match=r"cut\.safetensors: truncated \(\d+ bytes, its header"):
        check_safetensors(cut)
    for name, data in {"short": b"\1\2", "huge": (10**9).to_bytes(8, "little") + b"{}",
                       "nojson": (4).to_bytes(8, "little") + b"abcd"}.items():  # fmt: skip
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(UserError, match="not a valid safetensors file"):
            check_safetensors(bad)


def _lm(root: Path, **config) -> Path:
    return _folder(root, {"architectures": ["LlamaForCausalLM"], **config}, _safetensors())


def test_max_positions_read_from_config_json(tmp_path):
    from rlhfkit.validate import max_positions

    assert max_positions(_lm(tmp_path / "a", max_position_embeddings=512)) == (
        512, "max_position_embeddings")  # fmt: skip
    assert max_positions(_lm(tmp_path / "b", n_positions=1024, n_ctx=1024)) == (1024, "n_positions")
    nested = _lm(tmp_path / "c", text_config={"max_position_embeddings": 256})
    assert max_positions(nested) == (256, "max_position_embeddings")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert (
        max_positions(_lm(tmp_path / "d", max_position_embeddings=32768, rope_scaling=yarn))[0]
        == 131072
    )
    assert max_positions(_lm(tmp_path / "e")) is None  # ALiBi (Bloom): no limit
    assert max_positions(tmp_path / "nope") is None
