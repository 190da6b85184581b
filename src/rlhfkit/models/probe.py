"""Per-model checks that pick a path by probing the loaded model, not by its name.

`packing_is_exact(model)`: does a padding-free packed row (examples concatenated, position
ids restarting at 0, attention_mask None; `data/collate.collate_packed`) give every example
the logits it gets alone? transformers 5 turns restarting position ids into a block-diagonal
causal mask for Llama, Qwen2, Mistral, Gemma, Phi, GPT-2, GPT-NeoX and GPT-J, but not for
OPT, Bloom, Falcon, MPT or XGLM, where later examples of a row attend to earlier ones.
The probe runs the exact forward the LM loop runs (`LMBatch.model_inputs()`) on two short
random examples, packed and each alone, so a new architecture or transformers version is
judged by what it does.
"""

from __future__ import annotations

import torch

from rlhfkit.data.collate import collate_packed, collate_right
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.models.wrap import eval_mode, unwrap

PROBE_LENGTHS = (8, 8)  # two examples; the second is the one that could see the first
PROBE_SEED = 0
# Tolerance, in units of the logits dtype's machine epsilon (float32: eps = 1.19e-7), times
# the logit scale max(1, max |logit|). Packed and alone do the same arithmetic on the same
# values; only summation order differs (matmul blocking depends on the row count; masked
# attention adds exact zeros over more keys). A reduction of n terms then moves by about
# sqrt(n) u (u = eps / 2; n <= 16k hidden/MLP width: <= 64 eps), compounding over tens of
# layers to at most ~10x that: allow 1024 eps = 1.2e-4 in float32. Measured (tiny random
# models): exact architectures <= 1 eps, leaking ones >= 5e-3, 40x above the tolerance.
TOL_EPS = 1024


def _probe_examples(vocab_size: int) -> list[EncodedExample]:
    # A private generator: the probe must not move the global RNG the run was seeded with.
    g = torch.Generator().manual_seed(PROBE_SEED)
    out = []
    for n in PROBE_LENGTHS:
        ids = torch.randint(0, vocab_size, (n,), generator=g).tolist()
        out.append(EncodedExample(input_ids=ids, labels=list(ids)))
    return out


@torch.no_grad()
def packing_error(model: torch.nn.Module) -> tuple[float, float]:
    """(max |packed - alone| over the probe's logits, tolerance for it) on `model`.

    Runs in eval mode (no dropout) and leaves every submodule in the mode it found.
    """
    model = unwrap(model)
    device = next(model.parameters()).device
    examples = _probe_examples(model.get_input_embeddings().num_embeddings)
    with eval_mode(model):
        packed = model(**collate_packed(examples).to(device).model_inputs()).logits[0]  # (T, V)
        # One example per batch, so no padding: the pad id is never used.
        alone = [
            model(**collate_right([ex], pad_id=0).to(device).model_inputs()).logits[0]  # (n, V)
            for ex in examples
        ]
    alone_cat = torch.cat(alone).float()  # (T, V): the same positions as the packed row
    diff = (packed.float() - alone_cat).abs().max().item()
    scale = max(1.0, alone_cat.abs().max().item())
    return diff, TOL_EPS * torch.finfo(packed.dtype).eps * scale


def packing_is_exact(model: torch.nn.Module) -> bool:
    """True when packed rows keep examples apart on `model` (see the module docstring)."""
    diff, tol = packing_error(model)
    return diff <= tol


# (left pads, real tokens, right pads) of three sequences of width 12, PPO-style; packed
# into rows of at most 12 tokens, the first and the third share a row, so a model that
# lets packed sequences see each other changes the third's outputs.
PADDED_PROBE = ((4, 6, 2), (6, 6, 0), (7, 3, 2))


@torch.no_grad()
def packed_forward_error(model: torch.nn.Module, kind: str) -> tuple[float, float]:
    """(max |packed - padded|, tolerance) of a PPO forward (`models.forward`) on `model`:
    kind "logits" (a causal LM, `policy_logits`) or "values" (a one-output head,
    `response_values`), on three random sequences laid out as PPO pads them (left and
    right), packed vs padded. The same tolerance as `packing_error`.

    Runs in eval mode and leaves every submodule in the mode it found, and the global RNG.
    """
    from rlhfkit.models.forward import policy_logits, response_values

    inner = unwrap(model)
    device = next(inner.parameters()).device
    g = torch.Generator().manual_seed(PROBE_SEED)
    width = max(sum(layout) for layout in PADDED_PROBE)
    vocab = inner.get_input_embeddings().num_embeddings
    sequences = torch.randint(0, vocab, (len(PADDED_PROBE), width), generator=g).to(device)
    mask = torch.zeros_like(sequences, dtype=torch.bool)
    for i, (left, n, _) in enumerate(PADDED_PROBE):
        mask[i, left : left + n] = True
    response_len, prompt_len = 4, width - 4
    real = mask[:, prompt_len - 1 :]  # (B, R + 1): the positions both forwards read

    def run(packed: bool) -> torch.Tensor:
        if kind == "logits":
            logits = policy_logits(model, sequences, mask, response_len, packed)
            return logits[:, -(response_len + 1) :][real].float()  # (n, V)
        values = response_values(model, sequences, mask, prompt_len, packed)  # (B, R)
        return values[real[:, :-1]].float()

    with eval_mode(inner):
        padded, packed = run(False), run(True)
    diff = (packed - padded).abs().max().item()
    scale = max(1.0, padded.abs().max().item())
    return diff, TOL_EPS * torch.finfo(torch.float32).eps * scale
