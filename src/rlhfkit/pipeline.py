"""`rlhfkit pipeline`: the whole method end to end on the built-in world.

Stages, in order, each writing into its own subfolder of --out:
  world     the built-in world's data (corpus, SFT demos, RL and eval prompts)
  pretrain  tokenizer + tiny Llama from scratch on the corpus           -> base/
  sft       supervised fine-tuning, a checkpoint per epoch               -> sft/epoch-N/
  label     simulated labellers rank K samples of the SFT model          -> labels/
  rm        helpfulness and safety reward models on those rankings      -> rm_helpfulness/, rm_safety/
  select    the SFT epoch whose samples the combined RMs score highest   -> select/
  bon       32 samples per eval prompt of that model, RM + gold scores   -> bon/
  ppo       PPO-ptx from the selected SFT model, Llama 2 combined reward -> ppo/
  rs        rejection sampling fine-tuning from the same model           -> rs/
  dpo       DPO from the same model on the RMs' preference data          -> dpo/
  rloo      RLOO(-ptx) from the same model, same reward as ppo           -> rloo/
  eval      gold metrics of every model on held-out prompts              -> eval/

With --model (your causal LM, a folder or a .gguf) the pretrain stage only records it (a
.gguf is converted into base/); --sft-data, --rm-data, --prompts and --eval-prompts replace
the world's files for their stages (--rm-data skips label); `pipeline_inputs` checks them.
A preset may skip a stage (`pipeline_presets.SKIPPED`: the real presets skip dpo and rloo).

`pipeline.json` records each finished stage and what it produced: a re-run skips those and
resumes the first unfinished one (stages that train pass --resume; the others redo their
short work). Stage options: preset values, then the pipeline YAML's section for the stage.
Each stage's wall `seconds` and `cpu_seconds` (process time, all threads) are recorded.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import PIPELINE_STAGES, ConfigError, PipelineConfig
from rlhfkit.config.checks import check_options
from rlhfkit.config.pipeline_presets import PRESETS, SKIPPED
from rlhfkit.errors import OutputExistsError, UserError
from rlhfkit.files import write_json
from rlhfkit.models.run_folder import resume_flags
from rlhfkit.pipeline_inputs import (
    inputs_of,
    labelled,
    own_model,
    parse_rm_data,
    planned_configs,
    print_plans,
    resolve_preset,
)
from rlhfkit.report.render import render_report


@dataclass
class Ctx:
    """What stages share: the pipeline config, its folders, and what earlier stages made."""

    cfg: PipelineConfig
    out: Path
    state: dict[str, Any]

    @property
    def world(self) -> Path:
        return self.out / "world"

    def result(self, stage: str) -> dict[str, Any]:
        return self.state["stages"][stage]["result"]

    # Each input: the user's file where given (--sft-data ...), else the world's.
    @property
    def sft_data(self) -> str:
        return self.cfg.sft_data or str(self.world / "sft.jsonl")

    @property
    def prompts(self) -> str:
        return self.cfg.prompts or str(self.world / "prompts_train.jsonl")

    @property
    def eval_prompts(self) -> str:
        return self.cfg.eval_prompts or str(self.world / "prompts_eval.jsonl")

    @property
    def ptx_data(self) -> str | None:
        """PPO-ptx's corpus: --ptx-data, else the world's unless the model is the user's."""
        if self.cfg.ptx_data or self.cfg.model:
            return self.cfg.ptx_data
        return str(self.world / "corpus.jsonl")


