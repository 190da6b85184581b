"""What an option may hold, declared on the option itself.

An option's type carries its constraint as an `Annotated` marker, e.g.
`lr: Positive[float] = 3e-4` or `policy: CausalLMFolder[str] = ""`. The markers are read in
two places only: `--help` (a range is shown after the default: "(default: 0.0003; > 0)")
and `rlhfkit.validate`, which checks a parsed config before any torch import. A command
that redeclares an inherited option (another default) keeps the same marker.

- `Range` (aliases `Positive`, `NonNegative`, `Fraction`, `UnitInterval`, ...): a number,
  or each number of a tuple; None passes (an unset optional).
- `CheckedBy("module:function")`: the function raises UserError for a bad value (one parser
  per option, e.g. --report-to's).
- `InputPath`: a file or folder the command reads; must exist.
- `DataFile(kind)`: a data file of a kind (`DataKind`: sft, preferences, prompts, ...);
  must exist, and every record must pass its reader's checks (file:line).
- `ModelFolder(kind)`: a Hugging Face model folder of the kind the command needs, read from
  its config.json (`causal-lm`, `reward` or `any`); `named=True` for NAME=DIR values (--rm),
  `runs=True` where a run folder of `epoch-N/` model folders stands for them (select).
- `CheckedWith("module:function")`: a rule joining this option with others; the function
  gets the whole config (--weights names an --rm, --combine llama2 needs two RMs).
- `OutputPath(kind)`: where the command writes: a run folder ('run': the --resume and
  --overwrite rules of `models.run_folder`), another folder or a file.
- `WithinPositions(plus)`: a token count that, with `plus` (another option or a number)
  added, must fit the positions of the causal LMs the command reads; capped, with a note.

`coerce` turns a value read from YAML into the option's type (PyYAML reads `1e-4` as a
string), or says what was expected. This module imports no torch.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union

import tyro

T = TypeVar("T")


# --- Markers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in: any of ge (>=), gt (>), le (<=), lt (<)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        low = (self.ge, "[") if self.ge is not None else (self.gt, "(")
        high = (self.le, "]") if self.le is not None else (self.lt, ")")
        if low[0] is not None and high[0] is not None:
            return f"in {low[1]}{_num(low[0])}, {_num(high[0])}{high[1]}"
        if low[0] is not None:
            return f"{'>=' if self.ge is not None else '>'} {_num(low[0])}"
        return f"{'<=' if self.le is not None else '<'} {_num(high[0])}"

    def holds(self, x: float) -> bool:
        """Whether `x` is in the range (NaN never is)."""
        return (
            (self.ge is None or x >= self.ge)
            and (self.gt is None or x > self.gt)
            and (self.le is None or x <= self.le)
            and (self.lt is None or x < self.lt)
        )

    def problem(self, x: float) -> str | None:
        """What is wrong with `x` ("must be > 0, got -1"), or None if it is in the range."""
        return None if self.holds(x) else f"must be {self.describe()}, got {_num(x)}"

    def hint(self, default: str) -> str:
        """The --help suffix: the default, then the range."""
        return f"(default: {default}; {self.describe()})"


def _num(x: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5", 1e-05 -> "1e-05"."""
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class CheckedBy:
    """The option is checked by `module:function(value)`, which raises UserError if bad."""

    function: str


@dataclass(frozen=True)
class InputPath:
    """A file or folder the command reads: it must exist."""


DataKind = Literal[
    "sft",
    "preferences",
    "prompts",
    "world-prompts",
    "corpus",
    "scoring",
    "world-responses",
    "normalize",
]
"""What a `DataFile` may hold; `rlhfkit.validate.DATA_READERS` names each kind's reader."""


@dataclass(frozen=True)
class DataFile(InputPath):
    """A data file the command reads, of a `DataKind`: it must exist and every record must
    pass the checks of its reader (`data.records`, `data.preferences`), before torch is
    imported. What needs the tokenizer (lengths, chat templates) is checked later."""

    kind: DataKind
    when: str | None = None
    """Read only where this other option is set (non-zero): ppo reads --ptx-data only with
    --ptx-coef > 0, and a large corpus is not read for nothing."""


@dataclass(frozen=True)
class ModelFolder:
    """A Hugging Face model folder of the given kind (what its config.json declares)."""

    kind: Literal["causal-lm", "reward", "any"]
    named: bool = False
    """Values are NAME=DIR (as --rm); a bare DIR is accepted too."""
    runs: bool = False
    """A value may also be a run folder holding `epoch-N/` model folders (select's --checkpoints)."""


@dataclass(frozen=True)
class CheckedWith:
    """The option is checked together with others: `module:function(cfg)` gets the whole
    config and raises UserError if they do not fit (run after every single-option check)."""

    function: str


@dataclass(frozen=True)
class OutputPath:
    """Where the command writes --out: 'run' a run folder (new, reused when it never
    started, --resume or --overwrite: `models.run_folder.check_output_dir`); 'folder' a
    folder (`files` in it are replaced only with --overwrite; a non-empty one must hold
    `owner`, where given); 'file' a file (replaced only with --overwrite)."""

    kind: Literal["run", "folder", "file"]
    files: tuple[str, ...] = ()
    owner: str | None = None


