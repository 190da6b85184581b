"""`rlhfkit sft`: supervised fine-tuning on prompt + completion pairs (InstructGPT step 1).

Steps:
  1. read and validate every record (train and eval) before any model is loaded;
  2. tokenize: prompt + completion + EOS, prompt tokens masked (label -100) unless
     --loss-on-prompt; chat `messages` through the tokenizer's chat template, and so are
     plain records in chat format (--chat, or auto: `data.chat.resolve_chat`, recorded in
     every saved tokenizer); sequences over --max-len truncated, dropped or refused
     (counted and reported);
  3. the shared LM loop (`loops/lm.py`), padding-free packed micro-batches by default where
     a probe of the loaded model finds packed examples kept apart (else padded, said so);
  4. a complete Hugging Face checkpoint per epoch, `epoch-N/` (InstructGPT kept every
     epoch and picked one by reward: `rlhfkit select`), plus the held-out loss per epoch;
  5. the final model at the top of --out, as `rm`, `ppo` and `rs` leave theirs, so that
     `from_pretrained(out)` loads it (`select` reads the `epoch-N/` folders, not this).
"""

from __future__ import annotations

from rlhfkit.config import SFTConfig
from rlhfkit.config.checks import check_options
from rlhfkit.data.chat import resolve_chat
from rlhfkit.data.records import read_sft
from rlhfkit.data.tokenize import EncodeStats, encode_sft
from rlhfkit.distributed import setup_distributed, teardown_distributed
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.loops.common import print_saved_lm, seed_everything, split_held_out, start_output
from rlhfkit.loops.lm import LMRun, choose_packing, fit_lm
from rlhfkit.models.fast_linear import use_onednn_linears
from rlhfkit.models.load import load_causal_lm, load_tokenizer


def encode_records(records, tokenizer, cfg: SFTConfig, source: str):
    """Tokenize SFT records with the prompt masked; report what --overlong did."""
    stats = EncodeStats()
    examples = []
    for rec in records:
        ex = encode_sft(
            rec,
            tokenizer,
            cfg.max_len,
            loss_on_prompt=cfg.loss_on_prompt,
            overlong=cfg.overlong,
            stats=stats,
        )
        if ex is not None:
            examples.append(ex)
    if stats.truncated or stats.dropped:
        rank0_print(
            f"{source}: {stats.truncated} truncated, {stats.dropped} dropped "
            f"(over --max-len {cfg.max_len}, --overlong {cfg.overlong})"
        )
    if not examples:
        raise UserError(f"{source}: no usable examples after tokenization")
    return examples


def train_sft(cfg: SFTConfig) -> dict:
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    d, device = setup_distributed(cfg.device)
    records = read_sft(cfg.data)
    eval_records = read_sft(cfg.eval_data) if cfg.eval_data else []
    if not eval_records and cfg.eval_fraction > 0:
        records, eval_records = split_held_out(records, cfg.eval_fraction, cfg.seed)
    out = start_output(cfg, d, "sft")

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    # one format for the model (saved with it): conversational data makes it a chat model
    conversational = any(r.messages is not None for r in records + eval_records)
    resolve_chat(tokenizer, cfg.chat, what=cfg.model, conversational=conversational)
    train = encode_records(records, tokenizer, cfg, cfg.data)
    held_out = (
        encode_records(eval_records, tokenizer, cfg, cfg.eval_data or "eval split")
        if eval_records
        else []
    )
    seed_everything(cfg.seed)
    model = load_causal_lm(cfg.model, device, trust_remote_code=cfg.trust_remote_code)
    use_onednn_linears(model)  # large fp32 CPU linear layers: oneDNN (models/fast_linear.py)
    packing = choose_packing(model, cfg.packing, "sft", rank=d.rank)  # before any training
    rank0_print(
        f"sft: {len(train)} examples, {len(held_out)} held out, {cfg.epochs} epochs", rank=d.rank
    )
    run = LMRun(
        model=model,
        tokenizer=tokenizer,
        train=train,
        eval=held_out,
        out=out,
        dist=d,
        device=device,
        packing=packing,
        row_tokens=cfg.max_len,
        epoch_checkpoints=True,
        export=True,
        desc="sft",
    )
    summary = fit_lm(run, cfg)
    print_saved_lm(out, d)
    teardown_distributed()
    return summary
