"""Config of `rlhfkit convert`: a GGUF checkpoint to a Hugging Face folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from rlhfkit.config.fields import CheckedBy


@dataclass(kw_only=True)
class ConvertConfig:
    """Convert a GGUF checkpoint (llama.cpp's .gguf) into a Hugging Face causal LM folder: weights dequantized (safetensors), config.json, generation_config.json, and the tokenizer with its chat template; `AutoModelForCausalLM.from_pretrained(DIR)` gives the logits of the GGUF loaded directly. Every command also reads a .gguf where it reads a causal LM folder, but dequantizes it at each load: convert once instead."""

    file: Annotated[
        str,
        tyro.conf.Positional,
        tyro.conf.arg(metavar="FILE.gguf"),
        CheckedBy("rlhfkit.models.gguf_header:check_gguf_file"),
    ] = ""
    """The GGUF file to convert."""
    out: str = ""
    """Output folder for the Hugging Face model (created; an existing model folder needs --overwrite)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of the saved weights (float32: what training here needs; the quantized blocks are dequantized either way)."""
    overwrite: bool = False
    """Replace a model folder already at --out."""
