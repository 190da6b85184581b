"""Every ordinary mistake is one line, exit status 2, no traceback, nothing written; and
options, files and model folders are checked before torch is imported."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.errors import UserError


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """A causal LM folder, a reward model folder (as `rlhfkit rm` writes it), a prompts
    file and an SFT data file."""
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model
    from rlhfkit.models.reward import init_reward_model

    root = tmp_path_factory.mktemp("cli_errors")
    lm = build_model("test", tiny_tokenizer, seed=0)
    save_hf(lm, tiny_tokenizer, root / "lm")
    rm, rm_tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer))
    save_hf(rm, rm_tok, root / "rm")
    (root / "prompts.jsonl").write_text('{"prompt": "What is 2+2?"}\n', encoding="utf-8")
    (root / "sft.jsonl").write_text('{"prompt": "Q", "completion": " A"}\n', encoding="utf-8")
    return {
        "lm": root / "lm",
        "rm": root / "rm",
        "prompts": root / "prompts.jsonl",
        "data": root / "sft.jsonl",
    }


def _fails(argv: list[str], out: Path, capsys) -> str:
    """Run the CLI; assert exit 2, one line `rlhfkit CMD: error: ...`, nothing written."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"rlhfkit {argv[0]}: error: "), err
    assert not out.exists()
    return lines[0]


def _sft(folders, out: Path, *extra: str) -> list[str]:
    return ["sft", "--model", str(folders["lm"]), "--data", str(folders["data"]), "--out",
            str(out), *extra]  # fmt: skip


def _ppo(folders, out: Path, *extra: str) -> list[str]:
    return ["ppo", "--policy", str(folders["lm"]), "--prompts", str(folders["prompts"]),
            "--rm", f"helpfulness={folders['rm']}", "--out", str(out), *extra]  # fmt: skip


# --- Options from YAML: converted to their type, or one line naming file and option -----


