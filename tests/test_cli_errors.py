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
from rlhfkit.config.checks import cuda_absent
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
        "import sys, rlhfkit.validate, rlhfkit.config, rlhfkit.config.fields, rlhfkit.cli\n"
        "import rlhfkit.config.checks, rlhfkit.models.run_folder, rlhfkit.models.folders\n"
        "import rlhfkit.data.records, rlhfkit.data.preferences, rlhfkit.scoring.rules\n"
        "import rlhfkit.world.io\n"
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


# --- Every mistake in a user's own files or options: before torch, nothing left behind --------


def _write(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def bad(folders, tmp_path_factory) -> dict[str, str]:
    """A bad file of every kind a command reads (the bad record on the line named), and a
    few other inputs: a file where a folder goes, a folder of no model, a world prompt."""
    root = tmp_path_factory.mktemp("bad")
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    files = {
        "sft": _write(root / "sft.jsonl", [{"prompt": "Q", "completion": " A"}, {"prompt": "Q"}]),
        "json": _write(root / "json.jsonl", ['{"prompt": "Q", ']),
        "ranking": _write(
            root / "rank.jsonl", [{"prompt": "Q", "responses": ["a", "b"], "ranking": [0, 0]}]
        ),  # fmt: skip
        "pair": _write(
            root / "pair.jsonl",
            [{"prompt": "Q", "chosen": "a", "rejected": "b", "strength": "huge"}],
        ),  # fmt: skip
        "trl": _write(root / "trl.jsonl", [{"chosen": msgs, "rejected": "b"}]),
        "hh": _write(
            root / "hh.jsonl",
            [
                {
                    "chosen": "\n\nHuman: hi\n\nAssistant: x",
                    "rejected": "\n\nHuman: hi\n\nAssistant: x",
                }
            ],
        ),  # fmt: skip
        "prompts": _write(root / "prompts.jsonl", [{"prompt": "ok"}, {"prompt": 3}]),
        "corpus": _write(root / "corpus.jsonl", [{"text": "ok"}, {"txt": "x"}]),
        "score": _write(root / "score.jsonl", [{"prompt": "Q"}]),
        "normalize": _write(root / "norm.jsonl", [{"prompt": "Q", "completion": ""}]),
        "judge": _write(root / "judge.jsonl", [{"prompt": "Q: What is 2 + 3?\nA:"}]),
        "ranking_ok": _write(
            root / "rank_ok.jsonl", [{"prompt": "Q", "responses": ["a", "b"], "ranking": [1, 0]}]
        ),  # fmt: skip
        "score_ok": _write(root / "score_ok.jsonl", [{"prompt": "Q", "response": "A"}]),
        "a_file": _write(root / "a_file", ["x"]),
        "world_prompt": _write(root / "world.jsonl", [{"prompt": "Q: What is 2 + 3?\nA:"}]),
    }
    (root / "corpus.txt").write_bytes(b"a document\n\nanother\n\xff\n")
    files["txt"] = str(root / "corpus.txt")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["Q", "Q2"], "completion": [" A", None]}),
                   root / "sft.parquet")  # fmt: skip
    files["parquet"] = str(root / "sft.parquet")
    (root / "no_model").mkdir()
    (root / "no_model" / "notes.txt").write_text("x")
    files["no_model"] = str(root / "no_model")
    return files


