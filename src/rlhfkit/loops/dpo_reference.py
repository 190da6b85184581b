"""DPO's forwards: a batch's summed response log-probs (shared by training, evaluation and
the reference pass), the one reference pass, and its cache in the output folder.

The reference log-probs depend on the data and the reference model alone, so they are
computed once, before training (TRL's `precompute_ref_log_probs`), and written to
`reference_logprobs/logprobs.safetensors` with a fingerprint of the token sequences and the
reference's folder: a resumed run reads them back instead of needing the reference again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from rlhfkit.data.dpo_data import PreferenceBatch, PreferenceExample, collate_preferences
from rlhfkit.distributed import Dist, all_reduce
from rlhfkit.files import atomic_file
from rlhfkit.logging import progress
from rlhfkit.loops.common import rank_micro_batches
from rlhfkit.loops.lm import head_rows_work, row_cap
from rlhfkit.models.forward import head_reads
from rlhfkit.models.load import autocast_context
from rlhfkit.models.wrap import eval_mode, is_sharded
from rlhfkit.ops.logprobs import sequence_logprobs
from rlhfkit.types import IGNORE_INDEX

# Not a *.safetensors file at the top of the run folder: that holds the exported model, and
# loaders (vLLM, the export's stale-shard cleanup) take every such file for its weights.
CACHE = "reference_logprobs/logprobs.safetensors"


def collate(
    examples: Sequence[PreferenceExample],
    pad_id: int,
    packing: bool,
    max_len: int,
    device: torch.device,
) -> PreferenceBatch:
    """A micro-batch of whole prompts on `device`: packed rows of at most 2 x its longest
    sequence (`loops.lm.row_cap`), or right-padded."""
    cap = row_cap([s for ex in examples for s in ex.sequences], max_len) if packing else None
    return collate_preferences(examples, pad_id, packing, cap).to(device)


def response_logprobs(model: torch.nn.Module, batch: PreferenceBatch, bf16: bool) -> torch.Tensor:
    """(N,) log pi(y | x) of each sequence of `batch`, summed over its response tokens, in
    one forward; the LM head runs only where a response token is predicted (where the
    model's head can be fed that way: `loops.lm.head_rows_work`)."""
    lm = batch.lm
    keep = torch.zeros_like(lm.labels, dtype=torch.bool)  # (B, T)
    keep[:, :-1] = lm.labels[:, 1:] != IGNORE_INDEX  # the positions predicting a response token
    targets = lm.labels[:, 1:][keep[:, :-1]]  # (n,)
    owner = batch.owner[:, 1:][keep[:, :-1]]  # (n,)
    rows = head_rows_work(model)
    head = head_reads(model, lambda h: h[keep]) if rows else nullcontext()
    with autocast_context(lm.input_ids.device, bf16), head:
        logits = model(**lm.model_inputs()).logits  # (n, V), or (B, T, V)
    if not rows:
        logits = logits[keep]  # (n, V)
    return sequence_logprobs(logits, targets, owner, batch.n_sequences)


def even_micro_batches(n: int, d: Dist, micro: int, model: torch.nn.Module) -> list[list[int]]:
    """This rank's micro-batches of examples 0..n-1 (`rank_micro_batches`). A sharded
    model's forwards are collective, so there every rank gets as many micro-batches as the
    busiest one: the extra ones are empty (the caller runs a forward and discards it)."""
    mine = list(rank_micro_batches(range(n), d, micro))
    if d.enabled and is_sharded(model):
        most = max(
            len(list(rank_micro_batches(range(n), Dist(r, d.world_size), micro)))
            for r in range(d.world_size)
        )
        mine += [[] for _ in range(most - len(mine))]
    return mine


@torch.no_grad()
def compute_reference(
    model: torch.nn.Module,
    examples: Sequence[PreferenceExample],
    *,
    pad_id: int,
    packing: bool,
    max_len: int,
    batch_size: int,
    bf16: bool,
    dist: Dist,
    device: torch.device,
) -> torch.Tensor:
    """(S,) float32 log pi_ref(y | x) of every sequence of `examples` (S of them, indexed
    by `PreferenceExample.first`): one no-grad pass, each response one forward, this rank
    its share, summed over ranks (each entry is written by one rank)."""
    total = max(ex.first + len(ex.sequences) for ex in examples) if examples else 0
    out = torch.zeros(total, dtype=torch.float32)
    shares = even_micro_batches(len(examples), dist, batch_size, model)
    bar = progress(len(shares), desc="reference", enabled=dist.is_main)
    with eval_mode(model):
        for idx in shares:
            batch = collate([examples[i] for i in (idx or [0])], pad_id, packing, max_len, device)
            logprobs = response_logprobs(model, batch, bf16).float().cpu()  # (N,)
            if idx:  # an empty share's forward only keeps FSDP2's collectives in step
                out[batch.index.cpu()] = logprobs
            bar.update(1)
    bar.close()
    return all_reduce(out.to(device)).cpu() if dist.enabled else out


def fingerprint(examples: Sequence[PreferenceExample], reference: str) -> str:
    """A hash of every sequence's tokens and response marks, and the reference's name."""
    h = hashlib.sha256(reference.encode())
    for ex in examples:
        for s in ex.sequences:
            h.update(torch.tensor(s.input_ids + [-1] + s.labels + [-2]).numpy().tobytes())
    return h.hexdigest()


def read_cache(out: Path, key: str) -> torch.Tensor | None:
    """The cached reference log-probs of this data and reference, or None."""
    path = out / CACHE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("fingerprint") != key:
            return None
    return load_file(str(path))["logprobs"]


def write_cache(out: Path, logprobs: torch.Tensor, key: str, reference: str) -> None:
    """Write the cache atomically (rank 0 only)."""
    blob = save({"logprobs": logprobs.contiguous()}, {"fingerprint": key, "reference": reference})
    (out / CACHE).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / CACHE, "wb") as f:
        f.write(blob)
