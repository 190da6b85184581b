"""Devices, autocast, and loading models/tokenizers from local folders."""

import copy
import warnings

import pytest
import torch

from rlhfkit.distributed import pick_device
from rlhfkit.errors import UserError
from rlhfkit.models import load
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.load import (
    autocast_context,
    load_causal_lm,
    load_reference,
    load_tokenizer,
)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device"):
        pick_device("gpu")
    with pytest.raises(UserError):
        pick_device("cuda:x")
    with pytest.raises(UserError):
        pick_device("cuda:99")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="not available"):
            pick_device("cuda")


def test_autocast_context_cpu():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_context(torch.device("cpu"), bf16=False):
        assert (a @ b).dtype == torch.float32
    with autocast_context(torch.device("cpu"), bf16=True):
        assert (a @ b).dtype == torch.bfloat16


def test_autocast_unsupported_warns_once(monkeypatch):
    monkeypatch.setattr(load, "bf16_supported", lambda device: False)
    monkeypatch.setattr(load, "_warned_bf16", set())
    with pytest.warns(UserWarning, match="bf16"):
        ctx = autocast_context(torch.device("cpu"), bf16=True)
    with ctx:
        assert (torch.randn(2, 2) @ torch.randn(2, 2)).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        autocast_context(torch.device("cpu"), bf16=True)  # second time: silent


def test_load_causal_lm_and_reference(tiny_model, tiny_tokenizer, tmp_path):
    save_hf(tiny_model, tiny_tokenizer, tmp_path / "m")
    model = load_causal_lm(tmp_path / "m", "cpu")
    assert model.training and all(p.requires_grad for p in model.parameters())
    ref = load_reference(tmp_path / "m", "cpu")
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    ids = torch.tensor([tiny_tokenizer.encode("The cat sat.")])
    tiny_model.eval()
    torch.testing.assert_close(ref(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)
    tok = load_tokenizer(tmp_path / "m")
    assert tok.encode("The cat sat.") == tiny_tokenizer.encode("The cat sat.")


def test_load_errors(tiny_model, tiny_tokenizer, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_causal_lm(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a Hugging Face model folder"):
        load_causal_lm(tmp_path / "empty")
    with pytest.raises(UserError, match="not a Hugging Face tokenizer folder"):
        load_tokenizer(tmp_path / "empty")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    tiny_model.config.save_pretrained(pickled)
    torch.save(tiny_model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        load_causal_lm(pickled)


def test_load_tokenizer_pad_falls_back_to_eos(tiny_tokenizer, tmp_path):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_token == loaded.eos_token == "<|eos|>"
