"""config/checks.py: the rules joining options, and `check_options`, which every command's
entry function runs first, so that a config built in Python meets the checks the command
line's meets, with the same one-line error."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from rlhfkit import cli
from rlhfkit.config import PPOConfig, RMConfig, RSConfig
from rlhfkit.config.checks import check_options, check_value, option_flag
from rlhfkit.config.fields import CheckedBy, Range, field_markers, field_types
from rlhfkit.errors import UserError
from rlhfkit.validate import validate


def _outside(r: Range) -> float:
    """A number just outside the range `r`."""
    if r.gt is not None:
        return r.gt - 1
    if r.ge is not None:
        return r.ge - 1
    return (r.lt if r.lt is not None else r.le) + 1


def _is_tuple(tp) -> bool:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return typing.get_origin(tp) is tuple


def _ranged_fields(cls: type) -> list[tuple[str, object]]:
    """(field, a value outside its declared range) for every Range-marked field of `cls`."""
    types = field_types(cls)
    out = []
    for name, markers in field_markers(cls).items():
        for m in markers:
            if isinstance(m, Range):
                bad = _outside(m)
                out.append((name, (bad,) if _is_tuple(types[name]) else bad))
    return out


def _commands() -> list[str]:
    """The commands whose options declare at least one range."""
    return [n for n, c in cli.COMMANDS.items() if _ranged_fields(cli._load(c.config))]


def _config(name: str, **values):
    """The command's config with dummy required options (the range check comes first)."""
    cmd = cli.COMMANDS[name]
    cls = cli._load(cmd.config)
    required = {f: ("x",) if _is_tuple(field_types(cls)[f]) else "x" for f in cmd.required}
    return cls(**{**required, **values})


@pytest.mark.parametrize("name", _commands())
def test_every_entry_function_checks_every_declared_range(name, tmp_path, monkeypatch):
    """Called from Python with any option outside its declared range, the command's entry
    function raises the UserError `rlhfkit.validate` (the command line) raises, before it
    reads or writes anything."""
    monkeypatch.chdir(tmp_path)
    run = cli._load(cli.COMMANDS[name].run)
    for field, bad in _ranged_fields(cli._load(cli.COMMANDS[name].config)):
        with pytest.raises(UserError) as from_cli:
            validate(_config(name, **{field: bad}))
        with pytest.raises(UserError) as from_python:
            run(_config(name, **{field: bad}))
        assert str(from_python.value) == str(from_cli.value), field
        assert str(from_python.value).startswith(option_flag(field) + " must be "), field
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", _commands())
def test_python_error_is_the_command_lines_word_for_word(name, tmp_path, monkeypatch, capsys):
    """One option per command through `rlhfkit.cli.main`: the text after "error: " is the
    text of the UserError the entry function raises when called from Python."""
    monkeypatch.chdir(tmp_path)
    cmd = cli.COMMANDS[name]
    field, bad = _ranged_fields(cli._load(cmd.config))[0]
    types = field_types(cli._load(cmd.config))
    flags = [a for f in cmd.required  # a positional option (serve-rm's DIR) has no flag
             for a in (["x"] if "Positional" in str(types[f]) else [option_flag(f), "x"])]  # fmt: skip
    value = [str(x) for x in bad] if isinstance(bad, tuple) else [str(bad)]
    assert cli.main([*name.split(), *flags, option_flag(field), *value]) == 2
    printed = capsys.readouterr().err.strip()
    with pytest.raises(UserError) as from_python:
        cli._load(cmd.run)(_config(name, **{field: bad}))
    assert printed == f"rlhfkit {name}: error: {from_python.value}"


