"""Rejection sampling whose served reward model does not answer: one line saying to
--resume (exit status 75), no traceback."""

from __future__ import annotations

from rlhfkit import cli


def test_rs_says_to_resume_when_the_server_is_gone(ppo_files, tmp_path, capsys, monkeypatch):
    import rlhfkit.validate as validate

    url = "http://127.0.0.1:9"  # nothing listens; the start-up probe is skipped to reach rs
    monkeypatch.setattr(validate, "_probe_health", lambda where, url: None)
    args = ["rs", "--policy", str(ppo_files["base"]), "--rm", f"h={url}", "--prompts",
            str(ppo_files["prompts"]), "--out", str(tmp_path / "rs"), "--k", "2", "--max-prompts",
            "2", "--max-new-tokens", "4", "--device", "cpu", "--rm-retries", "0"]  # fmt: skip
    assert cli.main(args) == 75
    err = capsys.readouterr().err
    assert f"reward model server {url} cannot be reached" in err
    assert "rerun the same command with --resume" in err and "Traceback" not in err
