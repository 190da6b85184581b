"""The world's safe task families: prompt templates, canonical answers, checkers.

Every family keeps answers short (a number, a few words, one short sentence) and draws
its words from a small closed vocabulary, so a ~1M-parameter model can learn the
language in minutes. Each class docstring states the canonical answer and the partial
credit its checker gives; `judges.py` turns that credit into helpfulness.
"""

from __future__ import annotations

from rlhfkit.world.base import (
    Task,
    first_int,
    positional_overlap,
    starts_with_answer,
    words_of,
)
from rlhfkit.world.vocab import (
    COLOURS,
    ENTITIES,
    FACTS,
    FOODS,
    HOMES,
    WORDS,
    fact_sentence,
)


def _words_param(text: str, lo: int, hi: int) -> list[str] | None:
    ws = text.split(" ")
    return ws if lo <= len(ws) <= hi and all(w in WORDS for w in ws) else None


def _int_in(text: str, lo: int, hi: int) -> int | None:
    if text != str(int(text)):  # no leading zeros: keeps parse exact
        return None
    v = int(text)
    return v if lo <= v <= hi else None


def _near_miss(got: int | None, want: int) -> float:
    if got is None:
        return 0.0
    return {0: 1.0, 1: 0.3, 2: 0.15}.get(abs(got - want), 0.0)


class Add(Task):
    """Add two numbers 0..50. Answer: the sum in digits ("42").
    Credit: first integer right 1.0; off by one 0.3, by two 0.15; else 0."""

    name = "add"
    description = "add two numbers from 0 to 50"
    answer_format = "the sum in digits, e.g. 42"
    templates = (
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "What is the sum of {a} and {b}?",
        "Compute {a} + {b}.",
    )
    field_patterns = {"a": r"\d+", "b": r"\d+"}

    def sample_params(self, rng):
        return {"a": rng.randint(0, 50), "b": rng.randint(0, 50)}

    def convert(self, f):
        a, b = _int_in(f["a"], 0, 50), _int_in(f["b"], 0, 50)
        return None if a is None or b is None else {"a": a, "b": b}

    def answer(self, p):
        return str(p["a"] + p["b"])

    def content(self, p, core):
        return _near_miss(first_int(core), p["a"] + p["b"])

    def wrong_answer(self, p, rng):
        s = p["a"] + p["b"]
        return str(rng.choice([v for v in range(max(0, s - 10), s + 11) if v != s]))


class Compare(Task):
    """Pick the larger of two different numbers 0..99. Answer: that number ("71").
    Credit: first integer is the larger 1.0; else 0."""

    name = "compare"
    description = "pick the larger of two numbers from 0 to 99"
    answer_format = "the larger number in digits, e.g. 71"
    templates = (
        "Which is larger, {a} or {b}?",
        "Which number is bigger: {a} or {b}?",
        "Pick the larger number: {a} or {b}.",
    )
    field_patterns = {"a": r"\d+", "b": r"\d+"}

    def sample_params(self, rng):
        a, b = rng.sample(range(100), 2)
        return {"a": a, "b": b}

    def convert(self, f):
        a, b = _int_in(f["a"], 0, 99), _int_in(f["b"], 0, 99)
        return None if a is None or b is None or a == b else {"a": a, "b": b}

    def answer(self, p):
        return str(max(p["a"], p["b"]))

    def content(self, p, core):
        return 1.0 if first_int(core) == max(p["a"], p["b"]) else 0.0

    def wrong_answer(self, p, rng):
        return str(min(p["a"], p["b"]))


class _WordListTask(Task):
    lo, hi = 2, 4
    field_patterns = {"words": r"[a-z]+(?: [a-z]+)*"}

    def sample_params(self, rng):
        return {"words": rng.sample(WORDS, rng.randint(self.lo, self.hi))}

    def render(self, p):
        return {"words": " ".join(p["words"])}

    def convert(self, f):
        ws = _words_param(f["words"], self.lo, self.hi)
        return None if ws is None else {"words": ws}

    def target(self, p) -> list[str]:
        raise NotImplementedError

    def answer(self, p):
        return " ".join(self.target(p))

    def content(self, p, core):
        if starts_with_answer(core, self.answer(p)):
            return 1.0
        return 0.5 * positional_overlap([w.lower() for w in words_of(core)], self.target(p))


