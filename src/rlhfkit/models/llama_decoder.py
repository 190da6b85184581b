"""The Llama fast path of `models/generate.py`: a stock LlamaForCausalLM's decoding step
written out with fused q/k/v and gate/up projections, a preallocated KV cache and a float
key mask, because at RLHF-sized batches on small models the per-token Python of HF's
forward costs more than the arithmetic. Same math as transformers' Llama (tested: same
tokens, log-probs within 1e-5). Large matmuls go through oneDNN on CPU where it runs (off
switch in `models/fast_linear.py`), up to 2x faster than MKL's AVX2 path on AMD CPUs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from rlhfkit.models.fast_linear import OneDNNLinear, onednn_enabled
from rlhfkit.ops.masking import position_ids_from_mask

# Fusing q/k/v and gate/up copies those weights once per sample() call; above this size
# the copy costs more than it saves (arithmetic, not dispatch, dominates there).
_FUSE_LIMIT_BYTES = 256 * 2**20
_STATIC_ROPE = ("default", "linear", "llama3")
_LINEARS = (torch.nn.Linear, OneDNNLinear)  # OneDNNLinear: the same layer (fast_linear.py)


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """LlamaRMSNorm.forward: fp32 statistics, scale applied in the input dtype. In fp32 that
    is exactly F.rms_norm (one fused op instead of six)."""
    weight, eps = norm.weight, norm.variance_epsilon
    if x.dtype == weight.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


# On x86 CPUs, fp32 F.linear runs MKL's sgemm, which on AMD takes its AVX2 path (see
# models/fast_linear.py). oneDNN with a prepacked weight costs ~10 us more per call but
# has more throughput: at batch 8, 42 vs 91 us for 256 -> 1536, but 11 vs 6 us for
# 128 -> 128. Matmuls of at least _ONEDNN_MIN_MACS multiply-adds go to oneDNN, smaller
# ones to F.linear (threshold tuned end to end in bench/gen_vs_hf.py: +37% tokens/s at
# hidden 256, +4% at hidden 128). Same math up to float rounding (summation order); the
# choice depends on shapes only, so a seeded run repeats exactly. Off with
# fast_linear.ENABLED = False (or RLHFKIT_ONEDNN=0): always F.linear.
_ONEDNN_MIN_MACS = 1_000_000


def _use_onednn(weight: torch.Tensor) -> bool:
    """fp32 on CPU outside autocast (under autocast F.linear would run in bf16)."""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and onednn_enabled()
    )


_Linear = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # weight, dnn, bias


def _linear_weights(*linears: torch.nn.Linear, onednn: bool, rows: int) -> _Linear:
    """One linear layer from several stacked along their outputs (q/k/v, gate/up): the
    weight, what oneDNN multiplies by (None: never oneDNN), the bias (or None).

    The oneDNN weight is packed (reordered once, faster per call) when the decode matmul,
    `rows` x in x out, is big enough to use it every token; otherwise it is the plain
    weight, which oneDNN still takes for the prefill (one call does not repay a packing).
    """
    weight = torch.cat([lin.weight for lin in linears]) if len(linears) > 1 else linears[0].weight
    bias = None
    if any(lin.bias is not None for lin in linears):
        bias = torch.cat([lin.bias for lin in linears]) if len(linears) > 1 else linears[0].bias
    dnn = None
    if onednn:
        dnn = weight.detach()
        if rows * weight.numel() >= _ONEDNN_MIN_MACS:
            dnn = torch.ops.mkldnn._reorder_linear_weight(dnn, None)
    return weight, dnn, bias


def _linear(x: torch.Tensor, lin: _Linear) -> torch.Tensor:
    weight, dnn, bias = lin
    if dnn is not None and x.numel() * weight.shape[0] >= _ONEDNN_MIN_MACS:
        return torch.ops.mkldnn._linear_pointwise(x, dnn, bias, "none", [], "")
    return F.linear(x, weight, bias)


def is_stock_llama(model: torch.nn.Module) -> bool:
    """A plain LlamaForCausalLM whose forward we may replicate: no hooks, no adapters (every
    projection an nn.Linear), a RoPE fixed at init, and sdpa or eager attention."""
    from transformers import LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if type(model) is not LlamaForCausalLM:
        return False
    cfg = model.config
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if (
        cfg.hidden_act != "silu"
        or (getattr(cfg, "pretraining_tp", 1) or 1) != 1
        or rope not in _STATIC_ROPE
        or cfg._attn_implementation not in ("sdpa", "eager")
        or type(model.lm_head) not in _LINEARS
    ):
        return False
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks:
            return False
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj]
        linears += [mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        if any(type(m) not in _LINEARS for m in linears):
            return False
        if any(type(m) is not LlamaRMSNorm for m in norms):
            return False
    return True


class LlamaDecoder:
    """LlamaForCausalLM's forward written out for sampling, with a preallocated KV cache.

    At batch 8 and a few million parameters a decode step is a few dozen kernels of
    microseconds each, and HF's per-step Python (modules, mask building, cache objects,
    output classes) costs more than the arithmetic. This runs the math of `modeling_llama`
    (RMSNorm with fp32 statistics, RoPE from the model's own rotary module, sdpa with the
    model's scaling) with: q/k/v and gate/up fused into one matmul each; keys and values
    written into (B, Hkv, P + N, D) buffers; cos/sin and an additive key mask computed once
    for all positions (sdpa takes a float mask at half the cost of a bool one); rotate_half
    as a roll against a sign-folded sin. Logits match HF's forward to float rounding (the
    tests compare). Anything that is not a stock Llama (`is_stock_llama`) takes
    `_HFDecoder`.
    """

    @classmethod
    def build(
        cls, model: torch.nn.Module, mask: torch.Tensor, max_new_tokens: int
    ) -> LlamaDecoder | None:
        if not is_stock_llama(model):
            return None
        fused = 0
        for layer in model.model.layers:
            a, m = layer.self_attn, layer.mlp
            for lin in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
                fused += lin.weight.numel() * lin.weight.element_size()
        return cls(model, mask, max_new_tokens) if fused <= _FUSE_LIMIT_BYTES else None

    def __init__(self, model: torch.nn.Module, mask: torch.Tensor, max_new_tokens: int) -> None:
        cfg, core = model.config, model.model
        self.n_q = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads or self.n_q
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_q
        self.scale = self.head_dim**-0.5
        batch, self.width = mask.shape
        weights = functools.partial(
            _linear_weights, onednn=_use_onednn(model.lm_head.weight), rows=batch
        )
        self.layers = [
            (
                layer.input_layernorm,
                weights(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                weights(layer.self_attn.o_proj),
                layer.post_attention_layernorm,
                weights(layer.mlp.gate_proj, layer.mlp.up_proj),
                weights(layer.mlp.down_proj),
            )
            for layer in core.layers
        ]
        self.norm, self.embed = core.norm, core.embed_tokens.weight
        self.head = weights(model.lm_head)
        self.total = self.width + max_new_tokens
        keys_ok = torch.cat([mask, mask.new_ones(batch, max_new_tokens)], 1)  # (B, P + N)
        bias = torch.zeros(keys_ok.shape, dtype=self.embed.dtype, device=mask.device)
        self.key_bias = bias.masked_fill(~keys_ok, float("-inf"))[:, None, None]  # (B,1,1,P+N)
        prompt_pos = position_ids_from_mask(mask)  # (B, P)
        new_pos = prompt_pos[:, -1:] + 1 + torch.arange(max_new_tokens, device=mask.device)
        positions = torch.cat([prompt_pos, new_pos], 1)  # (B, P + N)
        cos, sin = core.rotary_emb(self.embed[:0], positions)  # (B, P + N, D), embed dtype
        # rotate_half(x) * sin == roll(x, D/2) * [-sin_1, sin_2] (halves 1, 2), exactly.
        half = self.head_dim // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1)
        self.cos, self.sin = cos[:, None], sin[:, None]  # (B, 1, P + N, D)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def _attend(self, layer: int, qkv: torch.Tensor, start: int, bias) -> torch.Tensor:
        """qkv: (B, T, (Hq + 2 Hkv) * D) -> (B, T, Hq * D), keys/values cached at start."""
        batch, t = qkv.shape[:2]
        end, n_q, n_kv, dim = start + t, self.n_q, self.n_kv, self.head_dim
        qkv = qkv.view(batch, t, n_q + 2 * n_kv, dim).transpose(1, 2)
        cos, sin = self.cos[:, :, start:end], self.sin[:, :, start:end]  # (B, 1, T, D)
        qk = qkv[:, : n_q + n_kv]  # RoPE on queries and keys in one go
        qk = qk * cos + qk.roll(dim // 2, -1) * sin  # (B, Hq + Hkv, T, D)
        if layer == len(self.keys):  # prefill: allocate this layer's cache
            shape = (batch, n_kv, self.total, dim)
            self.keys.append(qk.new_empty(shape))
            self.values.append(qkv.new_empty(shape))
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, start:end] = qk[:, n_q:]
        values[:, :, start:end] = qkv[:, n_q + n_kv :]
        out = F.scaled_dot_product_attention(
            qk[:, :n_q],
            keys[:, :, :end],
            values[:, :, :end],
            attn_mask=bias,
            scale=self.scale,
            enable_gqa=n_q != n_kv,
        )
        return out.transpose(1, 2).reshape(batch, t, n_q * dim)

    def _forward(self, ids: torch.Tensor, start: int, bias: torch.Tensor) -> torch.Tensor:
        """(B, T) ids at positions start.. -> (B, V) logits of the last one."""
        x = F.embedding(ids, self.embed)  # (B, T, H)
        for i, (norm1, qkv, o, norm2, gate_up, down) in enumerate(self.layers):
            attn = self._attend(i, _linear(_rms_norm(x, norm1), qkv), start, bias)
            x = x + _linear(attn, o)
            gate, up = _linear(_rms_norm(x, norm2), gate_up).chunk(2, dim=-1)
            x = x + _linear(F.silu(gate) * up, down)
        return _linear(_rms_norm(x[:, -1], self.norm), self.head)  # (B, V)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = ids.shape[1]
        future = torch.ones(width, width, dtype=torch.bool, device=ids.device).triu(1)
        # A query on left padding sees only itself: finite values that no real token reads
        # (a row with every key masked would be NaN).
        bias = self.key_bias[..., :width].masked_fill(future, float("-inf"))  # (B, 1, P, P)
        eye = torch.eye(width, dtype=torch.bool, device=ids.device)
        return self._forward(ids, 0, bias.masked_fill(eye, 0.0))

    def step(self, token: torch.Tensor, step: int) -> torch.Tensor:
        start = self.width + step  # response token `step` comes after the P prompt columns
        return self._forward(token[:, None], start, self.key_bias[..., : start + 1])
