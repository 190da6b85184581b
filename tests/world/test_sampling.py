"""world/sampling.py: `ModelSampler` gives K responses per prompt from a model folder, seeded
(the same seed, the same responses), with each response's token count; greedy (temperature
0) gives K copies of the model's one greedy response."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import make_base_model

from rlhfkit.models.generate import sample
from rlhfkit.models.load import load_causal_lm, load_tokenizer
from rlhfkit.sampling.sample_score import encode_prompts
from rlhfkit.world import format_prompt
from rlhfkit.world.sampling import ModelSampler

PROMPTS = [format_prompt("What is 2 plus 3?"), format_prompt("Repeat: red fox")]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_tokenizer):
    return str(make_base_model(tmp_path_factory.mktemp("sampler") / "base", tiny_tokenizer))


def test_k_seeded_samples_per_prompt_with_their_token_counts(base):
    sampler = ModelSampler(base, device="cpu", max_new_tokens=6, seed=3)
    got = sampler.sample(PROMPTS, 3)
    assert [len(r) for r in got] == [3, 3] and all(isinstance(t, str) for r in got for t in r)
    counts = sampler.last_token_counts
    assert [len(c) for c in counts] == [3, 3] and all(0 <= n <= 6 for c in counts for n in c)
    assert ModelSampler(base, device="cpu", max_new_tokens=6, seed=3).sample(PROMPTS, 3) == got


def test_greedy_is_the_models_greedy_response(base):
    got = ModelSampler(base, device="cpu", temperature=0.0, max_new_tokens=5).sample(PROMPTS, 2)
    # independently: models.generate.sample, greedy, on the same encoded prompts
    tok = load_tokenizer(base)
    model = load_causal_lm(base).eval()
    ids = encode_prompts(PROMPTS, tok, 128)
    out = sample(model, ids, max_new_tokens=5, temperature=0.0, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))  # fmt: skip
    want = tok.batch_decode(
        [r[m].tolist() for r, m in zip(out.response_ids, out.response_mask, strict=True)],
        skip_special_tokens=True,
    )
    assert got == [[w, w] for w in want]
