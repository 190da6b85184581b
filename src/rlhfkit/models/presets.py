"""Model size presets and a byte-level BPE tokenizer trained from a corpus.

Everything here builds from scratch in-process: no download, no hub. The presets are
Llama configs small enough to pretrain on a laptop CPU within minutes (`tiny`) or an hour
(`small`), and `test` is for unit tests only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from rlhfkit.data.chat import BUILTIN_CHAT_TEMPLATE, set_chat_format
from rlhfkit.errors import UserError

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
# Order fixes the ids: pad 0, bos 1, eos 2, system 3, user 4, assistant 5.
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT]

# The chat template of rlhfkit's tokenizers (rendering: `data.chat.BUILTIN_CHAT_TEMPLATE`).
# A base model never trains on it: `train_tokenizer` marks its tokenizers plain
# (`data.chat.CHAT_FORMAT`), so no stage renders plain prompts through it unasked.
CHAT_TEMPLATE = BUILTIN_CHAT_TEMPLATE

# Parameter counts are for vocab 2048 with tied input/output embeddings:
#   per layer = 4*h*h (q,k,v,o) + 3*h*i (gate, up, down) + 2*h (norms); plus V*h + h.
_COMMON: dict[str, Any] = {
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
    "attn_implementation": "sdpa",
    "rms_norm_eps": 1e-5,
}
PRESETS: dict[str, dict[str, Any]] = {
    # 2048*128 + 4*(65,536 + 147,456 + 256) + 128 = 1,115,264 params
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=384,
        **_COMMON,
    ),
    # 2048*256 + 6*(262,144 + 589,824 + 512) + 256 = 5,639,424 params
    "small": dict(
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=768,
        **_COMMON,
    ),
    # 2048*512 + 8*(1,048,576 + 1,966,080 + 1,024) + 512 = 25,174,528 params
    "base": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        intermediate_size=1280,
        **_COMMON,
    ),
    # unit tests only: 2048*32 + 2*(4,096 + 6,144 + 64) + 32 = 86,176 params
    "test": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        **{**_COMMON, "max_position_embeddings": 512},
    ),
}


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, *, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (GPT-2 style) on `texts`.

    Any string encodes (256 byte symbols are always in the vocabulary) and decodes back
    exactly: no normalizer, no cleanup of spaces. No BOS/EOS is added by `encode`; the chat
    template adds `<|bos|>` and ends assistant turns with `<|eos|>`, and callers add them
    where a format needs them. `vocab_size` counts the special tokens; a small corpus may
    give fewer merges than asked for. The tokenizer is marked plain (`data.chat`): its model
    reads prompts as raw text unless a stage is told --chat.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[SYSTEM, USER, ASSISTANT],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    set_chat_format(out, False)  # a base model: prompts stay raw text unless asked (data.chat)
    return out


def _resolve_config(spec: str | Path | Mapping[str, Any] | PreTrainedConfig) -> PreTrainedConfig:
    if isinstance(spec, PreTrainedConfig):
        return spec.__class__.from_dict(spec.to_dict())  # a copy: we set ids on it
    if isinstance(spec, Mapping):
        return LlamaConfig(**dict(spec))
    if isinstance(spec, str) and spec in PRESETS:
        return LlamaConfig(**PRESETS[spec])
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(
            f"{spec!s} is neither a preset ({', '.join(PRESETS)}) nor a config.json file"
        )
    try:
        cfg = json.loads(path.read_text())
        model_type = cfg.pop("model_type")
    except (json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{path}: not a Hugging Face config.json ({e})") from e
    try:
        return AutoConfig.for_model(model_type, **cfg)
    except ValueError as e:  # unknown model_type: we never run remote code here
        raise UserError(f"{path}: {e}") from e


def build_model(
    preset_or_config: str | Path | Mapping[str, Any] | PreTrainedConfig,
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
) -> PreTrainedModel:
    """A freshly initialised causal LM sized to `tokenizer`.

    `preset_or_config` is a preset name, a path to a config.json (any architecture
    transformers knows, built with AutoModelForCausalLM.from_config), a dict of LlamaConfig
    kwargs, or a config object. The vocabulary size and the pad/bos/eos ids come from the
    tokenizer and are set on both the config and the generation config. Initialisation is
    seeded without touching the global RNG state.
    """
    config = _resolve_config(preset_or_config)
    config.vocab_size = len(tokenizer)
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    for key, value in ids.items():
        setattr(config, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(config, LlamaConfig):
            model = LlamaForCausalLM(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    for key, value in ids.items():
        setattr(model.generation_config, key, value)
    return model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in params.values())
