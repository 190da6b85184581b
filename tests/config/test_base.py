"""config/base.py: the option groups, and reading and writing configs: YAML read to each option's
type with errors naming the file and option, saved configs loading back equal, --rm and
--weights values."""

from __future__ import annotations

import dataclasses

import pytest

from rlhfkit import cli
from rlhfkit.config import DPOConfig, PretrainConfig, RMConfig, SFTConfig, load_yaml_defaults
from rlhfkit.config.base import ConfigError, TrainOptions, parse_rm_spec, parse_weights
from rlhfkit.errors import UserError


def test_yaml_unknown_key_names_file_and_key(tmp_path):
    from rlhfkit.config import ConfigError

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: d\nbogus_option: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*bogus_option"):
        cli.parse("pretrain", ["--config", str(cfg_file)])


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


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_commands_saved_config_loads_back_equal(name, tmp_path):
    """save_config then load_yaml_defaults is the identity, inherited option groups included."""
    from rlhfkit.config import load_yaml_defaults, save_config

    cls = cli._load(cli.COMMANDS[name].config)
    cfg = cls()
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_yaml_defaults(cls, str(path)) == cfg


def test_yaml_values_take_their_options_types_or_name_file_and_option(tmp_path):
    """PyYAML reads 1e-4 as a string and lists as lists: each becomes its option's type."""
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndata: one.jsonl\nlr: 1e-4\nepochs: '3'\nbf16: yes\n")
    cfg = load_yaml_defaults(SFTConfig, str(path))
    assert (cfg.data, cfg.lr, cfg.epochs, cfg.bf16) == ("one.jsonl", 1e-4, 3, True)
    path.write_text("epochs: 1.5\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: option epochs: expected an integer"):
        load_yaml_defaults(SFTConfig, str(path))
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping of option: value"):
        load_yaml_defaults(SFTConfig, str(path))
    assert load_yaml_defaults(SFTConfig, None) == SFTConfig()


def test_rm_specs_and_weights():
    assert parse_rm_spec("helpfulness = runs/rm") == ("helpfulness", "runs/rm")
    assert parse_rm_spec("runs/rm") == ("reward", "runs/rm")
    with pytest.raises(UserError, match="expected NAME=DIR"):
        parse_rm_spec("=runs/rm")
    assert parse_weights("helpfulness=0.7, safety=0.3") == {"helpfulness": 0.7, "safety": 0.3}
    for bad in ("helpfulness", "=1", "a=x"):
        with pytest.raises(UserError, match="expected NAME=NUMBER"):
            parse_weights(bad)


def test_every_training_command_has_every_group_option():
    """The stages inherit the groups, so their flags stay flat and alike (--lr, --lora-r)."""
    groups = [f.name for f in dataclasses.fields(TrainOptions)]
    for cls in (PretrainConfig, SFTConfig, RMConfig, DPOConfig):
        assert issubclass(cls, TrainOptions)
        assert {f.name for f in dataclasses.fields(cls)} >= set(groups)
