"""DPO and IPO equal TRL 1.16's DPOTrainer on the same inputs: TRL's own loss computation
(`DPOTrainer._compute_loss`, with its policy and reference forwards) against ours (summed
response log-probs from our packed and padded forwards, `losses.PREFERENCE_LOSSES`), on
sequences our encoder made, and the metrics TRL logs (rewards, margins, accuracies,
log-probs). Skipped, saying why, where trl is not installed (`pip install -e '.[test]'`)."""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="trl is not installed: pip install 'trl==1.16.0'")

from rlhfkit.data.dpo_data import encode_preferences  # noqa: E402
from rlhfkit.data.records import RankingRecord  # noqa: E402
from rlhfkit.distributed import Dist  # noqa: E402
from rlhfkit.loops.dpo_reference import collate, compute_reference, response_logprobs  # noqa: E402
from rlhfkit.losses import PREFERENCE_LOSSES  # noqa: E402
from rlhfkit.models.presets import build_model  # noqa: E402
from rlhfkit.types import IGNORE_INDEX  # noqa: E402

TRL_LOSS = {"dpo": "sigmoid", "ipo": "ipo"}

PAIRS = [  # K = 2: one pair per prompt
    RankingRecord("Say cat", [" the cat sat", " a dog"], [0, 1]),
    RankingRecord("Add one and two", [" three", " one two three four"], [1, 0]),
    RankingRecord("What is red", [" red is a small house", " blue"], [0, 1]),
]
RANKINGS = [  # K = 3: three pairs per prompt, so TRL's mean over pairs is ours over prompts
    RankingRecord("Sort the list", [" one two", " two one", " please sort"], [2, 0, 1]),
    RankingRecord("Copy: big tree", [" big tree", " tree", " big big tree"], [0, 2, 1]),
]


def _trl_rows(examples) -> list[dict]:
    """TRL's tokenized records (prompt_ids, chosen_ids, rejected_ids), one per pair, cut
    where our labels (the response tokens) begin."""
    rows = []
    for ex in examples:
        for w, lo in ex.pairs:
            split = []
            for s in (ex.sequences[w], ex.sequences[lo]):
                start = next(t for t, x in enumerate(s.labels) if x != IGNORE_INDEX)
                assert all(x != IGNORE_INDEX for x in s.labels[start:])  # one response run
                split.append((s.input_ids[:start], s.input_ids[start:]))
            (prompt, chosen), (prompt_l, rejected) = split
            assert prompt == prompt_l
            rows.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    return rows


@pytest.fixture(scope="module")
def roles(tiny_tokenizer):
    """Policy and reference: two different tiny Llamas (so log-ratios are not 0)."""
    return build_model("test", tiny_tokenizer, seed=0).eval(), build_model(
        "test", tiny_tokenizer, seed=1
    ).eval()


def _trl_trainer(policy, reference, tokenizer, loss: str, beta: float, tmp_path):
    import copy

    from datasets import Dataset

    args = trl.DPOConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, beta=beta,
        loss_type=[TRL_LOSS[loss]], max_length=None, disable_dropout=True,
    )  # fmt: skip
    data = Dataset.from_list([{"prompt": "p", "chosen": " a", "rejected": " b"}])
    return trl.DPOTrainer(
        model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=args,
        train_dataset=data, processing_class=copy.deepcopy(tokenizer),
    )  # fmt: skip


@pytest.mark.parametrize(("loss", "beta"), [("dpo", 0.1), ("dpo", 0.7), ("ipo", 0.3)])
@pytest.mark.parametrize("records", [PAIRS, RANKINGS], ids=["pairs", "rankings"])
def test_loss_and_metrics_equal_trl_dpo_trainer(
    roles, tiny_tokenizer, tmp_path, loss, beta, records
):
    policy, reference = roles
    tok = tiny_tokenizer
    examples, _ = encode_preferences(records, tok, max_len=64)
    trainer = _trl_trainer(policy, reference, tok, loss, beta, tmp_path)
    inputs = trainer.data_collator(_trl_rows(examples))
    trainer.model.eval()  # its metrics then go to "eval"
    with torch.no_grad():
        theirs = trainer._compute_loss(trainer.model, inputs, False)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

    dev = torch.device("cpu")
    ref = compute_reference(
        reference, examples, pad_id=tok.pad_token_id, packing=True, max_len=64,
        batch_size=2, bf16=False, dist=Dist(), device=dev,
    )  # fmt: skip
    for packing in (True, False):
        batch = collate(examples, tok.pad_token_id, packing, 64, dev)
        with torch.no_grad():
            logprobs = response_logprobs(policy, batch, bf16=False)
        ours, stats = PREFERENCE_LOSSES[loss](
            logprobs, ref[batch.index], batch.lengths, batch.pairs, beta, batch.pair_prompt
        )
        torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-5)
        for key, trl_key in (
            ("chosen_reward", "rewards/chosen"), ("rejected_reward", "rewards/rejected"),
            ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies"),
            ("chosen_logprob", "logps/chosen"), ("rejected_logprob", "logps/rejected"),
        ):  # fmt: skip
            assert float(stats[key]) == pytest.approx(logged[trl_key], abs=1e-4), key
    assert 0 < logged["rewards/accuracies"] < 1  # a test that could tell them apart
