"""The pieces under the CLI's checks: YAML values to option types, ranges, model folders
read from config.json and safetensors headers alone (no torch)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import pytest

from rlhfkit.config.fields import Range, coerce
from rlhfkit.errors import UserError
from rlhfkit.validate import check_model_folder, check_safetensors, model_kind


@pytest.mark.parametrize(
    ("tp", "value", "expected"),
    [
        (float, "1e-4", 1e-4),
        (float, 3, 3.0),
        (int, "12", 12),
        (int, 2.0, 2),
        (int, "1e3", 1000),
        (bool, "yes", True),
        (bool, "False", False),
        (str, 80, "80"),
        (int | None, None, None),
        (int | None, "4", 4),
        (tuple[str, ...], "a.jsonl", ("a.jsonl",)),
        (tuple[str, ...], None, ()),
        (tuple[float, ...], ["0.7", 1], (0.7, 1.0)),
        (tuple[float, float], [1, 2], (1.0, 2.0)),
        (Literal["a", "b"], "b", "b"),
    ],
)
def test_yaml_values_become_the_option_type(tp, value, expected):
    got = coerce(tp, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("tp", "value", "message"),
    [
        (int, "three", "expected an integer, got 'three'"),
        (int, 1.5, "expected an integer, got 1.5"),
        (int, True, "expected an integer, got True"),
        (float, [1, 2], "expected a number, got [1, 2]"),
        (float, None, "expected a number, got None"),
        (str, ["a"], "expected a string, got ['a']"),
        (bool, "maybe", "expected true or false, got 'maybe'"),
        (float | None, "x", "expected a number or null, got 'x'"),
        (tuple[float, float], [1], "expected a list of 2 numbers, got [1]"),
        (tuple[float, ...], ["a"], "expected a list of numbers, got 'a'"),
        (Literal["a", "b"], "c", "expected one of a, b, got 'c'"),
    ],
)
def test_yaml_values_that_do_not_convert_say_what_was_expected(tp, value, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        coerce(tp, value)


def test_ranges_describe_themselves_and_refuse_nan():
    assert Range(gt=0).describe() == "> 0"
    assert Range(ge=0, lt=1).describe() == "in [0, 1)"
    assert Range(gt=0, le=1).describe() == "in (0, 1]"
    assert Range(ge=2).problem(1) == "must be >= 2, got 1"
    assert Range(gt=0).problem(float("nan")) == "must be > 0, got nan"
    assert Range(ge=0, le=1).problem(1.0) is None


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
