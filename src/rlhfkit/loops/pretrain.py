"""`rlhfkit pretrain`: a tokenizer and a small Llama LM from scratch on a text corpus.

Steps:
  1. read and validate the corpus (before anything else is written);
  2. train a byte-level BPE tokenizer on it (or load --tokenizer), marked plain: the
     base model trains on raw text, so later stages give it raw prompts unless told
     --chat, whatever chat template the tokenizer ships (`data.chat`);
  3. pack the documents, joined by EOS, into fixed-length blocks; hold out a share;
  4. build the model from a size preset or an HF config, from scratch;
  5. next-token loss on every token (the shared LM loop, `loops/lm.py`);
  6. export the final model + tokenizer at the top of --out, so that
     `AutoModelForCausalLM.from_pretrained(out)` loads it.
"""

from __future__ import annotations

from rlhfkit.config import PretrainConfig
from rlhfkit.config.checks import check_options
from rlhfkit.data.chat import set_chat_format
from rlhfkit.data.records import read_corpus
from rlhfkit.data.tokenize import EncodedExample, pack_corpus
from rlhfkit.distributed import barrier, setup_distributed, teardown_distributed
from rlhfkit.errors import UserError
from rlhfkit.logging import rank0_print
from rlhfkit.loops.common import seed_everything, start_output
from rlhfkit.loops.lm import LMRun, fit_lm
from rlhfkit.models.fast_linear import use_onednn_linears
from rlhfkit.models.load import load_tokenizer
from rlhfkit.models.presets import build_model, count_parameters, train_tokenizer


def train_pretrain(cfg: PretrainConfig) -> dict:
    check_options(cfg)  # the options' declared ranges and rules, as the command line's
    d, device = setup_distributed(cfg.device)
    texts = read_corpus(cfg.data)
    out = start_output(cfg, d, "pretrain")

    tok_dir = out / "tokenizer"
    if d.is_main and not (tok_dir / "tokenizer.json").exists():
        if cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer)
        else:
            rank0_print(
                f"training a byte-level BPE tokenizer (vocab {cfg.vocab_size}) on "
                f"{len(texts)} documents"
            )
            tokenizer = train_tokenizer(texts, cfg.vocab_size)
        set_chat_format(tokenizer, False)
        tokenizer.save_pretrained(str(tok_dir))
    barrier(d)
    tokenizer = load_tokenizer(str(tok_dir))

    blocks = pack_corpus(texts, tokenizer, cfg.seq_len)
    examples = [EncodedExample(input_ids=row, labels=row) for row in blocks.tolist()]
    n_eval = int(round(len(examples) * cfg.eval_fraction)) if len(examples) > 1 else 0
    train, held_out = examples[n_eval:], examples[:n_eval]
    if not train:
        raise UserError(f"{cfg.data}: corpus too small for one block of {cfg.seq_len} tokens")

    seed_everything(cfg.seed)
    model = build_model(cfg.model_config or cfg.preset, tokenizer, seed=cfg.seed)
    use_onednn_linears(model)  # large fp32 CPU linear layers: oneDNN (models/fast_linear.py)
    rank0_print(
        f"model: {type(model).__name__}, {count_parameters(model) / 1e6:.2f}M parameters; "
        f"{len(train)} train blocks x {cfg.seq_len} tokens, {len(held_out)} held out",
        rank=d.rank,
    )
    run = LMRun(
        model=model,
        tokenizer=tokenizer,
        train=train,
        eval=held_out,
        out=out,
        dist=d,
        device=device,
        packing=False,
        export=True,
        desc="pretrain",
    )
    summary = fit_lm(run, cfg)
    if d.is_main:
        rank0_print(
            f"saved {out} (final loss {summary['final_loss']:.4f}, "
            f"{summary['tokens_per_s']:.0f} tokens/s)"
        )
    teardown_distributed()
    return summary
