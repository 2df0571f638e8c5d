"""Faults inside the app's training thread: an exception, a NaN loss, a GPU out-of-memory error.

Each ends its run `failed` with a plain message that the dashboard shows; the server keeps serving
(the shared JobRunner takes the next run, the pages still render), other runs are untouched, and
the next queued run starts and finishes. The faults are injected into the real train() through
`byol.train.training_step`, which the loop looks up at call time, for the runs named in a plan.

The OS killing the whole server (out of memory) runs no Python code at all: a process hosting a
JobRunner is SIGKILLed mid-training, and a fresh app (a new AppTest, as after a restart) must show
the run as `interrupted`, resumable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

import byol.jobs
import byol.train
import fault_figures
from byol import runs
from byol.checkpoint import load_checkpoint
from byol.device import device_key, resolve_device
from byol.jobs import shared_runner
from byol.lock import lock_holder
from helpers import REPO, tree_snapshot

TRAIN_PAGE = "pages/1_Train.py"
FAULT_AT_STEP = 2  # one step trains normally first

# run name -> (what goes wrong in its training step, the message the run must end with)
FAULTS: dict[str, tuple[str, str]] = {
    "fault-exception": (
        "exception",
        "Training stopped with an unexpected error: RuntimeError: injected fault inside the training step",
    ),
    "fault-nan": ("nan", f"The loss became nan at step {FAULT_AT_STEP}, so training was stopped."),
    "fault-oom": ("oom", "The device ran out of memory. Lower the batch size (or the backbone width) and resume the run."),
}


class StepFaults:
    """Stands between the JobRunner and the real train()/training_step, breaking the planned runs' steps."""

    def __init__(self, plan: dict[str, str]):
        self.plan = plan
        self.started: list[str] = []  # the runs train() was called for, in order
        self.steps: Counter[str] = Counter()
        self._train = byol.train.train
        self._step = byol.train.training_step

    def train(self, config, run_dir, stop=None, on_event=None) -> str:
        self.started.append(Path(run_dir).name)
        return self._train(config, run_dir, stop, on_event)

    def step(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.started[-1]  # one training at a time per device: the run being trained now
        self.steps[name] += 1
        fault = self.plan.get(name) if self.steps[name] >= FAULT_AT_STEP else None
        if fault == "exception":
            raise RuntimeError("injected fault inside the training step")
        if fault == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8.00 GiB total capacity)")
        loss, projections = self._step(*args, **kwargs)
        if fault == "nan":
            loss = loss * float("nan")
        return loss, projections


@pytest.fixture
def faults(monkeypatch) -> StepFaults:
    plan = StepFaults({name: kind for name, (kind, _) in FAULTS.items()})
    monkeypatch.setattr(byol.jobs, "train", plan.train)
    monkeypatch.setattr(byol.train, "training_step", plan.step)
    return plan


def page_texts(at) -> list[str]:
    """Every text the page shows a person: alerts, markdown, captions, exceptions."""
    texts = []
    for kind in ("error", "warning", "info", "success", "markdown", "caption", "exception"):
        texts += [str(element.value) for element in at.get(kind)]
    return texts


def test_faults_in_the_training_thread_fail_only_their_run_and_the_queue_goes_on(
    finished_run, runs_dir, app_test, tiny_config, faults
):
    other_before = tree_snapshot(finished_run)
    runner = shared_runner(runs_dir)  # the one the app's pages use (ui.common.get_runner)
    names = [*FAULTS, "after-the-faults"]
    for name in names:
        runner.launch(tiny_config(epochs=1, device="cpu"), name)
    assert runner.wait(timeout=300), "the queue did not drain"

    # Each faulty run failed with its plain message; the next queued run started every time.
    assert faults.started == names
    for name, (_, message) in FAULTS.items():
        status = runs.read_status(runs_dir / name)
        assert status["state"] == runs.FAILED, status
        assert status["message"].startswith(message), status["message"]
        assert fault_figures.saw_message(status["message"])
        assert status["pid"] == os.getpid()  # the server itself went on
    assert runs.read_status(runs_dir / "after-the-faults")["state"] == runs.FINISHED
    assert load_checkpoint(runs_dir / "after-the-faults" / "last.pt")["step"] == 4
    untouched = tree_snapshot(finished_run) == other_before
    fault_figures.add("runs lost", 0 if untouched else 1)
    assert untouched, "a fault in one run changed another run"
    assert lock_holder(runs_dir, device_key(resolve_device("cpu"))) is None  # the device is free again

    # The dashboard shows each failure in plain words, and keeps working.
    for name, (_, message) in FAULTS.items():
        at = app_test(TRAIN_PAGE, query_params={"run": name})
        at.run()
        assert not at.exception
        assert at.selectbox(key="train_run").value == name
        errors = [str(e.value) for e in at.error]
        assert any(e.startswith(message) for e in errors), errors
        assert all(fault_figures.saw_message(text) for text in page_texts(at))
        assert at.button(key="resume").label == "Resume"  # a failed run can be resumed
    home = app_test("app.py")
    home.run()
    assert not home.exception
    table = home.dataframe[0].value
    states = dict(zip(table["Run"], table["Status"]))
    assert states == {**{name: "failed" for name in FAULTS}, "after-the-faults": "finished", "tiny-finished": "finished"}


SERVER = """
import json, sys, time
from byol.config import TrainConfig
from byol.jobs import JobRunner
runner = JobRunner(sys.argv[1])
runner.launch(TrainConfig.from_dict(json.loads(sys.argv[2])), "killed-with-its-server")
time.sleep(600)
"""


def test_a_server_killed_by_the_os_leaves_its_run_interrupted_on_restart(runs_dir, app_test, tiny_config):
    config = tiny_config(epochs=50, device="cpu", checkpoint_minutes=0.05)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(runs_dir), json.dumps(config.to_dict())],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run_dir = runs_dir / "killed-with-its-server"
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "last.pt").exists() and runs.read_status(run_dir).get("state") == runs.RUNNING):
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the server's training never got going"
            time.sleep(0.05)
        assert runs.read_status(run_dir)["pid"] == server.pid
    finally:
        server.send_signal(signal.SIGKILL)  # what the OS's out-of-memory killer does
    # Unreaped, the server is a zombie: it already reads interrupted, not running.
    deadline = time.monotonic() + 5
    while runs.read_status(run_dir)["state"] != runs.INTERRUPTED:
        assert time.monotonic() < deadline, runs.read_status(run_dir)
        time.sleep(0.01)
    server.wait()
    server.stderr.close()
    assert load_checkpoint(run_dir / "last.pt")["step"] > 0

    # The restarted app: the run is listed as interrupted, with a Resume button and a plain message.
    home = app_test("app.py")
    home.run()
    assert not home.exception
    assert any(s.value == "Interrupted runs" for s in home.subheader)
    assert home.button(key="resume_killed-with-its-server") is not None
    at = app_test(TRAIN_PAGE, query_params={"run": "killed-with-its-server"})
    at.run()
    assert not at.exception
    warnings = [str(w.value) for w in at.warning]
    assert any("ended without finishing" in w and "Resume" in w for w in warnings), warnings
    assert all(fault_figures.saw_message(text) for text in page_texts(at))
    assert at.button(key="resume").label == "Resume"
