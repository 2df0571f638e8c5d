"""Shared fixtures for the library's and the dashboard's tests.

Fixtures for page tests (tests/test_app_home.py, test_page_*.py) and anyone else who needs a run:

- `runs_dir`: an empty temporary runs folder. Sets `BYOL_RUNS_DIR` to it (so `runs.default_runs_dir()`,
  every page and the shared JobRunner use it) and `BYOL_CACHE_DIR` to a temporary cache shared by
  the session (speed.json, pixel_knn.json, decoded data never land in the project's .cache).
- `finished_run`: the path of a tiny *finished* run named "tiny-finished" inside `runs_dir`:
  synthetic data, width-4 ResNet-18, 256 training images, 2 epochs of 4 steps, a loss/z_std row
  every step and kNN evaluations at steps 0, 4 and 8 (bank 256, queries 100, k 20), with
  `step-0000000{0,4,8}.pt` snapshots and `last.pt`. Trained once per session through the real
  `JobRunner` and `train()` (~10-20 s on 2 cores), then copied into each test's `runs_dir`.
- `tiny_config()`: the TrainConfig of `finished_run` (a function: each call returns a fresh copy;
  pass overrides as keyword arguments).
- `app_test(page, query_params=None)`: an AppTest of `app.py` switched to `page` (e.g.
  "pages/1_Train.py"), so `st.page_link`s resolve as in the real app; call `.run()` on it. Runs have a
  generous timeout (`APP_TIMEOUT`), since the machine may be busy.
- `fake_train`: replaces `byol.jobs.train` with a controllable stand-in (see `FakeTrain`) so launches
  from pages or JobRunner tests never train for real.
- autouse `clean_streamlit_and_runners`: clears `st.cache_resource`/`st.cache_data` before and after
  each test (they are shared by every AppTest in the process) and shuts down the process's job
  runners after it. It costs nothing in tests that never import streamlit or byol.jobs.

After the session, the fault suite's figures (tests/fault_figures.py) are printed when any fault test ran.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `import ui.common` and `import byol` from any working directory

from byol import runs  # noqa: E402
from byol.config import TrainConfig  # noqa: E402
from helpers import tiny_config as engine_tiny_config  # noqa: E402

APP_TIMEOUT = 60  # seconds for one AppTest run (a busy 2-core machine is slow to import plotly)
FINISHED_RUN_NAME = "tiny-finished"


def _tiny_config(**overrides) -> TrainConfig:
    """The engine tests' tiny config, with the app's defaults for warm-up and precision."""
    return engine_tiny_config(**{"warmup_epochs": 0.5, "precision": "auto", **overrides})


@pytest.fixture
def tiny_config():
    """A function returning the tiny config of `finished_run` (keyword overrides allowed)."""
    return _tiny_config


@pytest.fixture(scope="session", autouse=True)
def session_cache_dir(tmp_path_factory) -> Path:
    """One temporary project cache for the whole session, so no test writes into the real .cache."""
    folder = tmp_path_factory.mktemp("byol-cache")
    previous = os.environ.get("BYOL_CACHE_DIR")
    os.environ["BYOL_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("BYOL_CACHE_DIR", None)
    else:
        os.environ["BYOL_CACHE_DIR"] = previous


@pytest.fixture
def runs_dir(tmp_path, session_cache_dir, monkeypatch) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    monkeypatch.setenv("BYOL_RUNS_DIR", str(folder))
    monkeypatch.setenv("BYOL_CIFAR10_COPY", "")  # no page test decodes the real copy unless it asks for one
    monkeypatch.setenv("BYOL_CACHE_DIR", str(session_cache_dir))
    return folder


@pytest.fixture(scope="session")
def _trained_tiny_run(tmp_path_factory, session_cache_dir) -> Path:
    """Train the tiny run once per session, through the real JobRunner and train()."""
    from byol.jobs import JobRunner

    folder = tmp_path_factory.mktemp("byol-session-runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BYOL_CACHE_DIR", str(session_cache_dir))
        runner = JobRunner(folder)
        run_dir = runner.launch(_tiny_config(), FINISHED_RUN_NAME)
        assert runner.wait(timeout=300), "the tiny training did not finish in 5 minutes"
        runner.shutdown()
    status = runs.read_status(run_dir)
    assert status["state"] == runs.FINISHED, status
    return run_dir


@pytest.fixture
def finished_run(_trained_tiny_run, runs_dir) -> Path:
    target = runs_dir / FINISHED_RUN_NAME
    shutil.copytree(_trained_tiny_run, target)
    return target


@pytest.fixture(autouse=True)
def clean_streamlit_and_runners():
    _clear_streamlit_caches()
    yield
    jobs = sys.modules.get("byol.jobs")
    if jobs is not None:
        jobs.shutdown_all(timeout=10)
    _finish_page_computations()
    _clear_streamlit_caches()


def _finish_page_computations() -> None:
    """Wait for what pages started in the inspection pages' task runner (some start by themselves).

    Clearing Streamlit's caches drops the runner but not its thread: a computation left running would
    go on competing for the CPU with the next tests (timing-sensitive ones then fail), and torch still
    running in a thread when Python exits aborts the test process.
    """
    inspection = sys.modules.get("ui.inspection")
    if inspection is None:
        return
    runner = inspection.get_task_runner()
    for status in runner.active():
        runner.wait(status.key, timeout=120)


def _clear_streamlit_caches() -> None:
    if "streamlit" in sys.modules:
        import streamlit as st

        st.cache_resource.clear()
        st.cache_data.clear()


@pytest.fixture
def app_test():
    from streamlit.testing.v1 import AppTest

    def make(page: str = "app.py", query_params: dict[str, str] | None = None) -> "AppTest":
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=APP_TIMEOUT)
        if page != "app.py":
            at.switch_page(page)
        for key, value in (query_params or {}).items():
            at.query_params[key] = value
        return at

    return make


class FakeTrain:
    """Stands in for byol.train.train in JobRunner and page tests.

    Each call records the run name in `calls`, writes status running, sets `started[name]`, then
    waits until `release(name)` or the stop flag, and ends finished (or stopped). `fail[name] = exc`
    makes the call for that run raise `exc` instead. `auto_release = True` finishes at once.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.configs: dict[str, TrainConfig] = {}
        self.started: dict[str, threading.Event] = defaultdict(threading.Event)
        self._released: dict[str, threading.Event] = defaultdict(threading.Event)
        self.fail: dict[str, BaseException] = {}
        self.auto_release = False

    def release(self, name: str) -> None:
        self._released[name].set()

    def wait_started(self, name: str, timeout: float = 10) -> bool:
        return self.started[name].wait(timeout)

    def __call__(self, config, run_dir, stop=None, on_event=None) -> str:
        run_dir = Path(run_dir)
        name = run_dir.name
        self.calls.append(name)
        self.configs[name] = config
        if name in self.fail:
            raise self.fail[name]
        runs.write_status(run_dir, runs.RUNNING, "Training.", started=time.time())
        if on_event:
            on_event({"kind": "status", "state": runs.RUNNING})
        self.started[name].set()
        while not (self.auto_release or self._released[name].is_set() or (stop is not None and stop.is_set())):
            time.sleep(0.01)
        state = runs.STOPPED if stop is not None and stop.is_set() else runs.FINISHED
        runs.write_status(run_dir, state, "Stopped at step 0; resume to continue." if state == runs.STOPPED else "Finished.")
        return state


@pytest.fixture
def fake_train(monkeypatch) -> FakeTrain:
    import byol.jobs

    fake = FakeTrain()
    monkeypatch.setattr(byol.jobs, "train", fake)
    return fake


def pytest_terminal_summary(terminalreporter) -> None:
    """One line with the fault suite's figures (kills survived, cases tried, tracebacks, runs lost)."""
    import fault_figures

    line = fault_figures.summary()
    if line:
        terminalreporter.write_line(line)
