"""`rlhfkit rs`: rejection sampling fine-tuning (Llama 2, section 3.2.3).

Each round r = 1 .. --rounds (`rounds.RSRun.round`):
  1. sample K responses per prompt from the current policy (the previous round's output;
     round 1: --policy), at the round's temperature, with seeded generators;
  2. score them with the reward (RMs combined by --combine, or a rule), in batches;
  3. keep, per prompt, the highest-reward response (ties: the lowest index), or with
     --keep best-of-all-rounds the best response of any round so far (ties: the earliest);
     with --kl-coef beta, the highest r + beta log pi(y|x), and with --add-greedy the
     policy's greedy response competes too (`keep.py`);
     a kept response cut at --max-new-tokens before EOS is dropped (--keep-truncated:
     trained without EOS), and with --min-gap one too close to its samples' median;
  4. fine-tune the current policy on the kept set with the SFT loss, prompt tokens masked
     (`loops/lm.fit_lm`, the loop of `rlhfkit sft`);
  5. write `round-N/`: samples.jsonl, kept.jsonl, stats.json and the fine-tuned policy
     (a Hugging Face folder: `rlhfkit eval --model OUT/round-N` reads it).
The final policy is exported at the top of --out (as `rlhfkit ppo` does): `rlhfkit eval
--model OUT` and `from_pretrained(OUT)` read it. Per round, stats.json (and summary.json)
hold the mean reward of all samples and of the kept ones, and the max and median reward
among the first k samples for k = 1 .. K, averaged over prompts (Llama 2 Figure 7), drawn
in `rs_max_median.png`.

Choices, where the paper leaves room:
- each round fine-tunes the CURRENT policy (the previous round's output), as Llama 2
  fine-tuned its latest model; the optimizer and schedule start afresh every round;
- the reward is never whitened (llama2-combined RMs included): whitening depends on the
  batch, and scores must compare across batches and rounds;
- best-of-all-rounds keeps the scores earlier rounds' samples got when they were drawn:
  the reward is fixed, so they compare with this round's as they are (no re-scoring);
- the same prompts every round.

Resume (--resume): a round with `stats.json` is finished and skipped; a round's samples
are never redrawn (`samples.py`: saved batch by batch, seeded per batch), and its
fine-tuning resumes from the last checkpoint of `round-N/train/` (`fit_lm`'s resume;
--save-every adds checkpoints within an epoch). The training checkpoints of a finished
round are deleted (its policy is `round-N/` itself). A resumed run ends with the same
weights as an uninterrupted one. A served reward model that stops answering ends the run
with one line saying to --resume (the samples drawn so far stay). One process only (not
under torchrun).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rlhfkit.config import RSConfig, checks, save_config
from rlhfkit.config.checks import check_options
from rlhfkit.data.records import PromptRecord, read_prompts
from rlhfkit.errors import RemoteUnavailable, UserError
from rlhfkit.files import write_json
from rlhfkit.logging import MetricsLogger
from rlhfkit.loops.rejection.rounds import RS_INFO, RSRun
from rlhfkit.models.resume import prepare_output_dir
from rlhfkit.report.plots import plot_max_median
from rlhfkit.scoring.rules import check_rule_prompts

PLOT = "rs_max_median.png"


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------


def round_temperatures(cfg: RSConfig) -> list[float]:
    """One temperature per round from --temperature (one value, or one per round)."""
    checks.round_temperatures(cfg)
    temps = list(cfg.temperature)
    if len(temps) == 1:
        temps = temps * cfg.rounds
    return temps


def _check(cfg: RSConfig) -> list[float]:
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("rlhfkit rs runs in one process: launch it without torchrun")
    return round_temperatures(cfg)


def _read_inputs(cfg: RSConfig) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Every prompt file, validated (file:line errors) before anything is written."""
    prompts = read_prompts(cfg.prompts)[: cfg.max_prompts]
    if not prompts:
        raise UserError(f"{cfg.prompts}: no prompts (--max-prompts {cfg.max_prompts})")
    eval_prompts = read_prompts(cfg.eval_prompts) if cfg.eval_prompts else []
    if cfg.eval_max_prompts is not None:
        eval_prompts = eval_prompts[: cfg.eval_max_prompts]
    check_rule_prompts(cfg.rule_reward, [*prompts, *eval_prompts])
    return prompts, eval_prompts


