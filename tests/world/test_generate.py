"""World generators: deterministic per seed, disjoint eval prompts, shares as configured."""

from __future__ import annotations

import json
import random
import re
from statistics import fmean

import pytest

from rlhfkit.world import REFUSAL, TASKS, judge, make_world, parse_prompt, question_of
from rlhfkit.world.generate import WorldSettings, blind_spot, part_rng, plan_tasks
from rlhfkit.world.make import WORLD_FILES, build_world

SMALL = {"corpus_docs": 300, "sft": 400, "train_prompts": 300, "eval_prompts": 150}


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


@pytest.mark.parametrize(("unsafe", "border"), [(0.2, 0.1), (0.0, 0.0), (0.5, 0.25)])
def test_safety_share_is_as_configured(unsafe, border):
    s = WorldSettings(unsafe_share=unsafe, borderline_share=border)
    for n in (200, 1000, 37):
        names = plan_tasks(n, s, part_rng(0, "t"))
        assert abs(names.count("harmful") / n - unsafe) <= 0.5 / n + 1e-9
        assert abs(names.count("howto") / n - border) <= 0.5 / n + 1e-9
        safe = [x for x in names if x not in ("harmful", "howto")]
        counts = [safe.count(t) for t in set(safe)]
        assert not counts or max(counts) - min(counts) <= 1  # families balanced


def test_world_file_shares(world):
    out, info = world
    for name in ("train", "eval"):
        recs = _read(out / f"prompts_{name}.jsonl")
        assert fmean(r["safety"] for r in recs) == pytest.approx(0.2, abs=0.01)
    assert info["files"]["sft.jsonl"]["imperfect"] == round(0.3 * SMALL["sft"])


@pytest.mark.parametrize("share", [0.0, 0.3, 0.6])
def test_imperfect_demos_share_and_they_score_lower(share):
    w = build_world(5, WorldSettings(**{**SMALL, "imperfect_share": share}))
    demos = w["demos"]
    flawed = [(r, n, f) for r, n, f in demos if f]
    assert len(flawed) == round(share * len(demos))
    good = [judge(r["prompt"], r["completion"]) for r, _, f in demos if not f]
    assert all(s["correct"] and s["safety"] == 1.0 for s in good)
    assert all(s["helpfulness"] == (0.5 if s["task"] == "harmful" else 1.0) for s in good)
    for r, name, flaw in flawed:
        s = judge(r["prompt"], r["completion"])
        best = 0.5 if name == "harmful" else 1.0
        assert s["helpfulness"] < best or s["safety"] < 1.0, (r, flaw)
        if flaw == "compliance":
            assert name == "harmful" and s["safety"] == 0.0
        if flaw == "refusal":
            assert name != "harmful" and s["refusal"] and s["helpfulness"] == 0.0
    if flawed:
        kinds = {f for _, _, f in flawed}
        assert kinds == {"wrong", "verbose", "refusal", "compliance"}
        assert fmean(judge(r["prompt"], r["completion"])["helpfulness"] for r, _, _ in flawed) < 0.5


def test_corpus_teaches_the_language():
    w = build_world(0, WorldSettings(corpus_docs=400, sft=0, train_prompts=0, eval_prompts=0))
    text = "\n".join(w["corpus"])
    assert text.isascii()
    assert "\nA: " in text and text.count("Q: ") > 500
    assert REFUSAL in text
    assert "The zorbel is" in text  # facts in statement form
    assert re.search(r"^To [a-z].*: [a-z]", text, re.M)  # borderline tips


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unsafe_share"):
        WorldSettings(unsafe_share=1.5)
    with pytest.raises(ValueError, match="sft"):
        WorldSettings(sft=-1)
    with pytest.raises(ValueError, match="<= 1"):
        WorldSettings(unsafe_share=0.7, borderline_share=0.4)


def test_flaws_concentrate_in_the_blind_spots():
    w = build_world(0, WorldSettings(corpus_docs=0, sft=4000, train_prompts=0, eval_prompts=0))
    rows = [(blind_spot(n, question_of(r["prompt"]), parse_prompt(r["prompt"])[1]), f)
            for r, n, f in w["demos"]]  # fmt: skip
    spot = [f for sp, f in rows if sp]
    rest = [f for sp, f in rows if not sp]
    spot_rate = sum(bool(f) for f in spot) / len(spot)
    rest_rate = sum(bool(f) for f in rest) / len(rest)
    assert spot_rate > 0.6 and rest_rate < 0.25
    assert all(f == sp for sp, f in rows if sp and f)  # a blind spot fails its own way
    # uniform flaws with weight 1
    w = build_world(0, WorldSettings(corpus_docs=0, sft=4000, train_prompts=0, eval_prompts=0,
                                     blind_spot_weight=1.0))  # fmt: skip
    flaws = [(blind_spot(n, question_of(r["prompt"]), parse_prompt(r["prompt"])[1]), f)
             for r, n, f in w["demos"]]  # fmt: skip
    spot_rate = fmean(bool(f) for sp, f in flaws if sp)
    assert abs(spot_rate - 0.3) < 0.06


def test_the_corpus_shares_the_compliance_blind_spot():
    """World v4 (issue 17): the corpus complies with harmful requests in the blind spot's
    forms at corpus_noise x blind_spot_weight (0.8) and with the others at corpus_noise
    (0.1), counted here independently of the generator from the Q/A exchanges it wrote."""
    from rlhfkit.world.safety import has_harm, is_refusal

    s = WorldSettings(corpus_docs=3000, sft=0, train_prompts=0, eval_prompts=0)
    counts = {True: [0, 0], False: [0, 0]}  # in the blind spot -> [complied, all]
    for doc in build_world(1, s)["corpus"]:
        for block in doc.split("\n\n"):  # Q/A documents: exchanges split by blank lines
            m = re.fullmatch(r"Q: (.*)\nA: (.*)", block)
            if m is None or parse_prompt(f"Q: {m[1]}\nA:")[0] != "harmful":
                continue
            spot = m[1].startswith(("Explain how to ", "What is the best way to "))
            counts[spot][0] += has_harm(m[2]) and not is_refusal(m[2])
            counts[spot][1] += 1
    spot_rate, rest_rate = (counts[k][0] / counts[k][1] for k in (True, False))
    assert counts[True][1] > 400 and counts[False][1] > 600
    assert abs(spot_rate - 0.8) < 0.05 and abs(rest_rate - 0.1) < 0.04, (spot_rate, rest_rate)


def test_the_default_world_holds_out_80_harmful_prompts_of_840():
    """Issue 17: 40 harmful eval prompts gave safety steps of 0.025 and used nearly all
    of the 210 harmful questions the world had; now 80 of 840, and the CLI's defaults
    are WorldSettings' (one source of truth)."""
    from rlhfkit.config.world import WorldMakeConfig
    from rlhfkit.world.safety import ACTION_TEMPLATES, HARMFUL_ACTIONS

    questions = {t.format(action=a) for t in ACTION_TEMPLATES for a in HARMFUL_ACTIONS}
    assert len(questions) == 840
    s = WorldSettings()
    fields = WorldMakeConfig.__dataclass_fields__
    for f in WorldSettings.__dataclass_fields__:
        assert fields[f].default == getattr(s, f), f
    names = plan_tasks(s.eval_prompts, s, random.Random(0))
    assert names.count("harmful") == 80
