"""`rlhfkit rm` and `rlhfkit rm eval`: reward models from K-wise rankings (InstructGPT)
with graded margins (Llama 2).

Algorithm:
  1. read and validate every ranking / pairwise record (train and eval) before anything
     is written; a pairwise record is a K = 2 ranking;
  2. each record -> K token sequences `[bos?] + prompt + response_k + [eos]` (SFT's
     encoding, `data.reward_data`; in chat format, --chat or auto as `data.chat` decides,
     the prompt as a user turn and the response as the assistant turn, the format
     recorded in the saved tokenizer) and its C(K,2) comparisons: winner, loser,
     margin m(strength) (`data.ranking`; a non-adjacent pair takes the STRONGEST strength
     on the ranking path between its two responses);
  3. the RM starts from the LM: backbone copied, a zero one-output head (`models.reward`),
     every dropout probability set to 0, in its config too (N+ details; SFT keeps its own);
  4. one optimizer step = `batch_size * grad_accum * world_size` PROMPTS in a seeded order;
     a prompt's K responses always travel together, each through ONE forward pass (K
     passes per prompt, not one per pair: InstructGPT's speed and regularity), in
     padding-free packed rows where the model keeps packed sequences apart (probed at
     start-up, `resolve_packing`; --packing / --no-packing), else right-padded;
  5. loss per prompt = mean over its pairs of -log sigmoid(r_w - r_l - m), loss of the
     step = mean over its prompts (`losses.kwise_ranking_loss`); micro-batches and ranks
     are weighted by their prompt counts, so accumulation and DDP change nothing;
  6. each epoch: held-out loss, pairwise accuracy overall and per strength bucket, score
     gap; a resumable checkpoint `epoch-N/` (itself a from_pretrained-loadable RM);
  7. the final RM at the top of --out (AutoModelForSequenceClassification, num_labels=1;
     for a family without one, its backbone + score head: `models.scalar_head`), its
     tokenizer's default encoding adding the BOS / EOS of step 2
     (`models.rm_tokenizer.set_scoring_template`), so `pipeline("text-classification")` on
     prompt + response scores what rlhfkit scores;
  8. with --normalize-with FILE: the final RM's scores of FILE's responses are made mean 0
     (and std 1 with --normalize-scale) in its weights (`loops.reward.normalize`), as
     InstructGPT did with the labeller demonstrations; the statistics go to RM_INFO.

Departures: InstructGPT used one epoch at lr 9e-6 on a 6B RM; our defaults (lr 1e-4,
1 epoch) suit the tiny world models. Normalisation is off unless asked for.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import RMConfig, save_config
from rlhfkit.data.chat import resolve_chat
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import (
    RankingExample,
    collate_rankings,
    encode_rankings,
    resolve_margin_table,
)
from rlhfkit.distributed import (
    Dist,
    all_reduce_sum,
    barrier,
    setup_distributed,
    teardown_distributed,
)
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.loops.common import disable_dropout, seed_everything
from rlhfkit.loops.lm import choose_packing
from rlhfkit.loops.reward.eval import (
    evaluate_rm,
    flat_eval,
    format_eval,
    pair_credit,
    ranking_batch_loss,
)
from rlhfkit.loops.reward.normalize import (
    NormalizeData,
    normalize_reward_model,
    read_normalize_file,
)
from rlhfkit.loops.trainer import Trainer, start_training
from rlhfkit.models.fast_linear import use_onednn_linears
from rlhfkit.models.load import load_tokenizer
from rlhfkit.models.resume import epoch_dir, prepare_output_dir
from rlhfkit.models.reward import ensure_distinct_pad, init_reward_model
from rlhfkit.models.reward_packed import HeadInputView, attention_cost
from rlhfkit.models.rm_tokenizer import set_scoring_template
from rlhfkit.models.scalar_head import is_score_head_model
from rlhfkit.models.wrap import no_sync, unwrap
from rlhfkit.scoring.rm import RM_INFO

CHAT_SEQUENCE = "chat template: prompt as the user turn, response as the assistant turn, to its EOS"

# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


@dataclass
class RMRun:
    """What the loop needs besides the options: the RM, data and where to write."""

    model: torch.nn.Module
    tokenizer: Any
    train: Sequence[RankingExample]
    eval: Sequence[RankingExample] = ()
    out: Path = Path(".")
    dist: Dist = field(default_factory=Dist)
    device: torch.device = torch.device("cpu")
    info: dict[str, Any] = field(default_factory=dict)  # written as RM_INFO beside the RM
    normalize: NormalizeData | None = None  # --normalize-with: centre the final RM on these
    # Resolved: padded unless told (`train_rm` probes the model, `resolve_packing`).
    packing: bool = False


def resolve_packing(model: torch.nn.Module, packing: bool | None, rank: int = 0) -> bool:
    """--packing (None = auto) for reward model `model`: SFT's probe and rule
    (`loops.lm.choose_packing`) applied to what the score head reads (`HeadInputView`)."""
    return choose_packing(HeadInputView(model), packing, "rm", rank=rank)


def accumulate_gradients(
    model: torch.nn.Module,
    micro: Sequence[Sequence[RankingExample]],
    n_global: int,
    run: RMRun,
    bf16: bool = False,
) -> dict[str, float]:
    """Forward + backward of this rank's micro-batches of one optimizer step.

    The step's loss is the mean over its `n_global` prompts (all ranks): a micro-batch's
    mean over its own prompts is weighted by its share of them, so any split into
    micro-batches or ranks gives the same gradient. Returns this rank's sums (loss share,
    correct pairs, pairs, score gap) for logging.
    """
    d = run.dist
    sums = {"loss": 0.0, "correct": 0.0, "pairs": 0.0, "gap": 0.0}
    for k, examples in enumerate(micro):
        cost = attention_cost(model) if run.packing else None  # packed rows' width
        batch = collate_rankings(examples, run.tokenizer.pad_token_id, run.packing, cost)
        batch = batch.to(run.device)
        with no_sync(model, sync=k == len(micro) - 1):
            loss, _, scores = ranking_batch_loss(model, batch, bf16)
            # DDP averages gradients over ranks, hence * world_size.
            (loss * (len(examples) * d.world_size / n_global)).backward()
        gap, credit = pair_credit(scores, batch.pairs)
        sums["loss"] += float(loss.detach()) * len(examples) / n_global
        sums["correct"] += float(credit.sum())
        sums["gap"] += float(gap.sum())
        sums["pairs"] += len(gap)
    return {k: all_reduce_sum(v, d, run.device) for k, v in sums.items()}


def _end_epoch(t: Trainer, run: RMRun, opts: RMConfig, epoch: int) -> None:
    """The epoch's training accuracy (always printed: with no eval data it is the one
    accuracy there is), held-out loss and accuracies, the history row, and the checkpoint
    `epoch-N/`."""
    n_pairs = t.state["epoch_pairs"]
    train_accuracy = t.state["epoch_correct"] / n_pairs if n_pairs else None
    t.state.update(epoch_correct=0.0, epoch_pairs=0)  # the next epoch counts afresh
    metrics = None
    if run.eval:
        metrics = evaluate_rm(
            t.model,
            run.eval,
            run.tokenizer.pad_token_id,
            batch_size=opts.batch_size,
            device=run.device,
            dist=run.dist,
            bf16=opts.bf16,
            packing=run.packing,
        )
    row = t.record_epoch(epoch, train_accuracy=train_accuracy, eval=metrics)
    line = f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}"
    if train_accuracy is not None:
        line += f", train accuracy {train_accuracy:.4f} ({int(n_pairs)} pairs, ties half)"
    rank0_print(line, rank=run.dist.rank)
    if metrics is not None:
        t.logger.log(t.state["step"], {**flat_eval("eval", metrics), "epoch": epoch + 1})
        rank0_print(f"epoch {epoch + 1} eval:\n{format_eval(metrics)}", rank=run.dist.rank)
    t.save(epoch_dir(t.out, epoch + 1))


def fit_rm(run: RMRun, opts: RMConfig) -> dict[str, Any]:
    """Train `run.model` on `run.train` with the K-wise ranking loss. Returns the summary."""
    d = run.dist
    t = start_training(
        run.model, run.tokenizer, len(run.train), out=run.out, dist=d, device=run.device,
        opts=opts, desc="rm", counters={"epoch_correct": 0.0, "epoch_pairs": 0},
    )  # fmt: skip
    prompts_seen = 0
    for epoch in t.epochs():
        for step in t.steps(epoch):
            n_global = len(step)  # prompts in this optimizer step, all ranks
            micro = t.micro_batches(step, run.train)
            sums = accumulate_gradients(t.model, micro, n_global, run, opts.bf16)
            grad_norm = t.optimizer_step()
            prompts_seen += n_global
            t.state["epoch_correct"] += sums["correct"]  # all ranks (accumulate_gradients)
            t.state["epoch_pairs"] += int(sums["pairs"])
            metrics = {
                "loss": sums["loss"],
                "accuracy": sums["correct"] / max(sums["pairs"], 1),
                "score_gap": sums["gap"] / max(sums["pairs"], 1),
                "lr": t.lr(),
                "grad_norm": grad_norm,
                "prompts_per_s": prompts_seen / max(t.elapsed(), 1e-9),
                "epoch": epoch,
            }
            t.step_done(metrics, shown=("loss", "accuracy", "prompts_per_s"))
        if not t.end_epoch(epoch):  # --max-steps reached mid-epoch
            break
        _end_epoch(t, run, opts, epoch)
    wall = t.finish()
    normalization = None
    if run.normalize is not None and d.is_main:  # refused with --strategy fsdp2 (train_rm)
        normalization = _normalize(unwrap(t.model), run, opts)
        run.info["normalization"] = normalization
    t.export(t.out, {RM_INFO: run.info})
    history = t.state["history"]
    summary = {
        "final_loss": t.last.get("loss"),
        "final_train_accuracy": t.last.get("accuracy"),
        "eval": history[-1]["eval"] if history else None,
        "steps": t.state["step"],
        "epochs": history,
        "prompts": len(run.train),
        "wall_time_s": round(wall, 2),
        "prompts_per_s": round(prompts_seen / max(wall, 1e-9), 2),
        "world_size": d.world_size,
        "device": str(run.device),
        "packing": run.packing,
        "normalization": normalization,
    }
    t.write_summary(summary)
    return summary


def _normalize(model: torch.nn.Module, run: RMRun, opts: RMConfig) -> dict[str, Any]:
    """--normalize-with: shift (and scale) the final RM, after the last epoch checkpoint
    (those stay raw, so --resume continues the raw RM)."""
    stats = normalize_reward_model(
        model, run.tokenizer, run.normalize, max_len=opts.max_len,
        scale=opts.normalize_scale, batch_size=opts.batch_size * 4,
    )  # fmt: skip
    what = "mean 0, std 1" if opts.normalize_scale else "mean 0"
    rank0_print(
        f"rm: normalised on {stats['n']} responses of {stats['file']} to {what} (raw mean "
        f"{stats['mean']:.4f}, std {stats['std']:.4f}; shift in {stats['shift_in']})"
    )
    return stats


def _split_eval(records: list[RankingRecord], fraction: float, seed: int):
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(records) * fraction))
    if n_eval >= len(records):
        raise UserError(f"--eval-fraction {fraction} leaves no training records")
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


def train_rm(cfg: RMConfig) -> dict[str, Any]:
    """`rlhfkit rm`: validate everything, then train and save the reward model."""
    if not cfg.data:
        raise UserError("--data is required: ranking / pairwise JSONL file(s)")
    margin_table = resolve_margin_table(cfg.margin)
    records = read_preferences(list(cfg.data))  # file:line errors before anything is written
    eval_records = read_preferences(list(cfg.eval_data)) if cfg.eval_data else []
    if cfg.normalize_scale and not cfg.normalize_with:
        raise UserError("--normalize-scale needs --normalize-with FILE")
    if cfg.normalize_with and cfg.strategy == "fsdp2":
        raise UserError("--normalize-with is not supported with --strategy fsdp2 yet: use ddp")
    normalize = read_normalize_file(cfg.normalize_with) if cfg.normalize_with else None
    if not eval_records and cfg.eval_fraction > 0:
        records, eval_records = _split_eval(records, cfg.eval_fraction, cfg.seed)
    d, device = setup_distributed(cfg.device)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    conversational = any(r.prompt_messages is not None for r in records + eval_records)
    chat = resolve_chat(tokenizer, cfg.chat, what=cfg.model, conversational=conversational)
    ensure_distinct_pad(tokenizer)  # before encoding: same ids, pad never inside a sequence
    train, n_cut = encode_rankings(records, tokenizer, cfg.max_len, margin_table, cfg.overlong)
    held_out, n_cut_eval = encode_rankings(
        eval_records, tokenizer, cfg.max_len, margin_table, cfg.overlong
    )
    if n_cut + n_cut_eval:
        rank0_print(
            f"{n_cut + n_cut_eval} sequences over --max-len {cfg.max_len}: oldest prompt "
            "tokens dropped (the end, where the score is read, is kept)",
            rank=d.rank,
        )
    if d.is_main:
        prepare_output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite, command="rm")
        save_config(cfg, out / "config.yaml")
    barrier(d)

    seed_everything(cfg.seed)
    model, tokenizer = init_reward_model(
        cfg.model,
        tokenizer,
        head_init=cfg.head_init,
        seed=cfg.seed,
        trust_remote_code=cfg.trust_remote_code,
    )
    # The saved tokenizer's own encoding adds rlhfkit's BOS / EOS: plain transformers
    # (`pipeline("text-classification")`, `tok(prompt + response)`) scores as rlhfkit does.
    set_scoring_template(tokenizer)
    # No dropout (N+ details): it makes two forwards of one response score differently.
    # The config says 0 too, so every saved RM (and a PPO value model started from it) does.
    dropped = disable_dropout(model)
    if dropped:
        rank0_print(f"rm: dropout set to 0 (was {', '.join(dropped)})", rank=d.rank)
    use_onednn_linears(model)  # large fp32 CPU linear layers: oneDNN (models/fast_linear.py)
    packing = resolve_packing(model, cfg.packing, rank=d.rank)  # before any training
    n_pairs = sum(len(ex.pairs) for ex in train)
    rank0_print(
        f"rm: {len(train)} prompts ({n_pairs} comparisons), {len(held_out)} held out, "
        f"margins {cfg.margin}, {cfg.epochs} epoch(s)",
        rank=d.rank,
    )
    info = {
        "max_len": cfg.max_len,
        "margin": cfg.margin,
        "margin_table": margin_table,
        "sequence": CHAT_SEQUENCE if chat else "[bos?] + prompt + response + [eos]",
        "chat": chat,
    }
    run = RMRun(model, tokenizer, train, held_out, out, d, device, info, normalize, packing)
    summary = fit_rm(run, cfg)
    what = "AutoModelForSequenceClassification, num_labels=1"
    if is_score_head_model(model):
        what = f"{type(model).__name__}: backbone + score head, loads with rlhfkit"
    rank0_print(f"reward model: {out} ({what})", rank=d.rank)
    teardown_distributed()
    return summary
