"""`rlhfkit pipeline --model` and the per-stage data options (pipeline_inputs.py): answered
before anything loads, and two runs end to end on a tiny model with the 'real-smoke' preset:
- from a tiny GGUF on the world's prompts (the user's preference pairs for both RMs: a
  random tiny model ties on every gold score, so the world's labellers would rank
  nothing): the GGUF is converted once into base/, pretraining is skipped, the world's
  gold metrics are there, the two RMs are combined by Llama 2's rule, PPO-ptx is off;
- from a model folder on the user's own files (SFT records, one helpfulness RM's pairs,
  RL and eval prompts that are not the world's): label skipped, one RM used as it is
  (combine single), no gold metrics anywhere, the RM score, KL to SFT and win rate over the
  SFT model in eval/ and in the report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rlhfkit import cli, pipeline
from rlhfkit.config import PipelineConfig
from rlhfkit.errors import UserError
from rlhfkit.pipeline_inputs import inputs_of, parse_rm_data, resolve_preset
from tests.helpers import make_base_model, sft_rows, write_jsonl, write_tiny_gguf
from tests.test_cli_errors import _run_fresh

QUESTIONS = ["Name a colour.", "Say hello politely.", "Count to three.", "What is a cat?",
             "Give one fruit.", "Describe rain.", "Name a tree.", "Say goodbye."]  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    rows = sft_rows(12)
    pairs = [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": " no"} for r in rows]
    prompts = [{"prompt": f"Q: {q}\nA:"} for q in QUESTIONS]
    return {
        "model": make_base_model(root / "model", tiny_tokenizer),
        "gguf": write_tiny_gguf(root / "tiny.gguf", tiny_tokenizer),
        "sft": write_jsonl(root / "sft.jsonl", rows),
        "pairs": write_jsonl(root / "pairs.jsonl", pairs),
        "prompts": write_jsonl(root / "prompts.jsonl", prompts[:6]),
        "eval": write_jsonl(root / "eval.jsonl", prompts[6:] + [{"prompt": "Q: Name a bird.\nA:"}]),
    }


# --- the options, before anything loads ------------------------------------------------------


def test_rm_data_names():
    assert parse_rm_data(["a.jsonl"]) == {"helpfulness": ("a.jsonl",)}
    both = parse_rm_data(["helpfulness=a", "safety=s", "helpfulness=b=c.jsonl"])
    assert both == {"helpfulness": ("a", "b=c.jsonl"), "safety": ("s",)}
    with pytest.raises(UserError, match="name the reward model helpfulness or safety"):
        parse_rm_data(["harmless=x.jsonl"])
    with pytest.raises(UserError, match="a safety RM needs a helpfulness RM too"):
        parse_rm_data(["safety=x.jsonl"])


def test_preset_defaults_to_real_with_a_model():
    assert resolve_preset(PipelineConfig()) == "default"
    assert resolve_preset(PipelineConfig(model="m")) == "real"
    assert resolve_preset(PipelineConfig(model="m", preset="quick")) == "quick"


@pytest.mark.parametrize("case", ["bad record", "bad rm name", "real without model", "ptx"])
def test_mistakes_are_answered_before_anything_is_written(files, tmp_path, case):
    bad = tmp_path / "sft.jsonl"
    bad.write_text('{"prompt": "Q: x\\nA:", "completion": " y"}\n{"prompt": "Q: z"}\n')
    ptx = tmp_path / "ptx.yaml"
    ptx.write_text("ppo: {ptx_coef: 0.5}\n")
    out = tmp_path / "run"
    model = ["--model", str(files["model"])]
    argv, expected = {
        "bad record": ([*model, "--sft-data", str(bad)], f"{bad}:2: "),
        "bad rm name": ([*model, "--rm-data", f"harmless={files['pairs']}"], "helpfulness or safety"),
        "real without model": (["--preset", "real"], "--preset real is sized for a pretrained"),
        "ptx": ([*model, "--config", str(ptx)], "ptx_coef 0.5 needs a corpus: give --ptx-data"),
    }[case]  # fmt: skip
    result, _ = _run_fresh(["pipeline", *argv, "--out", str(out)])
    assert result["rc"] == 2, result
    assert expected in result["err"] and len(result["err"].strip().splitlines()) == 1, result
    assert not out.exists() and not result["torch"], result


def test_a_run_of_other_inputs_is_refused(tmp_path, files):
    cfg = PipelineConfig(out=str(tmp_path), preset="real-smoke", model=str(files["model"]))
    state = pipeline._load_state(tmp_path, cfg)
    assert state["inputs"] == inputs_of(cfg) == {"model": str(files["model"])}
    # a run that got somewhere (a run that never started is started afresh instead)
    state["stages"]["world"] = {"result": {}, "seconds": 0.1}
    (tmp_path / "pipeline.json").write_text(json.dumps(state))
    other = PipelineConfig(out=str(tmp_path), preset="real-smoke", model=str(files["gguf"]))
    with pytest.raises(UserError, match="holds a pipeline run of other inputs"):
        pipeline._load_state(tmp_path, other)


# --- end to end --------------------------------------------------------------------------------


def _pipeline(out: Path, *args: str, capsys) -> str:
    t0 = time.perf_counter()
    argv = ["pipeline", "--preset", "real-smoke", "--out", str(out), "--device", "cpu", *args]
    rc = cli.main(argv)
    printed = capsys.readouterr().out
    print(f"[test_pipeline_inputs] {' '.join(args[:2])}: {time.perf_counter() - t0:.0f} s")
    assert rc == 0, printed[-3000:]
    return printed


@pytest.mark.timeout(900)
def test_a_gguf_through_the_whole_method_on_the_world(files, tmp_path, capsys):
    out = tmp_path / "run"
    # The world's labellers need a model that answers the world somewhat (a random tiny one
    # ties on every gold score): the pairs stand in for them, for both RMs.
    rms = ["--rm-data", f"helpfulness={files['pairs']}", "--rm-data", f"safety={files['pairs']}"]
    printed = _pipeline(out, "--model", str(files["gguf"]), *rms, capsys=capsys)
    assert "[pipeline] memory per device for" in printed  # the plan, before the stages
    assert printed.index("memory per device") < printed.index("===== world =====")
    for stage in ("sft", "rm", "ppo", "rs"):
        assert f"\n  {stage} " in printed, stage
    state = json.loads((out / "pipeline.json").read_text())
    assert state["preset"] == "real-smoke" and state["inputs"]["model"] == str(files["gguf"])
    pretrain = state["stages"]["pretrain"]
    assert pretrain["skipped"].startswith(f"starting from --model {files['gguf']}")
    assert pretrain["result"]["model"] == str(out / "base")
    assert json.loads((out / "base" / "config.json").read_text())["architectures"] == [
        "LlamaForCausalLM"
    ]
    ppo = (out / "ppo" / "config.yaml").read_text()
    assert "ptx_coef: 0.0" in ppo and "ptx_data: null" in ppo  # no world corpus with --model
    assert "combine: llama2" in ppo

    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert list(summary) == ["base", "sft-epoch-1", "sft-selected", "ppo", "rs"]
    for name, row in summary.items():
        assert isinstance(row["gold_score"], float), name  # the world's prompts: gold
        assert isinstance(row["rm_score"], float), name
    for name in ("base", "ppo", "rs"):
        assert 0.0 <= summary[name]["win_rate_over_sft"] <= 1.0, name
    report = (out / "report.md").read_text()
    assert "win rate over SFT" in report and "gold score" in report
    assert f"--model {files['gguf']}" in report


@pytest.mark.timeout(900)
def test_a_model_on_the_users_own_data_without_a_gold_judge(files, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", str(files["model"]), "--sft-data", str(files["sft"]),
            "--rm-data", str(files["pairs"]), "--prompts", str(files["prompts"]),
            "--eval-prompts", str(files["eval"])]  # fmt: skip
    printed = _pipeline(out, *args, capsys=capsys)
    state = json.loads((out / "pipeline.json").read_text())
    assert state["stages"]["pretrain"]["result"]["model"] == str(files["model"])
    assert state["stages"]["label"]["skipped"] == "reward-model data from --rm-data"
    assert "[pipeline] label: skipped (reward-model data from --rm-data)" in printed
    assert not (out / "labels").exists() and not (out / "rm_safety").exists()
    assert state["stages"]["rm"]["result"] == {"helpfulness": str(out / "rm_helpfulness")}
    sft = (out / "sft" / "config.yaml").read_text()
    assert f"data: {files['sft']}" in sft
    ppo = (out / "ppo" / "config.yaml").read_text()
    assert "combine: single" in ppo and f"prompts: {files['prompts']}" in ppo

    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert list(summary) == ["base", "sft-epoch-1", "sft-selected", "ppo", "rs"]
    for name, row in summary.items():
        assert row["gold_score"] is None, name  # not the world's prompts: no gold judge
        assert isinstance(row["rm_score"], float) and isinstance(row["kl_to_sft"], float), name
    for name in ("base", "ppo", "rs"):
        assert 0.0 <= summary[name]["win_rate_over_sft"] <= 1.0, name
    detail = json.loads((out / "eval" / "ppo.json").read_text())
    assert len(detail["rm_score_per_prompt"]) == 3 == detail["n"]
    report = (out / "report.md").read_text()
    assert "no gold metrics: the eval prompts are not the built-in world's" in report
    assert "gold score" not in report.split("## Models")[1].split("##")[0]
    assert "| label | 0.0 (skipped: reward-model data from --rm-data) |" in report


def test_a_stage_without_a_plan_never_stops_the_run(files, monkeypatch):
    """A plan is advice: a model `rlhfkit plan` cannot count (e.g. no sequence-classification
    class for its reward model) gets a line saying so, and the other stages their plans."""
    import rlhfkit.plan.command as command
    from rlhfkit.config import RMConfig, SFTConfig
    from rlhfkit.pipeline_inputs import plan_rows

    real = command.make_plan

    def make_plan(cfg):
        if cfg.stage == "rm":
            raise UserError("GraniteConfig: cannot build the model")
        return real(cfg)

    monkeypatch.setattr(command, "make_plan", make_plan)
    model = str(files["model"])
    rows = plan_rows({"sft": SFTConfig(model=model), "rm": RMConfig(model=model)}, "cpu")
    assert rows[0] == "  rm   no plan: GraniteConfig: cannot build the model"
    assert rows[1].startswith("  sft  model  states") and rows[1].endswith("fits")
