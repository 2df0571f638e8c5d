"""The dashboard's background runner: trainings run in threads of the app's server, one per device.

One `JobRunner` serves every browser session of a server (the app holds it in `st.cache_resource`
and gets it through `shared_runner()`, so clearing Streamlit's cache never orphans a training).
It never calls streamlit: it writes run directories through `train()`, and pages read them.

- `launch(config)` checks the config (ConfigError before anything is created), creates the
  run folder with status `queued`, and puts it in its device's FIFO queue.
- Each device has one worker thread (a daemon) that takes the queue's first run and calls
  `train(config, run_dir, stop_flag, on_event)` on it, then the next, so one training at a time
  trains per device; the others wait, visible as `queued` in their status and in `queue()`.
- `stop(run_dir)` sets the running run's stop flag (it ends `stopped` after its current step, with
  last.pt saved), or takes a queued run out of the queue and marks it `stopped`.
- `resume(run_dir, epochs=None)` queues a stopped, failed, interrupted (or, with more epochs,
  finished) run again; train() continues it from its last.pt.
- If train() raises DeviceBusy (the command line trains on that device) or anything unexpected,
  the run is marked `failed` with a plain message and the worker goes on with the next run; a
  SystemExit leaves it `interrupted` (resumable), and the worker goes on too.

Stopping the server stops its trainings: on a normal exit `shutdown()` asks them to stop and save
(registered with atexit); after a kill, their status reads `interrupted` (runs.read_status checks
the pid) and they can be resumed.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import runs
from .config import PRECISIONS, ConfigError, TrainConfig, config_errors
from .data import layout_problem
from .device import device_key, resolve_device, use_bf16
from .errors import UserError
from .pairs import pair_configs, pair_names
from .train import INTERRUPTED_MESSAGE, plain_error, train

log = logging.getLogger(__name__)

STOPPED_BEFORE_START = "Stopped before it started; resume to start it."  # a queued run's status when stopped

SHUTDOWN_WAIT_SECONDS = 30.0  # how long a normal server exit waits for trainings to save and stop


@dataclass
class Job:
    run_dir: Path
    config: TrainConfig
    device: str  # device_key: "cpu" or "cuda-0"
    order: int  # launch order across devices, for one FIFO listing
    stop: threading.Event = field(default_factory=threading.Event)
    last_event: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False


def launch_problems(config: TrainConfig) -> list[str]:
    """Every problem that can be found before a run folder exists, each as one plain sentence.

    The config's own values (config_errors, which also checks that a data path exists), a data
    folder or zip not laid out as train/<class>/, test/<class>/ (data.layout_problem), and a GPU or
    bf16 asked for where there is none. Empty list = ready to launch.
    """
    problems = config_errors(config)
    if not problems and isinstance(config.data, str):  # a readable path: is it laid out as a data set?
        problem = layout_problem(config.data)
        if problem:
            problems.append(problem)
    try:
        device = resolve_device(config.device) if isinstance(config.device, str) else None
        if device is not None and config.precision in PRECISIONS:
            use_bf16(config.precision, device)
    except ConfigError as error:
        problems.append(str(error))
    except (RuntimeError, ValueError):
        pass  # a malformed device string: config_errors already said so
    return problems


def check_launchable(config: TrainConfig) -> str:
    """Raise ConfigError unless `config` can launch here; returns its device key ("cpu", "cuda-0")."""
    problems = launch_problems(config)
    if problems:
        raise ConfigError(" ".join(problems))
    return device_key(resolve_device(config.device))


class JobRunner:
    """Thread-safe queue of trainings for one runs folder; one worker thread per busy device."""

    def __init__(self, runs_dir: Path | str | None = None, train_fn: Callable[..., str] | None = None):
        self.runs_dir = Path(runs_dir) if runs_dir else runs.default_runs_dir()
        # train() is looked up at call time (not bound here) so tests can monkeypatch byol.jobs.train.
        self._train_fn = train_fn
        self._lock = threading.RLock()
        self._queues: dict[str, deque[Job]] = {}
        self._current: dict[str, Job] = {}
        self._workers: dict[str, threading.Thread] = {}
        self._order = itertools.count()
        self._closed = False
        _register_for_exit(self)

    # --- launching ---------------------------------------------------------------------------
    def launch(self, config: TrainConfig, name: str | None = None) -> Path:
        """Check `config`, create its run folder (status queued) and queue it; returns the folder."""
        device = check_launchable(config)
        if name is not None:
            runs.check_run_name(name)
        run_dir = runs.create_run(self.runs_dir, config, name)
        self._enqueue(Job(run_dir, config, device, next(self._order)))
        return run_dir

    def launch_pair_bn_experiment(self, config: TrainConfig, name: str | None = None) -> tuple[Path, Path]:
        """Two runs identical except `head_bn` (seed included), queued one after the other.

        Named `<base>-bn` and `<base>-no-bn`, so they pair up in listings; returns (with BN, without).
        The run without batch norm trains first: its collapse shows within its first epoch, so a
        person who clicked sees what the experiment is about at once (Compare marked it 25-29 s after the
        click with the `cpu` preset on 2 cores), not after the whole healthy run (14 minutes there).
        """
        with_bn, without_bn = pair_configs(config)
        check_launchable(with_bn)
        check_launchable(without_bn)
        base = name or pair_base_name(config)
        runs.check_run_name(pair_names(base)[1])
        with self._lock:  # no other launch can slip in between the two halves
            free = (c for c in runs.name_candidates(base) if not any((self.runs_dir / n).exists() for n in pair_names(c)))
            base = next(free, None)
            if base is None:
                raise runs.RunError(f"Could not find a free pair of run names starting with {name or pair_base_name(config)}.")
            name_bn, name_no_bn = pair_names(base)
            collapsing = self.launch(without_bn, name_no_bn)
            try:
                healthy = self.launch(with_bn, name_bn)
            except Exception:
                self.stop(collapsing)
                raise
        return healthy, collapsing

    def resume(self, run_dir: Path | str, epochs: int | None = None) -> None:
        """Queue a stopped, failed or interrupted run again; `epochs` sets a new (larger) total.

        A finished run needs `epochs` above its current total. Refused with RunError while the run
        is queued or training.
        """
        run_dir = runs.existing_run(run_dir)
        with self._lock:
            if self._find(run_dir) is not None:
                raise runs.RunError(f"The run {run_dir.name} is already queued or training; it cannot be resumed twice.")
            status = runs.read_status(run_dir)
            state = status.get("state")
            if state in runs.LIVE_STATES:
                raise runs.RunError(
                    f"The run {run_dir.name} is {state} in another process (the command line?); "
                    "it cannot be resumed while it trains there."
                )
            problem = runs.resume_problem(run_dir, state)
            if problem:
                raise runs.RunError(problem)
            config = runs.extended_config(run_dir, state, epochs)
            device = check_launchable(config)
            runs.update_config(run_dir, config)
            runs.write_status(run_dir, runs.QUEUED, "Waiting to resume.")
            self._enqueue(Job(run_dir, config, device, next(self._order), resumed=True))

    # --- stopping ----------------------------------------------------------------------------
    def stop(self, run_dir: Path | str) -> str:
        """Stop a run: a training one after its current step (it saves first), a queued one at once.

        Returns "stopping" or "dequeued". RunError when there is nothing this server can stop.
        """
        run_dir = Path(run_dir)
        with self._lock:
            for job in self._current.values():
                if _same(job.run_dir, run_dir):
                    job.stop.set()
                    return "stopping"
            for queue in self._queues.values():
                for job in list(queue):
                    if _same(job.run_dir, run_dir):
                        queue.remove(job)
                        runs.write_status(run_dir, runs.STOPPED, STOPPED_BEFORE_START)
                        return "dequeued"
        state = runs.read_status(runs.existing_run(run_dir)).get("state")
        if state == runs.FINISHED:
            raise runs.RunError("This run has already finished; there is nothing to stop.")
        if state in runs.LIVE_STATES:
            raise runs.RunError(runs.other_process_words(run_dir.name))
        raise runs.RunError(f"This run is not training (it is {state}); there is nothing to stop.")

    def stop_all(self) -> None:
        """Stop every running training and empty the queues (queued runs are marked stopped)."""
        with self._lock:
            for queue in self._queues.values():
                while queue:
                    job = queue.popleft()
                    try:
                        runs.write_status(job.run_dir, runs.STOPPED, STOPPED_BEFORE_START)
                    except OSError:
                        pass
            for job in self._current.values():
                job.stop.set()

    def shutdown(self, timeout: float = SHUTDOWN_WAIT_SECONDS) -> None:
        """Stop everything and wait up to `timeout` seconds for the workers to save and end."""
        with self._lock:
            self._closed = True
        self.stop_all()
        deadline = time.monotonic() + timeout
        for worker in list(self._workers.values()):
            worker.join(timeout=max(0.0, deadline - time.monotonic()))

    # --- reading -----------------------------------------------------------------------------
    def queue(self) -> list[Path]:
        """Runs waiting to start, in the order they will start (per device, then launch order)."""
        with self._lock:
            jobs = [job for q in self._queues.values() for job in q]
        return [job.run_dir for job in sorted(jobs, key=lambda j: j.order)]

    def current(self) -> Path | None:
        """The run training now (the first one when several devices train), or None."""
        running = self.running()
        return running[0] if running else None

    def running(self) -> list[Path]:
        with self._lock:
            return [job.run_dir for job in sorted(self._current.values(), key=lambda j: j.order)]

    def is_managed(self, run_dir: Path | str) -> bool:
        """True while this runner has the run queued or training."""
        with self._lock:
            return self._find(Path(run_dir)) is not None

    def last_event(self, run_dir: Path | str) -> dict[str, Any]:
        """The newest event train() reported for a run this runner is training (empty otherwise)."""
        with self._lock:
            job = self._find(Path(run_dir))
            return dict(job.last_event) if job else {}

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or training (tests and scripts); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                idle = not self._current and not any(self._queues.values())
            if idle:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    # --- internals ---------------------------------------------------------------------------
    def _find(self, run_dir: Path) -> Job | None:
        for job in self._current.values():
            if _same(job.run_dir, run_dir):
                return job
        for queue in self._queues.values():
            for job in queue:
                if _same(job.run_dir, run_dir):
                    return job
        return None

    def _enqueue(self, job: Job) -> None:
        with self._lock:
            if self._closed:
                runs.write_status(job.run_dir, runs.STOPPED, "The app was shutting down; resume to start this run.")
                raise runs.RunError("The app is shutting down; no new training can start.")
            self._queues.setdefault(job.device, deque()).append(job)
            worker = self._workers.get(job.device)
            if worker is None or not worker.is_alive():
                worker = threading.Thread(target=self._work, args=(job.device,), name=f"byol-train-{job.device}", daemon=True)
                self._workers[job.device] = worker
                worker.start()

    def _work(self, device: str) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(device)
                if not queue:
                    # Decided under the lock, so a launch either sees this worker gone or its job taken.
                    self._workers.pop(device, None)
                    return
                job = queue.popleft()
                self._current[device] = job
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._current.pop(device, None)

    def _run(self, job: Job) -> None:
        train_fn = self._train_fn or train

        def on_event(event: dict[str, Any]) -> None:
            job.last_event = event

        try:
            train_fn(job.config, job.run_dir, job.stop, on_event)
        except UserError as error:  # refused input or a busy device: the message says it all, no traceback to log
            _mark_failed(job.run_dir, str(error))
        except Exception as error:  # the worker must survive anything a run does
            log.exception("training of %s raised", job.run_dir)
            _mark_failed(job.run_dir, plain_error(error))
        except BaseException:  # noqa: BLE001 - SystemExit (sys.exit() in a library) in this thread
            # Re-raising would only end this worker thread and strand the queued runs behind it;
            # train() has left the run interrupted (resumable) and freed the device: go on.
            log.exception("training of %s exited", job.run_dir)
            if runs.read_status(job.run_dir).get("state") in runs.LIVE_STATES:
                _mark(job.run_dir, runs.INTERRUPTED, INTERRUPTED_MESSAGE)


def _mark_failed(run_dir: Path, message: str) -> None:
    _mark(run_dir, runs.FAILED, message)


def _mark(run_dir: Path, state: str, message: str) -> None:
    try:
        runs.write_status(run_dir, state, message, finished=time.time())
    except OSError:  # the folder was deleted or the disk is full: nothing more to do for this run
        log.warning("could not mark %s %s: %s", run_dir, state, message)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b


def pair_base_name(config: TrainConfig) -> str:
    """`<time>-<preset>-pair`: the shared start of a BN-vs-no-BN pair's two names. No data label, unlike
    a single run's name: both names then fit side by side in Compare's picker, and the runs table
    and the settings say which data the pair trained on."""
    return f"{runs.default_run_name(config, with_data=False)}-pair"


# --- one runner per runs folder and process --------------------------------------------------
_shared: dict[str, JobRunner] = {}
_shared_lock = threading.Lock()
_all_runners: "weakref.WeakSet[JobRunner]" = weakref.WeakSet()


def shared_runner(runs_dir: Path | str | None = None) -> JobRunner:
    """The process-wide runner for `runs_dir` (default: runs.default_runs_dir()), created once."""
    folder = Path(runs_dir) if runs_dir else runs.default_runs_dir()
    key = str(folder.resolve())
    with _shared_lock:
        runner = _shared.get(key)
        if runner is None or runner._closed:
            runner = _shared[key] = JobRunner(folder)
        return runner


def shutdown_all(timeout: float = SHUTDOWN_WAIT_SECONDS) -> None:
    """Shut every runner of this process down (atexit, and test teardown)."""
    with _shared_lock:
        _shared.clear()
    for runner in list(_all_runners):
        runner.shutdown(timeout)


def _register_for_exit(runner: JobRunner) -> None:
    _all_runners.add(runner)


atexit.register(shutdown_all)
