"""The pieces under the CLI's checks: YAML values to option types, ranges, model folders
read from config.json and safetensors headers alone (no torch)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import pytest

from rlhfkit.config.fields import Range, coerce
from rlhfkit.errors import UserError
from rlhfkit.models.folders import check_model_folder, check_safetensors, model_kind


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


def _folder(root: Path, config: dict, weights: bytes | None = None) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    if weights is not None:
        (root / "model.safetensors").write_bytes(weights)
    return root


def _safetensors(n_bytes: int = 8) -> bytes:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [n_bytes // 4], "data_offsets": [0, n_bytes]}}
    )
    return len(header).to_bytes(8, "little") + header.encode() + b"\0" * n_bytes


def test_model_kind_comes_from_config_json(tmp_path):
    rm = {"architectures": ["Qwen2ForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    folder = _folder(tmp_path / "rm", rm, _safetensors())
    assert check_model_folder(folder, "reward") == folder
    assert check_model_folder(folder, "any") == folder
    with pytest.raises(UserError, match="holds a reward model .*not a causal LM"):
        check_model_folder(folder, "causal-lm")
    # No architectures: nothing to go by, accepted for any kind.
    assert check_model_folder(_folder(tmp_path / "bare", {}, _safetensors()), "causal-lm")
    two = {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "a", "1": "b"}}
    with pytest.raises(UserError, match="is a classifier .*with 2 labels.*not a reward model"):
        check_model_folder(_folder(tmp_path / "cls", two, _safetensors()), "reward")
    junk = _folder(tmp_path / "junk", {})
    (junk / "config.json").write_text("{")
    with pytest.raises(UserError, match="config.json: not a readable config.json"):
        check_model_folder(junk, "any")


def test_a_backbone_score_head_folder_is_a_reward_model_by_its_marker(tmp_path):
    # models/scalar_head.py: the family's config (no ...ForSequenceClassification name),
    # marked; without the marker the same config would be unknown, not a reward model
    config = {"model_type": "granite", "architectures": ["GraniteWithScoreHead"],
              "rlhfkit_score_head": {"format": 1, "backbone": "model", "head": "score"}}  # fmt: skip
    folder = _folder(tmp_path / "rm", config, _safetensors())
    assert model_kind(folder) == ("reward", "GraniteWithScoreHead")
    assert check_model_folder(folder, "reward") == folder
    with pytest.raises(UserError, match="holds a reward model .GraniteWithScoreHead.*not a causal"):
        check_model_folder(folder, "causal-lm")
    del config["rlhfkit_score_head"]
    assert model_kind(_folder(tmp_path / "plain", config, _safetensors()))[0] is None


def test_model_folder_without_weights_passes_only_when_weights_are_not_needed(tmp_path):
    folder = _folder(tmp_path / "m", {"architectures": ["GPT2LMHeadModel"]})
    assert check_model_folder(folder, "causal-lm", weights=False) == folder
    with pytest.raises(UserError, match="no .safetensors weights"):
        check_model_folder(folder, "causal-lm")


def test_safetensors_header_and_length_are_checked(tmp_path):
    good = tmp_path / "good.safetensors"
    good.write_bytes(_safetensors(16))
    check_safetensors(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(_safetensors(16)[:-4])
    with pytest.raises(UserError, match=r"cut\.safetensors: truncated \(\d+ bytes, its header"):
        check_safetensors(cut)
    for name, data in {"short": b"\1\2", "huge": (10**9).to_bytes(8, "little") + b"{}",
                       "nojson": (4).to_bytes(8, "little") + b"abcd"}.items():  # fmt: skip
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(UserError, match="not a valid safetensors file"):
            check_safetensors(bad)


# --- Token counts against the models' positions (WithinPositions) -------------------------


def _lm(root: Path, **config) -> Path:
    return _folder(root, {"architectures": ["LlamaForCausalLM"], **config}, _safetensors())


def test_max_positions_read_from_config_json(tmp_path):
    from rlhfkit.validate import max_positions

    assert max_positions(_lm(tmp_path / "a", max_position_embeddings=512)) == (
        512, "max_position_embeddings")  # fmt: skip
    assert max_positions(_lm(tmp_path / "b", n_positions=1024, n_ctx=1024)) == (1024, "n_positions")
    nested = _lm(tmp_path / "c", text_config={"max_position_embeddings": 256})
    assert max_positions(nested) == (256, "max_position_embeddings")
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert (
        max_positions(_lm(tmp_path / "d", max_position_embeddings=32768, rope_scaling=yarn))[0]
        == 131072
    )
    assert max_positions(_lm(tmp_path / "e")) is None  # ALiBi (Bloom): no limit
    assert max_positions(tmp_path / "nope") is None


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