def _cases(f: dict, b: dict) -> dict[str, tuple[list[str], str]]:
    """name -> (argv with {out} for the --out of the case, what the one error line says)."""
    lm, rm, prompts, data = str(f["lm"]), str(f["rm"]), str(f["prompts"]), str(f["data"])
    sft = ["sft", "--model", lm, "--out", "{out}"]
    rmc = ["rm", "--model", lm, "--out", "{out}"]
    ppo = ["ppo", "--policy", lm, "--prompts", prompts, "--out", "{out}"]
    rs = ["rs", "--policy", lm, "--prompts", prompts, "--out", "{out}"]
    sel = ["select", "--checkpoints", lm, "--prompts", prompts, "--out", "{out}"]
    help_ = ["--rm", f"helpfulness={rm}"]
    length = ["--rule-reward", "length"]
    cases = {
        # every data-record error: file:line
        "sft --data": ([*sft, "--data", b["sft"]], f"{b['sft']}:2: missing field 'completion'"),
        "sft --data bad JSON": ([*sft, "--data", b["json"]], f"{b['json']}:1: bad JSON"),
        "sft --data Parquet": ([*sft, "--data", b["parquet"]], f"{b['parquet']}:2: missing field"),
        "sft --eval-data": ([*sft, "--data", data, "--eval-data", b["sft"]], f"{b['sft']}:2:"),
        "rm ranking": ([*rmc, "--data", b["ranking"]], f"{b['ranking']}:1: 'ranking' is not a"),
        "rm pairwise": ([*rmc, "--data", b["pair"]], f"{b['pair']}:1: field 'strength' is 'huge'"),
        "rm TRL messages": ([*rmc, "--data", b["trl"]], f"{b['trl']}:1: 'chosen' and 'rejected'"),
        "rm HH-RLHF": ([*rmc, "--data", b["hh"]], f"{b['hh']}:1: 'chosen' and 'rejected' are"),
        "rm --eval-data": (
            [*rmc, "--data", b["ranking_ok"], "--eval-data", b["ranking"]],
            f"{b['ranking']}:1:",
        ),  # fmt: skip
        "rm --normalize-with": (
            [*rmc, "--data", b["ranking_ok"], "--normalize-with", b["normalize"]],
            f"{b['normalize']}:1: needs a non-empty",
        ),  # fmt: skip
        "rm eval --data": (["rm", "eval", "--model", rm, "--data", b["pair"]], f"{b['pair']}:1:"),
        "score --data": (
            ["score", "--data", b["score"], *help_, "--out", "{out}"],
            f"{b['score']}:1: field 'response' is missing",
        ),  # fmt: skip
        "select --prompts": (
            [*sel[:3], "--prompts", b["prompts"], *sel[5:], *length],
            f"{b['prompts']}:2: field 'prompt' must be a string",
        ),  # fmt: skip
        "ppo --prompts": (
            ["ppo", "--policy", lm, "--prompts", b["prompts"], *help_, "--out", "{out}"],
            f"{b['prompts']}:2:",
        ),  # fmt: skip
        "ppo --eval-prompts": (
            [*ppo, *help_, "--eval-prompts", b["prompts"]],
            f"{b['prompts']}:2:",
        ),
        "ppo --ptx-data": (
            [*ppo, *help_, "--ptx-data", b["corpus"], "--ptx-coef", "1"],
            f"{b['corpus']}:2: missing field 'text'",
        ),  # fmt: skip
        "rs --prompts": (
            ["rs", "--policy", lm, "--prompts", b["prompts"], *length, "--out", "{out}"],
            f"{b['prompts']}:2:",
        ),  # fmt: skip
        "rs --eval-prompts": ([*rs, *length, "--eval-prompts", b["prompts"]], f"{b['prompts']}:2:"),
        "eval --prompts": (
            ["eval", "--model", lm, "--prompts", b["prompts"], "--out", "{out}"],
            f"{b['prompts']}:2:",
        ),  # fmt: skip
        "pretrain --data": (
            ["pretrain", "--data", b["corpus"], "--out", "{out}"],
            f"{b['corpus']}:2: missing field 'text'",
        ),  # fmt: skip
        "pretrain --data .txt": (
            ["pretrain", "--data", b["txt"], "--out", "{out}"],
            f"{b['txt']}:4: invalid UTF-8",
        ),  # fmt: skip
        "world label --prompts": (
            ["world", "label", "--policy", lm, "--prompts", prompts, "--out", "{out}"],
            f"{prompts}:1: not a prompt of the built-in",
        ),  # fmt: skip
        "world judge --data": (
            ["world", "judge", "--data", b["judge"], "--out", "{out}"],
            f"{b['judge']}:1: missing field 'response'",
        ),  # fmt: skip
        "ppo --rule-reward gold": (
            [*ppo, "--rule-reward", "gold"],
            f"{prompts}:1: --rule-reward gold needs prompts of the built-in",
        ),  # fmt: skip
        # options
        "rm --margin": (
            [*rmc, "--data", b["ranking_ok"], "--margin", "better=x"],
            "--margin better=x: margin for 'better' is not a number: 'x'",
        ),  # fmt: skip
        "rm eval --margin": (
            ["rm", "eval", "--model", rm, "--data", b["ranking_ok"], "--margin", "better=x"],
            "--margin better=x:",
        ),  # fmt: skip
        "ppo --rule-reward foo": (
            [*ppo, "--rule-reward", "foo"],
            "--rule-reward foo: no such rule",
        ),
        "rs --rule-reward foo": ([*rs, "--rule-reward", "foo"], "--rule-reward foo: no such rule"),
        "select --rule-reward foo": ([*sel, "--rule-reward", "foo"], "--rule-reward foo: no such"),
        "ppo no reward": (ppo, "no reward given: pass --rm NAME=DIR"),
        "rs no reward": (rs, "no reward given"),
        "select no reward": (sel, "no reward given"),
        "ppo two rewards": ([*ppo, *help_, *length], "--rm and --rule-reward both given"),
        "score --weights": (
            [
                "score",
                "--data",
                b["score_ok"],
                "--rm",
                f"h={rm}",
                "--combine",
                "weighted-sum",
                "--weights",
                "h=0.5,s=0.5",
                "--out",
                "{out}",
            ],
            "--weights h=0.5,s=0.5: no --rm named 's'",
        ),  # fmt: skip
        "ppo --combine llama2": (
            [*ppo, *help_, "--combine", "llama2"],
            "--combine llama2 needs a helpfulness and a safety reward model: "
            "no --rm named 'safety' (--safety-rm)",
        ),  # fmt: skip
        "rs --combine llama2": ([*rs, *help_, "--combine", "llama2"], "no --rm named 'safety'"),
        "score two RMs, single": (
            [
                "score",
                "--data",
                b["score_ok"],
                "--rm",
                f"a={rm}",
                "--rm",
                f"b={rm}",
                "--out",
                "{out}",
            ],
            "--combine single scores with one reward model, got 2 (a, b)",
        ),  # fmt: skip
        "ppo --value-init zero": (
            [*ppo, *help_, "--value-init", "zero"],
            "--value-init zero: not 'rm', 'policy', the name of an --rm "
            "(helpfulness) or a model folder (zero does not exist)",
        ),  # fmt: skip
        "ppo --top-k": ([*ppo, *length, "--top-k", "5"], "ppo samples from the policy's full"),
        "ppo --num-mini-batches": (
            [*ppo, *length, "--batch-size", "2", "--num-mini-batches", "4"],
            "--num-mini-batches 4 must be between 1 and the prompts per "
            "process (2: --batch-size 2 over 1 process(es); a minibatch holds whole groups",
        ),  # fmt: skip
        "ppo --ptx-coef": ([*ppo, *length, "--ptx-coef", "1"], "--ptx-coef > 0 needs --ptx-data"),
        "rs --temperature": (
            [*rs, *length, "--temperature", "1", "1", "1"],
            "--temperature: give one value or one per round (2), got 3",
        ),  # fmt: skip
        "eval --baseline": (
            ["eval", "--model", lm, "--prompts", prompts, "--baseline", lm],
            "--baseline needs --rm NAME=DIR",
        ),  # fmt: skip
        "select --checkpoints": (
            [
                "select",
                "--checkpoints",
                b["no_model"],
                "--prompts",
                prompts,
                *length,
                "--out",
                "{out}",
            ],
            f"--checkpoints: {b['no_model']} holds no epoch-*/ checkpoint",
        ),  # fmt: skip
        "sft --save-adapter": (
            [*sft, "--data", data, "--save-adapter"],
            "--save-adapter needs LoRA: pass --lora-r > 0",
        ),  # fmt: skip
        "rm --normalize-scale": (
            [*rmc, "--data", b["ranking_ok"], "--normalize-scale"],
            "--normalize-scale needs --normalize-with FILE",
        ),  # fmt: skip
        "pipeline --until": (
            ["pipeline", "--out", "{out}", "--until", "ppx"],
            "--until 'ppx': not a stage; stages are world, pretrain",
        ),  # fmt: skip
        "sft --device": (
            [*sft, "--data", data, "--device", "gpu"],
            "--device gpu: use 'auto', 'cpu', 'cuda' or 'cuda:N'",
        ),  # fmt: skip
        # where the outputs go
        "sft --out a file": ([*sft[:3], "--data", data, "--out", b["a_file"]], "is a file: --out"),
        "ppo --out a file": ([*ppo[:5], *length, "--out", b["a_file"]], "is a file: --out must"),
        "world make --out a file": (
            ["world", "make", "--out", b["a_file"]],
            f"--out {b['a_file']} is a file: give a folder",
        ),  # fmt: skip
        "pipeline --out a file": (["pipeline", "--out", b["a_file"]], "is a file: give a folder"),
        "score --out a folder": (
            ["score", "--data", b["score_ok"], *help_, "--out", b["no_model"]],
            "is a folder: give a file name",
        ),  # fmt: skip
        "eval --out a folder": (
            ["eval", "--model", lm, "--prompts", prompts, "--out", b["no_model"]],
            "is a folder: give a file name",
        ),  # fmt: skip
        "pipeline --out not ours": (
            ["pipeline", "--out", b["no_model"]],
            "is not empty and holds no pipeline.json",
        ),  # fmt: skip
        # --resume with nothing to resume
        "sft --resume, mistyped": (
            [*sft, "--data", data, "--resume"],
            "does not exist (a mistyped --out?): nothing to resume",
        ),  # fmt: skip
        "ppo --resume, mistyped": ([*ppo, *length, "--resume"], "does not exist (a mistyped"),
        "rs --resume, mistyped": ([*rs, *length, "--resume"], "does not exist (a mistyped"),
    }
    if cuda_absent() is not None:  # never refused where CUDA might be
        cases["sft --device cuda"] = ([*sft, "--data", data, "--device", "cuda"],
                                      "--device cuda: CUDA is not available (no GPU driver")  # fmt: skip
        cases["ppo --device cuda:1"] = ([*ppo, *length, "--device", "cuda:1"],
                                        "--device cuda:1: CUDA is not available")  # fmt: skip
    return cases


