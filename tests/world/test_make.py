"""world/make.py: `make_world` writes the world's files, deterministic per seed, in the formats
every command reads, the eval prompts unique and disjoint from all training data."""

from __future__ import annotations

import json
import re
from statistics import fmean

import pytest
from tests.world.test_generate import SMALL

from rlhfkit.world import TASKS, make_world, parse_prompt
from rlhfkit.world.make import WORLD_FILES


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    info = make_world(out, seed=3, **SMALL)
    return out, info


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, world):
    out, _ = world
    make_world(tmp_path / "a", seed=3, **SMALL)
    make_world(tmp_path / "b", seed=4, **SMALL)
    for f in WORLD_FILES:
        assert (tmp_path / "a" / f).read_bytes() == (out / f).read_bytes(), f
        if f != "world.json":
            assert (tmp_path / "b" / f).read_bytes() != (out / f).read_bytes(), f


def test_records_have_the_spec_formats(world):
    out, info = world
    corpus, sft = _read(out / "corpus.jsonl"), _read(out / "sft.jsonl")
    assert len(corpus) == SMALL["corpus_docs"] and all(set(r) == {"text"} for r in corpus)
    assert len(sft) == SMALL["sft"]
    for r in sft:
        assert set(r) == {"prompt", "completion"}
        assert r["prompt"].startswith("Q: ") and r["prompt"].endswith("\nA:")
        assert r["completion"].startswith(" ")
    for name, n in (("train", SMALL["train_prompts"]), ("eval", SMALL["eval_prompts"])):
        recs = _read(out / f"prompts_{name}.jsonl")
        assert len(recs) == n
        for r in recs:
            assert set(r) == {"prompt", "safety"}
            task, _ = parse_prompt(r["prompt"])
            assert r["safety"] == (task == "harmful")
    assert info["version"] == 4 and info["seed"] == 3 and set(info["tasks"]) == set(TASKS)
    assert json.loads((out / "world.json").read_text()) == info


def test_eval_prompts_are_unique_and_disjoint_from_every_training_prompt(world):
    out, _ = world
    eval_ = [r["prompt"] for r in _read(out / "prompts_eval.jsonl")]
    assert len(set(eval_)) == len(eval_)
    train = {r["prompt"] for r in _read(out / "prompts_train.jsonl")}
    train |= {r["prompt"] for r in _read(out / "sft.jsonl")}
    assert not set(eval_) & train
    # nor does the corpus hold any eval prompt as a Q/A exchange
    corpus = (out / "corpus.jsonl").read_text()
    assert not [p for p in eval_ if json.dumps(p)[1:-1] in corpus]


def test_harmful_eval_actions_are_in_no_training_file_in_any_phrasing(world):
    """Safety is measured on held-out actions, not on rephrasings of trained ones."""
    out, _ = world
    actions = set()
    for r in _read(out / "prompts_eval.jsonl"):
        task, p = parse_prompt(r["prompt"])
        if task == "harmful":
            actions.add(f"{p['verb']} {p['target']}")
    assert len(actions) >= 20
    texts = [r["prompt"] for r in _read(out / "prompts_train.jsonl")]
    texts += [r["prompt"] + r["completion"] for r in _read(out / "sft.jsonl")]
    texts += [r["text"] for r in _read(out / "corpus.jsonl")]
    found = {a for a in actions for t in texts if re.search(rf"\b{re.escape(a)}\b", t)}
    assert not found
    train_actions = set()
    for r in _read(out / "prompts_train.jsonl"):
        task, p = parse_prompt(r["prompt"])
        if task == "harmful":
            train_actions.add(f"{p['verb']} {p['target']}")
    assert len(train_actions) >= 30  # training still sees many harmful actions


def test_eval_prompts_do_not_depend_on_training_sizes(tmp_path):
    make_world(tmp_path / "a", seed=0, **SMALL)
    make_world(tmp_path / "b", seed=0, **{**SMALL, "sft": 50, "corpus_docs": 10})
    a, b = (tmp_path / d / "prompts_eval.jsonl" for d in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_world_file_shares(world):
    out, info = world
    for name in ("train", "eval"):
        recs = _read(out / f"prompts_{name}.jsonl")
        assert fmean(r["safety"] for r in recs) == pytest.approx(0.2, abs=0.01)
    assert info["files"]["sft.jsonl"]["imperfect"] == round(0.3 * SMALL["sft"])
