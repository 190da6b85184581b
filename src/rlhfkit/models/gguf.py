"""Loading a GGUF checkpoint (llama.cpp's format) as a plain Hugging Face causal LM.

transformers reads a `.gguf` file through the `gguf` package and dequantizes its blocks
(`from_pretrained(folder, gguf_file=name)`), but the model it returns still carries the
GGUF quantizer: `save_pretrained` refuses it, and it says it is not trainable. So the
loaded model is rebuilt here from its config without `quantization_config`, and the
dequantized state dict is loaded into it (`from_pretrained(None, config=..., state_dict=...)`:
transformers ties the embeddings again and creates the non-persistent buffers). What
comes out is the same model class, weights and logits, with nothing of the file left:
every stage trains and saves it like a model read from a folder.

Dequantizing takes seconds per load (about 15 s for a 135M model on 2 busy CPU cores), and
every stage that reads the file pays it again: the first load says so, with the time, and
points at `rlhfkit convert`, which writes the same model as a folder once.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from rlhfkit.errors import UserError
from rlhfkit.models.gguf_header import read_gguf_header

_told: set[str] = set()


def _quietly(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call `fn` without transformers' progress bars and dequantization warnings."""
    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def plain_model(model: PreTrainedModel, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The same model rebuilt from its config without `quantization_config`: weights,
    class and tied embeddings kept, nothing of the GGUF quantizer left (module docstring)."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = ""
    state = {k: v.to(dtype) for k, v in model.state_dict().items()}
    plain = _quietly(
        type(model).from_pretrained, None, config=config, state_dict=state, dtype=dtype
    )
    plain.generation_config = model.generation_config
    return plain


def load_gguf_causal_lm(
    path: str | Path, dtype: torch.dtype = torch.float32, *, quiet: bool = False
) -> PreTrainedModel:
    """The causal LM in the GGUF file `path`, dequantized to `dtype`, as a plain model
    (module docstring); UserError naming the file if transformers cannot read it."""
    file = Path(path)
    header = read_gguf_header(file)
    t0 = time.perf_counter()
    try:
        loaded = _quietly(
            AutoModelForCausalLM.from_pretrained,
            str(file.parent),
            gguf_file=file.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype=dtype,
        )
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
        raise UserError(
            f"could not load {file} (GGUF, architecture {header.architecture}): {e}"
        ) from e
    model = plain_model(loaded, dtype)
    del loaded
    seconds = time.perf_counter() - t0
    if not quiet and str(file) not in _told:
        _told.add(str(file))
        print(
            f"{file.name}: GGUF {header.architecture} dequantized to "
            f"{str(dtype).removeprefix('torch.')} in {seconds:.0f} s (again at every load; "
            f"`rlhfkit convert {file} --out DIR` writes it once as a folder that loads in seconds)",
            flush=True,
        )
    model.train()
    return model


def load_gguf_tokenizer(path: str | Path) -> Any:
    """The tokenizer stored in the GGUF file `path` (vocabulary, merges, special tokens,
    chat template), as transformers converts it."""
    file = Path(path)
    read_gguf_header(file)
    try:
        return _quietly(AutoTokenizer.from_pretrained, str(file.parent), gguf_file=file.name)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise UserError(f"could not load a tokenizer from {file} (GGUF): {e}") from e
