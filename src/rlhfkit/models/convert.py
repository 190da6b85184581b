"""`rlhfkit convert FILE.gguf --out DIR`: a GGUF checkpoint as a Hugging Face folder.

Steps:
  1. refuse an --out that holds anything but a model folder (--overwrite replaces only that);
  2. load the file as every command does (`models.gguf`: transformers dequantizes the blocks,
     the model is rebuilt without the GGUF quantizer, tied embeddings stay tied) and its
     tokenizer (vocabulary, merges, special tokens, chat template);
  3. write both atomically (`checkpoint.save_hf`): safetensors weights in --dtype, config.json
     without `quantization_config`, generation_config.json, tokenizer files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rlhfkit.config import ConvertConfig
from rlhfkit.errors import UserError


def check_out(out: Path, overwrite: bool) -> None:
    """--out is new or empty, or a model folder that --overwrite may replace."""
    if out.is_file():
        raise UserError(f"--out {out} is a file: give a folder for the converted model")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--out {out} is not empty; pass --overwrite to replace the model there")
    if not (out / "config.json").is_file():
        raise UserError(
            f"--out {out} holds files but no model (no config.json): choose a new --out"
        )


def run_convert(cfg: ConvertConfig) -> dict[str, Any]:
    """Convert (module docstring); returns {"out", "parameters", "seconds"}."""
    out = Path(cfg.out)
    check_out(out, cfg.overwrite)  # 1. before torch loads
    import torch

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.load import load_causal_lm, load_tokenizer

    t0 = time.perf_counter()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    tokenizer = load_tokenizer(cfg.file)  # 2.
    model = load_causal_lm(cfg.file, "cpu", dtype=dtype[cfg.dtype])
    model.eval()
    save_hf(model, tokenizer, out)  # 3.
    n = sum(p.numel() for p in model.parameters())
    seconds = time.perf_counter() - t0
    print(
        f"wrote {out}: {type(model).__name__}, {n / 1e6:.1f}M parameters in {cfg.dtype}, "
        f"vocabulary {len(tokenizer)}, chat template {'yes' if tokenizer.chat_template else 'no'} "
        f"({seconds:.0f} s); load it with AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return {"out": str(out), "parameters": n, "seconds": round(seconds, 1)}
