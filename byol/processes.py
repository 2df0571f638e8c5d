"""Is a process alive? One answer for run liveness (status.json's pid) and for temporaries left by killed writers."""

from __future__ import annotations

import os


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (Linux): [state, ppid, ...], or None."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), to tell a live process from a reused pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def process_alive(pid: int | None, start_time: str | None = None) -> bool:
    """Whether `pid` is a running process (not a zombie) and, given `start_time`, still the same one."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        # A zombie: killed or exited, kept in the process table only until its parent collects it
        # (a launcher that never waits keeps it for good). It will never write again.
        return False
    if start_time is not None and fields is not None and len(fields) > 19 and fields[19] != start_time:
        return False  # the pid was reused by another process
    return True
