"""PPO with its reward model served by `rlhfkit serve-rm` (a real server process): the
server killed mid-run stops the run at a checkpoint with one line saying to --resume, and
the resumed run, once a server is back on that port (in-process here: a second process
start costs seconds), ends where a run with the RM loaded locally ends (same seed: the
served RM's scores are the local ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhfkit import cli
from rlhfkit.scoring.serve import BackgroundServer, ServedRM, create_app


def _start_server(rm: Path, port: int = 0) -> tuple[subprocess.Popen, int]:
    """`rlhfkit serve-rm RM --port PORT` in its own process; returns once it listens."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhfkit.cli", "serve-rm", str(rm), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:  # the ready line: "serve-rm: DIR on http://127.0.0.1:PORT (...)"
        if line.startswith("serve-rm:") and " on http://" in line:
            return proc, int(line.split(" on http://")[1].split(" ")[0].rsplit(":", 1)[1])
    raise AssertionError(f"the server did not start (exit {proc.wait()})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def _args(files, out: Path, rm: str, *extra: str) -> list[str]:
    return [
        "ppo", "--policy", str(files["base"]), "--rm", f"helpfulness={rm}",
        "--value-init", str(files["rm"]), "--prompts", str(files["prompts"]),
        "--eval-prompts", str(files["eval"]), "--eval-max-prompts", "4", "--out", str(out),
        "--device", "cpu", "--batch-size", "4", "--max-new-tokens", "6", "--lr", "1e-3",
        "--sample-every", "0", "--steps", "4", "--save-every", "1", "--rm-retries", "1",
        "--rm-timeout", "10", *extra,
    ]  # fmt: skip


def test_ppo_survives_a_server_restart_and_matches_a_local_rm(
    ppo_files, tmp_path, monkeypatch, capsys
):
    import rlhfkit.models.checkpoint as ckpt_mod

    local, served = tmp_path / "local", tmp_path / "served"
    assert cli.main(_args(ppo_files, local, str(ppo_files["rm"]))) == 0

    proc, port = _start_server(ppo_files["rm"])
    url = f"http://127.0.0.1:{port}"
    save = ckpt_mod.save_checkpoint

    def save_then_kill(path, **kw):  # the server dies right after the checkpoint of step 2
        save(path, **kw)
        if Path(path).name == "step-000002":
            _stop(proc)

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save_then_kill)
    try:
        assert cli.main(_args(ppo_files, served, url)) == 75  # EX_TEMPFAIL: try again later
        err = capsys.readouterr().err
        assert f"reward model server {url} cannot be reached (connection refused)" in err
        assert "saved at step 2" in err and "--resume" in err and "Traceback" not in err
        assert not (served / "checkpoints" / "step-000003").exists()
        monkeypatch.undo()
        back = BackgroundServer(create_app(ServedRM.load(ppo_files["rm"])), port=port).start()
        try:
            assert cli.main(_args(ppo_files, served, url, "--resume")) == 0
        finally:
            back.stop()
    finally:
        _stop(proc)
    # Where the run ends: as with the RM loaded here, to float rounding (the served scores
    # are the local ones; the run resumed from step 2 with the same seeded sampling).
    for role in ("policy", "value"):
        a = load_file(str(local / "checkpoints" / "step-000004" / role / "model.safetensors"))
        b = load_file(str(served / "checkpoints" / "step-000004" / role / "model.safetensors"))
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=f"{role} {k}")
    evals = [json.loads(line) for line in (served / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval/score" in r] == [0, 4]


def test_a_failed_evaluation_is_redone_on_resume(ppo_files, tmp_path, monkeypatch, capsys):
    """The server gone during an evaluation: the checkpoint of that step says the
    evaluation is due, and the resumed run does it first."""
    from rlhfkit.errors import RemoteUnavailable
    from rlhfkit.loops.ppo import loop

    out = tmp_path / "run"
    evaluate, calls = loop.evaluate, []

    def evaluate_or_fail(run, state, logger, cfg):
        calls.append(state["step"])
        if state["step"] == 2 and calls.count(2) == 1:
            raise RemoteUnavailable("reward model server http://x gave no answer")
        evaluate(run, state, logger, cfg)

    monkeypatch.setattr(loop, "evaluate", evaluate_or_fail)
    args = _args(ppo_files, out, str(ppo_files["rm"]), "--eval-every", "2")
    assert cli.main(args) == 75
    assert "saved at step 2" in capsys.readouterr().err
    assert cli.main([*args, "--resume"]) == 0
    assert calls == [0, 2, 2, 4]
