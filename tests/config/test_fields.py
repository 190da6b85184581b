"""config/fields.py: what an option may hold, declared on its type: ranges (in words, in
--help, and checked), the markers read off a config class, and YAML values converted to
the option's type."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

import pytest

from rlhfkit.config import PPOConfig
from rlhfkit.config.fields import (
    CheckedWith,
    DataFile,
    Fraction,
    ModelFolder,
    NonNegative,
    Positive,
    Range,
    UnitInterval,
    coerce,
    describe_type,
    field_markers,
    markers,
)


@pytest.mark.parametrize(
    "r, words, inside, outside",
    [
        (Range(gt=0), "> 0", [1e-9, 5], [0, -1]),
        (Range(ge=0), ">= 0", [0, 3], [-1e-9]),
        (Range(ge=0, lt=1), "in [0, 1)", [0, 0.5], [1, -0.1]),
        (Range(gt=0, le=1), "in (0, 1]", [1, 0.5], [0, 1.5]),
        (Range(le=2.5), "<= 2.5", [2.5, -7], [2.6]),
    ],
)
def test_a_range_in_words_and_which_numbers_it_holds(r, words, inside, outside):
    assert r.describe() == words
    assert all(r.holds(x) and r.problem(x) is None for x in inside)
    for x in outside:
        assert not r.holds(x) and r.problem(x) == f"must be {words}, got {x:g}"
    assert not r.holds(math.nan)  # NaN is in no range
    assert r.hint("0.1") == f"(default: 0.1; {words})"


def test_the_aliases_are_the_ranges_they_name():
    def the_range(alias) -> Range:
        (r,) = [m for m in markers(alias[float]) if isinstance(m, Range)]
        return r

    assert the_range(Positive) == Range(gt=0) and the_range(NonNegative) == Range(ge=0)
    assert the_range(Fraction) == Range(ge=0, lt=1) and the_range(UnitInterval) == Range(ge=0, le=1)


def test_field_markers_of_a_config_class():
    @dataclass
    class Toy:
        lr: Positive[float] = 1.0
        data: Annotated[str, DataFile("sft")] = ""
        plain: int = 0

    found = field_markers(Toy)
    assert set(found) == {"lr", "data"} and found["data"] == (DataFile("sft"),)
    ppo = field_markers(PPOConfig)
    assert CheckedWith("rlhfkit.config.checks:ptx") in ppo["ptx_coef"]
    assert ModelFolder("causal-lm") in ppo["policy"]


def test_types_in_words():
    assert describe_type(int | None) == "an integer or null"
    assert describe_type(tuple[float, ...]) == "a list of numbers"
    assert describe_type(Literal["gae", "rloo"]) == "one of gae, rloo"
    assert describe_type(Fraction[float]) == "a number"


@pytest.mark.parametrize(
    ("tp", "value", "expected"),
    [
        (float, "1e-4", 1e-4),
        (float, 3, 3.0),
        (int, "12", 12),
        (int, 2.0, 2),
        (int, "1e3", 1000),
        (bool, "yes", True),
        (bool, "False", False),
        (str, 80, "80"),
        (int | None, None, None),
        (int | None, "4", 4),
        (tuple[str, ...], "a.jsonl", ("a.jsonl",)),
        (tuple[str, ...], None, ()),
        (tuple[float, ...], ["0.7", 1], (0.7, 1.0)),
        (tuple[float, float], [1, 2], (1.0, 2.0)),
        (Literal["a", "b"], "b", "b"),
    ],
)
def test_yaml_values_become_the_option_type(tp, value, expected):
    got = coerce(tp, value)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("tp", "value", "message"),
    [
        (int, "three", "expected an integer, got 'three'"),
        (int, 1.5, "expected an integer, got 1.5"),
        (int, True, "expected an integer, got True"),
        (float, [1, 2], "expected a number, got [1, 2]"),
        (float, None, "expected a number, got None"),
        (str, ["a"], "expected a string, got ['a']"),
        (bool, "maybe", "expected true or false, got 'maybe'"),
        (float | None, "x", "expected a number or null, got 'x'"),
        (tuple[float, float], [1], "expected a list of 2 numbers, got [1]"),
        (tuple[float, ...], ["a"], "expected a list of numbers, got 'a'"),
        (Literal["a", "b"], "c", "expected one of a, b, got 'c'"),
    ],
)
def test_yaml_values_that_do_not_convert_say_what_was_expected(tp, value, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        coerce(tp, value)


def test_ranges_describe_themselves_and_refuse_nan():
    assert Range(gt=0).describe() == "> 0"
    assert Range(ge=0, lt=1).describe() == "in [0, 1)"
    assert Range(gt=0, le=1).describe() == "in (0, 1]"
    assert Range(ge=2).problem(1) == "must be >= 2, got 1"
    assert Range(gt=0).problem(float("nan")) == "must be > 0, got nan"
    assert Range(ge=0, le=1).problem(1.0) is None
