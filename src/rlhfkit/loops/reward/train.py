"""`rlhfkit rm`: reward models from K-wise rankings (InstructGPT) with graded margins
(Llama 2).

Algorithm (`train_rm`, each numbered step marked in the code):
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
     its tokenizer's default encoding adds the BOS / EOS of step 2
     (`models.rm_tokenizer.set_scoring_template`), so `pipeline("text-classification")` on
     prompt + response scores what rlhfkit scores, in every folder saved below;
  4. one optimizer step = `batch_size * grad_accum * world_size` PROMPTS in a seeded order;
     a prompt's K responses always travel together, each through ONE forward pass (K
     passes per prompt, not one per pair: InstructGPT's speed and regularity), in
     padding-free packed rows where the model keeps packed sequences apart (probed at
     start-up, `resolve_packing`; --packing / --no-packing), else right-padded;
  5. loss per prompt = mean over its pairs of -log sigmoid(r_w - r_l - m), loss of the
     step = mean over its prompts (`losses.kwise_ranking_loss`); micro-batches and ranks
     are weighted by their prompt counts, so accumulation and DDP change nothing;
  6. each epoch: held-out loss, pairwise accuracy overall and per strength bucket, score
     gap (`evaluate_rm`, tallied by `loops.reward.metrics`); a resumable checkpoint
     `epoch-N/` (itself a from_pretrained-loadable RM);
  7. with --normalize-with FILE: the final RM's scores of FILE's responses are made mean 0
     (and std 1 with --normalize-scale) in its weights (`loops.reward.normalize`), as
     InstructGPT did with the labeller demonstrations; the statistics go to RM_INFO; the
     epoch checkpoints stay raw, so --resume continues the raw RM;
  8. the final RM at the top of --out (AutoModelForSequenceClassification, num_labels=1;
     for a family without one, its backbone + score head: `models.scalar_head`), RM_INFO
     beside it, summary.json.

`rlhfkit rm eval` (`loops.reward.eval`) scores saved RMs with step 6's evaluation.

Departures: InstructGPT used one epoch at lr 9e-6 on a 6B RM; our defaults (lr 1e-4,
1 epoch) suit the tiny world models. Normalisation is off unless asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import RMConfig
from rlhfkit.config.checks import check_options
from rlhfkit.data.chat import resolve_chat
from rlhfkit.data.preferences import read_preferences
from rlhfkit.data.records import RankingRecord
from rlhfkit.data.reward_data import (
    RankingBatch,
    RankingExample,
    collate_rankings,
    encode_rankings,
    resolve_margin_table,
)
from rlhfkit.distributed import Dist, all_reduce_sum, setup_distributed, teardown_distributed
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.loops.common import (
    disable_dropout,
    rank_micro_batches,
    seed_everything,
    split_held_out,
    start_output,
)
from rlhfkit.loops.lm import choose_packing
from rlhfkit.loops.reward.metrics import EvalTotals, flat_eval, format_eval
from rlhfkit.loops.reward.normalize import (
    NormalizeData,
    normalize_final_rm,
    read_normalize_file,
)
from rlhfkit.loops.trainer import Trainer, TrainRun, start_training
from rlhfkit.losses import kwise_ranking_loss, pair_credit
from rlhfkit.models.fast_linear import use_onednn_linears
from rlhfkit.models.load import autocast_context, load_tokenizer
from rlhfkit.models.resume import epoch_dir
from rlhfkit.models.reward import ensure_distinct_pad, init_reward_model, reward_scores
from rlhfkit.models.reward_packed import HeadInputView, attention_cost, packed_reward_scores
from rlhfkit.models.rm_tokenizer import set_scoring_template
from rlhfkit.models.scalar_head import is_score_head_model
from rlhfkit.models.wrap import no_sync, unwrap
from rlhfkit.scoring.rm import RM_INFO

CHAT_SEQUENCE = "chat template: prompt as the user turn, response as the assistant turn, to its EOS"


def train_rm(cfg: RMConfig) -> dict[str, Any]:
    """`rlhfkit rm`: validate everything, then train and save the reward model (steps 1-8
    of the module docstring). Returns the summary (also in summary.json)."""
    # 1. the options as declared, every record read and checked (file:line), before
    # anything is written
    check_options(cfg)
    margin_table = resolve_margin_table(cfg.margin)
    records, eval_records, normalize = _read_inputs(cfg)
    d, device = setup_distributed(cfg.device)
    # 2. records -> K token sequences each, in the format the tokenizer and data decide
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    conversational = any(r.prompt_messages is not None for r in records + eval_records)
    chat = resolve_chat(tokenizer, cfg.chat, what=cfg.model, conversational=conversational)
    ensure_distinct_pad(tokenizer)  # before encoding: same ids, pad never inside a sequence
    train, held_out = _encode(records, eval_records, tokenizer, margin_table, cfg, d)
    out = start_output(cfg, d, "rm")
    # 3. the RM from the LM: zero head, no dropout, the saved tokenizer encodes as we do
    model, tokenizer = _init_model(cfg, tokenizer, d)
    # 4. packed rows where the model keeps packed sequences apart (probed before training)
    packing = resolve_packing(model, cfg.packing, rank=d.rank)
    _print_plan(train, held_out, cfg, d)
    info = {
        "max_len": cfg.max_len,
        "margin": cfg.margin,
        "margin_table": margin_table,
        "sequence": CHAT_SEQUENCE if chat else "[bos?] + prompt + response + [eos]",
        "chat": chat,
    }
    run = RMRun(
        model=model, tokenizer=tokenizer, train=train, eval=held_out, out=out, dist=d,
        device=device, packing=packing, info=info, normalize=normalize,
    )  # fmt: skip
    # 4-8. train, evaluate and checkpoint each epoch, normalise, save the final RM
    summary = fit_rm(run, cfg)
    _print_saved(model, out, d)
    teardown_distributed()
    return summary


# ---------------------------------------------------------------------------------------
# 1-3. Inputs, encoding, the model
# ---------------------------------------------------------------------------------------


def _read_inputs(
    cfg: RMConfig,
) -> tuple[list[RankingRecord], list[RankingRecord], NormalizeData | None]:
    """(train records, held-out records, --normalize-with's responses), all checked; a
    share --eval-fraction of the train records is held out where no --eval-data is given."""
    if not cfg.data:
        raise UserError("--data is required: ranking / pairwise JSONL file(s)")
    records = read_preferences(list(cfg.data))  # file:line errors before anything is written
    eval_records = read_preferences(list(cfg.eval_data)) if cfg.eval_data else []
    normalize = read_normalize_file(cfg.normalize_with) if cfg.normalize_with else None
    if not eval_records and cfg.eval_fraction > 0:
        records, eval_records = split_held_out(records, cfg.eval_fraction, cfg.seed)
    return records, eval_records, normalize


def _encode(
    records: list[RankingRecord],
    eval_records: list[RankingRecord],
    tokenizer: Any,
    margin_table: dict[str, float],
    cfg: RMConfig,
    d: Dist,
) -> tuple[list[RankingExample], list[RankingExample]]:
    """(train, held-out) examples: K sequences and C(K,2) comparisons per record; a note
    counts the sequences cut to --max-len."""
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
    return train, held_out


def _init_model(cfg: RMConfig, tokenizer: Any, d: Dist) -> tuple[torch.nn.Module, Any]:
    """The RM from --model (a zero head), its tokenizer with rlhfkit's scoring template,
    every dropout off."""
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
    return model, tokenizer


def resolve_packing(model: torch.nn.Module, packing: bool | None, rank: int = 0) -> bool:
    """--packing (None = auto) for reward model `model`: SFT's probe and rule
    (`loops.lm.choose_packing`) applied to what the score head reads (`HeadInputView`)."""
    return choose_packing(HeadInputView(model), packing, "rm", rank=rank)


def _print_plan(
    train: Sequence[RankingExample], held_out: Sequence[RankingExample], cfg: RMConfig, d: Dist
) -> None:
    n_pairs = sum(len(ex.pairs) for ex in train)
    rank0_print(
        f"rm: {len(train)} prompts ({n_pairs} comparisons), {len(held_out)} held out, "
        f"margins {cfg.margin}, {cfg.epochs} epoch(s)",
        rank=d.rank,
    )


# ---------------------------------------------------------------------------------------
# 4-8. Training
# ---------------------------------------------------------------------------------------


@dataclass
class RMRun(TrainRun):
    """`TrainRun` (the RM; examples: `RankingExample`; packing resolved by `resolve_packing`)
    and what is written beside the final RM."""

    info: dict[str, Any] = field(default_factory=dict)  # written as RM_INFO beside the RM
    normalize: NormalizeData | None = None  # --normalize-with: centre the final RM on these


def fit_rm(run: RMRun, opts: RMConfig) -> dict[str, Any]:
    """Steps 4-8: train `run.model` on `run.train` with the K-wise ranking loss, evaluate
    and checkpoint each epoch, normalise and save the final RM. Returns the summary."""
    d = run.dist
    t = start_training(run, opts, desc="rm", counters={"epoch_correct": 0.0, "epoch_pairs": 0})
    prompts_seen = 0
    for epoch in t.epochs():
        # 4. one optimizer step = the step's prompts (all ranks), in a seeded order
        for step in t.steps(epoch):
            n_global = len(step)  # prompts in this optimizer step, all ranks
            micro = t.micro_batches(step, run.train)
            # 5. K forwards per prompt, the K-wise loss per prompt, backward; one AdamW step
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
        # 6. held-out metrics, the checkpoint epoch-N/
        _end_epoch(t, run, opts, epoch)
    wall = t.finish()
    # 7. --normalize-with: the final RM centred (and scaled) on FILE's responses
    normalization = None
    if run.normalize is not None and d.is_main:  # refused with --strategy fsdp2 (train_rm)
        normalization = normalize_final_rm(
            unwrap(t.model),
            run.tokenizer,
            run.normalize,
            max_len=opts.max_len,
            scale=opts.normalize_scale,
            batch_size=opts.batch_size * 4,
        )
        run.info["normalization"] = normalization
    # 8. the final RM at the top of --out, RM_INFO beside it; summary.json
    t.export(t.out, {RM_INFO: run.info})
    summary = _summary(t, run, wall, prompts_seen, normalization)
    t.write_summary(summary)
    return summary


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


def ranking_batch_loss(
    model: torch.nn.Module, batch: RankingBatch, bf16: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, stats, scores (N,)): one forward over all N responses (right-padded rows, or
    packed ones: `collate_rankings(..., packing=True)`), then the K-wise loss. Training and
    every evaluation (`evaluate_rm`, `rlhfkit rm eval`) compute the loss here."""
    device = batch.input_ids.device
    with autocast_context(device, bf16):
        if batch.packed:
            scores = packed_reward_scores(model, batch.input_ids, batch.position_ids, batch.last)
        else:
            scores = reward_scores(model, batch.input_ids, batch.attention_mask)  # (N,)
    # At least float32 (bf16 autocast scores are cast up); a float64 model stays float64.
    scores_hp = scores.to(torch.promote_types(scores.dtype, torch.float32))  # (N,)
    loss, stats = kwise_ranking_loss(scores_hp, batch.pairs, batch.margins, batch.pair_prompt)
    return loss, stats, scores


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


@torch.no_grad()
def evaluate_rm(
    model: torch.nn.Module,
    examples: Sequence[RankingExample],
    pad_id: int,
    *,
    batch_size: int = 16,
    device: torch.device = torch.device("cpu"),
    dist: Dist | None = None,
    bf16: bool = False,
    packing: bool = False,
) -> dict[str, Any]:
    """Ranking loss (training's formula), pairwise accuracy overall and per strength
    bucket, mean score gap s_w - s_l, prompt and pair counts; over all ranks. `packing`:
    padding-free rows (only for a model that keeps packed sequences apart)."""
    d = dist or Dist()
    was_training = model.training
    model.eval()
    totals = EvalTotals()
    cost = attention_cost(model) if packing else None  # packed rows' width
    for idx in rank_micro_batches(range(len(examples)), d, batch_size):
        batch = collate_rankings([examples[i] for i in idx], pad_id, packing, cost).to(device)
        loss, _, scores = ranking_batch_loss(model, batch, bf16)
        totals.add(loss, scores, batch)
    model.train(was_training)
    return totals.reduce(d, device).metrics()


def _summary(
    t: Trainer, run: RMRun, wall: float, prompts_seen: int, normalization: dict[str, Any] | None
) -> dict[str, Any]:
    history = t.state["history"]
    return {
        "final_loss": t.last.get("loss"),
        "final_train_accuracy": t.last.get("accuracy"),
        "eval": history[-1]["eval"] if history else None,
        "steps": t.state["step"],
        "epochs": history,
        "prompts": len(run.train),
        "wall_time_s": round(wall, 2),
        "prompts_per_s": round(prompts_seen / max(wall, 1e-9), 2),
        "world_size": run.dist.world_size,
        "device": str(run.device),
        "packing": run.packing,
        "normalization": normalization,
    }


def _print_saved(model: torch.nn.Module, out: Path, d: Dist) -> None:
    what = "AutoModelForSequenceClassification, num_labels=1"
    if is_score_head_model(model):
        what = f"{type(model).__name__}: backbone + score head, loads with rlhfkit"
    rank0_print(f"reward model: {out} ({what})", rank=d.rank)
