"""Written JSON is standard JSON: a NaN or infinite metric becomes null, never a bare `NaN`
(which Python writes and reads, but JavaScript, jq and most other readers refuse)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rlhfkit.files import json_clean, json_ready, to_json, write_json, write_jsonl


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"bare {token} in {text!r}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, np.float32("nan"), torch.tensor(math.inf)]
)
def test_non_finite_numbers_become_null(value):
    assert json_ready(value) is None


def test_finite_numbers_and_other_values_pass_through():
    assert json_ready(torch.tensor(2.5)) == 2.5 and json_ready(np.int64(3)) == 3
    assert json_ready("nan") == "nan" and json_ready(None) is None


def test_nested_values_are_cleaned_everywhere():
    data = {"a": [1.0, math.nan, {"b": (math.inf, np.float64(0.5))}], "c": torch.tensor(math.nan)}
    assert json_clean(data) == {"a": [1.0, None, {"b": [None, 0.5]}], "c": None}
    assert _strict(to_json(data)) == {"a": [1.0, None, {"b": [None, 0.5]}], "c": None}


def test_write_json_and_jsonl_write_null_for_nan(tmp_path):
    write_json(tmp_path / "s.json", {"eval_loss": math.nan, "epochs": [{"loss": math.inf}]})
    assert _strict((tmp_path / "s.json").read_text()) == {
        "eval_loss": None,
        "epochs": [{"loss": None}],
    }
    write_jsonl(tmp_path / "r.jsonl", [{"x": math.nan}, {"x": 1.0}])
    rows = [_strict(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert rows == [{"x": None}, {"x": 1.0}]


def test_a_value_json_cannot_hold_is_still_an_error(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"path": tmp_path})
    assert not (tmp_path / "bad.json").exists()


def test_checkpoint_state_and_extra_files_write_null_for_nan(tmp_path, tiny_model):
    from rlhfkit.models.checkpoint import STATE_JSON, save_checkpoint, save_hf

    state = {"step": 1, "history": [{"epoch": 1, "eval_loss": math.nan}]}
    save_checkpoint(tmp_path / "ckpt", models={"model": tiny_model}, tokenizer=None, state=state)
    saved = _strict((tmp_path / "ckpt" / STATE_JSON).read_text())
    assert saved["state"]["history"] == [{"epoch": 1, "eval_loss": None}]
    save_hf(tiny_model, None, tmp_path / "hf", extra_json={"info.json": {"std": math.nan}})
    assert _strict((tmp_path / "hf" / "info.json").read_text()) == {"std": None}


def test_metrics_jsonl_writes_null_for_a_nan_metric(tmp_path):
    from rlhfkit.logging import MetricsLogger

    logger = MetricsLogger(tmp_path)
    logger.log(1, {"train/loss": 0.5, "train/explained_variance": math.nan})
    logger.close()
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    row = _strict(line)
    assert row["train/loss"] == 0.5 and row["train/explained_variance"] is None
