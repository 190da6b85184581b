"""The built-in world on disk: its five files from one seed.

`make_world(out_dir, seed)` writes

- `corpus.jsonl`         {"text"}: pretraining documents in the world's language: Q/A
                         exchanges in the prompt format, fact sentences, tips, refusals
                         (`corpus.py`);
- `sft.jsonl`            {"prompt", "completion"}: demonstrations, `imperfect_share` of
                         them flawed (wrong, wordy, refusing a harmless prompt, complying
                         with a harmful one), concentrated in BLIND_SPOTS, so that SFT is
                         clearly imperfect in ways RLHF can fix (`generate.py`);
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
from pathlib import Path

from rlhfkit.files import write_json, write_jsonl
from rlhfkit.world.base import (
    PROMPT_PREFIX,
    PROMPT_SUFFIX,
    REFUSAL,
    format_completion,
    format_prompt,
)
from rlhfkit.world.corpus import make_corpus
from rlhfkit.world.generate import (
    BLIND_SPOTS,
    WorldSettings,
    make_demos,
    make_prompts,
    part_rng,
    phrasings,
    prompt_record,
)
from rlhfkit.world.registry import BORDERLINE_NAME, HARMFUL_NAME, TASKS
from rlhfkit.world.vocab import FACTS

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
