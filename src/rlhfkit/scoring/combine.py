"""How several reward models' scores become one reward per sample (pure torch).

One variant, one function; `COMBINERS` picks it by name and `make_combiner` binds its
options. Every combiner has the signature

    combiner(scores: {rm name: (B,) raw score}, is_safety: (B,) bool) -> (B,) reward

where a raw score is the RM head's output (a logit: sigmoid(score) is the RM's
probability-like "sigmoid-scaled" score of Llama 2). No device moves, no in-place edits.

Variants:
- "single": one RM's raw score (optionally whitened). The default.
- "weighted-sum": sum_i w_i * score_i (weights default to 1/n), optionally whitened.
- "llama2": Llama 2's safety / helpfulness rule (Touvron et al. 2023, section 3.2.2):

      R_c = R_s  if IS_SAFETY(p) or R_s < threshold (0.15)
          = R_h  otherwise
      R~_c = WHITEN(LOGIT(R_c))

  with R_s = sigmoid(s_safety), R_h = sigmoid(s_helpfulness). The branch is decided on
  the sigmoid-scaled score, exactly as written (R_s == threshold takes R_h). LOGIT undoes
  the sigmoid, so LOGIT(R_c) IS the chosen raw score: we take it directly instead of a
  sigmoid -> logit round trip, which saturates in float32 past |score| ~ 17 and would
  need clamping (`logit` below is there for callers holding probabilities).

WHITEN is over the batch: (x - mean) / sqrt(unbiased var + eps) (`ops.masking.
masked_whiten`). A batch of ONE whitens to 0: the sample is its own batch mean and
there is no spread to scale by; whitening is meant for PPO's rollout batches. A batch
whose scores are all equal also gives 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch

from rlhfkit.ops.masking import masked_whiten

Scores = Mapping[str, torch.Tensor]
Combiner = Callable[[Scores, torch.Tensor], torch.Tensor]

LLAMA2_THRESHOLD = 0.15


def batch_whiten(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B,) -> (B,): mean 0, unbiased std 1 over the batch; B = 1 gives 0 (module doc)."""
    return masked_whiten(x, torch.ones_like(x, dtype=torch.bool), eps=eps)


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse sigmoid of probabilities `p` (any shape), clamped to [eps, 1 - eps]: finite."""
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def _check(scores: Scores, names: list[str]) -> None:
    if not scores:
        raise ValueError("no reward-model scores to combine")
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"combiner needs reward models {missing}; got {sorted(scores)}")
    shapes = {tuple(t.shape) for t in scores.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"scores must all be (B,) tensors of one size, got shapes {shapes}")


def combine_single(
    scores: Scores, is_safety: torch.Tensor, *, rm: str | None = None, whiten: bool = False
) -> torch.Tensor:
    """The raw score of one RM (`rm`, or the only one given); optionally whitened."""
    if rm is None:
        if len(scores) != 1:
            raise ValueError(
                f"'single' with {len(scores)} reward models {sorted(scores)}: name one (rm=...)"
            )
        rm = next(iter(scores))
    _check(scores, [rm])
    out = scores[rm]
    return batch_whiten(out) if whiten else out.clone()


def combine_weighted_sum(
    scores: Scores,
    is_safety: torch.Tensor,
    *,
    weights: Mapping[str, float] | None = None,
    whiten: bool = False,
) -> torch.Tensor:
    """sum_i weights[i] * raw score_i over the named RMs (default: each 1/n); optionally whitened."""
    if weights is None:
        weights = dict.fromkeys(scores, 1.0 / max(len(scores), 1))
    _check(scores, list(weights))
    out = sum(float(w) * scores[name] for name, w in weights.items())
    assert isinstance(out, torch.Tensor)
    return batch_whiten(out) if whiten else out


def llama2_uses_safety(
    safety_scores: torch.Tensor, is_safety: torch.Tensor, threshold: float = LLAMA2_THRESHOLD
) -> torch.Tensor:
    """(B,) bool: where Llama 2's rule takes the safety RM: IS_SAFETY or sigmoid(s) < threshold."""
    return is_safety.to(torch.bool) | (torch.sigmoid(safety_scores) < threshold)


def combine_llama2(
    scores: Scores,
    is_safety: torch.Tensor,
    *,
    helpfulness: str = "helpfulness",
    safety: str = "safety",
    threshold: float = LLAMA2_THRESHOLD,
    whiten: bool = True,
) -> torch.Tensor:
    """Llama 2's R~_c = WHITEN(LOGIT(R_c)) (module docstring); RM names are configurable."""
    _check(scores, [helpfulness, safety])
    if is_safety.shape != scores[safety].shape:
        raise ValueError(
            f"is_safety {tuple(is_safety.shape)} must match scores {tuple(scores[safety].shape)}"
        )
    use_safety = llama2_uses_safety(scores[safety], is_safety, threshold)  # (B,)
    out = torch.where(use_safety, scores[safety], scores[helpfulness])  # = LOGIT(R_c)
    return batch_whiten(out) if whiten else out


COMBINERS: dict[str, Callable[..., torch.Tensor]] = {
    "single": combine_single,
    "weighted-sum": combine_weighted_sum,
    "llama2": combine_llama2,
}


def make_combiner(name: str, **options: object) -> Combiner:
    """The combiner `name` with its keyword options bound, e.g. make_combiner("llama2", threshold=0.2).

    Unknown names and options raise ValueError naming them.
    """
    if name not in COMBINERS:
        raise ValueError(f"unknown combiner {name!r}; use one of {sorted(COMBINERS)}")
    fn = COMBINERS[name]
    known = set(fn.__kwdefaults__ or {})
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"combiner {name!r} takes options {sorted(known)}, not {unknown}")
    return functools.partial(fn, **options)


def split_whitening(name: str, **options: object) -> tuple[Combiner, bool]:
    """(the combiner `name` with its options but WITHOUT batch whitening, whether it
    whitens): `batch_whiten(c(s, t)) if whitens else c(s, t)` is exactly
    `make_combiner(name, **options)(s, t)`. For callers that also need the combined score
    before whitening (PPO logs it: the whitened one has mean 0 every batch)."""
    make_combiner(name, **options)  # the same errors for unknown names and options
    whitens = bool(options.get("whiten", (COMBINERS[name].__kwdefaults__ or {}).get("whiten")))
    return make_combiner(name, **{**options, "whiten": False}), whitens