_BATCH = """
import contextlib, io, json, sys, time, traceback
from pathlib import Path
from rlhfkit import cli
cases, found = json.loads(sys.argv[1]), {}
for name, (argv, out) in cases.items():
    err, t0 = io.StringIO(), time.process_time()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = cli.main(argv)
        except BaseException as e:
            rc = f"raised {type(e).__name__}"
            traceback.print_exc()
    found[name] = {"rc": rc, "err": err.getvalue(), "cpu_s": time.process_time() - t0,
                   "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules,
                   "left": Path(out).exists()}
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def before_torch(folders, bad, tmp_path_factory) -> dict[str, dict]:
    """Every case of `_cases`, run one after another by `cli.main` in ONE fresh interpreter
    (subprocess start-up is paid once): its exit code, stderr, CPU seconds, and whether
    torch or transformers had been imported by then."""
    root = tmp_path_factory.mktemp("outs")
    cases = {}
    for i, (name, (argv, _)) in enumerate(_cases(folders, bad).items()):
        out = str(root / f"out{i}")
        cases[name] = ([a.replace("{out}", out) for a in argv], out)
    done = subprocess.run([sys.executable, "-c", _BATCH, json.dumps(cases)], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _case_names() -> list[str]:
    fake = {k: Path(k) for k in ("lm", "rm", "prompts", "data")}
    return list(_cases(fake, {k: k for k in _BAD_KEYS}).keys())


_BAD_KEYS = ("sft", "json", "ranking", "pair", "trl", "hh", "prompts", "corpus", "score",
             "normalize", "judge", "ranking_ok", "score_ok", "a_file", "world_prompt", "txt",
             "parquet", "no_model")  # fmt: skip


@pytest.mark.parametrize("name", _case_names())
def test_each_mistake_is_one_line_before_torch_and_leaves_nothing(before_torch, folders, bad, name):
    """Exit status 2, one line `rlhfkit CMD: error: ...` naming the file:line or the option,
    no traceback, torch and transformers never imported, no output written, well under a
    second of CPU (process time: unlike wall time it does not grow on a busy machine)."""
    result = before_torch[name]
    argv, message = _cases(folders, bad)[name]
    command = cli._split_command(argv)[0]
    lines = result["err"].strip().splitlines()
    assert result["rc"] == 2 and len(lines) == 1, result["err"]
    assert "Traceback" not in result["err"]
    assert lines[0].startswith(f"rlhfkit {command}: error: ") and message in lines[0], lines[0]
    assert not result["torch"] and not result["transformers"], "torch was imported"
    assert not result["left"]
    assert result["cpu_s"] < 1.0, result


def test_resume_on_an_empty_or_never_started_folder_is_an_error(folders, tmp_path, capsys):
    """--resume with nothing to resume names the folder and what is missing; the folder is
    left as it was."""
    from rlhfkit.models.run_folder import forget_prepared, prepare_output_dir

    empty, unstarted = tmp_path / "empty", tmp_path / "unstarted"
    empty.mkdir()
    prepare_output_dir(unstarted, resume=False, overwrite=False, command="sft")  # then killed
    forget_prepared()
    (unstarted / "config.yaml").write_text("lr: 0.1\n")
    for out, problem in ((empty, "is empty: nothing to resume"),
                         (unstarted, "holds a run that never started")):  # fmt: skip
        before = sorted(p.name for p in out.iterdir())
        assert cli.main([*_sft(folders, out), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"rlhfkit sft: error: --resume: {out} {problem}"), err
        assert sorted(p.name for p in out.iterdir()) == before


def test_a_failed_start_leaves_no_folder_and_the_corrected_command_runs(
    folders, tmp_path, capsys, caplog
):
    """A mistake found only once the tokenizer is loaded (a record longer than --max-len
    with --overlong error) comes after the run folder was made: the failed command removes
    it, and the corrected command needs no --overwrite. So does a folder left by a command
    killed before its first step."""
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "Q", "completion": " A" * 40}) + "\n")
    out = tmp_path / "runs" / "sft"
    args = ["sft", "--model", str(folders["lm"]), "--data", str(long), "--out", str(out),
            "--epochs", "1", "--batch-size", "1", "--max-len", "16"]  # fmt: skip
    assert cli.main([*args, "--overlong", "error"]) == 2
    assert f"{long}:1:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nor the parent made for it
    assert cli.main(args) == 0  # --overlong truncate
    assert (out / "epoch-1" / "COMPLETE").is_file()

    from rlhfkit.models.run_folder import forget_prepared, prepare_output_dir

    killed = tmp_path / "killed"
    prepare_output_dir(killed, resume=False, overwrite=False, command="sft")
    forget_prepared()  # as if the process had died before its first step
    (killed / "config.yaml").write_text("lr: 0.1\n")
    (killed / "metrics.jsonl").write_text("")
    with caplog.at_level("WARNING", logger="rlhfkit"):
        assert cli.main([*args[:6], str(killed), *args[7:]]) == 0
    assert f"{killed} holds a run that never started: starting it afresh" in caplog.text
    assert (killed / "epoch-1" / "COMPLETE").is_file()


def test_interrupted_before_training_leaves_nothing(folders, tmp_path, capsys, monkeypatch):
    import rlhfkit.loops.sft as sft

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sft, "load_causal_lm", stop)
    out = tmp_path / "run"
    assert cli.main(_sft(folders, out)) == 130
    err = capsys.readouterr().err
    assert f"interrupted; training had not started: nothing kept in {out}" in err
    assert not out.exists()
