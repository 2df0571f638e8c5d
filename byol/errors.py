"""One base class for the errors a user can fix, and the one rule that turns an error into a sentence.

Why one base: bad settings (ConfigError), unusable data (DataError), a checkpoint that cannot be used
(CheckpointError), a run that cannot be touched (RunError), work not computed yet (NotPrepared), a busy
device (DeviceBusy) and a refused command (cli.CommandError) all carry a message written for the
person at the keyboard. Every door (the command line, the job runner, the dashboard's pages) shows
such a message as it is, without a traceback, by catching `UserError`: one type, so a new kind of
plain error cannot be forgotten in one door's list.

Anything else is a programming error or a failure nobody planned for. It is never caught as a
UserError: the command line and the pages let its traceback show, and `plain_message` names it as
unexpected, so a bug is never presented as the user's mistake.

`UserError` is a ValueError, so code that catches the old classes as ValueError still catches them.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem the user can fix; the message says plainly what is wrong and is shown as is."""


def plain_message(error: BaseException, failed: str) -> str:
    """One line for a status file or a page: a UserError's own message, anything else named as unexpected.

    `failed` starts the sentence for the unexpected case, e.g. "Training stopped" gives
    "Training stopped with an unexpected error: KeyError: 'x'".
    """
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(error, UserError) and text:
        return text
    name = type(error).__name__
    return f"{failed} with an unexpected error: {name}: {text}" if text else f"{failed} with an unexpected error: {name}."