class Copy(_WordListTask):
    """Repeat 2-4 words. Answer: the same words ("red fox blue").
    Credit: words right 1.0; else 0.5 x share of positions right."""

    name = "copy"
    description = "repeat a few words"
    answer_format = "the same words, lower case, e.g. red fox blue"
    templates = ("Repeat: {words}", "Say back: {words}", "Copy these words: {words}")

    def target(self, p):
        return list(p["words"])

    def wrong_answer(self, p, rng):
        ws = list(p["words"])
        if rng.random() < 0.5:
            del ws[rng.randrange(len(ws))]
        else:
            i = rng.randrange(len(ws))
            ws[i] = rng.choice([w for w in WORDS if w not in ws])
        return " ".join(ws)


class Reverse(_WordListTask):
    """Reverse the order of 2-4 different words. Answer: the words backwards
    ("blue fox red"). Credit: words right 1.0; else 0.5 x share of positions right."""

    name = "reverse"
    description = "reverse the order of a few words"
    answer_format = "the words in reverse order, e.g. blue fox red"
    templates = (
        "Reverse the words: {words}",
        "Say these words backwards: {words}",
        "Reverse the order of: {words}",
    )

    def target(self, p):
        return list(reversed(p["words"]))

    def wrong_answer(self, p, rng):
        ws = list(p["words"])
        if len(ws) > 2 and rng.random() < 0.5:
            ws = self.target(p)
            i = rng.randrange(len(ws) - 1)
            ws[i], ws[i + 1] = ws[i + 1], ws[i]
            if ws == self.target(p):
                ws = list(p["words"])
        return " ".join(ws)  # the words unreversed: they are all different, so it is wrong


class Sort(Task):
    """Sort 3-5 different numbers 0..99 ascending. Answer: space-separated ("3 7 19").
    Credit: right order 1.0; else 0.5 x share of positions right."""

    name = "sort"
    description = "sort a few numbers from smallest to largest"
    answer_format = "the numbers ascending, space-separated, e.g. 3 7 19"
    templates = (
        "Sort ascending: {nums}",
        "Sort these numbers: {nums}",
        "Put in order from smallest to largest: {nums}",
    )
    field_patterns = {"nums": r"\d+(?: \d+)+"}

    def sample_params(self, rng):
        return {"nums": rng.sample(range(100), rng.randint(3, 5))}

    def render(self, p):
        return {"nums": " ".join(map(str, p["nums"]))}

    def convert(self, f):
        ns = [_int_in(t, 0, 99) for t in f["nums"].split(" ")]
        ok = 3 <= len(ns) <= 5 and None not in ns and len(set(ns)) == len(ns)
        return {"nums": ns} if ok else None

    def answer(self, p):
        return " ".join(map(str, sorted(p["nums"])))

    def content(self, p, core):
        if starts_with_answer(core, self.answer(p)):
            return 1.0
        got = [t for t in words_of(core) if t.isdigit()]
        return 0.5 * positional_overlap(got, self.answer(p).split())

    def wrong_answer(self, p, rng):
        ns = sorted(p["nums"])
        choice = rng.random()
        if choice < 0.4 and list(p["nums"]) != ns:
            ws = list(p["nums"])  # left unsorted
        elif choice < 0.7:
            ws = ns[::-1]  # descending
        else:
            ws = list(ns)
            i = rng.randrange(len(ws) - 1)
            ws[i], ws[i + 1] = ws[i + 1], ws[i]
        return " ".join(map(str, ws))


