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


def test_yaml_unknown_key_names_file_and_key(tmp_path):
    from rlhfkit.config import ConfigError

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: d\nbogus_option: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*bogus_option"):
        cli.parse("pretrain", ["--config", str(cfg_file)])


def test_missing_required_option_exits_nonzero():
    with pytest.raises(SystemExit) as e:
        cli.parse("sft", ["--out", "x"])
    assert e.value.code != 0


def test_saved_config_round_trips_with_tuple_options_and_help(tmp_path, capsys):
    """A config.yaml written by a run (lists for tuple options) loads back, and --help on
    top of it prints (tyro needs tuple defaults for tuple options)."""
    from rlhfkit.config import RSConfig, save_config

    path = tmp_path / "config.yaml"
    save_config(
        RSConfig(out="o", policy="p", prompts="q.jsonl", rm=("a=A",), temperature=(0.5, 1.0)), path
    )
    cfg = cli.parse("rs", ["--config", str(path)])
    assert cfg.rm == ("a=A",) and cfg.temperature == (0.5, 1.0)
    with pytest.raises(SystemExit) as e:
        cli.parse("rs", ["--config", str(path), "--help"])
    assert e.value.code == 0
    assert "--temperature" in capsys.readouterr().out


def test_repeatable_flag_replaces_the_yaml_list(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("policy: p\nprompts: q.jsonl\nout: o\nrm: [a=A, b=B]\n")
    assert cli.parse("rs", ["--config", str(cfg_file)]).rm == ("a=A", "b=B")
    cfg = cli.parse("rs", ["--config", str(cfg_file), "--rm", "c=C", "--rm", "d=D"])
    assert cfg.rm == ("c=C", "d=D")


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_commands_saved_config_loads_back_equal(name, tmp_path):
    """save_config then load_yaml_defaults is the identity, inherited option groups included."""
    from rlhfkit.config import load_yaml_defaults, save_config

    cls = cli._load(cli.COMMANDS[name].config)
    cfg = cls()
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_yaml_defaults(cls, str(path)) == cfg


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
