"""The `rlhfkit` command: thin. Parse a command's config, call its loop function.

Each command is one row of COMMANDS: its config dataclass (in `config.py`), the function
that runs it, and a one-line summary. Heavy libraries are imported only once a command
is chosen, so `rlhfkit --help` answers at once.

Config resolution, lowest to highest priority: the dataclass defaults, `--config FILE.yaml`,
then flags. Required options (those with no useful default) are listed per command. The
resolved config is then checked against the constraints declared on its options
(`rlhfkit.validate`), still without torch; a UserError anywhere is one line, exit status 2.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

from rlhfkit import __version__


class Command(NamedTuple):
    config: str  # "module:Class"
    run: str  # "module:function", called with the resolved config
    summary: str
    required: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {
    "pretrain": Command(
        "rlhfkit.config:PretrainConfig",
        "rlhfkit.loops.pretrain:train_pretrain",
        "0  train a tokenizer and a small LM from scratch on a corpus",
        ("data", "out"),
    ),
    "sft": Command(
        "rlhfkit.config:SFTConfig",
        "rlhfkit.loops.sft:train_sft",
        "1  supervised fine-tuning, a checkpoint per epoch",
        ("model", "data", "out"),
    ),
    "rm": Command(
        "rlhfkit.config:RMConfig",
        "rlhfkit.loops.reward.train:train_rm",
        "2  reward model from K-wise rankings / graded pairs (margins, per-strength eval)",
        ("model", "data", "out"),
    ),
    "rm eval": Command(
        "rlhfkit.config:RMEvalConfig",
        "rlhfkit.loops.reward.eval:eval_rm",
        "-  reward model loss and pairwise accuracy (overall, per strength) on rankings",
        ("model", "data"),
    ),
    "score": Command(
        "rlhfkit.config:ScoreConfig",
        "rlhfkit.scoring.command:run_score",
        "-  score prompt/response records with reward models (single, weighted-sum, llama2)",
        ("data", "rm", "out"),
    ),
    "serve-rm": Command(
        "rlhfkit.config:ServeRMConfig",
        "rlhfkit.scoring.serve:serve_rm",
        "-  serve a reward model over HTTP for --rm NAME=URL (and OpenRLHF's /get_reward)",
        ("model",),
    ),
    "select": Command(
        "rlhfkit.config:SelectConfig",
        "rlhfkit.loops.select:run_select",
        "-  pick the SFT checkpoint whose samples the reward model scores highest",
        ("prompts", "out"),
    ),
    "ppo": Command(
        "rlhfkit.config:PPOConfig",
        "rlhfkit.loops.ppo.loop:train_ppo",
        "3  PPO with a per-token KL penalty to the reference, optional PPO-ptx",
        ("policy", "prompts", "out"),
    ),
    "rs": Command(
        "rlhfkit.config:RSConfig",
        "rlhfkit.loops.rejection.loop:train_rs",
        "3  rejection sampling: best of K samples by reward, SFT on them, by rounds (Llama 2)",
        ("policy", "prompts", "out"),
    ),
    "dpo": Command(
        "rlhfkit.config:DPOConfig",
        "rlhfkit.loops.dpo:train_dpo",
        "3  DPO / IPO on rankings and preference pairs against a frozen reference",
        ("model", "data", "out"),
    ),
    "pipeline": Command(
        "rlhfkit.config:PipelineConfig",
        "rlhfkit.pipeline:run_pipeline",
        "*  every stage end to end on the built-in world, with evaluation of every model",
    ),
    "report": Command(
        "rlhfkit.config:ReportConfig",
        "rlhfkit.report.render:run_report",
        "-  re-render a pipeline run's report.md and plots from its files (no training)",
    ),
    "world make": Command(
        "rlhfkit.config:WorldMakeConfig",
        "rlhfkit.world.commands:world_make",
        "-  write the built-in world: corpus, SFT demos, RL and eval prompts",
        ("out",),
    ),
    "world judge": Command(
        "rlhfkit.config:WorldJudgeConfig",
        "rlhfkit.world.commands:world_judge",
        "-  score prompt/response records with the world's gold judges",
        ("data",),
    ),
    "world label": Command(
        "rlhfkit.config:WorldLabelConfig",
        "rlhfkit.world.commands:world_label",
        "-  simulated labellers: rank K samples of a policy by the gold judges",
        ("policy", "prompts", "out"),
    ),
    "eval": Command(
        "rlhfkit.config:EvalConfig",
        "rlhfkit.loops.evaluate:run_eval",
        "-  a model on any prompts: RM score, KL, length, EOS rate, win rate (+ gold on world prompts)",
        ("model", "prompts"),
    ),
    "plan": Command(
        "rlhfkit.config:PlanConfig",
        "rlhfkit.plan:run_plan",
        "-  memory per device of a stage, from config.json alone: rlhfkit plan STAGE --help",
    ),
    **{
        f"plan {stage}": Command(
            f"rlhfkit.config:Plan{cls}Config",
            "rlhfkit.plan:run_plan",
            f"-  memory per device of `{stage}` (weights, grads, optimizer, activations)",
            required,
        )
        for stage, cls, required in (
            ("pretrain", "Pretrain", ()),
            ("sft", "SFT", ("model",)),
            ("rm", "RM", ("model",)),
            ("ppo", "PPO", ("policy",)),
            ("rs", "RS", ("policy",)),
            ("dpo", "DPO", ("model",)),
        )
    },
    "convert": Command(
        "rlhfkit.config:ConvertConfig",
        "rlhfkit.models.convert:run_convert",
        "-  a GGUF checkpoint (llama.cpp) to a Hugging Face folder: rlhfkit convert FILE.gguf --out DIR",
        ("file", "out"),
    ),
}


def _load(ref: str):
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {n:<{width}}  {c.summary}" for n, c in COMMANDS.items())
    return (
        f"rlhfkit {__version__}: the RLHF pipeline of InstructGPT and Llama 2 on any "
        "Hugging Face causal LM\n\n"
        "usage: rlhfkit COMMAND [--config FILE.yaml] [--option value ...]\n"
        "       rlhfkit COMMAND --help\n\n"
        f"commands (stage number first):\n{rows}\n\n"
        "Every option can also be set in a YAML file given with --config; flags override it.\n"
    )


def _split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """The longest command name (one or two words) that argv starts with."""
    if len(argv) >= 2 and f"{argv[0]} {argv[1]}" in COMMANDS:
        return f"{argv[0]} {argv[1]}", argv[2:]
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    return None, argv


def _pop_config_file(args: list[str]) -> tuple[str | None, list[str]]:
    rest, path, i = [], None, 0
    while i < len(args):
        a = args[i]
        if a == "--config" and i + 1 < len(args):
            path, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def parse(name: str, args: Sequence[str]):
    """Resolve a command's config from `--config` YAML and flags (exits on bad flags)."""
    import tyro

    from rlhfkit.config import load_yaml_defaults

    cmd = COMMANDS[name]
    cls = _load(cmd.config)
    path, rest = _pop_config_file(list(args))
    default = load_yaml_defaults(cls, path)
    # Repeatable options (--rm A --rm B) append to their default: given on the command line,
    # they replace the YAML's list instead of adding to it.
    given = {a.split("=", 1)[0][2:].replace("-", "_") for a in rest if a.startswith("--")}
    repeatable = [
        f.name
        for f in dataclasses.fields(cls)
        if "UseAppendAction" in str(f.type) and f.name in given
    ]
    default = dataclasses.replace(default, **dict.fromkeys(repeatable, ()))
    # An option is required unless the YAML already set it to something non-empty.
    missing = {f: tyro.MISSING for f in cmd.required if getattr(default, f) in ("", None, ())}
    default = dataclasses.replace(default, **missing)
    return tyro.cli(cls, default=default, args=rest, prog=f"rlhfkit {name}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"rlhfkit {__version__}")
        return 0
    name, rest = _split_command(argv)
    if name is None:
        print(f"rlhfkit: unknown command {argv[0]!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2

    from rlhfkit.errors import RemoteUnavailable, UserError

    try:
        cfg = parse(name, rest)
        # Before the run function (and torch) is imported: a bad option, a bad record of a
        # data file, a model folder of the wrong kind or an --out that cannot be written is
        # one line in well under a second.
        from rlhfkit.validate import validate

        validate(cfg)
        from rlhfkit import threads

        threads.start()  # before torch loads: the thread count (rlhfkit/threads.py)
        result = _load(COMMANDS[name].run)(cfg)
    except RemoteUnavailable as e:
        # A server that went away: try again later (EX_TEMPFAIL), the message says how.
        print(f"rlhfkit {name}: error: {e}", file=sys.stderr)
        return 75
    except UserError as e:
        # Bad input is the user's to fix: say what and where, no traceback.
        _failed()
        print(f"rlhfkit {name}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into a reader that stopped (`rlhfkit ppo --help | head`): not an error.
        import os

        _failed()
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(f"\nrlhfkit {name}: interrupted; {_after_interrupt(name)}", file=sys.stderr)
        return 130
    except BaseException:
        _failed()
        raise
    finally:
        _done()
    return int(result) if isinstance(result, int) else 0


def _failed() -> list:
    """A command stopped before its end: the run folders it started where no training
    state followed go (`models.run_folder.discard_unstarted`). Returns those folders."""
    from rlhfkit.models.run_folder import discard_unstarted

    return discard_unstarted()


def _done() -> None:
    """After a command, failed or not: nothing of it is kept for the next one in this
    process (records read by validation, run folders it prepared)."""
    from rlhfkit.data.rows import forget_reads
    from rlhfkit.models.run_folder import forget_prepared

    forget_reads()
    forget_prepared()


def _after_interrupt(name: str) -> str:
    """What to do after Ctrl-C: run the command again, as it was or with --resume."""
    from rlhfkit.models.run_folder import unresumable

    stuck = unresumable()  # started here, nothing to resume in them (yet)
    cleared = _failed()
    if cleared:
        return f"training had not started: nothing kept in {cleared[0]}; run the same command again"
    if name == "pipeline":
        return "rerun the same command to continue"
    if stuck:
        return f"no checkpoint in {stuck[0]} yet: rerun with --overwrite to start again"
    return "rerun with --resume to continue"


if __name__ == "__main__":
    raise SystemExit(main())
