"""The fault suite's figures (issue 5, item 7), added up by the tests and printed after the session.

- kills survived: SIGKILLs of a training process after which the run was found consistent;
- bad-input cases tried: rows of tests/test_bad_input.py's table that ran;
- tracebacks seen: messages shown to a user (terminal line, dashboard, status) that held a traceback;
- runs lost: runs a fault left unfinishable or changed when it should not have been touched.

The tests also assert the goals (tracebacks seen 0, runs lost 0); these counters only report them.
conftest.py prints one summary line at the end of any session that ran a fault test.
"""

from __future__ import annotations

FIGURES: dict[str, int] = {"kills survived": 0, "bad-input cases tried": 0, "tracebacks seen": 0, "runs lost": 0}
_touched = False


def add(name: str, amount: int = 1) -> None:
    global _touched
    FIGURES[name] += amount
    _touched = True


def saw_message(message: str) -> bool:
    """Count a user-facing message; True when it is plain (holds no traceback)."""
    plain = "Traceback" not in message
    add("tracebacks seen", 0 if plain else 1)
    return plain


def summary() -> str | None:
    """One line with every figure, or None when no fault test ran in this session."""
    if not _touched:
        return None
    return "fault suite: " + ", ".join(f"{name} {value}" for name, value in FIGURES.items())