def stage_options(
    ctx: Ctx, stage: str, cls: type, fixed: dict[str, Any], defaults: dict[str, Any] | None = None
) -> Any:
    """A stage's config: preset values, then `defaults` (what the run's inputs imply, e.g.
    no PPO-ptx without a corpus), then the YAML section, then the pipeline's paths.

    Options that the pipeline sets itself (paths, what earlier stages made) cannot be
    overridden in a section: that would cut the stages apart. Seed, device and bf16 come from
    the pipeline's options unless the section sets them.
    """
    user = getattr(ctx.cfg, stage) or {}  # `sft:` with nothing under it is None
    if not isinstance(user, dict):
        raise ConfigError(f"pipeline section '{stage}': must be a mapping of option: value")
    user = dict(user)
    clash = sorted(set(user) & set(fixed))
    if clash:
        raise ConfigError(f"pipeline section '{stage}': {clash} are set by the pipeline itself")
    names = {f.name for f in dataclasses.fields(cls)}
    values = {**PRESETS[resolve_preset(ctx.cfg)].get(stage, {}), **(defaults or {}), **user,
              **fixed}  # fmt: skip
    common = {"seed": ctx.cfg.seed, "device": ctx.cfg.device, "bf16": ctx.cfg.bf16}
    values.update({k: v for k, v in common.items() if k in names and k not in user})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"pipeline section '{stage}': unknown option(s) {unknown}")
    return cls(**values)


def _resumable(folder: Path, checkpointed: bool = True) -> dict[str, bool]:
    """Continue a stage's earlier, interrupted run in `folder` if there is one; start it
    again where it stopped before its first checkpoint (`models.run_folder.resume_flags`)."""
    return resume_flags(folder, checkpointed)


# ---------------------------------------------------------------------------------------
# Stages: one function each, returning what later stages need. Each imports its command
# when it runs (lazy on purpose): `rlhfkit pipeline --help` and a bad option answer before
# torch and transformers load.
# ---------------------------------------------------------------------------------------


