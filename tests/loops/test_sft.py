"""SFT through the shared LM loop: learning, per-epoch checkpoints, accumulation, errors."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit import cli
from rlhfkit.config import SFTConfig
from rlhfkit.data.tokenize import trained_on_chat
from rlhfkit.errors import UserError
from rlhfkit.loops.sft import train_sft
from rlhfkit.models.load import load_tokenizer
from tests.helpers import (
    TINY_ARCH,
    assert_same_training,
    assistant,
    make_base_model,
    sft_rows,
    user,
    write_jsonl,
)


@pytest.fixture
def base(tmp_path, tiny_tokenizer):
    return make_base_model(tmp_path / "base", tiny_tokenizer)


def _strict_json(path):
    """A JSON file read as standard JSON: NaN / Infinity (Python's extension) refused."""

    def refuse(token):
        raise AssertionError(f"{path}: bare {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_sft_overfits_eight_examples(tmp_path, tiny_tokenizer):
    base = make_base_model(tmp_path / "base", tiny_tokenizer, preset="tiny")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    cfg = SFTConfig(
        model=str(base),
        data=str(data),
        out=str(tmp_path / "sft"),
        epochs=60,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        log_every=1,
    )
    summary = train_sft(cfg)
    rows = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[0] > 2.0  # an untrained model is far from the answers
    assert summary["final_loss"] < 0.05  # completion-token NLL near zero: memorised


def test_sft_writes_a_loadable_checkpoint_per_epoch(base, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(12))
    out = tmp_path / "sft"
    train_sft(
        SFTConfig(
            model=str(base),
            data=str(data),
            out=str(out),
            epochs=2,
            batch_size=4,
            eval_fraction=0.25,
        )
    )
    assert sorted(p.name for p in out.glob("epoch-*")) == ["epoch-1", "epoch-2"]
    summary = json.loads((out / "summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2]
    assert all(e["eval_loss"] == e["eval_loss"] for e in summary["epochs"])  # not NaN
    model = AutoModelForCausalLM.from_pretrained(out / "epoch-2")
    tok = AutoTokenizer.from_pretrained(out / "epoch-2")
    ids = torch.tensor([tok("Q: colour of thing 3?\nA:")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()
    assert (out / "config.yaml").exists()


def test_sft_out_holds_the_final_model_beside_the_epoch_folders(base, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, pipeline

    from rlhfkit.loops.select import find_candidates
    from rlhfkit.models.resume import latest_checkpoint

    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "sft"
    kw = dict(model=str(base), data=str(data), out=str(out), batch_size=4)
    train_sft(SFTConfig(**kw, epochs=2))
    assert f"model: {out} (AutoModelForCausalLM); epoch checkpoints: epoch-1, epoch-2" in (
        capsys.readouterr().out
    )
    top, last = _weights(out), _weights(out / "epoch-2")
    assert top.keys() == last.keys() and all(torch.equal(top[k], last[k]) for k in top)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()
    generate = pipeline("text-generation", model=str(out), device="cpu")
    text = generate("Q: colour of thing 3?\nA:", max_new_tokens=3, do_sample=False)
    assert text[0]["generated_text"].startswith("Q: colour of thing 3?")
    # `select` still reads the epochs of the run folder; resume still finds epoch-2.
    assert [name for name, _ in find_candidates([str(out)])] == ["epoch-1", "epoch-2"]
    assert latest_checkpoint(out) == out / "epoch-2"
    summary = train_sft(SFTConfig(**kw, epochs=3, resume=True))
    assert summary["steps"] == 6
    top, last = _weights(out), _weights(out / "epoch-3")
    assert all(torch.equal(top[k], last[k]) for k in top)


def test_no_eval_set_prints_no_eval_loss_and_writes_no_nan(base, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "sft"
    train_sft(SFTConfig(model=str(base), data=str(data), out=str(out), batch_size=4, epochs=1))
    printed = capsys.readouterr().out
    assert "epoch 1: train loss " in printed and "eval loss" not in printed
    summary = _strict_json(out / "summary.json")  # standard JSON: no bare NaN
    state = _strict_json(out / "epoch-1" / "trainer_state.json")["state"]
    assert summary["epochs"][0]["eval_loss"] is None is state["history"][0]["eval_loss"]
    assert "eval/loss" not in (out / "metrics.jsonl").read_text()


def test_save_every_keeps_the_newest_step_checkpoints_and_resumes_exactly(base, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(12))  # 3 steps an epoch
    kw = dict(model=str(base), data=str(data), batch_size=4, epochs=2, lr=1e-2,
              save_every=1, keep_checkpoints=2)  # fmt: skip
    full, part = tmp_path / "full", tmp_path / "part"
    train_sft(SFTConfig(**kw, out=str(full)))
    steps = lambda run: sorted(p.name for p in (run / "checkpoints").iterdir())  # noqa: E731
    assert steps(full) == ["step-000005", "step-000006"]
    assert sorted(p.name for p in full.glob("epoch-*")) == ["epoch-1", "epoch-2"]  # kept
    train_sft(SFTConfig(**kw, out=str(part), max_steps=4))
    assert steps(part) == ["step-000003", "step-000004"]
    train_sft(SFTConfig(**kw, out=str(part), resume=True))
    assert steps(part) == ["step-000005", "step-000006"]
    a, b = _weights(full), _weights(part)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0, msg=k)


def test_gradient_accumulation_equals_a_larger_batch(base, tmp_path):
    # Loss is normalised by the step's token count, so 2 x 2 micro-batches == 1 x 4 up to
    # float rounding, which Adam's g / sqrt(v) amplifies: ~1e-5 of a 2e-2 update, up to
    # 1.3e-3 of the update with AVX2 kernels (a wrong loss scale would differ by ~1x).
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    kw = dict(model=str(base), data=str(data), epochs=1, lr=1e-2, schedule="constant")
    train_sft(SFTConfig(**kw, out=str(tmp_path / "a"), batch_size=4, grad_accum=1))
    train_sft(SFTConfig(**kw, out=str(tmp_path / "b"), batch_size=2, grad_accum=2))
    wa, wb = _weights(tmp_path / "a" / "epoch-1"), _weights(tmp_path / "b" / "epoch-1")
    assert_same_training(wa, wb, _weights(base), rel=5e-3)


def test_packed_and_padded_batches_train_alike(base, tmp_path, monkeypatch):
    """Packed and padded batches sum the same token losses in another order. In float64
    (unit roundoff u = 1.1e-16) the gradients then differ by at most ~n u |g| with n <= 1e4
    terms per entry, ~1e-12 relative; AdamW's first steps amplify a gradient error by at
    most lr / eps = 1e6 (entries with |g| ~ eps), so the weights differ by <= ~1e-6 x the
    update: far inside the 1e-3 below on any CPU. In float32 (u = 6e-8) the same bound is
    ~1e2 x the update, so a float32 comparison could not be a fixed tolerance at all."""
    import rlhfkit.loops.sft as sft_mod
    from rlhfkit.models.load import load_causal_lm

    monkeypatch.setattr(sft_mod, "load_causal_lm", lambda *a, **k: load_causal_lm(*a, **k).double())
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    kw = dict(model=str(base), data=str(data), epochs=1, lr=1e-2, batch_size=4)
    train_sft(SFTConfig(**kw, out=str(tmp_path / "p"), packing=True))
    train_sft(SFTConfig(**kw, out=str(tmp_path / "r"), packing=False))
    wp, wr = _weights(tmp_path / "p" / "epoch-1"), _weights(tmp_path / "r" / "epoch-1")
    assert all(v.dtype == torch.float64 for v in wp.values())
    assert_same_training(wp, wr, {k: v.double() for k, v in _weights(base).items()})


def test_bad_record_stops_before_any_output(base, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": ""}\n')
    out = tmp_path / "never"
    rc = cli.main(["sft", "--model", str(base), "--data", str(data), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{data}:2:" in err and "Traceback" not in err
    assert not out.exists()


def test_existing_run_is_not_overwritten(base, tmp_path, capsys):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4))
    args = [
        "sft",
        "--model",
        str(base),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
        "--epochs",
        "1",
    ]
    assert cli.main(args) == 0
    before = _weights(tmp_path / "o" / "epoch-1")
    assert cli.main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    after = _weights(tmp_path / "o" / "epoch-1")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert cli.main([*args, "--overwrite"]) == 0


def test_resume_from_an_epoch_folder_says_so_and_warns_nothing(base, tmp_path, capsys, caplog):
    # SFT writes epoch-N/ only (no checkpoints/step-N): `--resume` must find it, and the
    # "no checkpoint to resume from" note must not fire.
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    out = tmp_path / "run"
    kw = dict(model=str(base), data=str(data), batch_size=4, out=str(out))
    train_sft(SFTConfig(**kw, epochs=1))
    assert not (out / "checkpoints").exists()
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="rlhfkit"):
        summary = train_sft(SFTConfig(**kw, epochs=2, resume=True))
    assert "no checkpoint" not in caplog.text and "starting fresh" not in caplog.text
    assert f"resuming from {out / 'epoch-1'} at step 2" in capsys.readouterr().out
    assert summary["steps"] == 4 and [r["epoch"] for r in summary["epochs"]] == [1, 2]


# --- packing decided per model by the probe (models/probe.py) -----------------------------

_CLASS = {
    "opt": "OPTForCausalLM",
    "falcon": "FalconForCausalLM",
    "bloom": "BloomForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


def _arch_base(tmp_path, tokenizer, arch):
    return make_base_model(tmp_path / f"base-{arch}", tokenizer, preset=TINY_ARCH[arch]())


def _sft_kw(base, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(8))
    return dict(model=str(base), data=str(data), epochs=1, lr=1e-2, batch_size=4)


@pytest.mark.parametrize("arch", ["opt", "falcon", "bloom"])
def test_a_model_that_mixes_packed_examples_falls_back_to_padded_batches(
    arch, tmp_path, tiny_tokenizer, capsys
):
    # The fallback IS the --no-packing run (same batches, same seed): equal to the bit.
    base = _arch_base(tmp_path, tiny_tokenizer, arch)
    kw = _sft_kw(base, tmp_path)
    auto = train_sft(SFTConfig(**kw, out=str(tmp_path / "auto")))
    out = capsys.readouterr().out
    off = train_sft(SFTConfig(**kw, out=str(tmp_path / "off"), packing=False))
    note = f"sft: {_CLASS[arch]} mixes packed examples: padded batches instead (--no-packing)"
    assert note in out.splitlines()
    assert note not in capsys.readouterr().out  # --no-packing: no probe, no note
    assert auto["packing"] is False and off["packing"] is False
    assert auto["final_loss"] == off["final_loss"]
    wa, wo = _weights(tmp_path / "auto" / "epoch-1"), _weights(tmp_path / "off" / "epoch-1")
    assert all(torch.equal(wa[k], wo[k]) for k in wo)
    w0 = _weights(base)
    assert any(not torch.equal(wa[k], w0[k]) for k in w0)  # it did train


@pytest.mark.parametrize("arch", ["opt", "falcon", "bloom"])
def test_forced_packing_on_a_model_that_mixes_examples_is_refused(arch, tmp_path, tiny_tokenizer):
    base = _arch_base(tmp_path, tiny_tokenizer, arch)
    out = tmp_path / "sft"
    with pytest.raises(UserError, match=f"--packing: {_CLASS[arch]} mixes packed examples"):
        train_sft(SFTConfig(**_sft_kw(base, tmp_path), out=str(out), packing=True))
    assert not list(out.glob("epoch-*")) and not (out / "metrics.jsonl").exists()  # no training


def test_cli_packing_on_opt_exits_2_with_one_line(tmp_path, tiny_tokenizer, capsys):
    base = _arch_base(tmp_path, tiny_tokenizer, "opt")
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows(4))
    args = ["sft", "--model", str(base), "--data", str(data), "--out", str(tmp_path / "o")]
    assert cli.main([*args, "--packing"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "OPTForCausalLM mixes packed examples" in err and "--no-packing" in err


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_model_that_keeps_examples_apart_packs_by_default(arch, tmp_path, tiny_tokenizer, capsys):
    base = _arch_base(tmp_path, tiny_tokenizer, arch)
    kw = _sft_kw(base, tmp_path)
    auto = train_sft(SFTConfig(**kw, out=str(tmp_path / "auto")))
    assert "mixes packed examples" not in capsys.readouterr().out
    on = train_sft(SFTConfig(**kw, out=str(tmp_path / "on"), packing=True))
    assert auto["packing"] is True and on["packing"] is True
    wa, wn = _weights(tmp_path / "auto" / "epoch-1"), _weights(tmp_path / "on" / "epoch-1")
    assert all(torch.equal(wa[k], wn[k]) for k in wn)


def test_choose_packing_probes_a_model_once_and_notes_it_once(tiny_tokenizer, capsys):
    # Rejection sampling fine-tunes the same model object every round: one probe, one note.
    from rlhfkit.loops import lm
    from rlhfkit.models.presets import build_model

    model = build_model(TINY_ARCH["opt"](), tiny_tokenizer, seed=0)
    assert lm.choose_packing(model, None, "rs") is False
    assert lm.choose_packing(model, None, "rs") is False
    assert capsys.readouterr().out.count("rs: OPTForCausalLM mixes packed examples") == 1
    with pytest.raises(UserError, match="rs: --packing: OPTForCausalLM"):
        lm.choose_packing(model, True, "rs")
    other = build_model(TINY_ARCH["llama"](), tiny_tokenizer, seed=0)
    assert lm.choose_packing(other, None, "rs") is True
    assert lm.choose_packing(other, False, "rs") is False


def test_sft_on_messages_saves_a_chat_model_and_on_pairs_does_not(tmp_path, tiny_tokenizer):
    """`rlhfkit sft` marks the tokenizer it saves when it trained on `messages` records, so
    the RL stages can warn about plain prompts; prompt/completion data leaves no mark."""
    from tests.helpers import make_base_model

    base = make_base_model(tmp_path / "base", tiny_tokenizer)
    chat = [{"messages": [user(f"say {i}"), assistant(f"{i} said")]} for i in range(4)]
    pairs = [{"prompt": f"say {i}", "completion": f" {i} said"} for i in range(4)]
    for name, rows, marked in (("chat", chat, True), ("pairs", pairs, False)):
        data = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        out = tmp_path / f"sft-{name}"
        argv = ["sft", "--model", str(base), "--data", str(data), "--out", str(out),
                "--epochs", "1", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
        assert cli.main(argv) == 0
        assert trained_on_chat(load_tokenizer(out / "epoch-1")) is marked, name
