"""Batch containers: device moves, token counts, no transformers import."""

import torch

from rlhfkit.types import IGNORE_INDEX, LMBatch, PromptBatch


def _batch() -> LMBatch:
    ids = torch.tensor([[5, 6, 7, 0], [5, 8, 0, 0]])
    mask = ids != 0
    labels = torch.tensor([[-100, 6, 7, -100], [-100, 8, -100, -100]])
    return LMBatch(input_ids=ids, attention_mask=mask, labels=labels)


def test_num_tokens_counts_targets():
    assert _batch().num_tokens == 3
    # position 0 is never a target under the shift, even if labelled
    b = LMBatch(torch.tensor([[1, 2]]), None, torch.tensor([[1, 2]]), torch.tensor([[0, 1]]))
    assert b.num_tokens == 1 and b.is_packed and not _batch().is_packed


def test_to_moves_every_tensor_and_keeps_none():
    b = _batch().to("cpu")
    assert b.position_ids is None and b.attention_mask.dtype == torch.bool
    moved = _batch().to(torch.device("meta"))
    assert moved.input_ids.device.type == "meta" and moved.labels.device.type == "meta"
    p = PromptBatch(torch.tensor([[0, 3], [4, 5]]), torch.tensor([[False, True], [True, True]]))
    assert p.to("meta").attention_mask.device.type == "meta"
    assert p.lengths.tolist() == [1, 2]


def test_model_inputs_disable_cache():
    kw = _batch().model_inputs()
    assert kw["use_cache"] is False and "labels" not in kw
    assert IGNORE_INDEX == -100


def test_types_does_not_import_transformers(pure_imports):
    assert pure_imports["types"] is False  # in a fresh interpreter (tests/conftest.py)
