"""`rlhfkit pipeline`: stage options (preset < YAML section < pipeline), pipeline.json's
skip/resume/--until/--overwrite with stand-in stages, and one real `--preset quick` run
end to end (then re-run: skipped; an entry lost: only that stage again). The default suite
runs the quick preset with a smaller world and the 'test' model in its sections (every stage,
its files and the report as in the preset); `make test-slow` also runs the preset as shipped."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlhfkit import cli, pipeline
from rlhfkit.config import (
    ConfigError,
    DPOConfig,
    EvalConfig,
    PipelineConfig,
    PPOConfig,
    PretrainConfig,
    RMConfig,
    RSConfig,
    SelectConfig,
    SFTConfig,
    WorldLabelConfig,
    WorldMakeConfig,
)
from rlhfkit.errors import OutputExistsError, UserError
from rlhfkit.pipeline import PRESETS, STAGES, Ctx, stage_options
from rlhfkit.report.render import PLOTS

NAMES = [name for name, _ in STAGES]
# The config class each stage builds with stage_options (pipeline.stage_*).
STAGE_CONFIGS = {
    "world": WorldMakeConfig,
    "pretrain": PretrainConfig,
    "sft": SFTConfig,
    "label": WorldLabelConfig,
    "rm": RMConfig,
    "select": SelectConfig,
    "bon": SelectConfig,
    "ppo": PPOConfig,
    "rs": RSConfig,
    "dpo": DPOConfig,
    "rloo": PPOConfig,
    "eval": EvalConfig,
}


def _ctx(tmp_path: Path | None = None, **cfg) -> Ctx:
    out = tmp_path or Path("unused")
    return Ctx(cfg=PipelineConfig(out=str(out), **cfg), out=out, state={"stages": {}})


# ---------------------------------------------------------------------------------------
# Stage options
# ---------------------------------------------------------------------------------------


def test_stage_options_precedence():
    quick = PRESETS["quick"]["sft"]
    ctx = _ctx(preset="quick", seed=7, device="cpu", bf16=True, sft={"lr": 0.5})
    cfg = stage_options(ctx, "sft", SFTConfig, {"out": "o", "model": "m", "epochs": 9})
    assert isinstance(cfg, SFTConfig)
    assert cfg.batch_size == quick["batch_size"]  # preset
    assert cfg.lr == 0.5 != quick["lr"]  # the YAML section beats the preset
    assert cfg.epochs == 9 != quick["epochs"]  # what the pipeline fixes beats both
    assert (cfg.out, cfg.model) == ("o", "m")
    assert (cfg.seed, cfg.device, cfg.bf16) == (7, "cpu", True)  # the pipeline's own options
    default = stage_options(_ctx(preset="default"), "sft", SFTConfig, {})
    assert default.epochs == PRESETS["default"]["sft"]["epochs"]


def test_a_section_may_set_seed_device_and_bf16():
    ctx = _ctx(seed=7, device="cpu", bf16=True, rm={"seed": 3, "device": "cuda", "bf16": False})
    cfg = stage_options(ctx, "rm", RMConfig, {"out": "o"})
    assert (cfg.seed, cfg.device, cfg.bf16) == (3, "cuda", False)
    # a stage whose config has no device or bf16 only takes the seed
    world = stage_options(_ctx(seed=7, device="cpu", bf16=True), "world", WorldMakeConfig, {})
    assert world.seed == 7


def test_a_section_cannot_set_what_the_pipeline_sets():
    ctx = _ctx(sft={"out": "elsewhere", "epochs": 4})
    with pytest.raises(ConfigError, match=r"section 'sft'.*'out'.*set by the pipeline"):
        stage_options(ctx, "sft", SFTConfig, {"out": "o", "model": "m"})


def test_an_unknown_option_in_a_section_is_named():
    ctx = _ctx(ppo={"stepz": 3})
    with pytest.raises(ConfigError, match=r"section 'ppo'.*unknown option.*'stepz'"):
        stage_options(ctx, "ppo", PPOConfig, {"out": "o"})


def test_an_empty_section_means_no_options_and_a_non_mapping_is_an_error():
    # `sft:` with nothing under it loads as None: the preset's values, not a TypeError
    cfg = stage_options(_ctx(preset="quick", sft=None), "sft", SFTConfig, {"out": "o"})
    assert cfg.epochs == PRESETS["quick"]["sft"]["epochs"]
    with pytest.raises(ConfigError, match=r"section 'sft'.*mapping"):
        stage_options(_ctx(sft=4), "sft", SFTConfig, {"out": "o"})


def test_a_stage_resumes_where_it_can_and_starts_again_where_it_cannot(tmp_path):
    """A stage's folder from an earlier, interrupted pipeline run: resumed from its
    checkpoint; started again (--overwrite) where it stopped before its first one; reused
    as it is where it never started (nothing but its start-up files)."""
    folder = tmp_path / "ppo"
    assert pipeline._resumable(folder) == {"resume": False}  # no folder
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("")
    assert pipeline._resumable(folder) == {"resume": False}
    (folder / "run.json").write_text("{}")
    assert pipeline._resumable(folder) == {"resume": False}  # never started: reused
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    assert pipeline._resumable(folder) == {"resume": False, "overwrite": True}
    assert pipeline._resumable(folder, checkpointed=False) == {"resume": True}  # rs: round-N/
    (folder / "checkpoints" / "step-000001").mkdir(parents=True)
    (folder / "checkpoints" / "step-000001" / "COMPLETE").write_text("")
    (folder / "checkpoints" / "step-000001" / "trainer_state.json").write_text('{"state": {}}')
    assert pipeline._resumable(folder) == {"resume": True}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_name_only_real_options(preset):
    assert list(PRESETS[preset]) == NAMES  # one entry per stage, in order
    for stage, options in PRESETS[preset].items():
        cls = STAGE_CONFIGS[stage]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(options) <= set(fields), (stage, sorted(set(options) - set(fields)))
        for name, value in options.items():
            # section and preset values skip tyro's type checks: keep them the default's type
            default = fields[name].default
            if default is not None and default is not dataclasses.MISSING:
                kind = (int, float) if isinstance(default, float) else type(default)
                assert isinstance(value, kind), (stage, name, value)
        cfg = stage_options(_ctx(preset=preset), stage, cls, {"out": "o"})
        assert {k: getattr(cfg, k) for k in options} == options


def test_every_stage_is_documented_and_has_a_section():
    sections = {f.name for f in dataclasses.fields(PipelineConfig)}
    for name in NAMES:
        assert re.search(rf"^  {name}\s+\S", pipeline.__doc__, re.M), name
        assert name in sections, name
        assert name in PipelineConfig.__doc__, name
    assert set(STAGE_CONFIGS) == set(NAMES)


@pytest.mark.filterwarnings("ignore:The field `rm`")  # tyro, on the empty `rm:` section
def test_yaml_sections_reach_the_stages(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        "preset: quick\nseed: 5\n"
        "sft: {epochs: 4}\n"
        "ppo:\n  steps: 3\n  kl_coef: 0.05\n"
        "label: {strength_thresholds: [0.4, 0.2, 0.1]}\n"
        "rm:\n"
    )
    cfg = cli.parse("pipeline", ["--config", str(path), "--out", str(tmp_path / "run")])
    assert (cfg.preset, cfg.seed, cfg.out) == ("quick", 5, str(tmp_path / "run"))
    ctx = Ctx(cfg=cfg, out=Path(cfg.out), state={"stages": {}})
    sft = stage_options(ctx, "sft", SFTConfig, {"out": "o"})
    assert (sft.epochs, sft.batch_size, sft.seed) == (4, PRESETS["quick"]["sft"]["batch_size"], 5)
    ppo = stage_options(ctx, "ppo", PPOConfig, {"out": "o"})
    assert (ppo.steps, ppo.kl_coef) == (3, 0.05)
    assert ppo.ppo_epochs == PRESETS["quick"]["ppo"]["ppo_epochs"]
    label = stage_options(ctx, "label", WorldLabelConfig, {"out": "o"})
    assert list(label.strength_thresholds) == [0.4, 0.2, 0.1]
    rm = stage_options(ctx, "rm", RMConfig, {"out": "o"})  # empty section: the preset's
    assert rm.epochs == PRESETS["quick"]["rm"]["epochs"]


def test_a_bad_section_is_a_cli_error_before_any_work(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text("preset: quick\nworld: {bogus: 1}\n")
    assert cli.main(["pipeline", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "section 'world'" in err and "bogus" in err
    assert not (tmp_path / "run" / "world").exists()


@pytest.mark.parametrize("preset", ["real", "real-smoke"])
def test_the_real_presets_skip_dpo_and_rloo_and_say_why(preset):
    """Recorded as {"skipped": why} before anything loads (no stage ran before them here);
    a section of the stage's own in the pipeline YAML runs it after all."""
    ctx = _ctx(preset=preset, model="m")
    for stage in (pipeline.stage_dpo, pipeline.stage_rloo):
        assert stage(ctx)["skipped"].startswith("not in this preset (a `dpo:`")
    assert pipeline.not_in_preset(_ctx(preset=preset, model="m", dpo={"epochs": 1}), "dpo") is None
    for other in ("quick", "default"):
        assert pipeline.not_in_preset(_ctx(preset=other), "dpo") is None
        assert pipeline.not_in_preset(_ctx(preset=other), "rloo") is None


