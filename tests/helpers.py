"""Small on-disk fixtures for loop tests: a base model folder and data files."""

from __future__ import annotations

import json
from pathlib import Path

import transformers as T
from transformers import BloomConfig, FalconConfig, LlamaConfig, OPTConfig, Qwen2Config


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(n: int) -> list[dict]:
    # Distinct prompts with short completions a tiny model can memorise.
    colours = ["red", "blue", "green", "black", "white", "pink", "grey", "gold", "teal", "tan"]
    return [
        {
            "prompt": f"Q: colour of thing {i}?\nA:",
            "completion": f" {colours[i % len(colours)]} {i}",
        }
        for i in range(n)
    ]


def make_base_model(folder: Path, tokenizer, preset: str = "test", seed: int = 0) -> Path:
    from rlhfkit.models.checkpoint import save_hf
    from rlhfkit.models.presets import build_model

    model = build_model(preset, tokenizer, seed=seed)
    save_hf(model, tokenizer, folder)
    return folder


def assert_same_training(wa: dict, wb: dict, w0: dict, rel: float = 1e-3) -> None:
    """Two runs made the same updates from `w0`, up to float rounding: per tensor, the
    runs differ by less than `rel` x the size of the update itself."""
    import torch

    moved = False
    for k in wa:
        update = (wa[k] - w0[k]).abs().max().item()
        diff = (wa[k] - wb[k]).abs().max().item()
        assert diff <= rel * max(update, 1e-8), (
            f"{k}: runs differ by {diff:.2e}, update {update:.2e}"
        )
        moved |= not torch.equal(wa[k], w0[k])
    assert moved, "nothing trained"


# Tiny configs (hidden 32, 2 layers) of families that differ in how packing behaves;
# build_model / make_base_model set the vocabulary from the tokenizer.
TINY_ARCH = {
    "opt": lambda: OPTConfig(
        hidden_size=32, word_embed_proj_dim=32, num_hidden_layers=2, ffn_dim=64,
        num_attention_heads=4, max_position_embeddings=256,
    ),
    "falcon": lambda: FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
    "bloom": lambda: BloomConfig(hidden_size=32, n_layer=2, n_head=4),
    "llama": lambda: LlamaConfig(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    ),
    "qwen2": lambda: Qwen2Config(
        hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    ),
}  # fmt: skip


def _small(**kw):
    return dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
                max_position_embeddings=256, **kw)  # fmt: skip


# One tiny config per family the whole chain is tested on (tests/test_chain.py): Llama tied
# and untied with GQA, the families users fine-tune most, and two mixtures of experts.
CHAIN_ARCH = {
    "llama-tied": lambda: LlamaConfig(**_small(num_key_value_heads=4, tie_word_embeddings=True)),
    "llama-gqa": lambda: LlamaConfig(**_small(num_key_value_heads=2, tie_word_embeddings=False)),
    "qwen2": TINY_ARCH["qwen2"],
    "qwen3": lambda: T.Qwen3Config(**_small(num_key_value_heads=2, head_dim=8)),
    "mistral": lambda: T.MistralConfig(**_small(num_key_value_heads=2, sliding_window=64)),
    "gemma2": lambda: T.Gemma2Config(**_small(num_key_value_heads=2, head_dim=8, sliding_window=64)),
    "gemma3": lambda: T.Gemma3TextConfig(
        **_small(num_key_value_heads=2, head_dim=8, sliding_window=64)
    ),
    "phi3": lambda: T.Phi3Config(**_small(num_key_value_heads=2, pad_token_id=0)),
    "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256),
    "gpt-neox": lambda: T.GPTNeoXConfig(**_small()),
    "opt": TINY_ARCH["opt"],
    "falcon": TINY_ARCH["falcon"],
    "qwen3-moe": lambda: T.Qwen3MoeConfig(**_small(
        num_key_value_heads=2, head_dim=8, moe_intermediate_size=32, num_experts=4,
        num_experts_per_tok=2, decoder_sparse_step=1,
    )),
    "mixtral": lambda: T.MixtralConfig(
        **_small(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)
    ),
}  # fmt: skip


# An instruct model's own chat template, in the tiny tokenizer's tokens: ChatML-like (as
# SmolLM2's and Qwen2.5's) with a default system turn, each turn closed by EOS + newline.
INSTRUCT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|system|>\nYou are helpful.<|eos|>\n{% endif %}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eos|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def as_instruct(tokenizer, template: str = INSTRUCT_TEMPLATE):
    """A copy of `tokenizer` as an instruct checkpoint ships it: a chat template of its own
    and no rlhfkit mark (`data.chat`), so the auto rule makes it chat."""
    import copy

    from rlhfkit.data.chat import CHAT_FORMAT

    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs.pop(CHAT_FORMAT, None)
    tok.chat_template = template
    return tok