def stage_world(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import WorldMakeConfig
    from rlhfkit.world.commands import world_make

    world_make(
        stage_options(ctx, "world", WorldMakeConfig, {"out": str(ctx.world), "overwrite": True})
    )
    return {"dir": str(ctx.world)}


def stage_pretrain(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import PretrainConfig
    from rlhfkit.loops.pretrain import train_pretrain

    if ctx.cfg.model:
        return own_model(ctx.cfg.model, ctx.out / "base")
    out = ctx.out / "base"
    fixed = {"data": str(ctx.world / "corpus.jsonl"), "out": str(out), **_resumable(out)}
    train_pretrain(stage_options(ctx, "pretrain", PretrainConfig, fixed))
    return {"model": str(out)}


def stage_sft(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import SFTConfig
    from rlhfkit.loops.sft import train_sft

    out = ctx.out / "sft"
    fixed = {
        "model": ctx.result("pretrain")["model"],
        "data": ctx.sft_data,
        "out": str(out),
        **_resumable(out),
    }
    train_sft(stage_options(ctx, "sft", SFTConfig, fixed))
    epochs = sorted(out.glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    return {"epochs": [str(p) for p in epochs], "last": str(epochs[-1])}


def stage_label(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import WorldLabelConfig
    from rlhfkit.world.commands import world_label

    if ctx.cfg.rm_data:
        return {"skipped": "reward-model data from --rm-data"}
    out = ctx.out / "labels"
    fixed = {
        "policy": ctx.result("sft")["last"],
        "out": str(out),
        "overwrite": True,
        "prompts": str(ctx.world / "prompts_train.jsonl"),
    }
    world_label(stage_options(ctx, "label", WorldLabelConfig, fixed))
    return {
        "helpfulness": str(out / "rankings_helpfulness.jsonl"),
        "safety": str(out / "rankings_safety.jsonl"),
    }


def _preference_files(ctx: Ctx) -> dict[str, list[str]]:
    """The reward models' data, by RM: the user's --rm-data files, else the label stage's
    rankings (what rm trains on, and dpo too)."""
    if ctx.cfg.rm_data:
        return parse_rm_data(ctx.cfg.rm_data)
    return labelled(ctx.result("label"))


def stage_rm(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import RMConfig
    from rlhfkit.loops.reward.train import train_rm

    result = {}
    for name, files in _preference_files(ctx).items():
        out = ctx.out / f"rm_{name}"
        fixed = {
            "model": ctx.result("sft")["last"],
            "data": tuple(files),
            "out": str(out),
            **_resumable(out),
        }
        train_rm(stage_options(ctx, "rm", RMConfig, fixed))
        result[name] = str(out)
    return result


def _reward_options(ctx: Ctx) -> dict[str, Any]:
    """Helpfulness and safety RMs combined by Llama 2's rule; a helpfulness RM alone as it is."""
    rms = ctx.result("rm")
    specs = tuple(f"{name}={rms[name]}" for name in ("helpfulness", "safety") if name in rms)
    return {"rm": specs, "combine": "llama2" if "safety" in rms else "single"}


def stage_select(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import SelectConfig
    from rlhfkit.loops.select import run_select

    out = ctx.out / "select"
    fixed = {
        "checkpoints": tuple(ctx.result("sft")["epochs"]),
        "out": str(out),
        "prompts": ctx.eval_prompts,
        "overwrite": True,
        **_reward_options(ctx),
    }
    result = run_select(stage_options(ctx, "select", SelectConfig, fixed))
    return {"best": result["best"]["path"], "name": result["best"]["name"]}


def stage_bon(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import SelectConfig
    from rlhfkit.loops.bon import SAMPLES, run_bon

    out = ctx.out / "bon"
    fixed = {"checkpoints": (ctx.result("select")["best"],), "out": str(out), "overwrite": True,
             "prompts": ctx.eval_prompts, **_reward_options(ctx)}  # fmt: skip
    summary = run_bon(stage_options(ctx, "bon", SelectConfig, fixed))
    return {"samples": str(out / SAMPLES), "seconds": summary["seconds"]}


def stage_ppo(ctx: Ctx) -> dict[str, Any]:
    return _rl_stage(ctx, "ppo")


def _rl_stage(ctx: Ctx, stage: str, estimator: str | None = None) -> dict[str, Any]:
    """`rlhfkit ppo` from the selected SFT model with the combined RMs, into `stage`/; with
    `estimator` fixed (rloo), which a YAML section then cannot change."""
    from rlhfkit.config import PPOConfig
    from rlhfkit.loops.ppo.loop import train_ppo

    out = ctx.out / stage
    fixed = {
        "policy": ctx.result("select")["best"],
        "out": str(out),
        **_resumable(out),
        **({"estimator": estimator} if estimator else {}),
        "prompts": ctx.prompts,
        "ptx_data": ctx.ptx_data,
        "eval_prompts": ctx.eval_prompts,
        **_reward_options(ctx),
    }
    summary = train_ppo(stage_options(ctx, stage, PPOConfig, fixed, _ppo_defaults(ctx)))
    return {"model": summary.get("policy", str(out))}


def _ppo_defaults(ctx: Ctx) -> dict[str, Any]:
    return {"ptx_coef": 0.0} if ctx.ptx_data is None else {}


def stage_rs(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import RSConfig
    from rlhfkit.loops.rejection.loop import train_rs

    out = ctx.out / "rs"
    fixed = {
        "policy": ctx.result("select")["best"],
        "out": str(out),
        **_resumable(out, checkpointed=False),
        "prompts": ctx.prompts,
        "eval_prompts": ctx.eval_prompts,
        **_reward_options(ctx),
    }
    summary = train_rs(stage_options(ctx, "rs", RSConfig, fixed))
    return {"model": summary.get("policy", str(out))}


def not_in_preset(ctx: Ctx, stage: str) -> str | None:
    """Why the run's preset skips `stage` (`pipeline_presets.SKIPPED`), or None: it runs,
    also where the pipeline YAML gives the stage a section of its own."""
    if getattr(ctx.cfg, stage):
        return None
    return SKIPPED.get(resolve_preset(ctx.cfg), {}).get(stage)


def stage_dpo(ctx: Ctx) -> dict[str, Any]:
    if why := not_in_preset(ctx, "dpo"):  # before torch loads
        return {"skipped": why}
    from rlhfkit.config import DPOConfig
    from rlhfkit.loops.dpo import train_dpo

    out = ctx.out / "dpo"
    fixed = {
        "model": ctx.result("select")["best"],  # also the frozen reference
        "data": tuple(f for files in _preference_files(ctx).values() for f in files),
        "out": str(out),
        **_resumable(out),
    }
    train_dpo(stage_options(ctx, "dpo", DPOConfig, fixed))
    return {"model": str(out)}


def stage_rloo(ctx: Ctx) -> dict[str, Any]:
    if why := not_in_preset(ctx, "rloo"):  # before torch loads
        return {"skipped": why}
    return _rl_stage(ctx, "rloo", estimator="rloo")


def models_to_evaluate(ctx: Ctx) -> dict[str, str]:
    """Every model the pipeline made, by a readable name."""
    models = {"base": ctx.result("pretrain")["model"]}
    for path in ctx.result("sft")["epochs"]:
        models[f"sft-{Path(path).name}"] = path
    if "select" in ctx.state["stages"]:
        models["sft-selected"] = ctx.result("select")["best"]
    for stage in ("ppo", "rs", "dpo", "rloo"):
        if stage in ctx.state["stages"] and "model" in ctx.result(stage):  # not skipped
            models[stage] = ctx.result(stage)["model"]
    return models


EVAL_KEYS = ("gold_score", "helpfulness", "helpfulness_safe", "safety_unsafe",
             "false_refusal_rate", "mean_response_words", "mean_response_tokens",
             "eos_rate")  # fmt: skip


def stage_eval(ctx: Ctx) -> dict[str, Any]:
    from rlhfkit.config import EvalConfig
    from rlhfkit.loops.evaluate import run_eval
    from rlhfkit.loops.pipeline_eval import (
        ExtraEval,
        evaluate_extras,
        format_eval_table,
        summary_row,
        win_rates_over,
    )

    out = ctx.out / "eval"
    out.mkdir(parents=True, exist_ok=True)
    table = {}
    models = models_to_evaluate(ctx)
    for name, path in models.items():
        fixed = {
            "model": path,
            "prompts": ctx.eval_prompts,
            "out": str(out / f"{name}.json"),
            "overwrite": True,
        }
        print(f"\n== eval: {name} ({path})")
        cfg = stage_options(ctx, "eval", EvalConfig, fixed)
        summary = run_eval(cfg)
        table[name] = {k: summary.get(k) for k in EVAL_KEYS}
    # RM score of the same greedy responses, KL to the selected SFT model on samples, and the
    # win rate over it by RM score (the measure that needs no gold judge) and by gold score.
    done = ctx.state["stages"]
    spec = ExtraEval.from_eval_config(
        cfg,
        reference=ctx.result("select")["best"] if "select" in done else None,
        rm_specs=_reward_options(ctx)["rm"] if "rm" in done else (),
    )
    extras = evaluate_extras(out, models, spec)
    for name, row in extras.items():
        table[name].update(summary_row(row))
    for by in ("rm_score_per_prompt", "gold_score_per_prompt"):  # gold: world prompts only
        for name, row in win_rates_over(extras, "sft-selected", by).items():
            table[name].update(row)
    write_json(out / "summary.json", table)
    print("\n" + format_eval_table(table))
    return {"summary": str(out / "summary.json")}


STAGE_FUNCTIONS: dict[str, Callable[[Ctx], dict[str, Any]]] = {
    "world": stage_world,
    "pretrain": stage_pretrain,
    "sft": stage_sft,
    "label": stage_label,
    "rm": stage_rm,
    "select": stage_select,
    "bon": stage_bon,
    "ppo": stage_ppo,
    "rs": stage_rs,
    "dpo": stage_dpo,
    "rloo": stage_rloo,
    "eval": stage_eval,
}
STAGES: list[tuple[str, Callable[[Ctx], dict[str, Any]]]] = [
    (name, STAGE_FUNCTIONS[name]) for name in PIPELINE_STAGES
]


def _load_state(out: Path, cfg: PipelineConfig) -> dict[str, Any]:
    path = out / "pipeline.json"
    if cfg.overwrite and path.exists():
        import shutil

        shutil.rmtree(out)
    # A run that never started (no stage finished, nothing else written) is started afresh.
    if path.exists() and not json.loads(path.read_text()).get("stages"):
        if [p.name for p in out.iterdir()] == [path.name]:
            path.unlink()
    if path.exists():
        state = json.loads(path.read_text())
        if state.get("preset") != cfg.preset or state.get("seed") != cfg.seed:
            raise UserError(
                f"{out} holds a pipeline run with preset {state.get('preset')!r}, seed "
                f"{state.get('seed')}: pass --overwrite to replace it, or the same options"
            )
        if state.get("inputs", {}) != inputs_of(cfg):
            was = state.get("inputs") or "the built-in model and the world's data"
            raise UserError(
                f"{out} holds a pipeline run of other inputs ({was}): pass --overwrite to "
                "replace it, or the same --model and data options"
            )
        return state
    if out.exists() and any(out.iterdir()):
        raise OutputExistsError(f"{out} is not empty and holds no pipeline run: choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    # Written before the first stage, so that a run killed in it is resumed (or overwritten).
    state = {"preset": cfg.preset, "seed": cfg.seed, "stages": {}}
    if inputs_of(cfg):
        state["inputs"] = inputs_of(cfg)
    write_json(path, state)
    return state


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run (or continue) every stage; see the module docstring."""
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    cfg = dataclasses.replace(cfg, preset=resolve_preset(cfg))
    out = Path(cfg.out)
    ctx = Ctx(cfg=cfg, out=out, state={"stages": {}})

    def options(stage: str, cls: type, fixed: dict, defaults: dict | None = None) -> Any:
        return stage_options(ctx, stage, cls, fixed, defaults)

    # The stages' configs for the plan, and their errors, before anything is written.
    planned = planned_configs(cfg, ctx.ptx_data, options) if cfg.model else {}
    ctx.state = _load_state(out, cfg)
    if planned and not {"sft", "rm", "ppo", "rs"} <= set(ctx.state["stages"]):
        print_plans(planned, cfg.model, cfg.device)
    t0 = time.perf_counter()
    for name, run in STAGES:
        if name in ctx.state["stages"]:
            print(f"[pipeline] {name}: done earlier, skipped")
        else:
            print(f"\n[pipeline] ===== {name} =====", flush=True)
            t, cpu = time.perf_counter(), time.process_time()
            result = run(ctx)
            entry = {
                "result": result,
                "seconds": round(time.perf_counter() - t, 1),
                "cpu_seconds": round(time.process_time() - cpu, 1),  # every thread of ours
            }
            if "skipped" in result:  # nothing to do with these inputs: recorded, said why
                entry["skipped"] = result.pop("skipped")
                print(f"[pipeline] {name}: skipped ({entry['skipped']})", flush=True)
            ctx.state["stages"][name] = entry
            write_json(out / "pipeline.json", ctx.state)
            print(f"[pipeline] {name}: finished in {time.perf_counter() - t:.0f} s", flush=True)
        if name == cfg.until:
            break
    total = sum(s["seconds"] for s in ctx.state["stages"].values())
    print(
        f"\n[pipeline] done: {out} ({time.perf_counter() - t0:.0f} s this run, "
        f"{total:.0f} s of stage time in all)"
    )
    print(f"[pipeline] report: {render_report(out)} (re-render: rlhfkit report {out})")
    return ctx.state
