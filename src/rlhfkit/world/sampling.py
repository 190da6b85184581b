"""The model-backed side of the world: sampling responses to world prompts from a checkpoint.

The only module of the world that touches torch and the models, and only inside
functions, so that the judges and generators stay plain Python. It sits beside the
world (not under `models/`) because it serves `world label` and `eval` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhfkit.data.records import PromptRecord


@dataclass
class ModelSampler:
    """A `Sampler` over a Hugging Face causal LM folder (model + tokenizer).

    Prompts are encoded like SFT encodes them (`rlhfkit.sampling.sample_score.encode_prompts`: a
    string by the BOS policy, no other specials, or as one user turn of the chat template
    for a model in chat format; a conversational `PromptRecord` through the chat template
    with the generation prompt), so the model sees the context it was trained on. `chat`:
    --chat / --no-chat, None = the model's own format (`rlhfkit.data.chat`).
    `temperature` 0 is greedy. Sampling is seeded: the same seed, prompts and batch size
    give the same responses on the same device.
    """

    path: str
    device: str = "auto"
    temperature: float = 1.0
    max_new_tokens: int = 32
    batch_size: int = 32
    seed: int = 0
    max_prompt_len: int = 128
    engine: Any = "hf"  # --generator and --vllm-* (generation.EngineSettings.of)
    chat: bool | None = None

    def __post_init__(self) -> None:
        self._generator = self._tokenizer = self._device = None
        self.last_token_counts: list[list[int]] = []

    def _load(self) -> None:
        if self._generator is not None:
            return
        # Lazy imports here and in `sample`: the world stays importable without torch.
        from rlhfkit.data.chat import resolve_chat
        from rlhfkit.distributed import pick_device
        from rlhfkit.models.load import load_causal_lm, load_tokenizer
        from rlhfkit.sampling.generator import make_generator

        self._device = pick_device(self.device)
        self._tokenizer = load_tokenizer(self.path)
        resolve_chat(self._tokenizer, self.chat, what=self.path)
        model = load_causal_lm(self.path, self._device)
        model.eval()
        self._generator = make_generator(model, self._tokenizer, self.engine)

    def sample(self, prompts: Sequence[PromptRecord | str], k: int) -> list[list[str]]:
        """K responses per prompt (strings or prompt records; decoded text, EOS removed);
        token counts of each response (EOS not counted) are left in `last_token_counts`."""
        import torch

        from rlhfkit.sampling.generator import GenerationSettings
        from rlhfkit.sampling.sample_score import encode_prompts, sample_and_score

        self._load()
        r = sample_and_score(
            self._generator,
            prompts,
            encode_prompts(prompts, self._tokenizer, self.max_prompt_len),
            GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=self.temperature),
            torch.Generator(device=self._device).manual_seed(self.seed),
            n=k,
            batch_size=self.batch_size,
        )
        self.last_token_counts = _chunks(r.tokens, k)
        return _chunks(r.texts, k)


def _chunks(xs: Sequence, k: int) -> list[list]:
    return [list(xs[i : i + k]) for i in range(0, len(xs), k)]
