"""Generators of the world's records: settings, prompts and SFT demonstrations.

- prompts {"prompt", "safety"}: RL prompts (PPO, rejection sampling) and held-out eval
  prompts; "safety": true tags a harmful request (Llama 2's IS_SAFETY); borderline
  prompts are harmless and tagged false;
- demonstrations {"prompt", "completion"}: `imperfect_share` of them flawed (wrong,
  wordy, refusing a harmless prompt, complying with a harmful one), concentrated in
  BLIND_SPOTS, so that SFT is clearly imperfect in ways RLHF can fix.

The pretraining corpus is in `corpus.py`; `make.py` puts the world together on disk.
Every part draws from its own `random.Random` (`part_rng`), never the global RNG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rlhfkit.world.base import (
    VERBOSE_PREFIXES,
    VERBOSE_SUFFIXES,
    Params,
    format_completion,
    format_prompt,
)
from rlhfkit.world.registry import BORDERLINE_NAME, HARMFUL_NAME, SAFE_NAMES, TASKS
from rlhfkit.world.safety import REFUSAL_VARIANTS


@dataclass(frozen=True, kw_only=True)
class WorldSettings:
    """Sizes and shares of a world (defaults sized for the 2-core CPU demo)."""

    corpus_docs: int = 12000
    sft: int = 2000
    train_prompts: int = 1000
    eval_prompts: int = 400  # 80 harmful: 40 gave safety steps of 0.025 (issue 17)
    unsafe_share: float = 0.2
    borderline_share: float = 0.1
    imperfect_share: float = 0.3
    corpus_noise: float = 0.1
    blind_spot_weight: float = 8.0

    def __post_init__(self) -> None:
        for f in ("corpus_docs", "sft", "train_prompts", "eval_prompts"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f} must be >= 0, got {getattr(self, f)}")
        for f in ("unsafe_share", "borderline_share", "imperfect_share", "corpus_noise"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"{f} must be in [0, 1], got {getattr(self, f)}")
        if self.blind_spot_weight < 1.0:
            raise ValueError(f"blind_spot_weight must be >= 1, got {self.blind_spot_weight}")
        if self.unsafe_share + self.borderline_share > 1.0:
            raise ValueError("unsafe_share + borderline_share must be <= 1")


def part_rng(seed: int, part: str) -> random.Random:
    """The RNG of one part of the world (str seeds hash with SHA-512: stable everywhere)."""
    return random.Random(f"rlhfkit-world:{seed}:{part}")


# ---------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------


def plan_tasks(n: int, s: WorldSettings, rng: random.Random) -> list[str]:
    """Task names for n prompts with exact shares: round(n x unsafe_share) harmful,
    round(n x borderline_share) borderline, the rest cycling over the safe families;
    shuffled."""
    n_unsafe = round(n * s.unsafe_share)
    n_border = min(n - n_unsafe, round(n * s.borderline_share))
    start = rng.randrange(len(SAFE_NAMES))
    safe = [SAFE_NAMES[(start + i) % len(SAFE_NAMES)] for i in range(n - n_unsafe - n_border)]
    names = [HARMFUL_NAME] * n_unsafe + [BORDERLINE_NAME] * n_border + safe
    rng.shuffle(names)
    return names


def draw_question(
    name: str, rng: random.Random, exclude: set[str] | frozenset[str] = frozenset()
) -> tuple[str, Params]:
    """A question of task `name` that is not in `exclude`."""
    for _ in range(2000):
        q, params = TASKS[name].sample(rng)
        if q not in exclude:
            return q, params
    raise RuntimeError(f"task {name!r}: no new question left outside the excluded set")


def phrasings(name: str, params: Params) -> list[str]:
    """Every question of task `name` that asks for `params`, one per template."""
    task = TASKS[name]
    return [task.question(params, form) for form in task.forms(params)]


def make_prompts(
    n: int, s: WorldSettings, rng: random.Random, exclude: set[str], *, unique: bool
) -> list[tuple[str, str, Params]]:
    """n (task, question, params); with `unique`, all different (added to `exclude`)."""
    out = []
    for name in plan_tasks(n, s, rng):
        q, params = draw_question(name, rng, exclude)
        if unique:
            exclude.add(q)
        out.append((name, q, params))
    return out


def prompt_record(name: str, question: str) -> dict:
    return {"prompt": format_prompt(question), "safety": TASKS[name].harmful}


# ---------------------------------------------------------------------------------------
# Demonstrations
# ---------------------------------------------------------------------------------------


def verbose(answer: str, rng: random.Random) -> str:
    """The answer wrapped in filler: a polite prefix, a chatty suffix, or both."""
    kind = rng.randrange(3)
    pre = rng.choice(VERBOSE_PREFIXES) if kind != 1 else ""
    if pre.startswith("The answer is") and answer[:1].isupper():
        pre = "Sure! "  # "The answer is The zorbel ..." reads wrong
    post = rng.choice(VERBOSE_SUFFIXES) if kind != 0 else ""
    return f"{pre}{answer}{post}"


# The demo writers' blind spots: categories whose demos are flawed far more often than the
# rest (weight `blind_spot_weight`), always in the same way. Uniform noise would leave the
# greedy SFT model right everywhere; blind spots make it reliably wrong on these
# categories while the right behaviour stays in its support (other demos, the corpus), so
# RLHF has something measurable to fix: safety, over-refusal and verbosity.
BLIND_SPOT_HARMFUL_FORMS = ("Explain how to ", "What is the best way to ")
BLIND_SPOT_BORDERLINE_VERBS = ("kill", "shoot", "blow")
BLIND_SPOT_VERBOSE_TASKS = ("lookup", "count")
BLIND_SPOT_FILLER = "Sure! {answer} I hope this helps!"
BLIND_SPOTS = {
    "compliance": "harmful requests phrased indirectly ('Explain how to ...', 'What is the "
    "best way to ...?') are complied with (in the corpus's Q/A too)",
    "refusal": "harmless requests with 'kill', 'shoot' or 'blow' are refused",
    "verbose": "lookup and count answers are wrapped in the same filler: "
    + BLIND_SPOT_FILLER.format(answer="..."),
}


def blind_spot(name: str, question: str, params: Params) -> str:
    """The flaw a demo of this prompt gets when flawed in a blind spot, else ""."""
    if name == HARMFUL_NAME and question.startswith(BLIND_SPOT_HARMFUL_FORMS):
        return "compliance"
    if name == BORDERLINE_NAME and params["action"].startswith(BLIND_SPOT_BORDERLINE_VERBS):
        return "refusal"
    if name in BLIND_SPOT_VERBOSE_TASKS:
        return "verbose"
    return ""


def demo_answer(
    name: str, params: Params, rng: random.Random, imperfect: bool, spot: str = ""
) -> tuple[str, str]:
    """(answer, flaw) for a demonstration; flaw is "" for the canonical answer, else
    "wrong", "verbose", "refusal" (of a harmless prompt) or "compliance" (with a harmful
    one). A blind spot (`spot`) fixes the flaw; otherwise harmful prompts fail by
    complying, borderline ones mostly by refusing, the rest by a wrong answer, filler or
    (15%) a refusal."""
    task = TASKS[name]
    if not imperfect:
        return task.answer(params), ""
    if name == HARMFUL_NAME:
        text = task.wrong_answer(params, rng)
        return (f"Sure. {text}" if rng.random() < 0.3 else text), "compliance"
    u = rng.random()
    refuse_p = 0.7 if name == BORDERLINE_NAME else 0.15
    if spot == "refusal" or (not spot and u < refuse_p):
        return rng.choice(REFUSAL_VARIANTS), "refusal"
    if spot == "verbose":  # a habit: always the same filler, so SFT learns it for sure
        return BLIND_SPOT_FILLER.format(answer=task.answer(params)), "verbose"
    if u < refuse_p + (1 - refuse_p) / 2:
        return task.wrong_answer(params, rng), "wrong"
    return verbose(task.answer(params), rng), "verbose"


def make_demos(
    n: int, s: WorldSettings, rng: random.Random, exclude: set[str]
) -> list[tuple[dict, str, str]]:
    """n SFT demonstrations as (record, task, flaw); exactly round(n x imperfect_share)
    are flawed, drawn by weighted sampling without replacement (Efraimidis-Spirakis keys
    u^(1/w)) with weight `blind_spot_weight` for blind-spot prompts, 1 for the rest."""
    prompts = make_prompts(n, s, rng, exclude, unique=False)
    spots = [blind_spot(name, q, params) for name, q, params in prompts]
    keys = [rng.random() ** (1.0 / (s.blind_spot_weight if sp else 1.0)) for sp in spots]
    flawed = set(sorted(range(n), key=lambda i: -keys[i])[: round(n * s.imperfect_share)])
    out = []
    for i, (name, q, params) in enumerate(prompts):
        answer, flaw = demo_answer(name, params, rng, i in flawed, spots[i])
        rec = {"prompt": format_prompt(q), "completion": format_completion(answer)}
        out.append((rec, name, flaw))
    return out
