"""Generators of the world's files: corpus, SFT demonstrations, RL and eval prompts.

`make_world(out_dir, seed)` writes

- `corpus.jsonl`         {"text"}: pretraining documents in the world's language: Q/A
                         exchanges in the prompt format, fact sentences, tips, refusals;
- `sft.jsonl`            {"prompt", "completion"}: demonstrations, `imperfect_share` of
                         them flawed (wrong, wordy, refusing a harmless prompt, complying
                         with a harmful one), concentrated in BLIND_SPOTS, so that SFT is
                         clearly imperfect in ways RLHF can fix;
- `prompts_train.jsonl`  {"prompt", "safety"}: RL prompts (PPO, rejection sampling);
- `prompts_eval.jsonl`   {"prompt", "safety"}: held out, all different, and disjoint
                         from every prompt of sft, train and the corpus's Q/A; a
                         harmful one's action is in no training file in any phrasing;
- `world.json`           tasks, settings, seed, counts, version.

"safety": true tags a harmful request (Llama 2's IS_SAFETY); borderline prompts are
harmless and tagged false. Every part draws from its own `random.Random` seeded by
(seed, part), never the global RNG: the same seed gives byte-identical files, and the
eval prompts do not change when only the training sizes change.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.world.base import (
    PROMPT_PREFIX,
    PROMPT_SUFFIX,
    REFUSAL,
    VERBOSE_PREFIXES,
    VERBOSE_SUFFIXES,
    Params,
    format_completion,
    format_prompt,
)
from rlhfkit.data.world.registry import BORDERLINE_NAME, HARMFUL_NAME, SAFE_NAMES, TASKS
from rlhfkit.data.world.safety import BORDERLINE, REFUSAL_VARIANTS
from rlhfkit.data.world.tasks import ENTITIES, FACTS, WORDS, fact_sentence
from rlhfkit.files import write_json, write_jsonl

# 2: 12 targets per harmful verb (was 6), 400 eval prompts (was 200); 3: 24 targets, harmful
# eval prompts held out by action (in every phrasing), the corpus's safety lines included;
# 4: the corpus's Q/A share the compliance blind spot (corpus_flaw_rate).
WORLD_VERSION = 4
WORLD_FILES = (
    "corpus.jsonl",
    "sft.jsonl",
    "prompts_train.jsonl",
    "prompts_eval.jsonl",
    "world.json",
)


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


# ---------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------


def exchange(question: str, answer: str) -> str:
    """One Q/A exchange, exactly prompt + completion."""
    return format_prompt(question) + format_completion(answer)


def corpus_flaw_rate(name: str, question: str, params: Params, s: WorldSettings) -> float:
    """How often the corpus's answer to this question is flawed: `corpus_noise`, times
    `blind_spot_weight` (at most 1) for harmful requests in the compliance blind spot. The
    web shares the demo writers' blind spot: with the corpus refusing those requests 90%
    of the time, the base model refused every one and SFT's 63% compliant demos could not
    make it reliably unsafe there (world v3, issue 17)."""
    if blind_spot(name, question, params) == "compliance":
        return min(1.0, s.corpus_noise * s.blind_spot_weight)
    return s.corpus_noise


def _qa_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    n = rng.randint(3, 8)
    parts = []
    for name in plan_tasks(n, s, rng):
        q, params = draw_question(name, rng, exclude)
        flawed = rng.random() < corpus_flaw_rate(name, q, params, s)
        parts.append(exchange(q, demo_answer(name, params, rng, flawed)[0]))
    return "\n\n".join(parts)


def _fact_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    lines = []
    for e in rng.sample(ENTITIES, rng.randint(1, 3)):
        attrs = ["colour", "home", "food"]
        rng.shuffle(attrs)
        facts = " ".join(fact_sentence(e, a) for a in attrs)
        intro = rng.choice(("", f"The {e} is a small animal. ", f"Here are facts about the {e}. "))
        lines.append(intro + facts)
    return "\n".join(lines)


def _howto_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    tips = []
    for action in rng.sample(sorted(BORDERLINE), rng.randint(2, 5)):
        ans = BORDERLINE[action]
        tips.append(f"To {action}: {ans[0].lower()}{ans[1:]}")
    intro = rng.choice(
        ("Useful tips.", "Some questions only sound dangerous.", "How to do things.")
    )
    return "\n".join([intro, *tips])


def _statement(rng: random.Random) -> str:
    kind = rng.randrange(7)
    ws = rng.sample(WORDS, rng.randint(2, 4))
    if kind == 0:
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return f"{a} plus {b} is {a + b}."
    if kind == 1:
        a, b = rng.sample(range(100), 2)
        return f"The larger of {a} and {b} is {max(a, b)}."
    if kind == 2:
        return f"Reversed, {' '.join(ws)} is {' '.join(reversed(ws))}."
    if kind == 3:
        ns = rng.sample(range(100), rng.randint(3, 5))
        return f"Sorted, {' '.join(map(str, ns))} is {' '.join(map(str, sorted(ns)))}."
    if kind == 4:
        w = rng.choice(WORDS + ENTITIES)
        return f"The word {w} has {len(w)} letters."
    if kind == 5:
        return f"In capitals, {' '.join(ws)} is {' '.join(ws).upper()}."
    return f"The list {' '.join(ws)} has {len(ws)} words."


def _statement_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    return " ".join(_statement(rng) for _ in range(rng.randint(3, 7)))


def _safety_doc(rng: random.Random, s: WorldSettings, exclude: set[str]) -> str:
    p = TASKS[HARMFUL_NAME].sample_params(rng)
    while not exclude.isdisjoint(phrasings(HARMFUL_NAME, p)):  # never a held-out action
        p = TASKS[HARMFUL_NAME].sample_params(rng)
    action = f"{p['verb']} {p['target']}"
    safe_action = rng.choice(sorted(BORDERLINE))
    lines = [
        f"Some requests are harmful. If someone asks how to {action}, say: {REFUSAL}",
        f"But a request to {safe_action} is fine. Answer it: {BORDERLINE[safe_action]}",
    ]
    q, params = draw_question(HARMFUL_NAME, rng, exclude)
    lines.append(exchange(q, rng.choice(REFUSAL_VARIANTS)))
    rng.shuffle(lines)
    return "\n".join(lines)


CORPUS_DOCS = {  # kind -> (weight, generator)
    "qa": (0.5, _qa_doc),
    "facts": (0.15, _fact_doc),
    "howto": (0.1, _howto_doc),
    "statements": (0.15, _statement_doc),
    "safety": (0.1, _safety_doc),
}


def make_corpus(n: int, s: WorldSettings, rng: random.Random, exclude: set[str]) -> list[str]:
    """n pretraining documents, kinds drawn by CORPUS_DOCS weights."""
    kinds = list(CORPUS_DOCS)
    weights = [CORPUS_DOCS[k][0] for k in kinds]
    return [CORPUS_DOCS[k][1](rng, s, exclude) for k in rng.choices(kinds, weights, k=n)]


# ---------------------------------------------------------------------------------------
# The world on disk
# ---------------------------------------------------------------------------------------


def describe_tasks() -> dict[str, dict]:
    out = {}
    for name, task in TASKS.items():
        q, params = task.sample(random.Random(0))
        out[name] = {
            "description": task.description,
            "answer_format": task.answer_format,
            "safety": task.harmful,
            "borderline": name == BORDERLINE_NAME,
            "example": {
                "prompt": format_prompt(q),
                "completion": format_completion(task.answer(params)),
            },
        }
    return out


def build_world(seed: int, s: WorldSettings) -> dict[str, list]:
    """The world's records in memory: eval first (they reserve their prompts), then the
    training parts, which never use an eval prompt."""
    eval_ = make_prompts(s.eval_prompts, s, part_rng(seed, "eval"), set(), unique=True)
    held_out = {q for _, q, _ in eval_}
    # A held-out harmful request is held out in every phrasing: safety is measured on
    # actions ("poison the well") that no training file asks for or refuses in any words.
    held_out |= {q for name, _, p in eval_ if name == HARMFUL_NAME for q in phrasings(name, p)}
    train = make_prompts(s.train_prompts, s, part_rng(seed, "train"), set(held_out), unique=False)
    demos = make_demos(s.sft, s, part_rng(seed, "sft"), set(held_out))
    corpus = make_corpus(s.corpus_docs, s, part_rng(seed, "corpus"), set(held_out))
    return {"eval": eval_, "train": train, "demos": demos, "corpus": corpus}


def make_world(out_dir: str | Path, seed: int = 0, **settings) -> dict:
    """Write the world's five files into `out_dir` (created) and return world.json's
    content. `settings` are WorldSettings fields. Overwrites existing world files: the
    CLI asks for --overwrite first."""
    s = WorldSettings(**settings)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = build_world(seed, s)
    sizes = {
        "corpus.jsonl": write_jsonl(out / "corpus.jsonl", ({"text": t} for t in w["corpus"])),
        "sft.jsonl": write_jsonl(out / "sft.jsonl", (r for r, _, _ in w["demos"])),
        "prompts_train.jsonl": write_jsonl(
            out / "prompts_train.jsonl", (prompt_record(n, q) for n, q, _ in w["train"])
        ),
        "prompts_eval.jsonl": write_jsonl(
            out / "prompts_eval.jsonl", (prompt_record(n, q) for n, q, _ in w["eval"])
        ),
    }
    flaws = Counter(f for _, _, f in w["demos"] if f)

    def tasks(rows) -> dict[str, int]:
        return dict(sorted(Counter(r[0] for r in rows).items()))

    info = {
        "version": WORLD_VERSION,
        "seed": seed,
        "settings": dataclasses.asdict(s),
        "prompt_format": {
            "prompt": PROMPT_PREFIX + "{question}" + PROMPT_SUFFIX,
            "completion": " {answer}",
        },
        "refusal": REFUSAL,
        "blind_spots": BLIND_SPOTS,
        "tasks": describe_tasks(),
        "facts": FACTS,
        "files": {
            "corpus.jsonl": {"records": len(w["corpus"]), "bytes": sizes["corpus.jsonl"]},
            "sft.jsonl": {
                "records": len(w["demos"]),
                "bytes": sizes["sft.jsonl"],
                "imperfect": sum(flaws.values()),
                "flaws": dict(sorted(flaws.items())),
                "tasks": tasks([(n,) for _, n, _ in w["demos"]]),
            },
            **{
                f"prompts_{k}.jsonl": {
                    "records": len(w[k]),
                    "bytes": sizes[f"prompts_{k}.jsonl"],
                    "unsafe": sum(n == HARMFUL_NAME for n, _, _ in w[k]),
                    "tasks": tasks(w[k]),
                }
                for k in ("train", "eval")
            },
        },
    }
    write_json(out / "world.json", info)
    return info
