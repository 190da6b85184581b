"""Simulated labelling: zero noise follows the judges, strengths follow the gold gaps,
noise flips near-ties but not big gaps."""

from __future__ import annotations

import random

import pytest

from rlhfkit.data.ranking import STRENGTHS as SPEC_STRENGTHS
from rlhfkit.world import REFUSAL, judge, label_samples, strength_of
from rlhfkit.world.label import STRENGTHS, label_with_sampler, noisy_order

ADD = "Q: What is 17 plus 25?\nA:"
HARM = "Q: How do I poison the river?\nA:"
BORDER = "Q: How do I kill a python process?\nA:"

CANNED = {
    ADD: [" 43", " 42", " The answer is 42.", " I can't help with that."],
    HARM: [
        " Mix the poison into the river at night.",
        " " + REFUSAL,
        " 42",
        " Sorry, I can't help with that.",
    ],
    BORDER: [" " + REFUSAL, " Use the kill command.", " Kill it.", " Sure! Use the kill command."],
}


class StubSampler:
    """Returns canned responses: the Sampler protocol without a model."""

    def sample(self, prompts: list[str], k: int) -> list[list[str]]:
        return [CANNED[p][:k] for p in prompts]


def _pairs(rec):
    """Adjacent (better, worse) pairs of a ranking."""
    return list(zip(rec["ranking"], rec["ranking"][1:], strict=False))


def test_strength_names_are_the_spec_ones():
    assert STRENGTHS == tuple(SPEC_STRENGTHS)


@pytest.mark.parametrize(
    ("gap", "want"),
    [(1.0, "significantly_better"), (0.5, "significantly_better"), (0.49, "better"),
     (0.25, "better"), (0.2, "slightly_better"), (0.1, "slightly_better"),
     (0.09, "negligibly_better"), (0.0, "negligibly_better")],
)  # fmt: skip
def test_strength_of(gap, want):
    assert strength_of(gap) == want


def test_strength_thresholds_are_configurable():
    assert strength_of(0.3, (0.9, 0.6, 0.3)) == "slightly_better"


def test_zero_noise_rankings_follow_the_judges_and_strengths_the_gaps():
    prompts = list(CANNED)
    samples, helpful, safe = label_with_sampler(StubSampler(), prompts, 4, noise=0.0)
    assert samples == [CANNED[p] for p in prompts]
    # Every prompt but the harmful one is ranked for helpfulness (Llama 2: adversarial
    # prompts in the safety data only); the harmful one is ranked for safety.
    assert [r["prompt"] for r in helpful] == [p for p in prompts if p != HARM]
    for rec in helpful:
        h = [judge(rec["prompt"], r)["helpfulness"] for r in rec["responses"]]
        assert sorted(rec["ranking"]) == [0, 1, 2, 3]
        got = [h[i] for i in rec["ranking"]]
        assert got == sorted(h, reverse=True)
        for (a, b), s in zip(_pairs(rec), rec["strengths"], strict=True):
            assert s == strength_of(h[a] - h[b])
    add = helpful[0]
    # " 42" (1.0) > " The answer is 42." (0.765) > " 43" (0.27) > refusal (0)
    assert add["ranking"] == [1, 2, 0, 3]
    assert add["strengths"] == ["slightly_better", "better", "better"]  # gaps .235 .495 .27
    # Safety file: harmful and borderline prompts only (safety_mix 0.1 may add ADD).
    by_prompt = {r["prompt"]: r for r in safe}
    assert HARM in by_prompt and BORDER in by_prompt
    harm = by_prompt[HARM]
    assert harm["ranking"][:2] == [1, 3]  # the refusals first, the canonical one best
    assert harm["strengths"][1] == "significantly_better"  # refusal >> not refusing
    border = by_prompt[BORDER]
    assert border["ranking"] == [1, 3, 2, 0]  # right > wordy > near miss > refusal


def test_ties_break_by_index_and_all_equal_prompts_are_skipped():
    same = ["Q: Repeat: red fox\nA:"]
    helpful, safe = label_samples(same, [[" red fox"] * 4], judge, noise=0.0, k=4)
    assert helpful == [] and safe == []
    helpful, _ = label_samples(same, [[" cat", " red fox", " dog", " red fox"]], judge, 0.0)
    assert helpful[0]["ranking"] == [1, 3, 0, 2]
    assert helpful[0]["strengths"] == [
        "negligibly_better",
        "significantly_better",
        "negligibly_better",
    ]


def test_safety_mix_controls_ordinary_prompts_in_the_safety_file():
    prompts = [f"Q: What is {a} plus 1?\nA:" for a in range(40)]
    samples = [[f" {a + 1}", " I can't help with that."] for a in range(40)]
    _, none = label_samples(prompts, samples, judge, 0.0, random.Random(0), safety_mix=0.0)
    _, all_ = label_samples(prompts, samples, judge, 0.0, random.Random(0), safety_mix=1.0)
    assert none == [] and len(all_) == 40
    assert all(r["ranking"] == [0, 1] for r in all_)  # safe either way; the answer is better


def test_noise_flips_near_ties_but_not_big_gaps():
    rng = random.Random(0)
    trials = 2000
    near = sum(noisy_order([0.55, 0.5], 0.5, rng) == [1, 0] for _ in range(trials)) / trials
    far = sum(noisy_order([1.0, 0.0], 0.05, rng) == [1, 0] for _ in range(trials)) / trials
    # Plackett-Luce with Gumbel noise: P(flip) = sigmoid(-gap / noise) = sigmoid(-0.1) = 0.475
    assert 0.42 < near < 0.53
    assert far == 0.0  # sigmoid(-20) ~ 2e-9
    assert all(noisy_order([0.3, 0.3, 0.9], 0.0, rng) == [2, 0, 1] for _ in range(10))


def test_noisy_labels_are_seeded_and_flipped_pairs_are_negligible():
    prompts = [ADD] * 50
    samples = [[" 42", " 43", " 44", " The answer is 42."]] * 50
    a, _ = label_samples(prompts, samples, judge, 1.0, random.Random(7), 4)
    b, _ = label_samples(prompts, samples, judge, 1.0, random.Random(7), 4)
    assert a == b
    assert len({tuple(r["ranking"]) for r in a}) > 1  # the noise does reorder
    h = [judge(ADD, r)["helpfulness"] for r in samples[0]]
    for rec in a:
        for (x, y), s in zip(_pairs(rec), rec["strengths"], strict=True):
            if h[x] <= h[y]:
                assert s == "negligibly_better"


def test_label_samples_checks_its_input():
    with pytest.raises(ValueError, match="expected 4"):
        label_samples([ADD], [[" 42", " 41"]], judge, 0.0, k=4)
    with pytest.raises(ValueError, match="prompts but"):
        label_samples([ADD, ADD], [[" 42", " 41"]], judge, 0.0)
    with pytest.raises(ValueError, match="noise"):
        label_samples([ADD], [[" 42", " 41"]], judge, -1.0)


def test_empty_responses_are_left_out_of_rankings():
    # The policy can end at once (EOS first); ranking records forbid empty responses.
    from rlhfkit.world import format_prompt, label_samples

    p = format_prompt("What is 2 plus 3?")
    helpful, _ = label_samples([p, p], [["5", "", "7", "  "], ["", "5", "", ""]], noise=0.0)
    assert len(helpful) == 1  # the second prompt has one non-empty response: nothing to rank
    assert helpful[0]["responses"] == ["5", "7"] and helpful[0]["ranking"] == [0, 1]
