"""The run folder's rules (models/run_folder.py): a run that never started is reused
without --overwrite and cleared after a failed start; --resume needs something to resume."""

from __future__ import annotations

import json

import pytest

from rlhfkit.errors import OutputExistsError, UserError
from rlhfkit.models import run_folder
from rlhfkit.models.run_folder import (
    check_output_dir,
    discard_unstarted,
    epoch_dir,
    forget_prepared,
    never_started,
    prepare_output_dir,
    resumable,
    resume_flags,
    step_dir,
)


@pytest.fixture(autouse=True)
def _forget():
    forget_prepared()
    yield
    forget_prepared()


def _checkpoint(folder, step: int = 3):
    """A complete checkpoint as far as the run folder can tell (its marker and state)."""
    folder.mkdir(parents=True)
    (folder / "COMPLETE").write_text("")
    (folder / "trainer_state.json").write_text(json.dumps({"state": {"step": step}}))


def _started_only(out):
    """What a command writes before its first training step."""
    prepare_output_dir(out, resume=False, overwrite=False, command="sft")
    (out / "config.yaml").write_text("lr: 0.1\n")
    (out / "metrics.jsonl").write_text("")  # opened, nothing logged
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"\0" * 40)


def test_never_started_is_only_start_up_files(tmp_path):
    out = tmp_path / "run"
    _started_only(out)
    assert never_started(out)
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    assert not never_started(out)  # a logged metric: the run started
    (out / "metrics.jsonl").write_text("")
    (out / "notes.txt").write_text("mine")
    assert not never_started(out)  # anything else: not ours to call empty
    (out / "notes.txt").unlink()
    _checkpoint(epoch_dir(out, 1))
    assert not never_started(out)
    assert not never_started(tmp_path)  # no run.json


def test_what_a_command_may_do_with_its_out(tmp_path):
    new, run = tmp_path / "new", tmp_path / "run"
    assert check_output_dir(new, resume=False, overwrite=False) == "new"
    _started_only(run)
    assert check_output_dir(run, resume=False, overwrite=False) == "reuse"
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(OutputExistsError, match="holds another run: pass --resume"):
        check_output_dir(run, resume=False, overwrite=False)
    assert check_output_dir(run, resume=False, overwrite=True) == "overwrite"
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        check_output_dir(run, resume=True, overwrite=False)
    assert check_output_dir(run, resume=True, overwrite=False, checkpointed=False) == "resume"
    _checkpoint(step_dir(run, 2))
    assert check_output_dir(run, resume=True, overwrite=False) == "resume"
    assert not list(new.parent.glob("new"))  # deciding writes nothing


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist \\(a mistyped --out\\?\\): nothing to resume"),
        (lambda p: p.mkdir(), "is empty: nothing to resume"),
        (_started_only, "holds a run that never started .* run the command without --resume"),
    ],
    ids=["mistyped", "empty", "never started"],
)
def test_resume_with_nothing_to_resume_is_an_error_naming_the_folder(tmp_path, setup, message):
    out = tmp_path / "run"
    setup(out)
    forget_prepared()
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    with pytest.raises(UserError, match=f"--resume: {out} {message}"):
        prepare_output_dir(out, resume=True, overwrite=False)
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


def test_a_run_that_never_started_is_reused_without_overwrite(tmp_path, caplog):
    out = tmp_path / "run"
    _started_only(out)
    first = json.loads((out / "run.json").read_text())["created"]
    forget_prepared()
    with caplog.at_level("WARNING", logger="rlhfkit"):
        prepare_output_dir(out, resume=False, overwrite=False, command="sft")
    assert "never started: starting it afresh" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]  # start-up files cleared
    assert "resumed" not in json.loads((out / "run.json").read_text()) and first


def test_a_failed_start_leaves_nothing(tmp_path):
    fresh, empty, trained = (
        tmp_path / "runs" / "a" / "fresh",
        tmp_path / "empty",
        tmp_path / "trained",
    )
    empty.mkdir()  # made by the user: stays, empty
    for out in (fresh, empty, trained):
        _started_only(out)
    (trained / "metrics.jsonl").write_text('{"step": 1}\n')
    assert sorted(discard_unstarted()) == [empty, fresh]
    assert not (tmp_path / "runs").exists()  # with the parents made for it
    assert empty.is_dir() and not any(empty.iterdir())
    assert (trained / "run.json").is_file()  # a run that logged a step is kept
    assert discard_unstarted() == []  # forgotten once handled


def test_a_finished_command_forgets_its_folders(tmp_path):
    _started_only(tmp_path / "run")
    forget_prepared()
    assert discard_unstarted() == [] and (tmp_path / "run" / "run.json").is_file()


def test_resumed_runs_are_never_discarded(tmp_path):
    out = tmp_path / "run"
    _started_only(out)
    _checkpoint(step_dir(out, 1))
    forget_prepared()
    prepare_output_dir(out, resume=True, overwrite=False)
    assert run_folder._PREPARED == {}


def test_resume_flags_of_a_stage_run_again(tmp_path):
    """The pipeline's rule: resume where there is something to resume, start again where
    the run stopped before its first checkpoint, neither where it never started."""
    out = tmp_path / "run"
    assert resume_flags(out) == {"resume": False}
    _started_only(out)
    assert resume_flags(out) == {"resume": False}
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert resume_flags(out) == {"resume": False, "overwrite": True}
    assert resume_flags(out, checkpointed=False) == {"resume": True}  # rs: its own folders
    _checkpoint(epoch_dir(out, 1))
    assert resume_flags(out) == {"resume": True} and resumable(out)
