"""Concurrency: many launches at once, two servers on one runs folder, and stale stop/resume clicks.

- Ten launch requests fired at once from two browser sessions of one server (two threads sharing
  the server's JobRunner, as every session does) give exactly one training and a FIFO queue of
  nine, ten complete run folders with distinct names (same requested name or not), and never a
  half-created folder; at no moment do two trainings run on the device.
- Two servers on one runs folder (two JobRunners, e.g. two `streamlit run`s) each fire five: the
  device lock lets exactly one training run; the other server's launches end with the plain
  "device is busy" refusal, never as a second training.
- A Stop clicked on a run that finished meanwhile, a Resume clicked on a run that another session
  already resumed, and a command-line resume of a run the app is training each get a plain answer
  and start nothing twice.

Trainings are `FakeTrain` stand-ins (conftest.py): what is tested is the bookkeeping around them.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

import byol.jobs
import fault_figures
from byol import runs
from byol.cli import main as cli_main
from byol.errors import UserError
from byol.jobs import JobRunner, shared_runner
from byol.lock import DeviceLock, lock_holder

TRAIN_PAGE = "pages/1_Train.py"


class OnePerDevice:
    """Wraps the fake training: counts trainings running at once (per process) and takes the real device lock."""

    def __init__(self, fake, take_lock: bool = False):
        self.fake, self.take_lock = fake, take_lock
        self.active = 0
        self.most = 0
        self._count = threading.Lock()

    def __call__(self, config, run_dir, stop=None, on_event=None) -> str:
        lock = DeviceLock(Path(run_dir).parent, "cpu", Path(run_dir).name).acquire() if self.take_lock else None
        try:
            with self._count:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(0.01)  # widen the window in which a second training would overlap
            try:
                return self.fake(config, run_dir, stop, on_event)
            finally:
                with self._count:
                    self.active -= 1
        finally:
            if lock is not None:
                lock.release()


def fire_at_once(sessions: list[tuple[JobRunner, list[str | None]]], config) -> tuple[list[Path], list[str]]:
    """Each session (a thread) fires its launches as fast as it can, all sessions released together."""
    start = threading.Barrier(len(sessions))
    launched: list[Path] = []
    refusals: list[str] = []
    unexpected: list[BaseException] = []
    guard = threading.Lock()

    def session(runner: JobRunner, names: list[str | None]) -> None:
        start.wait()
        for name in names:
            try:
                run_dir = runner.launch(config, name)
                with guard:
                    launched.append(run_dir)
            except UserError as error:  # what the Train page would show with st.error
                with guard:
                    refusals.append(str(error))
            except BaseException as error:  # a traceback on the page: the test fails below
                with guard:
                    unexpected.append(error)

    threads = [threading.Thread(target=session, args=pair) for pair in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not unexpected, unexpected
    return launched, refusals


def assert_complete_runs_only(runs_dir: Path, expected_config: dict) -> list[str]:
    """Every entry of the runs folder is a whole run (config and status readable) or the lock folder."""
    names = []
    for entry in sorted(runs_dir.iterdir()):
        if entry.name == ".locks":
            continue
        assert not entry.name.startswith("."), f"a half-created run folder was left: {entry.name}"
        assert json.loads((entry / "config.json").read_text()) == expected_config
        assert json.loads((entry / "status.json").read_text())["state"] in (runs.QUEUED, runs.RUNNING, runs.FAILED)
        names.append(entry.name)
    return names


def test_ten_launches_from_two_sessions_give_one_training_and_a_queue(runs_dir, tiny_config, fake_train, monkeypatch):
    counter = OnePerDevice(fake_train)
    monkeypatch.setattr(byol.jobs, "train", counter)
    config = tiny_config(device="cpu")
    # Both sessions get the server's runner the way pages do; some launches ask for the same name.
    session_a = (shared_runner(runs_dir), [None, "twin", None, "twin", None])
    session_b = (shared_runner(runs_dir), ["twin", None, "twin", None, "twin"])
    assert session_a[0] is session_b[0]
    launched, refusals = fire_at_once([session_a, session_b], config)
    runner = session_a[0]

    assert refusals == [] and len(launched) == 10 and len(set(launched)) == 10
    deadline = time.monotonic() + 10
    while runner.current() is None or counter.active == 0:
        assert time.monotonic() < deadline, "no training started"
        time.sleep(0.01)
    time.sleep(0.1)  # give a second training every chance to start, if it could
    assert len(runner.running()) == 1 and counter.active == 1
    waiting = runner.queue()
    assert len(waiting) == 9 and set(waiting) | set(runner.running()) == set(launched)
    assert all(runs.read_status(p)["state"] == runs.QUEUED for p in waiting)
    names = assert_complete_runs_only(runs_dir, config.to_dict())
    assert len(names) == 10
    assert sorted(n for n in names if n.startswith("twin")) == ["twin", "twin-2", "twin-3", "twin-4", "twin-5"]

    order = [p.name for p in runner.running() + waiting]
    fake_train.auto_release = True
    for name in order:
        fake_train.release(name)
    assert runner.wait(timeout=30)
    assert fake_train.calls == order  # first in, first out, each exactly once
    assert counter.most == 1, "two trainings ran on one device at once"
    assert all(runs.read_status(p)["state"] == runs.FINISHED for p in launched)
    fault_figures.add("runs lost", sum(runs.read_status(p)["state"] != runs.FINISHED for p in launched))


def test_two_servers_on_one_runs_folder_never_train_twice_on_a_device(runs_dir, tiny_config, fake_train, monkeypatch):
    counter = OnePerDevice(fake_train, take_lock=True)
    monkeypatch.setattr(byol.jobs, "train", counter)
    config = tiny_config(device="cpu")
    first, second = JobRunner(runs_dir), JobRunner(runs_dir)
    try:
        launched, refusals = fire_at_once([(first, [None] * 5), (second, [None] * 5)], config)
        assert refusals == [] and len(launched) == 10
        # One server's first run holds the device; the other server's runs are refused as they come up.
        deadline = time.monotonic() + 10
        while True:
            states = [runs.read_status(p)["state"] for p in launched]
            if states.count(runs.RUNNING) == 1 and states.count(runs.FAILED) == 5 and states.count(runs.QUEUED) == 4:
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.01)
        holder = lock_holder(runs_dir, "cpu")
        winner = next(p for p in launched if runs.read_status(p)["state"] == runs.RUNNING)
        assert holder["run"] == winner.name
        for path in launched:
            status = runs.read_status(path)
            if status["state"] == runs.FAILED:
                assert status["message"].startswith(f"The cpu device is busy training run '{winner.name}'"), status
                assert fault_figures.saw_message(status["message"])
        assert_complete_runs_only(runs_dir, config.to_dict())

        fake_train.auto_release = True
        for path in launched:
            fake_train.release(path.name)
        assert first.wait(timeout=30) and second.wait(timeout=30)
        assert counter.most == 1, "two trainings ran on one device at once"
        final = [runs.read_status(p)["state"] for p in launched]
        assert final.count(runs.FINISHED) == 5 and final.count(runs.FAILED) == 5  # refused runs can be resumed later
        assert lock_holder(runs_dir, "cpu") is None
    finally:
        first.shutdown(timeout=10)
        second.shutdown(timeout=10)


def test_stale_stop_and_resume_clicks_and_a_second_resume_get_plain_answers(runs_dir, app_test, tiny_config, fake_train, capsys):
    runner = shared_runner(runs_dir)
    run = runner.launch(tiny_config(device="cpu"), "finishes-meanwhile")
    assert fake_train.wait_started("finishes-meanwhile")

    # A second resume, from the command line, while the app trains the run: one plain line.
    assert cli_main(["resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert err == "error: The run finishes-meanwhile is running right now; it cannot be resumed twice.\n"
    assert fault_figures.saw_message(err)

    # A session shows the run training, with a Stop button; meanwhile the run finishes; then Stop is clicked.
    session = app_test(TRAIN_PAGE, query_params={"run": "finishes-meanwhile"})
    session.run()
    assert any("Training now" in m.value for m in session.markdown)
    stop_button = session.button(key="stop")
    fake_train.release("finishes-meanwhile")
    assert runner.wait(timeout=10)
    stop_button.click().run()
    assert not session.exception
    assert [str(s.value) for s in session.success] == ["Finished."]  # the page answers with the truth
    assert not [b for b in session.button if b.key == "stop"]
    assert runs.read_status(run)["state"] == runs.FINISHED
    with pytest.raises(runs.RunError, match="^This run has already finished; there is nothing to stop.$"):
        runner.stop(run)  # what the button would have called

    # Two sessions show a stopped run with Resume; session 2 resumes it, then session 1 clicks too.
    other = runner.launch(tiny_config(device="cpu"), "resumed-twice")
    assert fake_train.wait_started("resumed-twice")
    runner.stop(other)
    assert runner.wait(timeout=10) and runs.read_status(other)["state"] == runs.STOPPED
    session_1 = app_test(TRAIN_PAGE, query_params={"run": "resumed-twice"})
    session_2 = app_test(TRAIN_PAGE, query_params={"run": "resumed-twice"})
    session_1.run()
    session_2.run()
    session_2.button(key="resume").click().run()
    assert not session_2.exception
    deadline = time.monotonic() + 10
    while fake_train.calls.count("resumed-twice") < 2:  # the resumed run trains
        assert time.monotonic() < deadline, fake_train.calls
        time.sleep(0.01)
    session_1.button(key="resume").click().run()  # a stale click: the run trains already
    assert not session_1.exception
    assert any("Training now: **resumed-twice**" in m.value for m in session_1.markdown)
    with pytest.raises(runs.RunError, match="already queued or training; it cannot be resumed twice"):
        runner.resume(other)  # what the button would have called
    runner.stop(other)
    assert runner.wait(timeout=10)
    assert fake_train.calls == ["finishes-meanwhile", "resumed-twice", "resumed-twice"]  # nothing started twice
    for at in (session, session_1, session_2):
        assert all(fault_figures.saw_message(str(e.value)) for e in [*at.error, *at.exception])