class Count(Task):
    """Count the words of a 2-6 word list, or the letters of one word. Answer: digits
    ("3"). Credit: first integer right 1.0; off by one 0.3, by two 0.15; else 0."""

    name = "count"
    description = "count the words in a list or the letters in a word"
    answer_format = "the count in digits, e.g. 3"
    templates = (
        "Count the words: {text}",
        "How many words are in this list: {text}?",
        "How many letters are in the word {text}?",
        "Count the letters in {text}.",
    )
    template_params = (
        {"unit": "words"},
        {"unit": "words"},
        {"unit": "letters"},
        {"unit": "letters"},
    )
    field_patterns = {"text": r"[a-z]+(?: [a-z]+)*"}

    def sample_params(self, rng):
        if rng.random() < 0.5:
            return {"unit": "words", "text": " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))}
        return {"unit": "letters", "text": rng.choice(WORDS + ENTITIES)}

    def render(self, p):
        return {"text": p["text"]}

    def convert(self, f):
        text, unit = f["text"], f["unit"]
        if unit == "words":
            ok = _words_param(text, 2, 6) is not None
        else:
            ok = text in WORDS or text in ENTITIES
        return {"unit": unit, "text": text} if ok else None

    def _n(self, p) -> int:
        return len(p["text"].split()) if p["unit"] == "words" else len(p["text"])

    def answer(self, p):
        return str(self._n(p))

    def content(self, p, core):
        return _near_miss(first_int(core), self._n(p))

    def wrong_answer(self, p, rng):
        n = self._n(p)
        return str(n + 1 if n <= 2 or rng.random() < 0.5 else n - 1)


class Uppercase(_WordListTask):
    """Write 1-3 words in capitals. Answer: "RED FOX". Credit: exact case 1.0; right
    words in the wrong case 0.3; else 0.5 x share of exact words in place."""

    name = "uppercase"
    description = "write a few words in capital letters"
    answer_format = "the words in capitals, e.g. RED FOX"
    case_sensitive = True
    lo, hi = 1, 3
    templates = ("Uppercase: {words}", "Write in capitals: {words}", "Make uppercase: {words}")

    def target(self, p):
        return [w.upper() for w in p["words"]]

    def content(self, p, core):
        if starts_with_answer(core, self.answer(p), case=True):
            return 1.0
        if starts_with_answer(core, self.answer(p)):
            return 0.3
        return 0.5 * positional_overlap(words_of(core), self.target(p))

    def wrong_answer(self, p, rng):
        if rng.random() < 0.5:
            return " ".join(p["words"])
        return " ".join(w.capitalize() for w in p["words"])


class Lookup(Task):
    """Recall a fact about a made-up animal (the corpus teaches FACTS). Answer: one
    sentence ("The zorbel is green." / "The zorbel lives in the marsh." / "The zorbel
    eats berries."). Credit: the sentence 1.0; only the value ("green") 0.8; the value
    somewhere in the text 0.5; the sentence with a wrong value 0.1; else 0."""

    name = "lookup"
    description = "recall a fact about a made-up animal (taught by the corpus)"
    answer_format = "one sentence, e.g. The zorbel is green."
    templates = (
        "What colour is the {entity}?",
        "What is the colour of the {entity}?",
        "Where does the {entity} live?",
        "What is the home of the {entity}?",
        "What does the {entity} eat?",
        "What food does the {entity} like?",
    )
    template_params = tuple(
        {"attr": a} for a in ("colour", "colour", "home", "home", "food", "food")
    )
    field_patterns = {"entity": r"[a-z]+"}

    def sample_params(self, rng):
        return {"entity": rng.choice(ENTITIES), "attr": rng.choice(("colour", "home", "food"))}

    def render(self, p):
        return {"entity": p["entity"]}

    def convert(self, f):
        return dict(f) if f["entity"] in FACTS else None

    def answer(self, p):
        return fact_sentence(p["entity"], p["attr"])

    def content(self, p, core):
        if starts_with_answer(core, self.answer(p)):
            return 1.0
        value = FACTS[p["entity"]][p["attr"]]
        got = [w.lower() for w in words_of(core)]
        if got == [value]:
            return 0.8
        if value in got:
            return 0.5
        stem = self.answer(p).rsplit(" ", 1)[0].lower()  # "the zorbel lives in the"
        return 0.1 if core.lower().startswith(stem + " ") else 0.0

    def wrong_answer(self, p, rng):
        pool = {"colour": COLOURS, "home": HOMES, "food": FOODS}[p["attr"]]
        value = rng.choice([v for v in pool if v != FACTS[p["entity"]][p["attr"]]])
        return fact_sentence(p["entity"], p["attr"], value)


SAFE_TASKS: tuple[Task, ...] = (
    Add(),
    Compare(),
    Copy(),
    Reverse(),
    Sort(),
    Count(),
    Uppercase(),
    Lookup(),
)
