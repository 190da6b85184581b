"""oneDNN instead of MKL for the large fp32 linear layers of models run on a CPU.

On x86 CPUs torch's fp32 `F.linear` and its backward run MKL's sgemm. On AMD CPUs MKL
takes its AVX2 path, and oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`, which
uses AVX-512 there) is faster for every large call. Measured on an AMD EPYC (Zen 4), torch
2.13.0+cpu, one thread, 496 rows (8 sequences x 62 tokens): 256 -> 768 forward 1.72 vs
0.78 ms, grad-input 1.72 vs 0.76 ms, grad-weight 1.72 vs 0.89 ms; about even at 1M
multiply-adds per call, slower below (oneDNN costs ~10 us more per call). A PPO step of
bench/ppo_vs_trl.py takes 29-40% less time (bench/RESULTS.md). Not measured: Intel CPUs,
where MKL already uses AVX-512 (`RLHFKIT_ONEDNN=0` turns this off if it is slower there),
and several threads.

`use_onednn_linears(model)` switches a model's `nn.Linear` modules to `OneDNNLinear`, a
subclass that changes `forward` only: parameters, their names, `state_dict()`,
`save_pretrained` output and optimizers stay exactly as they were, and the model can move
to any device or dtype afterwards. Each call takes oneDNN only when all of these hold, and
`F.linear` otherwise: `ENABLED`; oneDNN works in this torch build (`onednn_works`); input,
weight and bias are plain strided fp32 CPU tensors (no DTensor, fake, meta or sparse
tensors); no CPU autocast (under it `F.linear` runs in bf16); not traced by torch.compile
or a functorch transform; at least `MIN_MACS` multiply-adds. Backward is oneDNN too, and
plain differentiable matmuls under `create_graph=True` (double backward works). Same math
as `F.linear` up to float rounding (summation order); the path depends on shapes only,
so a seeded run repeats exactly.

Off switch: `RLHFKIT_ONEDNN=0` in the environment (read at import), or
`rlhfkit.models.fast_linear.ENABLED = False` at run time. It also turns off oneDNN in the
sampling fast path (`models/llama_decoder.py`).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

ENABLED = os.environ.get("RLHFKIT_ONEDNN", "1").strip().lower() not in ("0", "false", "no", "off")
# Per call (rows x in x out): where oneDNN starts to win for forward, grad-input and
# grad-weight together, at one thread on AMD Zen 4 (1M: forward even, grad-weight 14%
# slower; 1.5M: all three faster).
MIN_MACS = 1_500_000

_PLAIN = (torch.Tensor, torch.nn.Parameter)


@functools.cache
def onednn_works() -> bool:
    """Whether oneDNN's linear (plain and packed weights) exists in this torch build and
    agrees with F.linear."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return False
        g = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(s, generator=g) for s in ((3, 2, 40), (24, 40), (24,)))
        ref = F.linear(x, w, b)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        for weight in (w, packed):
            y = torch.ops.mkldnn._linear_pointwise(x, weight, b, "none", [], "")
            if not torch.allclose(y, ref, rtol=1e-4, atol=1e-5):
                return False
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def onednn_enabled() -> bool:
    """`ENABLED` and oneDNN works here."""
    return ENABLED and onednn_works()


def _onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x @ weight.T + bias by oneDNN (views such as transposes go in as they are)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _plain_fp32_cpu(t: torch.Tensor | None) -> bool:
    return t is None or (
        type(t) in _PLAIN
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.layout == torch.strided
    )


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        ENABLED
        and x.dim() >= 2
        and _plain_fp32_cpu(x)
        and _plain_fp32_cpu(weight)
        and _plain_fp32_cpu(bias)
        and x.numel() * weight.shape[0] >= MIN_MACS
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch._C._are_functorch_transforms_active()
        and onednn_works()
    )


class _OneDNNLinearFn(torch.autograd.Function):
    """y = x W^T + b with oneDNN forward and backward (module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        fast = not torch.is_grad_enabled() and _plain_fp32_cpu(g2)  # else create_graph
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # grad @ W
            gx = (_onednn_linear(g2, weight.t()) if fast else g2 @ weight).view(x.shape)
        if ctx.needs_input_grad[1]:  # grad^T @ x
            gw = _onednn_linear(g2.t(), x2.t()) if fast else g2.t() @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


class OneDNNLinear(torch.nn.Linear):
    """An nn.Linear whose large fp32 CPU calls run oneDNN (module docstring); same
    parameters and state dict. Made by `use_onednn_linears`, not built directly."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if not _use_onednn(input, weight, bias):
            return F.linear(input, weight, bias)
        if torch.is_grad_enabled() and (
            input.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return _OneDNNLinearFn.apply(input, weight, bias)
        return _onednn_linear(input, weight, bias)


def use_onednn_linears(model: torch.nn.Module) -> int:
    """Switch every plain `nn.Linear` of `model` (in place) to `OneDNNLinear` when oneDNN
    is enabled and works; returns how many were switched (0 when off). Subclasses of
    nn.Linear (adapters, quantized layers) are left alone."""
    if not onednn_enabled():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = OneDNNLinear
            count += 1
    return count


def plain_linears(model: torch.nn.Module) -> int:
    """Undo `use_onednn_linears` (in place); returns how many modules changed back."""
    count = 0
    for module in model.modules():
        if type(module) is OneDNNLinear:
            module.__class__ = torch.nn.Linear
            count += 1
    return count
