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
from rlhfkit.models.wrap import unwrap

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

    Runs in eval mode (no dropout) and restores the train/eval mode it found.
    """
    model = unwrap(model)
    device = next(model.parameters()).device
    examples = _probe_examples(model.get_input_embeddings().num_embeddings)
    was_training = model.training
    model.eval()
    try:
        packed = model(**collate_packed(examples).to(device).model_inputs()).logits[0]  # (T, V)
        # One example per batch, so no padding: the pad id is never used.
        alone = [
            model(**collate_right([ex], pad_id=0).to(device).model_inputs()).logits[0]  # (n, V)
            for ex in examples
        ]
    finally:
        model.train(was_training)
    alone_cat = torch.cat(alone).float()  # (T, V): the same positions as the packed row
    diff = (packed.float() - alone_cat).abs().max().item()
    scale = max(1.0, alone_cat.abs().max().item())
    return diff, TOL_EPS * torch.finfo(packed.dtype).eps * scale


def packing_is_exact(model: torch.nn.Module) -> bool:
    """True when packed rows keep examples apart on `model` (see the module docstring)."""
    diff, tol = packing_error(model)
    return diff <= tol