def test_dpo_and_rloo_stages_get_the_rms_data_and_the_ppo_stages_reward(tmp_path, monkeypatch):
    """dpo: the selected SFT model (also its reference), both rankings files the RMs
    trained on; rloo: `ppo --estimator rloo` with ppo's prompts, reward and PPO-ptx."""
    seen = {}
    monkeypatch.setattr("rlhfkit.loops.dpo.train_dpo", lambda cfg: seen.setdefault("dpo", cfg))
    monkeypatch.setattr("rlhfkit.loops.ppo.loop.train_ppo",
                        lambda cfg: seen.setdefault("rloo", cfg) and {})  # fmt: skip
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("helpfulness", "safety"):
        (labels / f"rankings_{name}.jsonl").write_text("{}\n")
    ctx = _ctx(tmp_path, preset="default", seed=3, rloo={"steps": 2})
    ctx.state["stages"] = {
        "select": {"result": {"best": "sft/epoch-2"}},
        "label": {"result": {n: str(labels / f"rankings_{n}.jsonl") for n in ("helpfulness", "safety")}},
        "rm": {"result": {"helpfulness": "rm_h", "safety": "rm_s"}},
    }  # fmt: skip
    assert pipeline.stage_dpo(ctx) == {"model": str(tmp_path / "dpo")}
    dpo = seen["dpo"]
    assert (dpo.model, dpo.reference, dpo.seed) == ("sft/epoch-2", None, 3)
    assert [Path(f).name for f in dpo.data] == [
        "rankings_helpfulness.jsonl",
        "rankings_safety.jsonl",
    ]
    assert (dpo.beta, dpo.lr, dpo.epochs) == (0.1, 2e-5, 2)  # the default preset's
    assert pipeline.stage_rloo(ctx) == {"model": str(tmp_path / "rloo")}
    rloo = seen["rloo"]
    assert (rloo.estimator, rloo.samples_per_prompt, rloo.batch_size) == ("rloo", 4, 8)
    assert rloo.steps == 2  # the section's
    assert rloo.rm == ("helpfulness=rm_h", "safety=rm_s") and rloo.combine == "llama2"
    assert rloo.ptx_coef == 1.0 and rloo.ptx_data == str(tmp_path / "world" / "corpus.jsonl")
    ppo = PRESETS["default"]["ppo"]
    # the same responses per step as PPO's
    assert rloo.batch_size * rloo.samples_per_prompt == ppo["batch_size"]
    with pytest.raises(ConfigError, match="set by the pipeline"):  # the stage is RLOO
        bad = dataclasses.replace(ctx.cfg, rloo={"estimator": "grpo"})
        pipeline.stage_rloo(Ctx(cfg=bad, out=ctx.out, state=ctx.state))
    # --rm-data: DPO trains on the user's preference files
    seen.clear()
    files = tmp_path / "h.jsonl", tmp_path / "s.jsonl"
    ctx = _ctx(tmp_path, rm_data=(f"helpfulness={files[0]}", f"safety={files[1]}"))
    ctx.state["stages"] = {"select": {"result": {"best": "sft/epoch-2"}}}
    pipeline.stage_dpo(ctx)
    assert seen["dpo"].data == tuple(str(f) for f in files)


