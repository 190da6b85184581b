"""Combining reward models: Llama 2's safety/helpfulness rule, single, weighted sum."""

import math

import pytest
import torch

from rlhfkit.scoring.combine import (
    COMBINERS,
    batch_whiten,
    combine_llama2,
    combine_single,
    combine_weighted_sum,
    llama2_uses_safety,
    logit,
    make_combiner,
)


def _raw(p: float) -> float:
    """The raw score (logit) whose sigmoid is p."""
    return math.log(p) - math.log1p(-p)


def test_llama2_each_branch_without_whitening():
    # Four prompts, one per branch of R_c = R_s if IS_SAFETY or R_s < 0.15 else R_h:
    #   0: tagged safety, R_s high          -> R_s   (the tag decides)
    #   1: not tagged, R_s = 0.05 < 0.15    -> R_s   (unsafe answer: safety RM overrides)
    #   2: not tagged, R_s = 0.90           -> R_h
    #   3: tagged safety, R_s low           -> R_s
    r_s = torch.tensor([0.9, 0.05, 0.9, 0.01])
    r_h = torch.tensor([0.2, 0.99, 0.7, 0.8])
    scores = {"safety": logit(r_s), "helpfulness": logit(r_h)}
    tags = torch.tensor([True, False, False, True])
    out = combine_llama2(scores, tags, whiten=False)
    expected = torch.tensor([_raw(0.9), _raw(0.05), _raw(0.7), _raw(0.01)])  # LOGIT(R_c)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert llama2_uses_safety(scores["safety"], tags).tolist() == [True, True, False, True]


def test_llama2_logit_is_the_raw_score_even_when_sigmoid_saturates():
    # sigmoid(40) == 1.0 in float32; a sigmoid -> logit round trip would clamp. We keep 40.
    scores = {"safety": torch.tensor([40.0, -40.0]), "helpfulness": torch.tensor([30.0, 5.0])}
    out = combine_llama2(scores, torch.tensor([True, False]), whiten=False)
    assert out.tolist() == [40.0, -40.0]
    assert torch.isfinite(out).all()


def _score_with_sigmoid_exactly(p: float) -> torch.Tensor:
    """A float32 raw score s with torch.sigmoid(s) == float32(p) exactly."""
    target = torch.tensor(p, dtype=torch.float32)
    s = torch.tensor(_raw(p), dtype=torch.float32)
    for _ in range(64):
        got = torch.sigmoid(s)
        if got == target:
            return s
        s = torch.nextafter(s, torch.tensor(math.inf) if got < target else torch.tensor(-math.inf))
    raise AssertionError("no float32 score with sigmoid exactly p")


def test_llama2_threshold_edge_is_strict():
    # R_s exactly 0.15 is NOT below 0.15: the helpfulness score is used.
    s_edge = _score_with_sigmoid_exactly(0.15)
    below = torch.nextafter(s_edge, torch.tensor(-math.inf))
    assert torch.sigmoid(below) < 0.15
    scores = {"safety": torch.stack([s_edge, below]), "helpfulness": torch.tensor([2.0, 2.0])}
    out = combine_llama2(scores, torch.tensor([False, False]), whiten=False)
    assert out[0].item() == 2.0  # R_h
    assert out[1].item() == below.item()  # R_s
    # a configurable threshold moves the edge
    out = combine_llama2(scores, torch.tensor([False, False]), whiten=False, threshold=0.5)
    assert out.tolist() == scores["safety"].tolist()


def test_llama2_whitens_to_mean_0_std_1():
    g = torch.Generator().manual_seed(0)
    scores = {
        "safety": torch.randn(64, generator=g),
        "helpfulness": 3 + 2 * torch.randn(64, generator=g),
    }
    tags = torch.rand(64, generator=g) < 0.3
    out = combine_llama2(scores, tags)
    assert abs(out.mean().item()) < 1e-5
    assert abs(out.std().item() - 1) < 1e-4  # unbiased std
    # whitening is an affine map of the unwhitened rule: same order
    raw = combine_llama2(scores, tags, whiten=False)
    assert torch.equal(out.argsort(), raw.argsort())


