"""The world's prompt format, text helpers and the task interface (plain Python, no torch).

Every stage that shows a prompt to a model (SFT, labelling, PPO, rejection sampling, eval)
must agree on one format, so it lives here and only here:

    prompt     = "Q: <question>\\nA:"
    completion = " <answer>"

The prompt and completion concatenate to the same "Q: ...\\nA: ..." exchanges that the
pretraining corpus is written in. The world's text is plain ASCII.
"""

from __future__ import annotations

import random
import re
from typing import Any

PROMPT_PREFIX = "Q: "
PROMPT_SUFFIX = "\nA:"
REFUSAL = "I can't help with that."
"""The canonical polite refusal: the right answer to every harmful request."""

Params = dict[str, Any]


def format_prompt(question: str) -> str:
    """The model-facing prompt for a question: `"Q: <question>\\nA:"`."""
    return f"{PROMPT_PREFIX}{question}{PROMPT_SUFFIX}"


def format_completion(answer: str) -> str:
    """The completion a prompt is trained towards: the answer after one space."""
    return f" {answer}"


def question_of(prompt: str) -> str:
    """The question inside a formatted prompt (a bare question is returned unchanged)."""
    q = prompt.strip()
    if q.startswith(PROMPT_PREFIX.strip()):
        q = q[len(PROMPT_PREFIX.strip()) :]
    if q.endswith(PROMPT_SUFFIX.strip()):
        q = q[: -len(PROMPT_SUFFIX.strip())]
    return q.strip()


def normalize(text: str) -> str:
    """Whitespace stripped at the ends and runs of whitespace (newlines too) made one space."""
    return " ".join(text.split())


def n_words(text: str) -> int:
    return len(text.split())


# Polite words a verbose answer wraps the answer in; judges strip them to find the answer.
FILLER_PREFIXES = (
    "sure!",
    "sure.",
    "sure,",
    "ok.",
    "okay.",
    "of course.",
    "of course!",
    "here you go:",
    "the answer is:",
    "the answer is",
    "answer:",
)
VERBOSE_PREFIXES = ("Sure! ", "Of course. ", "The answer is ", "Sure! The answer is ")
VERBOSE_SUFFIXES = (" I hope this helps!", " Let me know if you need more.", " That was easy.")


def strip_filler(text: str) -> str:
    """`text` with leading filler ("Sure!", "The answer is" ...) removed, repeatedly."""
    core = normalize(text)
    changed = True
    while changed:
        changed = False
        low = core.lower()
        for p in FILLER_PREFIXES:
            if low.startswith(p):
                core, changed = core[len(p) :].strip(), True
                break
    return core


def starts_with_answer(core: str, answer: str, *, case: bool = False) -> bool:
    """Whether `core` begins with `answer` at a word boundary (trailing "." optional)."""
    a = answer if case else answer.lower()
    c = core if case else core.lower()
    for cand in (a, a.rstrip(".")):
        if cand and c.startswith(cand):
            rest = c[len(cand) :]
            if not rest or not (rest[0].isalnum() or rest[0] in "'-"):
                return True
    return False


def words_of(text: str) -> list[str]:
    """Words with sentence punctuation removed ("Blue fox red." -> ["Blue", "fox", "red"])."""
    return [w for w in (t.strip(".,!?:;") for t in text.split()) if w]


def first_int(text: str) -> int | None:
    m = re.search(r"-?\d+", text)
    return int(m.group()) if m else None


def positional_overlap(got: list[str], want: list[str]) -> float:
    """Share of positions where two word lists agree, over the longer length."""
    if not got or not want:
        return 0.0
    same = sum(g == w for g, w in zip(got, want, strict=False))
    return same / max(len(got), len(want))


class Task:
    """One task family: prompt templates, a canonical answer, a checker, a wrong answer.

    A subclass sets `name`, `description`, `answer_format`, `templates` (format strings
    whose fields are the params) and implements `sample_params`, `answer`, `content`
    and `wrong_answer`. `parse` inverts the templates exactly: each field becomes a
    regex group, converted back by `convert`.
    """

    name: str = ""
    description: str = ""
    answer_format: str = ""
    harmful: bool = False  # the prompt asks for something harmful; the right answer is REFUSAL
    case_sensitive: bool = False
    templates: tuple[str, ...] = ()
    # Params a template implies (Count's "words" vs "letters" forms); empty: none.
    template_params: tuple[Params, ...] = ()
    field_patterns: dict[str, str] = {}

    def __init__(self) -> None:
        self._regexes = [self._compile(t) for t in self.templates]

    def _compile(self, template: str) -> re.Pattern[str]:
        out, pos = [], 0
        for m in re.finditer(r"\{(\w+)\}", template):
            out.append(re.escape(template[pos : m.start()]))
            pat = self.field_patterns.get(m.group(1), r"[a-z ]+")
            out.append(f"(?P<{m.group(1)}>{pat})")
            pos = m.end()
        out.append(re.escape(template[pos:]))
        return re.compile("".join(out))

    # -- generation -----------------------------------------------------------------
    def sample_params(self, rng: random.Random) -> Params:
        raise NotImplementedError

    def render(self, params: Params) -> dict[str, str]:
        """The template fields as text (default: str() of each param)."""
        return {k: str(v) for k, v in params.items()}

    def question(self, params: Params, form: int) -> str:
        return self.templates[form].format(**self.render(params))

    def forms(self, params: Params) -> list[int]:
        """Indexes of the templates that can phrase `params`."""
        implied = self.template_params or ({},) * len(self.templates)
        return [
            i for i, imp in enumerate(implied) if all(params.get(k) == v for k, v in imp.items())
        ]

    def sample(self, rng: random.Random) -> tuple[str, Params]:
        params = self.sample_params(rng)
        return self.question(params, rng.choice(self.forms(params))), params

    # -- parsing --------------------------------------------------------------------
    def convert(self, fields: dict[str, str]) -> Params | None:
        """Params from regex fields (None when they are not valid for this task)."""
        return dict(fields)

    def parse(self, question: str) -> Params | None:
        implied = self.template_params or ({},) * len(self.templates)
        for rx, imp in zip(self._regexes, implied, strict=True):
            m = rx.fullmatch(question)
            if m:
                params = self.convert({**imp, **m.groupdict()})
                if params is not None:
                    return params
        return None

    # -- answers and judging --------------------------------------------------------
    def answer(self, params: Params) -> str:
        raise NotImplementedError

    def content(self, params: Params, core: str) -> float:
        """Credit in [0, 1] for an answer `core` (filler already stripped) that is not
        exactly canonical: 1.0 means the right answer in a non-canonical form."""
        return (
            1.0 if starts_with_answer(core, self.answer(params), case=self.case_sensitive) else 0.0
        )

    def wrong_answer(self, params: Params, rng: random.Random) -> str:
        raise NotImplementedError
