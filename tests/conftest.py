"""Shared test setup: deterministic, small, offline."""

import os
import random

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One thread per test process: the tiny models gain nothing from more, and subprocess
# tests (torchrun, kill/resume) would otherwise oversubscribe the cores, where OpenMP's
# spinning threads make torch up to 20x slower. RLHFKIT_TEST_THREADS overrides.
os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("RLHFKIT_TEST_THREADS", "1"))


torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True, scope="module")
def _configured_threads():
    """Every test module starts with the configured thread count, whatever a module before
    it did (in-process vLLM, for one, replaces `torch.set_num_threads`)."""
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    yield


# --- models fixtures: a tokenizer trained in-process and a very small Llama ----------------

_WORDS = (
    "the a cat dog bird sat ran on under mat house tree red blue big small and or not "
    "what is add sort reverse copy list number answer please sorry cannot help with that "
    "one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 + - = ? . , !"
).split()


def _synthetic_sentences(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    return out


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    """A few hundred short synthetic English-like sentences (seeded)."""
    return _synthetic_sentences()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_texts):
    """Byte-level BPE (vocab <= 512) with <|bos|>/<|eos|>/<|pad|> and a chat template.

    Session-scoped: do not mutate it (padding_side etc.); copy.deepcopy it if you must.
    """
    from rlhfkit.models.presets import train_tokenizer

    return train_tokenizer(tiny_texts, vocab_size=512)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A fresh, seeded LlamaForCausalLM from the 'test' preset (hidden 32, 2 layers), on CPU."""
    from rlhfkit.models.presets import build_model

    return build_model("test", tiny_tokenizer, seed=0)