# ---------------------------------------------------------------------------------------
# pipeline.json: load, skip, resume, --until, --overwrite (stand-in stages, no training)
# ---------------------------------------------------------------------------------------


def test_load_state_refuses_another_preset_or_seed(tmp_path):
    pipeline._load_state(tmp_path, PipelineConfig(out=str(tmp_path), preset="quick"))
    assert json.loads((tmp_path / "pipeline.json").read_text())["preset"] == "quick"
    # No stage finished and nothing else written: a run that never started, started afresh.
    state = pipeline._load_state(tmp_path, PipelineConfig(out=str(tmp_path), preset="default"))
    assert state == {"preset": "default", "seed": 0, "stages": {}}
    done = {"preset": "quick", "seed": 0, "stages": {"world": {"result": {}, "seconds": 1}}}
    (tmp_path / "pipeline.json").write_text(json.dumps(done))
    for other in ({"preset": "default"}, {"preset": "quick", "seed": 1}):
        with pytest.raises(UserError, match="--overwrite"):
            pipeline._load_state(tmp_path, PipelineConfig(out=str(tmp_path), **other))
    state = pipeline._load_state(tmp_path, PipelineConfig(out=str(tmp_path), preset="quick"))
    assert state == done


def test_load_state_refuses_a_folder_that_is_not_a_pipeline_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # --overwrite never deletes a folder it did not make
        with pytest.raises(OutputExistsError, match="choose a new --out"):
            pipeline._load_state(tmp_path, PipelineConfig(out=str(tmp_path), overwrite=overwrite))
    assert (tmp_path / "notes.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert pipeline._load_state(empty, PipelineConfig(out=str(empty)))["stages"] == {}


def test_overwrite_removes_the_old_run(tmp_path):
    out = tmp_path / "run"
    (out / "ppo").mkdir(parents=True)
    (out / "ppo" / "model.safetensors").write_bytes(b"old")
    state = {"preset": "default", "seed": 3, "stages": {"world": {"result": {}, "seconds": 1}}}
    (out / "pipeline.json").write_text(json.dumps(state))
    new = pipeline._load_state(out, PipelineConfig(out=str(out), preset="quick", overwrite=True))
    assert new == {"preset": "quick", "seed": 0, "stages": {}}
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json"]


class _Interrupt(Exception):
    pass


@pytest.fixture
def fake_stages(monkeypatch):
    """STAGES replaced by stand-ins that record their calls; `fail` names one that raises."""
    calls: list[str] = []
    fail: set[str] = set()

    def make(name):
        def run(ctx):
            calls.append(name)
            if name in fail:
                raise _Interrupt(name)
            return {"made": name}

        return run

    monkeypatch.setattr(pipeline, "STAGES", [(n, make(n)) for n in NAMES])
    monkeypatch.setattr("rlhfkit.report.render.render_report", lambda out: Path(out) / "report.md")
    return calls, fail


def _run(out: Path, **kw) -> dict:
    return pipeline.run_pipeline(PipelineConfig(out=str(out), preset="quick", **kw))


def test_rerun_skips_finished_stages(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    state = _run(tmp_path / "run")
    assert calls == NAMES
    saved = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert saved == json.loads(json.dumps(state))
    assert list(saved["stages"]) == NAMES
    assert saved["stages"]["ppo"]["result"] == {"made": "ppo"}
    for entry in saved["stages"].values():  # wall and CPU time of every stage
        assert entry["seconds"] >= 0 and entry["cpu_seconds"] >= 0
    capsys.readouterr()
    calls.clear()
    _run(tmp_path / "run")
    assert calls == []
    printed = capsys.readouterr().out
    for name in NAMES:
        assert f"[pipeline] {name}: done earlier, skipped" in printed


def test_until_stops_and_a_rerun_continues(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    _run(tmp_path / "run", until="sft")
    assert calls == ["world", "pretrain", "sft"]
    calls.clear()
    _run(tmp_path / "run", until="rm")
    assert calls == ["label", "rm"]
    calls.clear()
    _run(tmp_path / "run")
    assert calls == NAMES[NAMES.index("select") :]


def test_until_not_a_stage_lists_the_stages(tmp_path, fake_stages, capsys):
    calls, _ = fake_stages
    with pytest.raises(UserError, match="not a stage; stages are world, pretrain, sft"):
        _run(tmp_path / "run", until="notastage")
    assert cli.main(["pipeline", "--out", str(tmp_path / "run"), "--until", "notastage"]) == 2
    assert ", ".join(NAMES) in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "run").exists()


def test_an_interrupted_stage_runs_again_and_only_it(tmp_path, fake_stages):
    calls, fail = fake_stages
    fail.add("ppo")
    with pytest.raises(_Interrupt):
        _run(tmp_path / "run")
    assert calls == NAMES[: NAMES.index("ppo") + 1]
    done = json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"]
    assert list(done) == NAMES[: NAMES.index("ppo")]
    fail.clear()
    calls.clear()
    _run(tmp_path / "run")
    assert calls == NAMES[NAMES.index("ppo") :]


def test_a_run_killed_in_its_first_stage_can_be_resumed_or_overwritten(tmp_path, fake_stages):
    # Before pipeline.json was written at the start, a kill during `world` left a folder
    # that neither a re-run nor --overwrite would touch ("holds no pipeline run").
    calls, fail = fake_stages
    fail.add("world")
    out = tmp_path / "run"
    with pytest.raises(_Interrupt):
        _run(out)
    (out / "world").mkdir()  # what the stage had written so far
    fail.clear()
    calls.clear()
    _run(out)
    assert calls == NAMES
    fail.add("world")
    with pytest.raises(_Interrupt):
        _run(out, overwrite=True)
    assert not (out / "world").exists()  # the old run is gone
    fail.clear()
    calls.clear()
    _run(out, overwrite=True)
    assert calls == NAMES


# ---------------------------------------------------------------------------------------
# End to end: `rlhfkit pipeline --preset quick`, once per module
# ---------------------------------------------------------------------------------------


class _Tee(io.StringIO):
    """Keeps what was printed and passes it on (pytest shows it if a test fails)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def write(self, s):
        self.stream.write(s)
        return super().write(s)


def _main(*args: str) -> tuple[int, str]:
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        rc = cli.main(["pipeline", *args])
    return rc, tee.getvalue()


def _mtimes(out: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob(pattern)}


# The quick preset, smaller where size only costs time: a world of a few hundred records and
# the 'test' model (86K parameters, 1 epoch) for the base. Pretraining the 'tiny' model on the
# preset's 5000 documents was ~80% of the run; every stage still runs with the preset's other
# options. The reruns below pass the same file.
SMALL_QUICK = """\
preset: quick
world: {corpus_docs: 400, sft: 160, train_prompts: 64, eval_prompts: 24}
pretrain: {preset: test, epochs: 1, seq_len: 64, vocab_size: 512}
rloo: {steps: 2, save_every: 2, eval_every: 0}
"""


def _quick(out: Path, *args: str) -> tuple[int, str]:
    """`rlhfkit pipeline` on the run folder `out` with the config the fixture used."""
    return _main("--config", str(out.parent / "pipeline.yaml"), "--out", str(out), *args)


def _quick_run(tmp_path_factory, config: str) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("pipeline")
    (root / "pipeline.yaml").write_text(config)
    out = root / "run"
    t0 = time.perf_counter()
    rc, printed = _quick(out)
    seconds = time.perf_counter() - t0
    print(f"\n[test_pipeline] rlhfkit pipeline {config.splitlines()}: {seconds:.0f} s",
          file=sys.stderr)  # fmt: skip
    assert rc == 0, printed[-3000:]
    return out, printed


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return _quick_run(tmp_path_factory, SMALL_QUICK)


@pytest.fixture(scope="module")
def shipped_quick_run(tmp_path_factory):
    # Not asserted (a busy CI box is slower); the preset promises <= 3 min on 2 CPU cores.
    return _quick_run(tmp_path_factory, "preset: quick\n")


def _model_names(out: Path) -> list[str]:
    stages = json.loads((out / "pipeline.json").read_text())["stages"]
    epochs = [f"sft-{Path(p).name}" for p in stages["sft"]["result"]["epochs"]]
    assert len(epochs) == PRESETS["quick"]["sft"]["epochs"]
    return ["base", *epochs, "sft-selected", "ppo", "rs", "dpo", "rloo"]


@pytest.mark.timeout(900)
def test_quick_runs_every_stage_and_reports(quick_run):
    _assert_every_stage_ran_and_reported(*quick_run)


@pytest.mark.slow  # the same checks on the smaller run: test_quick_runs_every_stage_and_reports
@pytest.mark.timeout(900)
def test_the_quick_preset_as_shipped_runs_every_stage_and_reports(shipped_quick_run):
    _assert_every_stage_ran_and_reported(*shipped_quick_run)


def _assert_every_stage_ran_and_reported(out: Path, printed: str) -> None:
    state = json.loads((out / "pipeline.json").read_text())
    assert (state["preset"], state["seed"]) == ("quick", 0)
    assert sorted(state["stages"]) == sorted(NAMES)
    for name in NAMES:
        assert f"[pipeline] ===== {name} =====" in printed
        assert state["stages"][name]["seconds"] >= 0
    models = _model_names(out)
    for stage in ("ppo", "rs", "dpo", "rloo"):
        assert (out / stage / "model.safetensors").exists(), stage
        assert state["stages"][stage]["cpu_seconds"] > 0, stage

    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert list(summary) == models
    for name, row in summary.items():
        for key in ("gold_score", "helpfulness_safe", "safety_unsafe", "false_refusal_rate"):
            assert isinstance(row[key], float) and 0.0 <= row[key] <= 1.0, (name, key, row)
        assert row["mean_response_words"] >= 0
        assert (out / "eval" / f"{name}.json").exists()
    for name in ("sft-selected", "ppo", "rs", "dpo", "rloo"):  # the extras: RM score, KL
        assert isinstance(summary[name]["rm_score"], float), name
        assert isinstance(summary[name]["kl_to_sft"], float), name
    for name in ("ppo", "rs", "dpo", "rloo"):  # gold win rate over SFT, world prompts
        assert 0.0 <= summary[name]["gold_win_rate_over_sft"] <= 1.0, name
    rloo = yaml.safe_load((out / "rloo" / "config.yaml").read_text())
    assert (rloo["estimator"], rloo["samples_per_prompt"]) == ("rloo", 4)

    # bon: 32 samples per eval prompt of the selected SFT model, RM and gold scores each
    bon = [json.loads(line) for line in (out / "bon" / "samples.jsonl").read_text().splitlines()]
    assert len(bon) == PRESETS["quick"]["bon"]["max_prompts"]
    for row in bon:
        assert len(row["proxy"]) == len(row["gold"]) == len(row["responses"]) == 32
        assert all(0.0 <= g <= 1.0 for g in row["gold"])
    print(f"\n[test_pipeline] bon stage: {state['stages']['bon']['seconds']} s", file=sys.stderr)

    report = (out / "report.md").read_text()
    for name in models:
        assert f"| {name} |" in report, name
    assert "## Methods compared" in report and "this run orders" in report
    assert "did not run" not in report and "not (yet) run" not in report
    for plot in PLOTS:  # every plot has data in a full run: drawn and linked
        assert (out / "report" / plot).stat().st_size > 1000, plot
        assert f"](report/{plot})" in report, plot


@pytest.mark.timeout(900)
def test_quick_rerun_skips_every_stage(quick_run):
    out, _ = quick_run
    weights = _mtimes(out, "*.safetensors")
    evals = _mtimes(out / "eval", "*.json")
    assert "ppo/model.safetensors" in weights
    rc, printed = _quick(out)
    assert rc == 0
    for name in NAMES:
        assert f"[pipeline] {name}: done earlier, skipped" in printed
    assert "=====" not in printed
    assert _mtimes(out, "*.safetensors") == weights  # nothing retrained
    assert _mtimes(out / "eval", "*.json") == evals


@pytest.mark.timeout(900)
def test_quick_lost_eval_entry_reruns_only_eval(quick_run):
    out, _ = quick_run
    path = out / "pipeline.json"
    state = json.loads(path.read_text())
    del state["stages"]["eval"]
    path.write_text(json.dumps(state))
    weights = _mtimes(out, "*.safetensors")
    summary = out / "eval" / "summary.json"
    before = summary.stat().st_mtime_ns

    rc, printed = _quick(out, "--until", "eval")
    assert rc == 0
    assert re.findall(r"\[pipeline\] ===== (\w+) =====", printed) == ["eval"]
    for name in NAMES[:-1]:
        assert f"[pipeline] {name}: done earlier, skipped" in printed
    assert _mtimes(out, "*.safetensors") == weights
    assert summary.stat().st_mtime_ns > before
    assert sorted(json.loads(path.read_text())["stages"]) == sorted(NAMES)
    assert list(json.loads(summary.read_text())) == _model_names(out)


@pytest.mark.timeout(900)
def test_quick_lost_rs_entry_resumes_rs_without_retraining(quick_run):
    out, _ = quick_run
    path = out / "pipeline.json"
    state = json.loads(path.read_text())
    del state["stages"]["rs"]
    path.write_text(json.dumps(state))
    others = {k: v for k, v in _mtimes(out, "*.safetensors").items() if not k.startswith("rs/")}
    rounds = _mtimes(out / "rs", "stats.json")
    assert rounds  # rs/round-N/stats.json: what marks a round finished

    rc, printed = _quick(out, "--until", "rs")
    assert rc == 0
    # rs runs again (with --resume: its run.json is there), eval is not reached
    assert re.findall(r"\[pipeline\] ===== (\w+) =====", printed) == ["rs"]
    assert "eval: done earlier" not in printed
    assert _mtimes(out / "rs", "stats.json") == rounds  # finished rounds are not redone
    assert {k: v for k, v in _mtimes(out, "*.safetensors").items() if not k.startswith("rs/")} == (
        others
    )
    assert sorted(json.loads(path.read_text())["stages"]) == sorted(NAMES)
