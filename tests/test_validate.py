"""validate.py: the checks of a parsed config before torch loads: token counts capped to the
models' positions, records read once, data files read only where used. (YAML values to
option types and ranges: tests/config/test_fields.py; model folders:
tests/models/test_folders.py; the rules joining options: tests/config/test_checks.py.)"""

from __future__ import annotations

import pytest

from rlhfkit.errors import UserError
from tests.models.test_folders import _lm

# --- Token counts against the models' positions (WithinPositions) -------------------------


def _parsed(name: str, args: list[str]):
    from rlhfkit import cli

    return cli.parse(name, args)


def test_max_new_tokens_beyond_the_positions_is_capped_with_a_note(tmp_path, capsys):
    from rlhfkit.validate import validate

    lm = _lm(tmp_path / "lm", max_position_embeddings=512)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cfg = _parsed(
        "eval", ["--model", str(lm), "--prompts", str(prompts), "--max-new-tokens", "1830"]
    )
    validate(cfg)
    assert cfg.max_new_tokens == 512 - 128
    err = capsys.readouterr().err.strip()
    assert err == (f"note: --max-new-tokens 1830 capped to 384: --model {lm} has 512 positions "
                   "(max_position_embeddings in its config.json) and prompts keep up to 128 tokens")  # fmt: skip
    cfg = _parsed(
        "eval", ["--model", str(lm), "--prompts", str(prompts), "--max-new-tokens", "384"]
    )
    validate(cfg)
    assert cfg.max_new_tokens == 384 and capsys.readouterr().err == ""  # fits: no note
    # ppo and rs: with --max-prompt-len; the fewest positions of policy and reference count
    ref = _lm(tmp_path / "ref", max_position_embeddings=300)
    args = ["--policy", str(lm), "--reference", str(ref), "--prompts", str(prompts),
            "--rule-reward", "length", "--out", str(tmp_path / "o"), "--max-prompt-len", "100",
            "--max-new-tokens", "1000"]  # fmt: skip
    cfg = _parsed("ppo", args)
    validate(cfg)
    assert cfg.max_new_tokens == 200
    assert capsys.readouterr().err.strip() == (
        f"note: --max-new-tokens 1000 capped to 200: --reference {ref} has 300 positions "
        "(max_position_embeddings in its config.json) and prompts keep up to --max-prompt-len "
        "100 tokens"
    )
    with pytest.raises(
        UserError, match="--max-new-tokens 1000: no room for it: .*--max-prompt-len 300"
    ):
        validate(_parsed("ppo", [*args, "--max-prompt-len", "300"]))
    assert not (tmp_path / "o").exists()


def test_max_len_beyond_the_positions_is_capped(tmp_path, capsys):
    from rlhfkit.validate import validate

    lm = _lm(tmp_path / "lm", n_positions=128)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Q", "completion": " A"}\n')
    cfg = _parsed("sft", ["--model", str(lm), "--data", str(data), "--out", str(tmp_path / "o")])
    validate(cfg)
    assert cfg.max_len == 128
    assert f"note: --max-len 256 capped to 128: --model {lm} has 128 positions (n_positions" in (
        capsys.readouterr().err)  # fmt: skip


def test_select_reads_the_positions_of_each_epoch(tmp_path):
    from rlhfkit.validate import validate

    run = tmp_path / "sft"
    run.mkdir()
    _lm(run / "epoch-1", max_position_embeddings=512)
    _lm(run / "epoch-2", max_position_embeddings=160)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    cfg = _parsed("select", ["--checkpoints", str(run), "--prompts", str(prompts),
                             "--rule-reward", "length", "--out", str(tmp_path / "o")])  # fmt: skip
    validate(cfg)
    assert cfg.max_new_tokens == 32  # 128 + 32 = 160: fits
    cfg.max_new_tokens = 40
    validate(cfg)
    assert cfg.max_new_tokens == 32


# --- Records read once: validation hands them to the command ------------------------------


def test_records_validated_are_not_read_again(tmp_path, monkeypatch):
    from rlhfkit.data import rows
    from rlhfkit.data.records import read_sft
    from rlhfkit.validate import validate

    lm = _lm(tmp_path / "lm", max_position_embeddings=512)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "Q", "completion": " A"}\n{"prompt": "R", "completion": " B"}\n')
    validate(
        _parsed("sft", ["--model", str(lm), "--data", str(data), "--out", str(tmp_path / "o")])
    )
    parses = []
    real = rows._parse_all
    monkeypatch.setattr(rows, "_parse_all", lambda *a: parses.append(a) or real(*a))
    first = read_sft(data)
    assert parses == [] and [r.completion for r in first] == [" A", " B"]
    again = read_sft(data)  # one file given twice (--data and --eval-data): read once
    assert parses == [] and again == first and again is not first
    rows.forget_reads()  # the command is over
    assert [r.prompt for r in read_sft(data)] == ["Q", "R"] and len(parses) == 1
    # A file changed after validation is read again, not taken from validation.
    validate(
        _parsed("sft", ["--model", str(lm), "--data", str(data), "--out", str(tmp_path / "o")])
    )
    data.write_text('{"prompt": "Q", "completion": " changed"}\n')
    assert [r.completion for r in read_sft(data)] == [" changed"]
    rows.forget_reads()


# --- The device, without torch ------------------------------------------------------------


def test_every_kind_of_data_file_has_a_reader():
    import typing

    from rlhfkit.config.checks import load_function
    from rlhfkit.config.fields import DataKind
    from rlhfkit.validate import DATA_READERS

    assert set(DATA_READERS) == set(typing.get_args(DataKind))
    assert all(callable(load_function(ref)) for ref in DATA_READERS.values())


def test_ptx_data_is_read_only_where_ppo_uses_it(tmp_path):
    """--ptx-data without --ptx-coef is not used (a note says so when ppo starts): a large
    corpus is not read for nothing; with --ptx-coef its every record is checked."""
    from rlhfkit.errors import RecordError
    from rlhfkit.validate import validate

    lm = _lm(tmp_path / "lm", max_position_embeddings=512)
    prompts, corpus = tmp_path / "p.jsonl", tmp_path / "c.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    corpus.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    args = ["--policy", str(lm), "--prompts", str(prompts), "--rule-reward", "length",
            "--out", str(tmp_path / "o"), "--ptx-data", str(corpus)]  # fmt: skip
    validate(_parsed("ppo", args))
    with pytest.raises(RecordError, match=f"{corpus}:2: missing field 'text'"):
        validate(_parsed("ppo", [*args, "--ptx-coef", "1"]))
