"""Shared test setup: deterministic, small, offline."""

import json
import os
import random
import subprocess
import sys

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


# --- shared on-disk fixtures of the loop tests --------------------------------------------


@pytest.fixture(scope="session")
def ppo_files(tmp_path_factory, tiny_tokenizer, tiny_texts):
    """A base policy ('test' preset), a reward model from it, world prompts (train / eval)
    and a corpus: the PPO command's tests (tests/loops/ppo/test_loop.py, test_fsdp.py)."""
    import copy

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.reward import init_reward_model
    from rlhfkit.world.generate import WorldSettings, make_prompts, prompt_record
    from tests.helpers import make_base_model, write_jsonl

    root = tmp_path_factory.mktemp("ppo")
    base = make_base_model(root / "base", tiny_tokenizer, preset="test")
    rm, rm_tok = init_reward_model(base, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=1)
    save_hf(rm, rm_tok, root / "rm")
    made = make_prompts(24, WorldSettings(), random.Random(0), set(), unique=True)
    recs = [prompt_record(name, q) for name, q, _ in made]
    return {
        "base": base,
        "rm": root / "rm",
        "prompts": write_jsonl(root / "prompts.jsonl", recs[:16]),
        "eval": write_jsonl(root / "eval.jsonl", recs[16:]),
        "corpus": write_jsonl(root / "corpus.jsonl", [{"text": t} for t in tiny_texts]),
    }


SFT_2PROC_OPTS = ["--epochs", "1", "--lr", "1e-2", "--schedule", "constant", "--warmup-steps", "0",
                  "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="session")
def sft_one_process(tmp_path_factory, tiny_tokenizer):
    """The 1-process `sft` (batch 8, in this process) that the 2-process runs (batch 4 per
    process) are compared with: DDP in tests/models/test_resume.py, FSDP2 in test_fsdp.py.
    Its base model ('test' preset), data (8 records) and `sft` options are theirs too."""
    from rlhfkit import cli
    from tests.helpers import make_base_model, sft_rows, write_jsonl

    root = tmp_path_factory.mktemp("sft_one_process")
    base = make_base_model(root / "base", tiny_tokenizer)
    data = write_jsonl(root / "sft.jsonl", sft_rows(8))
    argv = ["sft", "--model", str(base), "--data", str(data), *SFT_2PROC_OPTS]
    assert cli.main([*argv, "--batch-size", "8", "--out", str(root / "one")]) == 0
    return {"base": base, "data": data, "one": root / "one", "argv": argv}


# --- the pure layers stay pure: imports checked in a fresh interpreter -----------------------

# name: (modules to import, a module that must not be loaded after). Checks that need no torch
# come first: the later ones import torch, which takes seconds per interpreter.
PURE_IMPORTS = {
    "ranking": (["rlhfkit.data.ranking"], "torch"),
    "ops_and_losses": (["rlhfkit.ops.masking", "rlhfkit.ops.logprobs", "rlhfkit.ops.kl",
                        "rlhfkit.ops.advantages", "rlhfkit.losses"], "transformers"),
    "types": (["rlhfkit.types"], "transformers"),
    "combine": (["rlhfkit.scoring.combine"], "transformers"),
}  # fmt: skip

_PROBE = """
import importlib, json, sys
loaded = {}
for name, (modules, forbidden) in json.loads(sys.argv[1]).items():
    before = forbidden in sys.modules  # then this interpreter cannot tell: None
    for module in modules:
        importlib.import_module(module)
    loaded[name] = None if before else forbidden in sys.modules
print(json.dumps(loaded))
"""


def _probe(checks: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(checks)],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def pure_imports() -> dict[str, bool]:
    """For each check of PURE_IMPORTS: is its forbidden module loaded after importing its
    modules in a fresh interpreter? One interpreter runs the checks in turn (an import's
    closure is the same wherever it runs); a check whose forbidden module an earlier check
    had already loaded runs again in an interpreter of its own."""
    loaded = _probe(PURE_IMPORTS)
    for name, value in loaded.items():
        if value is None:
            loaded[name] = _probe({name: PURE_IMPORTS[name]})[name]
    return loaded


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny GPT-2 LM folder with GPT-2's dropout 0.1 (`tests.helpers.gpt2_lm`): the reward
    model tests' dropout and normalisation cases (its final LayerNorm has a bias)."""
    from rlhfkit.models.checkpoint import save_hf
    from tests.helpers import gpt2_lm

    folder = tmp_path_factory.mktemp("gpt2") / "lm"
    save_hf(gpt2_lm(tiny_tokenizer), tiny_tokenizer, folder)
    return folder


@pytest.fixture
def chat_tokenizer(tiny_tokenizer):
    """The tiny tokenizer as a stage that fine-tuned on `messages` saves it."""
    import copy

    from rlhfkit.data.tokenize import mark_trained_on_chat

    tok = copy.deepcopy(tiny_tokenizer)
    mark_trained_on_chat(tok)
    return tok


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory, tiny_tokenizer) -> dict:
    """Two tiny Llama GGUF files (tied and untied output), written with the `gguf` package."""
    from tests.helpers import write_tiny_gguf

    root = tmp_path_factory.mktemp("gguf")
    return {
        "tied": write_tiny_gguf(root / "tied.gguf", tiny_tokenizer, seed=0),
        "untied": write_tiny_gguf(root / "untied.gguf", tiny_tokenizer, seed=1, tied=False),
    }


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny reward model folder (the tiny Llama with a random head, the tiny tokenizer
    and its chat template): the conversational-prompt tests of the scoring commands."""
    import copy

    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model
    from rlhfkit.models.reward import init_reward_model

    folder = tmp_path_factory.mktemp("chat_rm") / "rm"
    lm = build_model("test", tiny_tokenizer, seed=3)
    rm, tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=3)
    save_hf(rm, tok, folder)
    return folder
