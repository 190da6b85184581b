"""Errors that are the user's to fix. The CLI prints them without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a refused action, with a message that says what and where."""


class RecordError(UserError):
    """A data record that fails validation: `file:line: problem`."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


class OutputExistsError(UserError):
    """An output folder holds another run and neither --resume nor --overwrite was given."""


class RemoteUnavailable(UserError):
    """A server the command needs (a served reward model, `--rm NAME=URL`) did not answer
    after its retries: a temporary failure, not bad input. The CLI exits with status 75
    (EX_TEMPFAIL); ppo and rs stop where `--resume` continues."""