# Families transformers 5 has no sequence-classification class for: their reward and value
# models are the backbone + a score head (models/scalar_head.py). Granite with its own
# multipliers (Granite 3's embedding / residual scales, tied embeddings), OLMoE a mixture of
# experts, Cohere a LayerNorm without bias and a logit scale.
NO_SEQ_CLS_ARCH = {
    "granite": lambda: T.GraniteConfig(**_small(
        num_key_value_heads=2, embedding_multiplier=12.0, residual_multiplier=0.22,
        attention_multiplier=0.125, logits_scaling=4.0, tie_word_embeddings=True,
    )),
    "olmoe": lambda: T.OlmoeConfig(**_small(
        num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
    )),
    "cohere": lambda: T.CohereConfig(**_small(num_key_value_heads=2)),
}  # fmt: skip
CHAIN_ARCH["granite"] = NO_SEQ_CLS_ARCH["granite"]


PDROP = ("attn_pdrop", "embd_pdrop", "resid_pdrop")


def gpt2_lm(tokenizer, seed: int = 0) -> T.GPT2LMHeadModel:
    """A tiny GPT-2 LM on the test tokenizer, dropout 0.1 as GPT-2's config has it."""
    import torch

    torch.manual_seed(seed)
    config = T.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, n_positions=256, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    assert all(getattr(config, k) == 0.1 for k in PDROP)
    return T.GPT2LMHeadModel(config)


def two_train_forwards(model) -> tuple[float, float]:
    """One logit of two train-mode forwards of the same input: equal without dropout."""
    import torch

    ids = torch.tensor([[1, 20, 30, 40, 50, 2]])
    model.train()
    with torch.no_grad():
        return tuple(float(model(input_ids=ids).logits[0, -1].flatten()[0]) for _ in range(2))


# Chat messages, and what a tokenizer's chat template renders of them (independently of rlhfkit).
SYSTEM = {"role": "system", "content": "be brief"}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def template_ids(tok, messages: list[dict]) -> list[int]:
    """The chat template's rendering with the generation prompt, tokenized: computed here
    independently of rlhfkit."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


# A tiny GGUF (llama.cpp's format), written with llama.cpp's own `gguf` package: a Llama of
# hidden 32 and 2 layers, weights Q8_0-quantized (norms F32), the tokenizer's byte-level
# BPE vocabulary, merges, special tokens and chat template in its metadata (tests/models/
# test_gguf.py). About 60 KB; transformers reads it back as a LlamaForCausalLM.
TINY_GGUF_SHAPE = {"hidden": 32, "layers": 2, "ffn": 64, "heads": 4, "kv_heads": 2, "ctx": 256}


def write_tiny_gguf(path: Path, tokenizer, seed: int = 0, tied: bool = True) -> Path:
    import gguf
    import numpy as np

    s = TINY_GGUF_SHAPE
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = sorted(model["vocab"], key=model["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = set(tokenizer.all_special_tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(s["hidden"] // s["heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([3 if t in special else 1 for t in vocab])  # 3: control
    w.add_token_merges(merges)
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_unk_token_id(tokenizer.pad_token_id)  # else transformers adds GPT-2's <|endoftext|>
    w.add_add_bos_token(False)
    w.add_chat_template(tokenizer.chat_template)
    rng = np.random.default_rng(seed)

    def add(name: str, *shape: int, quantized: bool = True) -> None:
        x = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if not quantized:
            w.add_tensor(name, 1.0 + x * 0.1)  # a norm's scale: near 1
            return
        q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    h, kv = s["hidden"], s["hidden"] // s["heads"] * s["kv_heads"]
    add("token_embd.weight", len(vocab), h)
    for i in range(s["layers"]):
        add(f"blk.{i}.attn_norm.weight", h, quantized=False)
        add(f"blk.{i}.attn_q.weight", h, h)
        add(f"blk.{i}.attn_k.weight", kv, h)
        add(f"blk.{i}.attn_v.weight", kv, h)
        add(f"blk.{i}.attn_output.weight", h, h)
        add(f"blk.{i}.ffn_norm.weight", h, quantized=False)
        add(f"blk.{i}.ffn_gate.weight", s["ffn"], h)
        add(f"blk.{i}.ffn_up.weight", s["ffn"], h)
        add(f"blk.{i}.ffn_down.weight", h, s["ffn"])
    add("output_norm.weight", h, quantized=False)
    if not tied:
        add("output.weight", len(vocab), h)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def rm_training_sequences(prompt: list[dict], responses: list[str], tok) -> list[list[int]]:
    """The sequences `rlhfkit rm` trains on for a conversational ranking of `responses`
    (each an assistant turn) to `prompt`."""
    from rlhfkit.data.records import RankingRecord
    from rlhfkit.data.reward_data import encode_rankings, resolve_margin_table

    rec = RankingRecord(
        "", responses, [0, 1], prompt_messages=prompt,
        response_messages=[[assistant(r)] for r in responses],
    )  # fmt: skip
    (ex,), _ = encode_rankings([rec], tok, 256, resolve_margin_table("none"))
    return ex.sequences