@dataclass(frozen=True)
class WithinPositions:
    """A token count that, with `plus` added (the name of another option, or a number),
    must fit the positions of every causal LM the command reads (config.json's
    max_position_embeddings, n_positions, ...): a larger value is capped to fit, with a
    one-line note."""

    plus: str | int = 0


def _ranged(r: Range) -> Any:
    return Annotated[T, r, tyro.conf.arg(help_behavior_hint=r.hint)]  # type: ignore[valid-type]


Positive = _ranged(Range(gt=0))
"""> 0: learning rates, batch sizes, step counts, lengths."""
NonNegative = _ranged(Range(ge=0))
""">= 0: coefficients, penalties, counts where 0 means off."""
Fraction = _ranged(Range(ge=0, lt=1))
"""In [0, 1): held-out shares, dropout, Adam betas."""
UnitInterval = _ranged(Range(ge=0, le=1))
"""In [0, 1]: shares, discounts, thresholds on a probability."""
PositiveFraction = _ranged(Range(gt=0, le=1))
"""In (0, 1]: nucleus mass."""
AtLeastTwo = _ranged(Range(ge=2))
""">= 2: responses to rank per prompt."""
Port = _ranged(Range(ge=0, le=65535))
"""In [0, 65535]: a TCP port (0: any free one)."""

Input = Annotated[T, InputPath()]
SFTData = Annotated[T, DataFile("sft")]
PreferenceData = Annotated[T, DataFile("preferences")]
PromptData = Annotated[T, DataFile("prompts")]
CorpusData = Annotated[T, DataFile("corpus")]
CausalLMFolder = Annotated[T, ModelFolder("causal-lm")]
RewardFolder = Annotated[T, ModelFolder("reward")]
AnyModelFolder = Annotated[T, ModelFolder("any")]
RewardModels = Annotated[T, ModelFolder("reward", named=True)]


# --- Reading the markers --------------------------------------------------------------

Marker = Range | CheckedBy | InputPath | ModelFolder | CheckedWith | OutputPath | WithinPositions
_MARKERS = (Range, CheckedBy, InputPath, ModelFolder, CheckedWith, OutputPath, WithinPositions)


def field_types(cls: type) -> dict[str, Any]:
    """Each dataclass field's resolved type, with its Annotated markers kept."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def markers(tp: Any) -> tuple[Marker, ...]:
    """The constraint markers on a field type (outermost Annotated; tyro's own are left out)."""
    if typing.get_origin(tp) is not Annotated:
        return ()
    return tuple(m for m in tp.__metadata__ if isinstance(m, _MARKERS))


def field_markers(cls: type) -> dict[str, tuple[Marker, ...]]:
    """The fields of `cls` that carry constraint markers, with those markers."""
    found = {name: markers(tp) for name, tp in field_types(cls).items()}
    return {name: ms for name, ms in found.items() if ms}


# --- YAML values to the option's type -------------------------------------------------

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def coerce(tp: Any, value: Any) -> Any:
    """`value` (as PyYAML read it) converted to type `tp`; ValueError("expected ...") if it
    does not convert cleanly. Strings that spell a number become numbers ("1e-4")."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(arg, value)
            except ValueError:
                continue
        raise ValueError(f"expected {describe_type(tp)}, got {value!r}")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, (int, float)) and str(value) == choice):
                return choice
        raise ValueError(f"expected {describe_type(tp)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, dict):
            raise ValueError(f"expected {describe_type(tp)}, got {value!r}")
        # `data:` with nothing under it is an empty list; a single value, a list of one.
        items = () if value is None else value if isinstance(value, (list, tuple)) else [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_item(args[0], v, tp) for v in items)
        if len(items) != len(args):
            raise ValueError(f"expected {describe_type(tp)}, got {value!r}")
        return tuple(_item(a, v, tp) for a, v in zip(args, items, strict=True))
    if origin is dict or tp is dict:
        if value is None or isinstance(value, dict):
            return value
        raise ValueError(f"expected a mapping of option: value, got {value!r}")
    if tp in (bool, int, float, str):
        converted = _scalar(tp, value)
        if converted is not None:
            return converted
        raise ValueError(f"expected {describe_type(tp)}, got {value!r}")
    return value


def _item(tp: Any, value: Any, whole: Any) -> Any:
    try:
        return coerce(tp, value)
    except ValueError:
        raise ValueError(f"expected {describe_type(whole)}, got {value!r}") from None


def _scalar(tp: type, value: Any) -> Any:
    """`value` as bool, int, float or str, or None where it does not convert cleanly."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        return True if text in _TRUE else False if text in _FALSE else None
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        return None
    if tp is str:
        return str(value)
    try:
        number = float(value) if tp is float else _whole(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number


def _whole(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    x = float(value)
    if not x.is_integer():
        raise ValueError(value)
    return int(x)


def describe_type(tp: Any) -> str:
    """A type in words, for messages: 'a number', 'an integer or null', 'a list of numbers'."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        words = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(
        tp, describe_type(tp)
    )
