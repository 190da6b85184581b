"""How responses are generated: the one seam between the loops and a decoding engine.

Every place that samples responses (PPO rollouts and evaluation, rejection sampling,
`select`, `eval`, `world label`) builds a `ResponseGenerator` with `make_generator` and
calls `generate`; none of them knows which engine runs. An engine returns a
`types.Generation`: left-padded prompt ids, response ids cut at EOS with their mask, the
sampling log-probs over the full vocabulary, whether each row ended, and the texts.

Engines:
- "hf": our decoding path (`models.generate.sample`): a KV-cached loop over any Hugging
  Face causal LM, with a fused fast path for stock Llama. It samples from the live module,
  so `sync_weights` has nothing to do; a sharded (FSDP2) policy is gathered once for the
  whole batch (`models.wrap.generation_context`).
- "vllm": vLLM in this process (`sampling.vllm_engine.VLLMGenerator`, imported only when asked for,
  so this module stays torch-only): it holds its own copy of the weights, so after each
  policy update the loop calls `sync_weights`, which pushes the policy's current weights
  into the running engine in place (merged with LoRA, gathered under FSDP2).
A new engine is one more class and one row of ENGINES; `make_generator` takes the engine's
name, or any object with the `EngineSettings` fields (a command's config). The settings
and the `ResponseGenerator` protocol are in `sampling.settings` (vLLM's engine needs
them without this module).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhfkit.errors import UserError
from rlhfkit.models.generate import decode_responses, sample
from rlhfkit.models.load import autocast_context
from rlhfkit.models.wrap import generation_context
from rlhfkit.sampling.settings import EngineSettings, GenerationSettings, ResponseGenerator
from rlhfkit.types import Generation


class HFGenerator:
    """Our decoding path over the policy module itself (`models.generate.sample`)."""

    exact_logprobs = True  # its log-probs are the training forward's (no second pass needed)

    def __init__(self, model: torch.nn.Module, tokenizer: Any, engine: Any = None) -> None:
        self.model, self.tokenizer = model, tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        settings: GenerationSettings,
        rng: torch.Generator | None = None,
    ) -> Generation:
        with generation_context(self.model), autocast_context(self.device, settings.bf16):
            gen = sample(
                self.model,
                prompt_ids,
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                top_k=settings.top_k,
                top_p=settings.top_p,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                generator=rng,
                stop_at_eos=settings.stop_at_eos,
            )
        gen.texts = decode_responses(self.tokenizer, gen)
        return gen

    def sync_weights(self) -> None:
        """Nothing to do: `generate` runs the live module."""


def _vllm(model: torch.nn.Module, tokenizer: Any, engine: EngineSettings) -> ResponseGenerator:
    from rlhfkit.sampling.vllm_engine import VLLMGenerator  # imports vllm: only when asked for

    return VLLMGenerator(model, tokenizer, engine)


ENGINES: dict[str, Callable[..., ResponseGenerator]] = {"hf": HFGenerator, "vllm": _vllm}


def make_generator(model: torch.nn.Module, tokenizer: Any, engine: Any = "hf") -> ResponseGenerator:
    """The generator for `model` (a plain or wrapped training module); `engine`: a name of
    ENGINES, or a config with the `EngineSettings` fields (`--generator`, `--vllm-*`)."""
    settings = EngineSettings.of(engine)
    if settings.generator not in ENGINES:
        raise UserError(
            f"unknown generator {settings.generator!r}: choose from {', '.join(ENGINES)}"
        )
    return ENGINES[settings.generator](model, tokenizer, settings)
