"""`rlhfkit rm --normalize-with FILE`: centre a trained RM on reference responses.

InstructGPT normalised its RM "so that the labeler demonstrations achieve a mean score of
0 before doing RL"; the N+ details (Huang et al. 2024) and OpenRLHF normalise to mean 0 /
std 1. After training, the RM scores FILE's responses (e.g. the SFT demonstrations), and
the score is made `(r - mean)` (`--normalize-scale`: `(r - mean) / std`, population std) IN
THE WEIGHTS (`models.reward.shift_and_scale_scores`), so every reader of the saved folder
(`score`, `ppo`, `rs`, `select`, a PPO value model started from it) sees normalised scores
without knowing. The statistics go to `rlhfkit_reward.json` under "normalization".
"""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.data.records import NormalizeData, read_normalize_file  # noqa: F401 (read here too)
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.models.reward import shift_and_scale_scores
from rlhfkit.scoring.rm import score_texts


def normalize_final_rm(
    model: torch.nn.Module,
    tokenizer: Any,
    data: NormalizeData,
    *,
    max_len: int,
    scale: bool,
    batch_size: int,
) -> dict[str, Any]:
    """`rlhfkit rm` step 7: `normalize_reward_model` on the final RM, after the last epoch
    checkpoint (those stay raw, so --resume continues the raw RM), and one line saying so."""
    stats = normalize_reward_model(
        model, tokenizer, data, max_len=max_len, scale=scale, batch_size=batch_size
    )
    what = "mean 0, std 1" if scale else "mean 0"
    rank0_print(
        f"rm: normalised on {stats['n']} responses of {stats['file']} to {what} (raw mean "
        f"{stats['mean']:.4f}, std {stats['std']:.4f}; shift in {stats['shift_in']})"
    )
    return stats


def normalize_reward_model(
    model: torch.nn.Module,
    tokenizer: Any,
    data: NormalizeData,
    *,
    max_len: int,
    scale: bool = False,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Shift (and with `scale`, scale) `model`'s scores so that `data` scores mean 0 (std 1).

    Returns the record for rlhfkit_reward.json: the raw statistics (mean, population std,
    n, file), the affine map applied (score = scale_factor * raw + shift), where the shift
    lives, and the statistics measured again after the change.
    """
    raw = score_texts(
        model, tokenizer, data.prompts, data.responses, max_len=max_len, batch_size=batch_size
    ).double()
    mean, std = float(raw.mean()), float(raw.std(unbiased=False))
    if scale and not std > 0:
        raise UserError(
            f"--normalize-scale: the RM gives every response of {data.file} the same score "
            f"({mean:.4g}): its std is 0, nothing to scale by"
        )
    factor = 1.0 / std if scale else 1.0
    where = shift_and_scale_scores(model, shift=-mean * factor, scale=factor)
    after = score_texts(
        model, tokenizer, data.prompts, data.responses, max_len=max_len, batch_size=batch_size
    ).double()
    return {
        "file": data.file,
        "n": len(data.prompts),
        "mean": mean,
        "std": std,
        "scaled": scale,
        "scale_factor": factor,
        "shift": -mean * factor,
        "shift_in": where,
        "after": {"mean": float(after.mean()), "std": float(after.std(unbiased=False))},
    }