def test_batch_of_one_whitens_to_zero_and_equal_batch_too():
    one = {"safety": torch.tensor([0.3]), "helpfulness": torch.tensor([1.7])}
    assert combine_llama2(one, torch.tensor([False])).tolist() == [0.0]
    assert torch.equal(combine_llama2(one, torch.tensor([False]), whiten=False), one["helpfulness"])
    assert batch_whiten(torch.full((5,), 3.0)).tolist() == [0.0] * 5


def test_single_and_weighted_sum():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, -1.0, 4.0])
    no_tags = torch.zeros(3, dtype=torch.bool)
    assert torch.equal(combine_single({"r": a}, no_tags), a)
    assert torch.equal(combine_single({"a": a, "b": b}, no_tags, rm="b"), b)
    with pytest.raises(ValueError, match="name one"):
        combine_single({"a": a, "b": b}, no_tags)
    torch.testing.assert_close(combine_weighted_sum({"a": a, "b": b}, no_tags), (a + b) / 2)
    w = combine_weighted_sum({"a": a, "b": b}, no_tags, weights={"a": 0.25, "b": 2.0})
    torch.testing.assert_close(w, 0.25 * a + 2.0 * b)
    whitened = combine_single({"r": a}, no_tags, whiten=True)
    torch.testing.assert_close(whitened, torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6, rtol=0)


def test_combiners_do_not_modify_inputs():
    a = torch.tensor([1.0, 2.0])
    scores = {"safety": a.clone(), "helpfulness": a.clone() + 1}
    for name in COMBINERS:
        opts = {"rm": "safety"} if name == "single" else {}
        make_combiner(name, **opts)(scores, torch.tensor([True, False]))
    assert torch.equal(scores["safety"], a) and torch.equal(scores["helpfulness"], a + 1)


def test_make_combiner_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown combiner"):
        make_combiner("max")
    with pytest.raises(ValueError, match="thresh"):
        make_combiner("llama2", thresh=0.2)
    fn = make_combiner("llama2", helpfulness="h", safety="s", whiten=False)
    with pytest.raises(ValueError, match=r"needs reward models \['h'\]"):
        fn({"s": torch.zeros(2), "helpfulness": torch.zeros(2)}, torch.zeros(2, dtype=torch.bool))


def test_logit_is_finite_at_0_and_1():
    out = logit(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.isfinite(out).all() and out[1] == 0


def test_combine_imports_no_transformers(pure_imports):
    assert pure_imports["combine"] is False  # in a fresh interpreter (tests/conftest.py)


@pytest.mark.parametrize(
    ("name", "options"),
    [("llama2", {}), ("llama2", {"whiten": False}), ("single", {"whiten": True}),
     ("weighted-sum", {"whiten": True, "weights": {"a": 0.5, "b": 2.0}}), ("single", {})],
)  # fmt: skip
def test_split_whitening_is_the_combiner_then_its_whitening(name, options):
    from rlhfkit.scoring.combine import split_whitening

    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(6, generator=g) + 3, "b": torch.randn(6, generator=g) - 1}
    if name == "llama2":
        scores = {"helpfulness": scores["a"], "safety": scores["b"]}
    elif name == "single":
        scores = {"a": scores["a"]}
    tags = torch.tensor([True, False, False, True, False, False])
    combiner, whitens = split_whitening(name, **options)
    assert whitens == options.get("whiten", name == "llama2")
    before = combiner(scores, tags)
    after = batch_whiten(before) if whitens else before
    assert torch.equal(after, make_combiner(name, **options)(scores, tags))  # bit for bit
    assert before.mean().abs() > 0.1  # what whitening removes
    with pytest.raises(ValueError, match="takes options"):
        split_whitening(name, bogus=1)
