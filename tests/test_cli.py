import subprocess
import sys
import time

import pytest

from rlhfkit import __version__, cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*name.split(), "--help"])
    assert e.value.code == 0
    assert "usage: rlhfkit" in capsys.readouterr().out


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, rlhfkit.cli as c; c.main(['--help']); print('torch' in sys.modules)"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # ~0.05 s of work here; the bound only catches a heavy import creeping in, with room
    # for a loaded machine (the torch check below is the exact one).
    assert time.perf_counter() - t0 < 8.0
    assert out.stdout.strip().endswith("False")


def test_yaml_config_then_flags_override(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: d.jsonl\nout: o\nlr: 0.5\nepochs: 7\n")
    cfg = cli.parse("pretrain", ["--config", str(cfg_file), "--lr", "0.25"])
    assert (cfg.data, cfg.out, cfg.lr, cfg.epochs) == ("d.jsonl", "o", 0.25, 7)


def test_missing_required_option_exits_nonzero():
    with pytest.raises(SystemExit) as e:
        cli.parse("sft", ["--out", "x"])
    assert e.value.code != 0


def test_repeatable_flag_replaces_the_yaml_list(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("policy: p\nprompts: q.jsonl\nout: o\nrm: [a=A, b=B]\n")
    assert cli.parse("rs", ["--config", str(cfg_file)]).rm == ("a=A", "b=B")
    cfg = cli.parse("rs", ["--config", str(cfg_file), "--rm", "c=C", "--rm", "d=D"])
    assert cfg.rm == ("c=C", "d=D")


def _help_text(name: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([*name.split(), "--help"])
    return " ".join(capsys.readouterr().out.replace("│", " ").split())


def test_overriding_a_group_default_keeps_the_group_help(capsys):
    """`lr: float = 1e-4` in SFTConfig changes the default only; PPO's docstring replaces the help."""
    assert "--lr FLOAT Peak learning rate. (default: 0.0001; > 0)" in _help_text("sft", capsys)
    ppo = _help_text("ppo", capsys)
    assert "--lr FLOAT Policy learning rate. (default: 1e-05; > 0)" in ppo
    assert "--adam-beta1 FLOAT (default: 0.9; in [0, 1))" in ppo
