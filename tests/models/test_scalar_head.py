"""Reward models for the families transformers has no sequence-classification class for
(models/scalar_head.py): which class a model gets, scores against a naive backbone forward
under every padding layout and packed, the saved folder (round trip, what `validate` and
plain transformers make of it, the docs' snippet), normalisation, LoRA and the plan."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors import safe_open
from tests.helpers import CHAIN_ARCH, NO_SEQ_CLS_ARCH, _small
from transformers import AutoModelForSequenceClassification

from rlhfkit.errors import UserError
from rlhfkit.models.checkpoint import save_hf
from rlhfkit.models.presets import build_model
from rlhfkit.models.reward import (
    RM_PAD,
    init_reward_model,
    load_reward_model,
    reward_scores,
    shift_and_scale_scores,
    values_for_tokens,
)
from rlhfkit.models.scalar_head import (
    has_sequence_classification,
    is_score_head_model,
    score_head_class,
)
from rlhfkit.scoring.rm import encode_responses, pad_right
from rlhfkit.validate import check_model_folder

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("granite", "olmoe")
PROMPTS = ["What is the cat", "Sort 3 2 1 please", "hi", "Add one and two"]
RESPONSES = ["The cat sat on the mat.", "1 2 3", "dog", "Three. Three. Three!"]


def _lm(arch: str, tokenizer, seed: int = 1):
    return build_model({**CHAIN_ARCH, **NO_SEQ_CLS_ARCH}[arch](), tokenizer, seed=seed)


def _rm(arch: str, tokenizer, seed: int = 2):
    """A backbone + score head RM (normal head: scores differ, checks have teeth), eval."""
    rm, tok = init_reward_model(_lm(arch, tokenizer), copy.deepcopy(tokenizer),
                                head_init="normal", seed=seed)  # fmt: skip
    return rm.eval(), tok


def _naive_scores(rm, seqs: list[list[int]]) -> torch.Tensor:
    """Each sequence alone through the backbone module (no mask, no padding, no hooks):
    its last hidden state dotted with the head's weight (+ bias)."""
    backbone, head = getattr(rm, rm.base_model_prefix), rm.score
    out = []
    with torch.no_grad():
        for s in seqs:
            h = backbone(input_ids=torch.tensor([s])).last_hidden_state[0, -1]  # (H,)
            out.append(h @ head.weight[0] + (head.bias[0] if head.bias is not None else 0.0))
    return torch.stack(out)


# ---------------------------------------------------------------- which class


@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2", "gpt2", *FAMILIES])
def test_the_class_is_the_sequence_classifier_where_transformers_has_one(
    arch, tiny_tokenizer, capsys
):
    lm = _lm(arch, tiny_tokenizer)
    try:  # what transformers itself says
        AutoModelForSequenceClassification.from_config(lm.config)
        has_class = True
    except ValueError:
        has_class = False
    assert has_class == (arch not in FAMILIES)  # the brief's families: llama/qwen2/gpt2 have one
    assert has_sequence_classification(lm.config) == has_class
    rm, _ = init_reward_model(lm, copy.deepcopy(tiny_tokenizer))
    printed = capsys.readouterr().out
    if has_class:
        assert type(rm).__name__.endswith("ForSequenceClassification")
        assert not is_score_head_model(rm) and "note:" not in printed
        return
    family = type(lm).__name__.removesuffix("ForCausalLM")
    assert type(rm).__name__ == f"{family}WithScoreHead"
    assert isinstance(rm, type(lm).__mro__[1])  # the family's own PreTrainedModel base
    assert rm._no_split_modules == lm._no_split_modules  # FSDP2 shards the same layers
    assert printed.count("\n") == 1 and printed.startswith(
        f"note: transformers has no sequence-classification class for {lm.config.model_type}: "
        "reward model = its backbone + a linear score head"
    )
    assert rm.score.out_features == 1 and rm.score.bias is None
    assert torch.count_nonzero(rm.score.weight) == 0  # --head-init zeros
    lm_backbone = getattr(lm, lm.base_model_prefix).state_dict()
    own = getattr(rm, rm.base_model_prefix).state_dict()
    assert set(own) == set(lm_backbone)
    assert all(torch.equal(own[k], v) for k, v in lm_backbone.items())


