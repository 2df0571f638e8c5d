"""One training per device: an exclusive file lock per device in the runs folder.

The app's background thread and the command line both take the lock before training, so they can
never train on the same device at once. The operating system releases an `flock` when its process
dies, even by SIGKILL, so a crash never leaves a device locked. The lock file also records which
run holds it, so a refusal can name it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path

from .errors import UserError


class DeviceBusy(UserError, RuntimeError):
    """Another training holds this device; the message names it (still a RuntimeError, as it always was)."""


def _lock_path(runs_dir: Path, device: str) -> Path:
    return Path(runs_dir) / ".locks" / (re.sub(r"[^a-z0-9]+", "-", device.lower()) + ".lock")


class DeviceLock:
    """Context manager holding the lock for `device` while `run_name` trains."""

    def __init__(self, runs_dir: Path, device: str, run_name: str):
        self.path = _lock_path(runs_dir, device)
        self.device = device
        self.run_name = run_name
        self._fd: int | None = None

    def acquire(self) -> "DeviceLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = lock_holder(self.path.parent.parent, self.device) or {}
            who = f"run '{holder.get('run', '?')}' (process {holder.get('pid', '?')})"
            raise DeviceBusy(
                f"The {self.device} device is busy training {who}. Wait for it to finish, or stop it, "
                "before starting another training on this device."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"run": self.run_name, "pid": os.getpid()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DeviceLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(runs_dir: Path, device: str) -> dict | None:
    """Who holds the device now ({"run", "pid"}), or None when it is free."""
    path = _lock_path(runs_dir, device)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(path: Path, wait_seconds: float = 1.0) -> dict:
    """The holder's {"run", "pid"}, waiting briefly for it: a holder writes its name just after it
    takes the lock, so a refusal that lands in between would otherwise read an empty file."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder or time.monotonic() >= deadline:
            return holder or {"run": "?", "pid": "?"}
        time.sleep(0.005)
