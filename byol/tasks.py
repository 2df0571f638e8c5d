"""Background computations for the inspection pages (embeddings, the UMAP map, kNN), with progress.

This is not the training runner (jobs.py): these are read-only computations on a saved checkpoint
that take seconds to minutes, and a page must not block while they run. One `TaskRunner` serves the
whole server (the pages hold it in `st.cache_resource`), so two browser tabs that ask for the same
map share one computation instead of starting two.

    runner.submit("map:run-a:step-00000400", lambda report: prepare(..., progress=report))
    runner.status("map:run-a:step-00000400")   # TaskStatus(state="running", message=..., fraction=0.4)

- A key names the work; submitting a key that is pending, running or done returns its status and
  starts nothing. A failed key may be submitted again (a retry); `again=True` also redoes a done one.
- At most `max_workers` tasks run at once (default one: these computations already use every core);
  the others wait as `pending`.
- The task function receives `report(message=None, fraction=None)` to publish progress; the status
  is a frozen snapshot, safe to read from any thread.
- A task that raises becomes `failed`, keeping the exception's message (our library errors are
  written for people, so the page shows it as it is). Nothing here calls streamlit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from .errors import plain_message as _plain_message

IDLE, PENDING, RUNNING, DONE, FAILED = "idle", "pending", "running", "done", "failed"
ACTIVE_STATES = (PENDING, RUNNING)

Report = Callable[..., None]  # report(message: str | None = None, fraction: float | None = None)


@dataclass(frozen=True)
class TaskStatus:
    key: str
    state: str  # idle (never submitted) | pending | running | done | failed
    message: str = ""  # the latest progress message, or the error when failed
    fraction: float | None = None  # 0..1 when the task knows how far it is, else None
    label: str = ""  # what the task does, in words
    submitted: float | None = None
    started: float | None = None
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def elapsed(self) -> float:
        """Seconds spent running so far (or in total, once finished)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started


class TaskRunner:
    """Runs named background computations, a few at a time, and reports their progress."""

    def __init__(self, max_workers: int = 1, keep: int = 200):
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1.")
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_workers)
        self._statuses: dict[str, TaskStatus] = {}
        self._results: dict[str, Any] = {}
        self._finished_events: dict[str, threading.Event] = {}
        self._keep = keep

    # --- reading ---------------------------------------------------------------------------
    def status(self, key: str) -> TaskStatus:
        with self._lock:
            return self._statuses.get(key) or TaskStatus(key, IDLE)

    def result(self, key: str) -> Any:
        """What the task function returned (None until it is done)."""
        with self._lock:
            return self._results.get(key)

    def active(self) -> list[TaskStatus]:
        """Pending and running tasks, oldest first."""
        with self._lock:
            return [s for s in self._statuses.values() if s.active]

    def wait(self, key: str, timeout: float | None = None) -> TaskStatus:
        """Block until the task is done or failed (or `timeout` seconds passed); returns its status."""
        with self._lock:
            event = self._finished_events.get(key)
        if event is not None:
            event.wait(timeout)
        return self.status(key)

    # --- starting --------------------------------------------------------------------------
    def submit(self, key: str, fn: Callable[[Report], Any], label: str = "", again: bool = False) -> TaskStatus:
        """Start `fn(report)` in the background under `key`, unless that key is already under way or done."""
        with self._lock:
            current = self._statuses.get(key)
            if current is not None and (current.active or (current.state == DONE and not again)):
                return current
            status = TaskStatus(key, PENDING, "Waiting for another computation to finish...", None, label, time.time())
            self._statuses[key] = status
            self._results.pop(key, None)
            self._finished_events[key] = threading.Event()
            self._forget_old()
        thread = threading.Thread(target=self._run, args=(key, fn), name=f"task:{key}"[:60], daemon=True)
        thread.start()
        return status

    # --- internals -------------------------------------------------------------------------
    def _update(self, key: str, **changes: Any) -> None:
        with self._lock:
            current = self._statuses.get(key)
            if current is not None:
                self._statuses[key] = replace(current, **changes)

    def _run(self, key: str, fn: Callable[[Report], Any]) -> None:
        with self._slots:
            self._update(key, state=RUNNING, message="Starting...", started=time.time())

            def report(message: str | None = None, fraction: float | None = None) -> None:
                changes: dict[str, Any] = {}
                if message is not None:
                    changes["message"] = str(message)
                if fraction is not None:
                    changes["fraction"] = min(max(float(fraction), 0.0), 1.0)
                if changes:
                    self._update(key, **changes)

            try:
                result = fn(report)
            except Exception as error:  # any failure ends as a readable status, never a dead thread
                self._update(key, state=FAILED, message=plain_message(error), finished=time.time())
            else:
                with self._lock:
                    self._results[key] = result
                self._update(key, state=DONE, message="Done.", fraction=1.0, finished=time.time())
            finally:
                with self._lock:
                    event = self._finished_events.get(key)
                if event is not None:
                    event.set()

    def _forget_old(self) -> None:
        # Called with the lock held: keep the records bounded on a long-lived server.
        finished = [s for s in self._statuses.values() if not s.active]
        excess = len(self._statuses) - self._keep
        for status in sorted(finished, key=lambda s: s.submitted or 0)[: max(excess, 0)]:
            self._drop(status.key)

    def _drop(self, key: str) -> None:
        self._statuses.pop(key, None)
        self._results.pop(key, None)
        self._finished_events.pop(key, None)


def plain_message(error: BaseException) -> str:
    """Our library errors (UserError) already speak plainly; others get their type named (errors.plain_message)."""
    if isinstance(error, MemoryError):
        return "The computation ran out of memory."
    return _plain_message(error, "The computation failed")