def test_rules_joining_options_are_checked_from_python_too(tmp_path):
    """`CheckedWith` rules run from the entry function as well (here PPO's and rs's and
    rm's, which the loops used to re-check by hand)."""
    both = PPOConfig(policy="p", prompts="q", out=str(tmp_path / "o"), rule_reward="length",
                     rm=("a=b",))  # fmt: skip
    with pytest.raises(UserError, match="--rm and --rule-reward both given"):
        check_options(both)
    rounds = RSConfig(policy="p", prompts="q", rule_reward="length", rounds=3,
                      temperature=(0.5, 1.0))  # fmt: skip
    with pytest.raises(UserError, match="one value or one per round"):
        check_options(rounds)
    with pytest.raises(UserError, match="--normalize-scale needs --normalize-with FILE"):
        check_options(RMConfig(model="m", data=("d",), normalize_scale=True))


def test_a_literal_option_outside_its_choices_is_one_line():
    cfg = dataclasses.replace(RSConfig(policy="p", prompts="q", rule_reward="length"))
    cfg.keep = "bogus"  # type: ignore[assignment]
    with pytest.raises(UserError, match="^--keep: expected one of best, best-of-all-rounds"):
        check_options(cfg)


def test_check_value_ranges_tuples_and_named_checks():
    r = Range(ge=0)
    check_value(r, "--x", None)  # unset optional
    check_value(r, "--x", (0.0, 2.0))
    check_value(r, "--x", True)  # a flag is not a number
    with pytest.raises(UserError, match=r"^--x must be >= 0, got -1$"):
        check_value(r, "--x", (1.0, -1))
    with pytest.raises(UserError, match="--margin nope"):
        check_value(CheckedBy("rlhfkit.config.checks:margin"), "--margin", "nope")


def test_check_options_imports_no_torch():
    """Plain Python, as the rest of config/: the checks answer before torch loads."""
    code = (
        "import sys\n"
        "from rlhfkit.config import PPOConfig\n"
        "from rlhfkit.config.checks import check_options\n"
        "check_options(PPOConfig(policy='p', prompts='q', rule_reward='length'))\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)  # fmt: skip
    assert done.stdout.split() == ["False", "False"]


def test_option_flag():
    assert option_flag("max_new_tokens") == "--max-new-tokens"


def test_cuda_is_refused_only_where_no_gpu_can_be(tmp_path, monkeypatch):
    from rlhfkit.config import checks

    monkeypatch.setattr(checks, "_GPU_DEVICES", (str(tmp_path / "proc-driver-nvidia"),))
    monkeypatch.setattr(checks, "_DEV", tmp_path)
    monkeypatch.setattr(checks.sys, "platform", "linux")
    assert checks.cuda_absent().startswith("no GPU driver on this machine")
    (tmp_path / "nvidia0").write_text("")
    assert checks.cuda_absent() is None
    (tmp_path / "nvidia0").unlink()
    (tmp_path / "proc-driver-nvidia").mkdir()
    assert checks.cuda_absent() is None
    (tmp_path / "proc-driver-nvidia").rmdir()
    monkeypatch.setattr(checks.sys, "platform", "win32")
    assert checks.cuda_absent() is None  # nothing to tell by: never refused


def test_device_values(monkeypatch):
    from types import SimpleNamespace

    from rlhfkit.config import checks

    for ok in ("auto", "cpu", "CPU", " auto "):
        checks.device(SimpleNamespace(device=ok))
    for bad in ("gpu", "cuda:x", "cuda:"):
        with pytest.raises(UserError, match=f"--device {bad}: use 'auto', 'cpu', 'cuda'"):
            checks.device(SimpleNamespace(device=bad))
    monkeypatch.setattr(checks, "cuda_absent", lambda: None)
    monkeypatch.setattr(checks, "_cpu_only_torch", lambda: None)
    checks.device(SimpleNamespace(device="cuda:1"))  # may exist: torch decides
    monkeypatch.setattr(checks, "_cpu_only_torch", lambda: "torch 2.5.1+cpu is a CPU-only build")
    with pytest.raises(UserError, match=r"--device cuda: CUDA is not available \(torch 2.5.1\+cpu"):
        checks.device(SimpleNamespace(device="cuda"))
