"""What one model holds: exact parameter shapes from its config on the meta device, and
the bytes of weights, gradients and optimizer states per process (see `plan` package doc)."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.errors import UserError
from rlhfkit.models.gguf_header import is_gguf_path, read_gguf_header

GB = 10**9
FP32 = 4


# --- counting a model on the meta device ----------------------------------------------


@dataclass
class Shape:
    """What the memory plan needs of one model: its parameter shapes and layer geometry."""

    params: list[tuple[int, ...]]  # every parameter (tied ones once), frozen or trained
    trained: list[tuple[int, ...]]  # the trained ones (all, or LoRA's and a head copy)
    layers: int
    layer_params: int  # one decoder layer
    hidden: int
    kv_dim: int
    intermediate: int
    vocab: int
    gated: bool

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.params)

    @property
    def n_trained(self) -> int:
        return sum(math.prod(s) for s in self.trained)


def read_config(folder: str, what: str, trust_remote_code: bool = False) -> Any:
    """The Hugging Face config of a model folder (or a config.json file), nothing else; of
    a .gguf file, the config transformers derives from its metadata (no tensor read)."""
    if is_gguf_path(folder):
        return _gguf_config(folder, what)
    path = Path(folder)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{what} {folder}: no such folder or config.json")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(file), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{what} {folder}: cannot read config.json: {e}") from None


def _gguf_config(file: str, what: str) -> Any:
    read_gguf_header(file)
    from transformers import AutoConfig

    path = Path(file)
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"{what} {file}: cannot read a config from this GGUF file: {e}") from None


def count_model(
    config: Any, *, seq_cls: bool, lora: Any = None, trust_remote_code: bool = False
) -> Shape:
    """Build `config` on the meta device and count its parameters (module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhfkit.models.scalar_head import has_sequence_classification, is_marked, score_head_class

    if seq_cls:
        config = config.__class__.from_dict(config.to_dict())
        config.num_labels = 1
    auto = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
        try:
            if seq_cls and (is_marked(config) or not has_sequence_classification(config)):
                # no sequence-classification class: rlhfkit's backbone + score head
                model = score_head_class(config)(config)
            else:
                model = auto.from_config(config, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError) as e:
            raise UserError(f"{type(config).__name__}: cannot build the model: {e}") from None
    params = [tuple(p.shape) for p in model.parameters()]
    trained = params
    if lora is not None and lora.lora_r:
        adapters, head = _lora_shapes(model, lora, seq_cls)
        trained = adapters + head
        params = params + trained  # the base stays; adapters and the head's copy come on top
    return Shape(params, trained, **_geometry(model, config))


def _geometry(model: Any, config: Any) -> dict[str, Any]:
    names = set(getattr(model, "_no_split_modules", None) or ())
    layer = next((m for m in model.modules() if type(m).__name__ in names), None)
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = (
        getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    )
    gated = layer is not None and any("gate" in n for n, _ in layer.named_modules())
    return dict(
        layers=config.num_hidden_layers,
        layer_params=sum(p.numel() for p in layer.parameters()) if layer is not None else 0,
        hidden=hidden,
        kv_dim=kv_heads * head_dim,
        intermediate=inter,
        vocab=config.vocab_size,
        gated=gated,
    )


def _lora_shapes(model: Any, lora: Any, seq_cls: bool) -> tuple[list, list]:
    """(adapter shapes, trained head copy shapes), as PEFT's LoRA would add them."""
    import torch
    from transformers.pytorch_utils import Conv1D

    heads = ("score", "classifier") if seq_cls else ()
    out_emb = model.get_output_embeddings()
    skip = {n for n, m in model.named_modules() if m is out_emb and m is not None}
    head = next((getattr(model, h) for h in heads if getattr(model, h, None) is not None), None)
    skip |= {n for n, m in model.named_modules() if head is not None and m is head}
    targets = list(lora.lora_targets)
    every = targets == ["all-linear"]
    r, adapters = lora.lora_r, []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            fan_in, fan_out = m.in_features, m.out_features
        elif isinstance(m, Conv1D):
            fan_in, fan_out = m.weight.shape
        else:
            continue
        hit = (
            name not in skip if every else any(name == t or name.endswith(f".{t}") for t in targets)
        )
        if hit:
            adapters += [(r, fan_in), (fan_out, r)]
    if not adapters:
        raise UserError(f"--lora-targets {' '.join(targets)}: no linear layer of the model matches")
    return adapters, [tuple(p.shape) for p in head.parameters()] if head is not None else []


# --- bytes per process -------------------------------------------------------------------


@dataclass
class Role:
    name: str
    source: str
    shape: Shape | None  # None: shares another role's weights
    trained: bool
    note: str = ""
    bytes: dict[str, int] = field(default_factory=dict)


def _shard(shapes: list[tuple[int, ...]], n: int) -> int:
    """Elements per process: all of them (n = 1), else FSDP2's padded dim-0 shard."""
    if n == 1:
        return sum(math.prod(s) for s in shapes)
    return sum(-(-s[0] // n) * math.prod(s[1:]) if s else 1 for s in shapes)


def role_bytes(role: Role, n: int) -> dict[str, int]:
    """Weights, gradients and optimizer states of `role` on one of `n` processes (n > 1
    only under fsdp2: ddp passes 1)."""
    if role.shape is None:
        return dict(weights=0, grads=0, optimizer=0)
    s = role.shape
    trained = _shard(s.trained, n) if role.trained else 0
    steps = len(s.trained) if role.trained else 0
    return dict(
        weights=FP32 * _shard(s.params, n),
        grads=FP32 * trained,
        optimizer=2 * FP32 * trained + FP32 * steps,
    )


def layer_act(s: Shape, batch: int, seq: int, a: int, checkpointing: bool) -> int:
    """Training activations of the decoder layers (module docstring)."""
    per_token = (6 * s.hidden + 2 * s.kv_dim + (4 if s.gated else 2) * s.intermediate) * a
    if checkpointing:
        return s.layers * batch * seq * s.hidden * FP32 + batch * seq * per_token
    return s.layers * batch * seq * per_token


def logits_act(s: Shape, batch: int, tokens: int, a: int) -> int:
    return batch * tokens * s.vocab * (a + FP32)


def kv_cache(s: Shape, batch: int, seq: int, a: int) -> int:
    return s.layers * 2 * batch * seq * s.kv_dim * a


def gathered(s: Shape, trained: bool, bf16: bool) -> int:
    """FSDP2's working set: root parameters and two layers unsharded, a layer's gradients."""
    root = s.n_params - s.layers * s.layer_params
    unsharded = (root + 2 * s.layer_params) * (2 if bf16 else FP32)
    return unsharded + (s.layer_params * FP32 if trained else 0)