def test_yaml_numbers_written_as_strings_are_converted(tmp_path, recwarn):
    """PyYAML reads `1e-4` as a string: it becomes the float the user meant."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nepochs: '2'\nrm: [a=b]\nkeep_truncated: yes\n")
    cfg = cli.parse("rs", ["--config", str(path), "--policy", "p", "--prompts", "q", "--out", "o"])
    assert (cfg.lr, cfg.epochs, cfg.rm, cfg.keep_truncated) == (1e-4, 2, ("a=b",), True)
    assert type(cfg.lr) is float and type(cfg.epochs) is int
    assert not [w for w in recwarn if "annotated with type" in str(w.message)]  # tyro's


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("epochs: three\n", "c.yaml: option epochs: expected an integer, got 'three'"),
        ("lr: [1, 2]\n", "c.yaml: option lr: expected a number, got [1, 2]"),
        ("epochs: 1.5\n", "c.yaml: option epochs: expected an integer, got 1.5"),
        ("schedule: cosin\n", "option schedule: expected one of cosine, linear, constant"),
        ("lr: -0.5\n", "--lr must be > 0, got -0.5"),
        ("max_steps: 0\n", "--max-steps must be > 0, got 0"),
    ],
)
def test_bad_yaml_values_are_one_line(folders, tmp_path, capsys, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    line = _fails(_sft(folders, tmp_path / "out", "--config", str(path)), tmp_path / "out", capsys)
    assert message in line


# --- Options out of range: checked where they are declared --------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "-1e-4"], "rlhfkit sft: error: --lr must be > 0, got -0.0001"),
        (["--batch-size", "0"], "rlhfkit sft: error: --batch-size must be > 0, got 0"),
        (["--epochs", "0"], "rlhfkit sft: error: --epochs must be > 0, got 0"),
        (["--eval-fraction", "1"], "rlhfkit sft: error: --eval-fraction must be in [0, 1), got 1"),
        (["--lora-dropout", "1.5"], "--lora-dropout must be in [0, 1), got 1.5"),
        (["--report-to", "tensorbord"], "--report-to tensorbord: unknown tracker 'tensorbord'"),
        (["--report-to", "none,wandb"], "'none' cannot be combined with trackers"),
    ],
)
def test_sft_options_out_of_range(folders, tmp_path, capsys, extra, message):
    line = _fails(_sft(folders, tmp_path / "out", *extra), tmp_path / "out", capsys)
    assert message in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kl-coef", "-1"], "rlhfkit ppo: error: --kl-coef must be >= 0, got -1"),
        (["--temperature", "0"], "--temperature must be > 0, got 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1], got 0"),
        (["--lam", "1.5"], "--lam must be in [0, 1], got 1.5"),
        (["--steps", "0"], "--steps must be > 0, got 0"),
    ],
)
def test_ppo_options_out_of_range(folders, tmp_path, capsys, extra, message):
    line = _fails(_ppo(folders, tmp_path / "out", *extra), tmp_path / "out", capsys)
    assert message in line


def test_every_element_of_a_tuple_option_is_checked(folders, tmp_path, capsys):
    argv = ["rs", "--policy", str(folders["lm"]), "--prompts", str(folders["prompts"]),
            "--rule-reward", "length", "--out", str(tmp_path / "out"),
            "--temperature", "0.7", "-1"]  # fmt: skip
    assert "--temperature must be >= 0, got -1" in _fails(argv, tmp_path / "out", capsys)


def test_a_pipeline_section_is_checked_before_any_stage(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text("preset: quick\nppo: {kl_coef: -1}\nsft: {lr: 1e-4}\n")
    out = tmp_path / "run"
    line = _fails(["pipeline", "--config", str(path), "--out", str(out)], out, capsys)
    assert line.endswith("pipeline section 'ppo': --kl-coef must be >= 0, got -1")
    path.write_text("sft: {epochs: three}\n")
    line = _fails(["pipeline", "--config", str(path), "--out", str(out)], out, capsys)
    assert "section 'sft': option epochs: expected an integer, got 'three'" in line


def test_yaml_section_values_are_converted(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("sft: {lr: 1e-4}\n")
    assert cli.parse("pipeline", ["--config", str(path)]).sft == {"lr": 1e-4}


# --- Files and model folders --------------------------------------------------------------


def test_missing_data_file(folders, tmp_path, capsys):
    argv = ["sft", "--model", str(folders["lm"]), "--data", str(tmp_path / "nope.jsonl"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    line = _fails(argv, tmp_path / "out", capsys)
    assert line == f"rlhfkit sft: error: --data {tmp_path / 'nope.jsonl'}: no such file or folder"


def test_missing_model_folder(folders, tmp_path, capsys):
    argv = _ppo(folders, tmp_path / "out")
    argv[2] = str(tmp_path / "nope")
    line = _fails(argv, tmp_path / "out", capsys)
    assert line == f"rlhfkit ppo: error: --policy: model folder {tmp_path / 'nope'} does not exist"


@pytest.mark.parametrize(
    "argv",
    [
        ["ppo", "--policy", "{rm}", "--prompts", "{prompts}", "--rule-reward", "length",
         "--out", "{out}"],
        ["sft", "--model", "{rm}", "--data", "{data}", "--out", "{out}"],
        ["eval", "--model", "{rm}", "--prompts", "{prompts}", "--out", "{out}"],
        ["eval", "--model", "{lm}", "--baseline", "{rm}", "--prompts", "{prompts}",
         "--out", "{out}"],
    ],
)  # fmt: skip
def test_a_reward_model_where_a_causal_lm_is_needed(folders, tmp_path, capsys, argv):
    out = tmp_path / "out"
    argv = [a.format(out=out, **folders) for a in argv]
    line = _fails(argv, out, capsys)
    assert (
        f"{folders['rm']} holds a reward model (LlamaForSequenceClassification in its "
        "config.json), not a causal LM: give a causal LM folder (e.g. an SFT checkpoint)"
    ) in line


def test_a_causal_lm_where_a_reward_model_is_needed(folders, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["ppo", "--policy", str(folders["lm"]), "--prompts", str(folders["prompts"]),
            "--rm", f"helpfulness={folders['lm']}", "--out", str(out)]  # fmt: skip
    line = _fails(argv, out, capsys)
    assert line == (
        f"rlhfkit ppo: error: --rm: {folders['lm']} holds a causal LM (LlamaForCausalLM in its "
        "config.json), not a reward model: give a reward model folder (as written by "
        "`rlhfkit rm`)"
    )


def _truncated_copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return weights


def test_truncated_safetensors_is_one_line(folders, tmp_path, capsys):
    weights = _truncated_copy(folders["lm"], tmp_path / "cut")
    line = _fails(_sft({**folders, "lm": tmp_path / "cut"}, tmp_path / "out"), tmp_path / "out",
                  capsys)  # fmt: skip
    assert line.startswith(f"rlhfkit sft: error: --model: {weights}: truncated (")


def test_truncated_weights_are_a_user_error_where_models_load(folders, tmp_path):
    """models/load.py (and the reward model loader that uses its folder check) name the
    file instead of failing deep inside safetensors."""
    from rlhfkit.models.load import load_causal_lm
    from rlhfkit.models.reward import load_reward_model

    lm = _truncated_copy(folders["lm"], tmp_path / "lm")
    with pytest.raises(UserError, match=f"{lm}: truncated"):
        load_causal_lm(tmp_path / "lm")
    rm = _truncated_copy(folders["rm"], tmp_path / "rm")
    with pytest.raises(UserError, match=f"{rm}: truncated"):
        load_reward_model(tmp_path / "rm")
    (tmp_path / "lm" / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_causal_lm(tmp_path / "lm")


def test_plan_needs_only_config_json(folders, tmp_path):
    """`rlhfkit plan` reads config.json files only: weights and data are not checked."""
    from rlhfkit.validate import validate

    only_config = tmp_path / "cfg"
    only_config.mkdir()
    (only_config / "config.json").write_text((folders["lm"] / "config.json").read_text())
    validate(cli.parse("plan sft", ["--model", str(only_config), "--data", "not-here.jsonl"]))
    with pytest.raises(UserError, match="holds a reward model"):
        validate(cli.parse("plan sft", ["--model", str(folders["rm"])]))


# --- Before torch: fast, and torch never imported -----------------------------------------


def _run_fresh(argv: list[str]) -> tuple[dict, float]:
    code = (
        "import json, sys, time\n"
        "t0 = time.process_time()\n"
        "from rlhfkit import cli\n"
        f"rc = cli.main({argv!r})\n"
        "print(json.dumps({'rc': rc, 'cpu_seconds': time.process_time() - t0,\n"
        "    'torch': 'torch' in sys.modules, 'transformers': 'transformers' in sys.modules}))\n"
    )
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    wall = time.perf_counter() - t0
    assert "Traceback" not in done.stderr, done.stderr
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "err": done.stderr}, wall


@pytest.mark.parametrize(
    "case",
    ["missing data", "bad option", "reward model as policy", "bad yaml"],
)
def test_mistakes_are_reported_before_torch_in_under_a_second(folders, tmp_path, case):
    out = str(tmp_path / "out")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("epochs: three\n")
    argv = {
        "missing data": ["sft", "--model", str(folders["lm"]), "--data", "nope.jsonl",
                         "--out", out],
        "bad option": ["ppo", "--policy", str(folders["lm"]), "--prompts",
                       str(folders["prompts"]), "--rule-reward", "length", "--out", out,
                       "--kl-coef", "-1"],
        "reward model as policy": ["eval", "--model", str(folders["rm"]), "--prompts",
                                   str(folders["prompts"])],
        "bad yaml": ["sft", "--config", str(yaml_file), "--model", "m", "--data", "d",
                     "--out", out],
    }[case]  # fmt: skip
    result, wall = _run_fresh(argv)
    assert result["rc"] == 2 and len(result["err"].strip().splitlines()) == 1, result
    assert not result["torch"] and not result["transformers"]
    # CPU time from the first rlhfkit import to the error (~0.4 s): unlike wall time, it does
    # not grow when other processes load the machine. Wall time gets a loose bound.
    assert result["cpu_seconds"] < 1.0, result
    assert wall < 10.0
    assert not Path(out).exists()


def test_validate_and_config_import_no_torch():
    code = (
        "import sys, rlhfkit.validate, rlhfkit.config, rlhfkit.config.fields\n"
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    assert done.stdout.strip() == "[]"


# --- The constraints are declared once, and shown in --help ------------------------------


def _config_classes() -> list[type]:
    return sorted({cli._load(c.config) for c in cli.COMMANDS.values()}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_a_redeclared_option_keeps_its_constraint(cls):
    """A command that gives an inherited option another default (`lr: Positive[float] =
    1e-5`) must keep the marker, or the check and the --help hint silently go."""
    from rlhfkit.config.fields import field_markers

    mine = field_markers(cls)
    for base in cls.__mro__[1:]:
        if not hasattr(base, "__dataclass_fields__"):
            continue
        for name, markers in field_markers(base).items():
            if name in cls.__dataclass_fields__:
                assert mine.get(name) == markers, f"{cls.__name__}.{name} lost {markers}"


def test_ranges_are_shown_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ppo", "--help"])
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "(default: 0.02; >= 0)" in text  # --kl-coef
    assert "(default: 64; > 0)" in text  # --batch-size
    assert "(default: 1.0; in (0, 1])" in text  # --top-p
