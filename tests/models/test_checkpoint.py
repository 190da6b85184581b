"""Atomic folders, HF export, resumable checkpoints and output folders."""

import json
import random

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit import files
from rlhfkit.errors import OutputExistsError, UserError
from rlhfkit.files import atomic_dir
from rlhfkit.models.checkpoint import export_hf, save_checkpoint, save_hf
from rlhfkit.models.presets import build_model
from rlhfkit.models.resume import (
    epoch_dir,
    latest_checkpoint,
    load_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    step_dir,
)


def _ids(tokenizer, text="The cat sat on the mat."):
    return torch.tensor([tokenizer.encode(text)])


# --- atomic_dir ---------------------------------------------------------------------------


def test_atomic_dir_success_and_replace(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-out-")
        assert not final.exists()  # nothing visible until the end
        (tmp / "a.txt").write_text("old")
    assert (final / "a.txt").read_text() == "old"
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # swapped, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left


def test_atomic_dir_exception_keeps_old(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed mid-write")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (final / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_recovers_interrupted_swap(tmp_path):
    # A kill after "rename old aside" and before "rename new in": the old one comes back.
    (tmp_path / ".old-out-123").mkdir()
    (tmp_path / ".old-out-123" / "a.txt").write_text("old")
    files._recover(tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    # A kill after the swap: the stale old folder is deleted.
    (tmp_path / ".old-out-456").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- HF folders ---------------------------------------------------------------------------


def test_save_hf_from_pretrained_identical_logits(tiny_model, tiny_tokenizer, tmp_path):
    out = save_hf(
        tiny_model, tiny_tokenizer, tmp_path / "hf", extra_json={"rlhfkit.json": {"a": 1}}
    )
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert json.loads((out / "rlhfkit.json").read_text()) == {"a": 1}
    loaded = AutoModelForCausalLM.from_pretrained(out)
    tiny_model.eval()
    ids = _ids(tiny_tokenizer)
    assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)
    assert loaded.generation_config.eos_token_id == tiny_tokenizer.eos_token_id
    assert AutoTokenizer.from_pretrained(out).encode("héllo 🙂") == tiny_tokenizer.encode(
        "héllo 🙂"
    )
    with pytest.raises(ValueError):
        save_hf(tiny_model, tiny_tokenizer, tmp_path / "x", extra_json={"../x.json": {}})
    assert not (tmp_path / "x").exists()


def test_save_hf_unwraps_compiled(tiny_model, tiny_tokenizer, tmp_path):
    class Compiled(torch.nn.Module):  # torch.compile's wrapper keeps the model in _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    save_hf(Compiled(tiny_model), tiny_tokenizer, tmp_path / "hf")
    keys = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict().keys()
    assert not any("_orig_mod" in k for k in keys)


def test_export_hf_keeps_other_files(tiny_model, tiny_tokenizer, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "model-00001-of-00002.safetensors").write_text("stale shard")
    export_hf(tiny_model, tiny_tokenizer, run)
    assert (run / "run.json").exists() and (run / "checkpoints").is_dir()
    assert not (run / "model-00001-of-00002.safetensors").exists()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    tiny_model.eval()
    loaded = AutoModelForCausalLM.from_pretrained(run)
    assert torch.equal(loaded(_ids(tiny_tokenizer)).logits, tiny_model(_ids(tiny_tokenizer)).logits)


# --- resumable checkpoints ----------------------------------------------------------------


def _train_setup(tokenizer, seed):
    model = build_model("test", tokenizer, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _step(model, opt, sched, ids):
    loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_checkpoint_round_trip(tiny_tokenizer, tmp_path):
    ids = _ids(tiny_tokenizer)
    model, opt, sched = _train_setup(tiny_tokenizer, seed=0)
    for _ in range(3):
        _step(model, opt, sched, ids)
    gen = torch.Generator().manual_seed(7)
    gen.manual_seed(11)
    state = {"step": 3, "epoch": 1, "data_position": 17, "kl": {"coef": 0.02, "target": 6.0}}
    path = step_dir(tmp_path, 3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(
        path,
        models={"model": model},
        tokenizer=tiny_tokenizer,
        optimizers={"model": opt},
        schedulers={"model": sched},
        state=state,
        generators={"sample": gen},
    )
    assert path.name == "step-000003" and (path / "COMPLETE").exists()
    # The checkpoint itself is a from_pretrained folder when the only role is "model".
    assert AutoModelForCausalLM.from_pretrained(path).config.vocab_size == len(tiny_tokenizer)
    expected_next = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=gen))

    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    model2, opt2, sched2 = _train_setup(tiny_tokenizer, seed=1)  # different weights
    gen2 = torch.Generator()
    restored = load_checkpoint(
        path,
        models={"model": model2},
        optimizers={"model": opt2},
        schedulers={"model": sched2},
        generators={"sample": gen2},
    )
    assert restored == state
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, p2), n
    assert model2.lm_head.weight is model2.model.embed_tokens.weight  # still tied
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        s, s2 = opt.state[p], opt2.state[p2]
        assert int(s2["step"]) == int(s["step"]) == 3
        assert torch.equal(s2["exp_avg"], s["exp_avg"])
        assert torch.equal(s2["exp_avg_sq"], s["exp_avg_sq"])
    assert sched2.last_epoch == sched.last_epoch == 3
    assert sched2.get_last_lr() == sched.get_last_lr()
    got_next = (random.random(), np.random.rand(), torch.rand(3), torch.rand(2, generator=gen2))
    assert got_next[:2] == expected_next[:2]
    assert torch.equal(got_next[2], expected_next[2]) and torch.equal(got_next[3], expected_next[3])
    # Training on continues identically.
    _step(model, opt, sched, ids)
    _step(model2, opt2, sched2, ids)
    for p, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, p2)


