"""Loading models and tokenizers, and picking a device: the only place that calls from_pretrained.

Safety: weights load from safetensors only (a pickle in a downloaded folder can run code),
and model code shipped inside a folder never runs unless `trust_remote_code=True` is given.
A `.gguf` file (llama.cpp) is read wherever a causal LM folder is: dequantized into a plain
model by `models.gguf` (GGUF holds tensors and metadata, no code and no pickles).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from rlhfkit.errors import UserError
from rlhfkit.models.folders import check_folder, check_model_folder
from rlhfkit.models.gguf import load_gguf_causal_lm, load_gguf_tokenizer
from rlhfkit.models.gguf_header import is_gguf_path

_warned_bf16: set[str] = set()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast works on `device` (always on CPU; Ampere+ on CUDA)."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return False


def autocast_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when asked for and supported; else a no-op (warned once).

    Weights and optimizer state stay fp32: autocast only runs matmuls in bf16.
    """
    if not bf16:
        return contextlib.nullcontext()
    if not bf16_supported(device):
        if device.type not in _warned_bf16:
            _warned_bf16.add(device.type)
            warnings.warn(
                f"bf16 autocast is not supported on {device}: running in fp32", stacklevel=2
            )
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-call progress bars ("Loading weights", "Writing model shards")."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_folder(path: str | Path, what: str, required: tuple[str, ...]) -> Path:
    return check_folder(path, what, required)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """AutoTokenizer from a local folder, with a pad token guaranteed.

    A tokenizer without a pad token gets its EOS token as pad: pad ids then equal EOS ids,
    so masks must come from attention masks, never from `ids != pad_token_id`. Padding side
    is left as saved; callers pick it (right for training, left for generation).
    `path` may be a .gguf file: its own tokenizer.
    """
    if is_gguf_path(path):
        tok, folder = load_gguf_tokenizer(path), path
    else:
        folder = _check_folder(
            path, "tokenizer", ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
        )
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise UserError(f"could not load a tokenizer from {folder}: {e}") from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"tokenizer in {folder} has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def _check_model_folder(path: str | Path) -> Path:
    """A model folder with config.json and complete safetensors weights (`validate`)."""
    return check_model_folder(path, "any")


def load_causal_lm(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """AutoModelForCausalLM from a local folder (safetensors only), moved to `device`.

    Returned in train mode with gradients on, like a freshly built model. `path` may be a
    .gguf file: dequantized to `dtype` (`models.gguf`).
    """
    if is_gguf_path(path):
        return load_gguf_causal_lm(path, dtype).to(torch.device(device))
    folder = _check_model_folder(path)
    try:
        with quiet_progress():
            model = AutoModelForCausalLM.from_pretrained(
                str(folder),
                dtype=dtype,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
            )
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise UserError(f"could not load a causal LM from {folder}: {e}") from e
    model.to(torch.device(device))
    model.train()
    return model


def load_state_like(model: PreTrainedModel, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of the saved folder `path`, loaded by `model`'s own class.

    For architectures whose saved key names differ from their `state_dict()` (transformers
    may convert keys back to an original checkpoint format on save).
    """
    folder = _check_model_folder(path)
    try:
        with quiet_progress():
            loaded = type(model).from_pretrained(str(folder), use_safetensors=True)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise UserError(f"could not load a model from {folder}: {e}") from e
    return loaded.state_dict()


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and requires_grad False on every parameter, in place; returns the model."""
    model.eval()
    model.requires_grad_(False)
    return model


def load_reference(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A frozen causal LM (eval mode, no gradients), e.g. the SFT model for the KL penalty."""
    return freeze(load_causal_lm(path, device, dtype, trust_remote_code))
