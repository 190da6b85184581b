"""oneDNN instead of MKL for the large fp32 linear layers of models run on a CPU.

On x86 CPUs torch's fp32 `F.linear` and its backward run MKL's sgemm. On AMD CPUs MKL
takes its AVX2 path, and oneDNN's matmul (`torch.ops.mkldnn._linear_pointwise`, which
uses AVX-512 there) is faster for every large call. Measured on an AMD EPYC (Zen 4), torch
2.13.0+cpu, one thread, 496 rows (8 sequences x 62 tokens): 256 -> 768 forward 1.72 vs
0.78 ms, grad-input 1.72 vs 0.76 ms, grad-weight 1.72 vs 0.89 ms; about even at 1M
multiply-adds per call, slower below (oneDNN costs ~10 us more per call). Used by
`rlhfkit ppo` (policy, reference, value and reward models), `sft`, `rm` and `pretrain`.
End to end on that machine, against RLHFKIT_ONEDNN=0 (bench/RESULTS.md): a PPO step of
bench/ppo_vs_trl.py takes 29% (hidden 128) and 37% (hidden 256) less time; SFT trains
+22% / +44% tokens/s (bench/sft_vs_trl.py, tiny / small); RM training +47% prompts/s
(bench/rm_vs_trl.py).
On Intel CPUs MKL itself takes its AVX-512 path, and oneDNN is no faster: measured on an
Intel Xeon with AVX-512 and AMX, torch 2.13.0+cpu, one thread, SmolLM2-135M's shapes,
forward + both backward matmuls 576 -> 576 on 128 rows 2.22 (oneDNN) vs 1.95 ms (MKL),
576 -> 192 0.88 vs 0.70 ms, 1536 -> 576 on 512 rows 19.8 vs 18.1 ms; end to end RM
training 0.71 vs 0.89 prompts per CPU-second and SFT 95 vs 105 tokens per CPU-second. So
"auto" takes oneDNN only where torch dispatches AVX-512 and MKL does not (`mkl_avx512`:
MKL picks its kernels by CPU vendor, AVX-512 on GenuineIntel only). Not measured: several
threads, and the `pretrain` loop (the same training loop as `sft`).

`use_onednn_linears(model)` switches a model's `nn.Linear` modules to `OneDNNLinear`, a
subclass that changes `forward` only: parameters, their names, `state_dict()`,
`save_pretrained` output and optimizers stay exactly as they were, and the model can move
to any device or dtype afterwards. Each call takes oneDNN only when all of these hold, and
`F.linear` otherwise: `ENABLED`; oneDNN works in this torch build (`onednn_works`); input,
weight and bias are plain strided fp32 CPU tensors (no DTensor, fake, meta or sparse
tensors); no CPU autocast (under it `F.linear` runs in bf16); not traced by torch.compile
or a functorch transform; a layer of at least `MIN_WEIGHT` weights called on at least
`MIN_ROWS` rows (tokens). Backward is oneDNN too, and plain differentiable matmuls under
`create_graph=True` (double backward works). Same math as `F.linear` up to float rounding
(summation order); the path depends on shapes only, so a seeded run repeats exactly.

Off switch: `RLHFKIT_ONEDNN=0` in the environment (read at import), or
`rlhfkit.models.fast_linear.ENABLED = False` at run time. It also turns off oneDNN in the
sampling fast path (`models/llama_decoder.py`).

Where it pays: only where torch dispatches AVX-512 (`min_weight`). On an AMD EPYC with
AVX2 only (torch 2.13.0+cpu, one thread) oneDNN was no faster than MKL for any training
shape and slower for most: forward + both backward matmuls of 320 rows 256 -> 256 4.9 vs
3.0 ms, 256 -> 768 9.8 vs 9.1 ms, 1600 rows 256 -> 768 39.5 vs 32.4 ms; an SFT step of
`small` took 0.50 against 0.39 CPU s. So oneDNN takes no training call there
unless `RLHFKIT_ONEDNN=1` asks for oneDNN explicitly (the default is "auto"): without
AVX-512, `MIN_WEIGHT` is past any layer, so every call takes `F.linear`.
"""

from __future__ import annotations

import functools
import os
import sys

import torch
import torch.nn.functional as F

_SETTING = os.environ.get("RLHFKIT_ONEDNN", "auto").strip().lower()
ENABLED = _SETTING not in ("0", "false", "no", "off")
FORCED = _SETTING in ("1", "true", "yes", "on")  # oneDNN linears even without AVX-512


def avx512() -> bool:
    """Whether torch's CPU kernels dispatch AVX-512 here (oneDNN then uses it too)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


# Which calls take oneDNN: layers of at least MIN_WEIGHT weights (in x out), called on at
# least MIN_ROWS rows. At one thread on AMD Zen 4, forward + grad-input + grad-weight of a
# 128 x 128 layer are even at 64 rows (64 vs 64 us) and 1.7x faster at 496 (150 us);
# smaller layers and fewer rows (decoding steps) lose to oneDNN's ~10 us per call. The
# choice depends on the layer, not on the batch (except below MIN_ROWS), so splitting a
# batch into micro-batches or processes keeps every training matmul on the same kernel.


def mkl_avx512() -> bool:
    """Whether MKL's sgemm runs AVX-512 kernels here: MKL dispatches by CPU vendor, taking
    AVX-512 on Intel CPUs only (on AMD ones it stays on AVX2 even where AVX-512 exists)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            vendor = next((line for line in f if line.startswith("vendor_id")), "")
    except OSError:
        return False
    return "GenuineIntel" in vendor


def min_weight(forced: bool, has_avx512: bool, mkl_has_avx512: bool = False) -> int:
    """`MIN_WEIGHT` for this CPU: no layer qualifies without AVX-512, nor where MKL already
    runs AVX-512 itself (module docstring), unless oneDNN is forced (RLHFKIT_ONEDNN=1)."""
    return 16_384 if forced or (has_avx512 and not mkl_has_avx512) else sys.maxsize


MIN_WEIGHT = min_weight(FORCED, avx512(), mkl_avx512())
MIN_ROWS = 64

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
        and weight.numel() >= MIN_WEIGHT
        and x.numel() >= MIN_ROWS * x.shape[-1]
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
