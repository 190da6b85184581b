"""A saved reward model scores in plain transformers what it scores in rlhfkit: its
tokenizer's default encoding adds the BOS / EOS rlhfkit adds (`set_scoring_template`), so
`pipeline("text-classification")` on prompt + response gives `rlhfkit score`'s numbers.
Checked on a Llama-shaped model (a BOS of its own) and a GPT-2-shaped one (BOS is EOS: no
BOS is added, only EOS)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from tests.helpers import gpt2_lm, make_base_model, write_jsonl
from transformers import AutoTokenizer, pipeline

from rlhfkit.cli import main
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.scoring.rm import encode_responses

WORDS = ["red", "blue", "big", "small", "on the mat", "under the tree", "not red", "one"]
PAIRS = [
    {
        "prompt": f"Q: is the cat {w}?\nA:",
        "chosen": f" yes, the cat is {w}.",
        "rejected": f" no {w}",
    }
    for w in WORDS
]
# What rlhfkit scores, as `rlhfkit score` reads it.
RECORDS = [{"prompt": p["prompt"], "response": p[k]} for k in ("chosen", "rejected") for p in PAIRS]


def gpt2_tokenizer(tokenizer):
    """The test tokenizer made GPT-2-shaped: BOS and pad are the EOS token."""
    tok = copy.deepcopy(tokenizer)
    tok.bos_token = tok.eos_token
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def lms(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lms")
    gpt2_tok = gpt2_tokenizer(tiny_tokenizer)
    save_hf(gpt2_lm(gpt2_tok), gpt2_tok, root / "gpt2")
    return {"llama": make_base_model(root / "llama", tiny_tokenizer), "gpt2": root / "gpt2"}


def train_rm(lm: Path, tmp: Path, *extra: str) -> Path:
    data = write_jsonl(tmp / "pairs.jsonl", PAIRS)
    out = tmp / "rm"
    args = ["rm", "--model", str(lm), "--data", str(data), "--out", str(out), "--device", "cpu",
            "--batch-size", "4", "--head-init", "normal", "--lr", "1e-3", *extra]  # fmt: skip
    assert main(args) == 0
    return out


def rlhfkit_scores(rm: Path, tmp: Path) -> list[float]:
    data = write_jsonl(tmp / "records.jsonl", RECORDS)
    out = tmp / "scored.jsonl"
    args = ["score", "--rm", str(rm), "--data", str(data), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    return [json.loads(line)["score"] for line in out.read_text().splitlines()]


def pipeline_scores(rm: Path, inputs: list, batch_size: int = 1) -> list[float]:
    classify = pipeline("text-classification", model=str(rm), function_to_apply="none")
    return [out["score"] for out in classify(inputs, batch_size=batch_size)]


def assert_close(a: list[float], b: list[float], tol: float = 1e-5) -> None:
    assert len(a) == len(b)
    worst = max(abs(x - y) for x, y in zip(a, b, strict=True))
    assert worst <= tol, f"scores differ by up to {worst:.3g}"


@pytest.mark.parametrize("shape", ["llama", "gpt2"])
def test_pipeline_scores_equal_rlhfkit_score(shape, lms, tmp_path):
    rm = train_rm(lms[shape], tmp_path)
    ours = rlhfkit_scores(rm, tmp_path)
    assert max(ours) - min(ours) > 0.1  # a head that tells responses apart
    texts = [r["prompt"] + r["response"] for r in RECORDS]
    assert_close(pipeline_scores(rm, texts), ours)
    assert_close(pipeline_scores(rm, texts, batch_size=5), ours)  # padded batches
    pairs = [{"text": r["prompt"], "text_pair": r["response"]} for r in RECORDS]
    assert_close(pipeline_scores(rm, pairs), ours)


@pytest.mark.parametrize("shape", ["llama", "gpt2"])
def test_default_encoding_is_the_scored_sequence(shape, lms, tmp_path):
    rm = train_rm(lms[shape], tmp_path)
    tok = AutoTokenizer.from_pretrained(rm)
    prompts, responses = [r["prompt"] for r in RECORDS], [r["response"] for r in RECORDS]
    scored, _ = encode_responses(tok, prompts, responses, max_len=1024)
    assert tok([p + r for p, r in zip(prompts, responses, strict=True)])["input_ids"] == scored
    assert tok(prompts, responses)["input_ids"] == scored
    first, last = scored[0][0], scored[0][-1]
    assert last == tok.eos_token_id
    if shape == "gpt2":  # BOS is EOS: none is added (data.tokenize's BOS rule)
        assert tok.bos_token_id == tok.eos_token_id and first != tok.bos_token_id
    else:
        assert first == tok.bos_token_id != tok.eos_token_id
    # The epoch checkpoint's tokenizer encodes alike.
    epoch = AutoTokenizer.from_pretrained(rm / "epoch-1")
    assert epoch([p + r for p, r in zip(prompts, responses, strict=True)])["input_ids"] == scored


def test_a_prompt_ending_in_a_space_needs_the_pair_form(lms, tmp_path):
    """Tokenized apart (rlhfkit) or joined, "A: " + "red" splits differently at the seam
    (" " + "red" against " red"): the (prompt, response) pair form gives rlhfkit's sequence
    there too."""
    rm = train_rm(lms["llama"], tmp_path)
    tok = AutoTokenizer.from_pretrained(rm)
    scored, _ = encode_responses(tok, ["Q: is the cat red?\nA: "], ["red"], max_len=1024)
    assert tok("Q: is the cat red?\nA: ", "red")["input_ids"] == scored[0]
    assert tok("Q: is the cat red?\nA: red")["input_ids"] != scored[0]


def test_normalised_rm_scores_alike_in_plain_transformers(lms, tmp_path):
    # GPT-2's final LayerNorm has a bias, so the shift lives in weights transformers loads
    # (Llama's RMSNorm has none: `shift_and_scale_scores` then adds a score.bias that plain
    # transformers drops, a documented limitation of normalisation, not of tokenization).
    demos = write_jsonl(
        tmp_path / "demos.jsonl",
        [{"prompt": p["prompt"], "completion": p["chosen"]} for p in PAIRS],
    )
    rm = train_rm(lms["gpt2"], tmp_path, "--normalize-with", str(demos), "--normalize-scale")
    ours = rlhfkit_scores(rm, tmp_path)
    assert_close(pipeline_scores(rm, [r["prompt"] + r["response"] for r in RECORDS]), ours)