def test_checkpoint_several_roles(tiny_tokenizer, tmp_path):
    policy, opt, _ = _train_setup(tiny_tokenizer, seed=0)
    value = build_model("test", tiny_tokenizer, seed=5)
    path = tmp_path / "ck"
    save_checkpoint(
        path,
        models={"policy": policy, "value": value},
        tokenizer=tiny_tokenizer,
        optimizers={"policy": opt},
        schedulers={},
        state={"step": 0},
    )
    assert (path / "policy" / "config.json").exists() and (
        path / "value" / "tokenizer.json"
    ).exists()
    p2, v2 = (
        build_model("test", tiny_tokenizer, seed=8),
        build_model("test", tiny_tokenizer, seed=9),
    )
    load_checkpoint(path, models={"policy": p2, "value": v2}, optimizers={}, schedulers={})
    assert torch.equal(
        v2.model.layers[0].mlp.up_proj.weight, value.model.layers[0].mlp.up_proj.weight
    )
    assert torch.equal(p2.lm_head.weight, policy.lm_head.weight)
    with pytest.raises(UserError, match="roles"):
        load_checkpoint(path, models={"model": p2})


def test_checkpoint_state_is_weights_only_and_json(tiny_model, tiny_tokenizer, tmp_path):
    path = tmp_path / "ck"
    save_checkpoint(path, models={"model": tiny_model}, tokenizer=tiny_tokenizer, state={"step": 1})
    torch.load(path / "trainer_state.pt", weights_only=True)  # no arbitrary unpickling needed
    assert json.loads((path / "trainer_state.json").read_text())["state"] == {"step": 1}
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(
            tmp_path / "bad", models={"model": tiny_model}, tokenizer=None, state={"x": object()}
        )
    assert not (tmp_path / "bad").exists()


def test_latest_and_prune(tiny_model, tiny_tokenizer, tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step in (5, 20, 100):
        save_checkpoint(step_dir(tmp_path, step), models={"model": tiny_model}, tokenizer=None)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-000500-999").mkdir()  # a save killed mid-write
    (root / "step-000300").mkdir()  # incomplete: no COMPLETE marker
    (root / "notes").mkdir()
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 100)
    deleted = prune_checkpoints(tmp_path, keep_last=2)
    assert deleted == [step_dir(tmp_path, 5)]
    left = sorted(p.name for p in root.iterdir())
    assert left == [".tmp-step-000500-999", "notes", "step-000020", "step-000100", "step-000300"]
    assert prune_checkpoints(tmp_path, keep_last=0) == []


def _save_at(folder, model, step):
    save_checkpoint(folder, models={"model": model}, tokenizer=None, state={"step": step})