def test_a_pad_token_equal_to_eos_gets_its_own_row(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token
    rm, tok = init_reward_model(_lm("granite", tiny_tokenizer), tok)
    assert tok.pad_token == RM_PAD and rm.config.pad_token_id == tok.pad_token_id
    assert rm.get_input_embeddings().num_embeddings == len(tok)


# ---------------------------------------------------------------- scores


@pytest.mark.parametrize("arch", FAMILIES)
def test_scores_are_the_head_at_the_last_real_token_under_any_padding(arch, tiny_tokenizer):
    rm, tok = _rm(arch, tiny_tokenizer)
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    naive = _naive_scores(rm, seqs)
    assert float(naive.std()) > 1e-3  # scores differ: the comparisons below have teeth
    ids, mask = pad_right(seqs, tok.pad_token_id)
    # left padding, and PPO's layout (left-padded prompt, right-padded response), with EOS
    # as the junk id in the padding (a policy that pads with EOS)
    width = ids.shape[1] + 3
    left_ids = torch.full((4, width), tok.eos_token_id)
    left_mask = torch.zeros((4, width), dtype=torch.bool)
    mixed_ids, mixed_mask = left_ids.clone(), left_mask.clone()
    for i, s in enumerate(seqs):
        left_ids[i, width - len(s) :], left_mask[i, width - len(s) :] = torch.tensor(s), True
        start = 1 + i % 3
        mixed_ids[i, start : start + len(s)] = torch.tensor(s)
        mixed_mask[i, start : start + len(s)] = True
    with torch.no_grad():
        for ids_, mask_ in ((ids, mask), (left_ids, left_mask), (mixed_ids, mixed_mask)):
            torch.testing.assert_close(reward_scores(rm, ids_, mask_), naive, atol=1e-5, rtol=0)
            # the model's own forward pools at the same token (by the attention mask)
            logits = rm(input_ids=ids_, attention_mask=mask_).logits  # (B, 1)
            torch.testing.assert_close(logits[:, 0], naive, atol=1e-5, rtol=0)
        # per-token values (PPO's value model): the naive score of every prefix
        values = values_for_tokens(rm, mixed_ids, mixed_mask)  # (B, T)
        prefixes = [s[:n] for s in seqs for n in range(1, len(s) + 1)]
        torch.testing.assert_close(values[mixed_mask], _naive_scores(rm, prefixes),
                                   atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("arch", FAMILIES)
def test_packed_scores_equal_the_naive_ones_and_the_probe_says_exact(arch, tiny_tokenizer):
    from rlhfkit.data.reward_data import pack_sequences
    from rlhfkit.loops.reward.train import resolve_packing
    from rlhfkit.models.reward_packed import packed_reward_scores

    rm, tok = _rm(arch, tiny_tokenizer)
    seqs, _ = encode_responses(tok, PROMPTS * 2, RESPONSES[::-1] * 2, max_len=256)
    assert resolve_packing(rm, None)  # the probe on what the head reads
    rows = pack_sequences(seqs, tok.pad_token_id)
    assert rows.input_ids.shape[0] < len(seqs)  # several sequences share a row
    with torch.no_grad():
        packed = packed_reward_scores(rm, rows.input_ids, rows.position_ids, rows.last)
        padded = reward_scores(rm, *pad_right(seqs, tok.pad_token_id))
    naive = _naive_scores(rm, seqs)
    torch.testing.assert_close(packed, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, naive, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer):
    from rlhfkit.models.wrap import enable_gradient_checkpointing

    grads = []
    for checkpointing in (False, True):
        rm, tok = _rm("granite", tiny_tokenizer)
        rm.train()  # dropout is 0 in this config: train mode changes nothing else
        if checkpointing:
            enable_gradient_checkpointing(rm)
        seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
        reward_scores(rm, *pad_right(seqs, tok.pad_token_id)).square().sum().backward()
        grads.append({n: p.grad for n, p in rm.named_parameters()})
    assert grads[1].keys() == grads[0].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------- the saved folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_tokenizer):
    """A Granite-shaped RM saved as rlhfkit saves it, with its scores."""
    from rlhfkit.models.rm_tokenizer import set_scoring_template

    folder = tmp_path_factory.mktemp("granite-rm") / "rm"
    rm, tok = _rm("granite", tiny_tokenizer)
    set_scoring_template(tok)  # as `rlhfkit rm` saves it: tok(prompt + response) adds BOS/EOS
    save_hf(rm, tok, folder)
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    with torch.no_grad():
        scores = reward_scores(rm, *pad_right(seqs, tok.pad_token_id))
    return {"folder": folder, "scores": scores, "seqs": seqs, "model": rm}


def test_the_saved_folder_says_what_it_holds(saved):
    folder, rm = saved["folder"], saved["model"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "granite" and config["architectures"] == ["GraniteWithScoreHead"]
    assert config["rlhfkit_score_head"] == {"format": 1, "backbone": "model", "head": "score",
                                            "bias": False}  # fmt: skip
    assert config["pad_token_id"] == rm.config.pad_token_id and len(config["id2label"]) == 1
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert keys == {n for n, _ in rm.named_parameters()}
    assert "score.weight" in keys and not any(k.startswith("lm_head") for k in keys)
    assert all(k.startswith("model.") for k in keys - {"score.weight"})


def test_validate_calls_it_a_reward_model_before_torch_loads(saved):
    folder = saved["folder"]
    code = (
        "import sys; from rlhfkit.models.folders import check_model_folder, model_kind; "
        f"check_model_folder({str(folder)!r}, 'reward'); print(model_kind(__import__('pathlib')"
        f".Path({str(folder)!r}))); assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "('reward', 'GraniteWithScoreHead')"
    with pytest.raises(UserError, match="holds a reward model .GraniteWithScoreHead.*not a causal"):
        check_model_folder(folder, "causal-lm")


def test_save_then_load_gives_identical_scores(saved):
    rm, tok = load_reward_model(saved["folder"])
    assert type(rm) is type(saved["model"]) and not rm.training
    assert not any(p.requires_grad for p in rm.parameters())
    with torch.no_grad():
        scores = reward_scores(rm, *pad_right(saved["seqs"], tok.pad_token_id))
    assert torch.equal(scores, saved["scores"])
    # transformers' own class loader refuses the folder: there is no such class there
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForSequenceClassification.from_pretrained(saved["folder"])


def _docs_snippet() -> str:
    text = (ROOT / "docs" / "reward-models-any-architecture.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (snippet,) = [b for b in blocks if "AutoModel.from_pretrained" in b]
    return snippet


def test_the_docs_snippet_scores_as_rlhfkit_with_plain_transformers(saved):
    """The page's plain-transformers code, run as printed (DIR and texts replaced)."""
    snippet = _docs_snippet()
    assert not re.search(r"(import|from) rlhfkit", snippet)  # plain transformers
    namespace = {"DIR": str(saved["folder"])}
    code = snippet.replace('DIR = "path/to/rm"', "")
    code = re.sub(r"(?m)^prompts = .*$", f"prompts = {PROMPTS!r}", code)
    code = re.sub(r"(?m)^responses = .*$", f"responses = {RESPONSES!r}", code)
    exec(compile(code, "docs-snippet", "exec"), namespace)  # noqa: S102
    torch.testing.assert_close(namespace["scores"], saved["scores"], atol=1e-5, rtol=0)


def test_a_newer_format_is_refused(saved, tmp_path):
    import shutil

    folder = tmp_path / "rm"
    shutil.copytree(saved["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["rlhfkit_score_head"]["format"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="format 99.*newer rlhfkit"):
        load_reward_model(folder)


# ---------------------------------------------------------------- normalisation


def _xglm():
    """XGLM: no sequence-classification class, a final LayerNorm WITH a bias."""
    return T.XGLMConfig(d_model=32, num_layers=2, attention_heads=4, ffn_dim=64,
                        max_position_embeddings=256)  # fmt: skip


SHIFTS = [("granite", "score.bias"), ("xglm", "model.layer_norm.bias")]


@pytest.mark.parametrize(("arch", "where"), SHIFTS)
def test_shift_and_scale_is_exact_and_survives_a_save(arch, where, tiny_tokenizer, tmp_path):
    """Granite's RMSNorm adds nothing: the shift becomes a score.bias that the marker
    records, so the folder reloads with it; XGLM's LayerNorm bias takes it (the probe)."""
    lm = build_model(_xglm(), tiny_tokenizer, 1) if arch == "xglm" else _lm(arch, tiny_tokenizer)
    rm, tok = init_reward_model(lm, copy.deepcopy(tiny_tokenizer), head_init="normal", seed=2)
    rm.eval()
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    ids, mask = pad_right(seqs, tok.pad_token_id)
    with torch.no_grad():
        before = values_for_tokens(rm, ids, mask)
        assert shift_and_scale_scores(rm, shift=-0.75, scale=2.5).startswith(where)
        after = values_for_tokens(rm, ids, mask)
    torch.testing.assert_close(after[mask], 2.5 * before[mask] - 0.75, atol=1e-5, rtol=1e-5)
    assert rm.config.rlhfkit_score_head["bias"] == (where == "score.bias")
    save_hf(rm, tok, tmp_path / "rm")
    loaded, _ = load_reward_model(tmp_path / "rm")
    assert (loaded.score.bias is not None) == (where == "score.bias")
    with torch.no_grad():
        torch.testing.assert_close(reward_scores(loaded, ids, mask), after.gather(
            1, (mask.sum(1) - 1)[:, None])[:, 0], atol=1e-6, rtol=0)  # fmt: skip


# ---------------------------------------------------------------- LoRA and the plan


def test_lora_trains_the_head_in_full_and_merges_into_a_plain_folder(tiny_tokenizer, tmp_path):
    from rlhfkit import cli
    from rlhfkit.models.lora import add_lora, has_lora, task_type

    rm, tok = _rm("granite", tiny_tokenizer)
    assert task_type(rm) == "SEQ_CLS"
    opts = cli.parse("rm", ["--model", "m", "--data", "d", "--out", "o", "--lora-r", "4"])
    rm = add_lora(rm, opts)
    assert has_lora(rm) and type(rm).__name__ == "GraniteWithScoreHead"
    trained = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert "score.modules_to_save.default.weight" in trained  # the head, in full
    assert all("lora_" in n or n.startswith("score.") for n in trained)
    with torch.no_grad():  # make the adapter do something
        for n, p in rm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    seqs, _ = encode_responses(tok, PROMPTS, RESPONSES, max_len=256)
    ids, mask = pad_right(seqs, tok.pad_token_id)
    with torch.no_grad():
        adapted = reward_scores(rm, ids, mask)
    save_hf(rm, tok, tmp_path / "rm")  # merged: a plain backbone + score head folder
    loaded, _ = load_reward_model(tmp_path / "rm")
    with torch.no_grad():
        torch.testing.assert_close(reward_scores(loaded, ids, mask), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora_r", [0, 4])
def test_plan_counts_the_backbone_and_the_head(lora_r, tmp_path):
    from rlhfkit import cli
    from rlhfkit.models.lora import add_lora
    from rlhfkit.plan import make_plan

    config = T.GraniteConfig(**_small(num_key_value_heads=2, vocab_size=256, pad_token_id=0))
    config.save_pretrained(tmp_path / "granite")  # config.json only: the plan reads nothing else
    cfg = cli.parse("plan rm", ["--model", str(tmp_path / "granite"), "--lora-r", str(lora_r)])
    (role,) = make_plan(cfg)["roles"]
    config.num_labels = 1
    model = score_head_class(config)(config)
    if lora_r:
        model = add_lora(model, cfg)
    params = list(model.parameters())
    assert role["weights"] == 4 * sum(p.numel() for p in params)
    assert role["grads"] == 4 * sum(p.numel() for p in params if p.requires_grad)


def test_plan_ppo_reads_a_saved_score_head_rm(saved):
    from rlhfkit import cli
    from rlhfkit.plan import make_plan

    folder = saved["folder"]
    args = ["--policy", str(folder), "--rm", f"helpfulness={folder}"]  # config.json is read
    roles = {r["role"]: r for r in make_plan(cli.parse("plan ppo", args))["roles"]}
    n = sum(p.numel() for p in saved["model"].parameters())
    assert roles["rm:helpfulness"]["params"] == roles["value"]["params"] == n


def test_dropout_goes_to_0_in_the_config_and_the_modules(tiny_tokenizer):
    from rlhfkit.loops.common import _dropout_probe, disable_dropout

    config = NO_SEQ_CLS_ARCH["granite"]()
    config.attention_dropout = 0.3
    rm, _ = init_reward_model(build_model(config, tiny_tokenizer, seed=1),
                              copy.deepcopy(tiny_tokenizer), head_init="normal")  # fmt: skip
    assert _dropout_probe(rm) > 0  # train mode, dropout on: two forwards differ
    assert disable_dropout(rm) == ["attention_dropout=0.3"]
    assert rm.config.attention_dropout == 0.0 and _dropout_probe(rm) == 0.0


def test_a_family_with_neither_class_is_a_one_line_error():
    from rlhfkit.models.scalar_head import build_score_head_model

    with pytest.raises(UserError, match="neither a sequence-classification nor a causal-LM"):
        build_score_head_model(T.ViTConfig())
