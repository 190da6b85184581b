"""What every generation engine shares: how responses are sampled (`GenerationSettings`),
which engine samples and how it is set up (`EngineSettings`), and the interface an engine
implements (`ResponseGenerator`). The engines themselves are in `sampling.generator`
(ours, HF) and `sampling.vllm_engine`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch

from rlhfkit.types import Generation


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are sampled; the same meaning on every engine."""

    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1 = no nucleus filter
    stop_at_eos: bool = True  # False: exactly max_new_tokens per row (EOS is a token)
    bf16: bool = False  # bf16 autocast where the device supports it

    @classmethod
    def of(cls, settings: Any) -> GenerationSettings:
        """These fields, read by name from a stage's own settings (fields it lacks keep
        their defaults)."""
        names = [f.name for f in fields(cls)]
        return cls(**{n: getattr(settings, n) for n in names if hasattr(settings, n)})


@dataclass(frozen=True)
class EngineSettings:
    """Which engine samples and how it is set up (`config.rl.GeneratorOptions`)."""

    generator: str = "hf"
    vllm_gpu_memory_utilization: float = 0.4
    vllm_dtype: str = "auto"  # auto: the policy's own parameter dtype
    vllm_enforce_eager: bool = False
    vllm_tensor_parallel_size: int = 1

    @classmethod
    def of(cls, source: Any) -> EngineSettings:
        """From an engine name ("hf", "vllm"), or these fields read by name from a config."""
        if isinstance(source, EngineSettings):
            return source
        if isinstance(source, str):
            return cls(generator=source)
        names = [f.name for f in fields(cls)]
        return cls(**{n: getattr(source, n) for n in names if hasattr(source, n)})


class ResponseGenerator(Protocol):
    """Samples responses from a policy's current weights."""

    @property
    def device(self) -> torch.device:
        """Where the returned tensors live (the policy's device)."""
        ...

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        rng: torch.Generator | None = None,
    ) -> Generation:
        """One response per prompt (token ids, not padded); tensors on the policy's device."""
        ...

    def sync_weights(self) -> None:
        """Make the next `generate` sample from the policy's current weights."""
        ...