def test_latest_checkpoint_takes_the_most_steps_of_epoch_and_step_folders(tiny_model, tmp_path):
    # An SFT/RM run keeps epoch-N/ (step in trainer_state.json) beside checkpoints/step-N/.
    _save_at(epoch_dir(tmp_path, 1), tiny_model, 4)
    _save_at(epoch_dir(tmp_path, 2), tiny_model, 8)
    _save_at(step_dir(tmp_path, 6), tiny_model, 6)
    (tmp_path / "epoch-3").mkdir()  # incomplete: no COMPLETE marker
    (tmp_path / "epoch-3" / "trainer_state.json").write_text('{"state": {"step": 12}}')
    (tmp_path / ".tmp-epoch-4-999").mkdir()  # a save killed mid-write
    assert latest_checkpoint(tmp_path) == epoch_dir(tmp_path, 2)
    _save_at(step_dir(tmp_path, 10), tiny_model, 10)  # --max-steps stopped epoch 3 midway
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 10)
    # Same step: the epoch folder, saved after the epoch's end, is the further one.
    _save_at(epoch_dir(tmp_path, 5), tiny_model, 10)
    assert latest_checkpoint(tmp_path) == epoch_dir(tmp_path, 5)


def test_resume_from_an_epoch_folder_prints_no_warning(tiny_model, tmp_path, caplog):
    out = tmp_path / "x"
    prepare_output_dir(out, resume=False, overwrite=False, command="sft")
    _save_at(epoch_dir(out, 1), tiny_model, 3)
    with caplog.at_level("WARNING", logger="rlhfkit"):
        prepare_output_dir(out, resume=True, overwrite=False)
    assert caplog.text == ""
    # A command that resumes from folders of its own (rs: round-N/) gets no note either.
    other = tmp_path / "rs"
    prepare_output_dir(other, resume=False, overwrite=False, command="rs")
    (other / "round-1").mkdir()
    (other / "round-1" / "samples.jsonl").write_text("{}\n")
    with caplog.at_level("WARNING", logger="rlhfkit"):
        prepare_output_dir(other, resume=True, overwrite=False, checkpointed=False)
    assert caplog.text == ""


# --- output folders -----------------------------------------------------------------------


def test_prepare_output_dir_new_and_refusals(tmp_path):
    out = tmp_path / "runs" / "x"
    prepare_output_dir(out, resume=False, overwrite=False, command="sft")
    info = json.loads((out / "run.json").read_text())
    assert info["command"] == "sft" and {"rlhfkit_version", "created"} <= info.keys()
    (out / "metrics.jsonl").write_text("{}")
    with pytest.raises(OutputExistsError, match="--resume to continue it or --overwrite"):
        prepare_output_dir(out, resume=False, overwrite=False)
    with pytest.raises(UserError, match="not both"):
        prepare_output_dir(out, resume=True, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_output_dir(empty, resume=False, overwrite=False)  # an empty folder is fine
    assert (empty / "run.json").exists()


def test_prepare_output_dir_overwrite(tmp_path):
    out = tmp_path / "x"
    prepare_output_dir(out, resume=False, overwrite=False, command="a")
    (out / "old.txt").write_text("old")
    prepare_output_dir(out, resume=False, overwrite=True, command="b")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert json.loads((out / "run.json").read_text())["command"] == "b"


def test_prepare_output_dir_never_deletes_user_folder(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    for kwargs in ({"resume": False, "overwrite": True}, {"resume": True, "overwrite": False}):
        with pytest.raises(OutputExistsError, match="no rlhfkit run"):
            prepare_output_dir(user, **kwargs)
    assert (user / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        prepare_output_dir(tmp_path / "file", resume=False, overwrite=False)


def test_prepare_output_dir_resume(tiny_model, tmp_path):
    """--resume needs something to resume: a missing (mistyped) or empty folder, a run
    that never started and one without a checkpoint are errors naming the folder."""
    out = tmp_path / "x"
    with pytest.raises(UserError, match=f"--resume: {out} does not exist"):
        prepare_output_dir(out, resume=True, overwrite=False)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(UserError, match=f"--resume: {out} is empty"):
        prepare_output_dir(out, resume=True, overwrite=False)
    prepare_output_dir(out, resume=False, overwrite=False, command="sft")
    with pytest.raises(UserError, match="holds a run that never started"):
        prepare_output_dir(out, resume=True, overwrite=False)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # trained, stopped before a checkpoint
    with pytest.raises(UserError, match="no checkpoint to resume from.*pass --overwrite"):
        prepare_output_dir(out, resume=True, overwrite=False)
    save_checkpoint(step_dir(out, 4), models={"model": tiny_model}, tokenizer=None)
    prepare_output_dir(out, resume=True, overwrite=False)
    assert latest_checkpoint(out) == step_dir(out, 4)  # kept
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 1