def train_rs(cfg: RSConfig) -> dict[str, Any]:
    """Run `rlhfkit rs` (module docstring). Returns the summary dict (also summary.json)."""
    temps = _check(cfg)
    prompts, eval_prompts = _read_inputs(cfg)
    out = Path(cfg.out)
    prepare_output_dir(  # rs resumes from its round-N/ folders, not from latest_checkpoint
        out, resume=cfg.resume, overwrite=cfg.overwrite, command="rs", checkpointed=False
    )
    save_config(cfg, out / "config.yaml")
    t0 = time.perf_counter()
    run = RSRun.build(cfg, prompts, eval_prompts)
    logger = MetricsLogger(out, report_to=cfg.report_to)
    print(
        f"rs: {len(prompts)} prompts x {cfg.k} samples, {cfg.rounds} round(s), keep "
        f"{cfg.keep}, on {run.device}; reward: {cfg.rule_reward or ', '.join(cfg.rm)}",
        flush=True,
    )
    try:
        initial_eval = run.initial_eval()
        rounds: list[dict[str, Any]] = []
        for r in range(1, cfg.rounds + 1):
            if run.finished(r):
                rounds.append(run.skip(r))
            else:
                rounds.append(run.round(r, temps[r - 1]))
                logger.log(r, _round_metrics(rounds[-1]))
            plot_max_median(rounds, out / PLOT)
            summary = _summary(cfg, out, rounds, initial_eval, time.perf_counter() - t0)
            write_json(out / "summary.json", summary)
        run.export_final(out, {RS_INFO: _info(cfg, len(prompts))})
    except RemoteUnavailable as e:
        raise RemoteUnavailable(
            f"{e}. The samples drawn so far are saved in {out}: rerun the same command with "
            "--resume once the server answers again"
        ) from None
    finally:
        logger.close()
    print(f"rs: final policy written to {out} (rlhfkit eval --model {out}); plot {out / PLOT}")
    return summary


_LOGGED = ("mean_reward_all", "mean_reward_kept", "mean_reward_best_of_round", "temperature",
           "mean_response_tokens_kept", "truncated_rate_all", "truncated_dropped")  # fmt: skip


def _round_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    m = {f"rs/{k}": stats[k] for k in _LOGGED if k in stats}
    if stats.get("train"):
        m["rs/train_loss"] = stats["train"].get("final_loss")
    for k, v in (stats.get("eval") or {}).items():
        if isinstance(v, (int, float)):
            m[f"eval/{k}"] = v
    return m


def _info(cfg: RSConfig, n_prompts: int) -> dict[str, Any]:
    return {
        "policy_init": cfg.policy,
        "rounds": cfg.rounds,
        "k": cfg.k,
        "keep": cfg.keep,
        "min_gap": cfg.min_gap,
        "kl_coef": cfg.kl_coef,
        "add_greedy": cfg.add_greedy,
        "keep_truncated": cfg.keep_truncated,
        "prompts": n_prompts,
        "reward": cfg.rule_reward or list(cfg.rm),
        "combine": None if cfg.rule_reward else cfg.combine,
    }


def _summary(
    cfg: RSConfig,
    out: Path,
    rounds: list[dict[str, Any]],
    initial_eval: dict[str, Any] | None,
    wall: float,
) -> dict[str, Any]:
    keys = ("round", "temperature", "mean_reward_all", "mean_reward_kept",
            "mean_reward_best_of_round", "kept_prompts", "kept_from_earlier_rounds",
            "truncated_rate_all", "truncated_dropped", "kept_truncated", "kept_greedy",
            "mean_reward_greedy", "max_median_at_k", "gold_all", "gold_kept", "gold_greedy",
            "train", "eval")  # fmt: skip
    return {
        **_info(cfg, rounds[0]["prompts"]),
        "rounds": [{k: st[k] for k in keys if k in st} for st in rounds],
        "eval_initial": initial_eval,
        "wall_time_s": round(wall, 2),
        "policy": str(out),
        "plot": str(out / PLOT),
    }
