"""Kill tests: command-line training SIGKILLed at random moments, also mid-checkpoint, and resumed.

One run, on a small image folder (260 training and 100 test images cut from the synthetic data set
and saved as PNG: decoded once, then read from the data cache, so a restart is quick), with a
width-4 network, 8 steps per epoch and a kNN evaluation plus checkpoint every 4 steps, is started
with `python -m byol train` in a subprocess and killed, then resumed with `resume` and killed
again, 12 kills in a row; a last `python -m byol resume` must finish it. Kills land at random
moments of three kinds: during start-up (imports, data loading), after a random number of steps
plus a random fraction of one, and in the middle of a checkpoint write (the resumed children
write each checkpoint in two halves with a pause between, see helpers.cli_child, and the test
kills them as soon as the half-written temporary file appears).

Checked at every point: while the process lives its status never claims another process; once it
is killed (even before anyone reaps it) the status reads `interrupted` and stays so. After every
kill: every checkpoint present loads, and the work lost (logged but not checkpointed) is at most
one checkpoint interval (plus the step that crossed it). At the end: the run is finished,
metrics.jsonl has no torn line and every step exactly once in increasing order, there is a
snapshot per evaluation, and no partial temporary file is left behind.

The resumed children come from a multiprocessing forkserver that has imported torch once, so a
kill-and-resume costs about a second instead of torch's import; the first and the last process
are plain `python -m byol` subprocesses. BYOL_KILL_SEED picks another sequence of kill moments.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

import fault_figures
from byol import metrics_file, runs
from byol.checkpoint import load_checkpoint
from helpers import REPO, cli_child, tiny_cli_settings, write_image_folder

STEPS_PER_EPOCH = 8  # 256 images / batch 32
EPOCHS = 7
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS
EVAL_EVERY_STEPS = 4  # eval_every 0.5 epochs: a kNN evaluation, a snapshot and last.pt every 4 steps
CHECKPOINT_SECONDS = 3.0  # checkpoint_minutes 0.05, the smallest interval the config allows
MAX_STEPS_PER_ATTEMPT = 8  # 6 step-kills gain at most 48 of the 56 steps: every kill lands before the end
TORN_WRITE_PAUSE = 0.2  # seconds between the two halves of a checkpoint write in resumed children
RUN_NAME = "killed-often"
SEED = int(os.environ.get("BYOL_KILL_SEED", "20240605"))

TRAIN_ARGS = [
    "--preset",
    "cpu",
    "--epochs",
    str(EPOCHS),
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--precision",
    "fp32",
    "--eval-every",
    "0.5",
    *tiny_cli_settings(),
    "--set",
    "log_every=1",
    "--set",
    f"checkpoint_minutes={CHECKPOINT_SECONDS / 60}",
]


# --- the processes ---------------------------------------------------------------------------
class Child:
    """A training process, either a plain subprocess or a forkserver child, with one interface."""

    def __init__(self, popen: subprocess.Popen | None = None, process: Any = None):
        self.popen, self.process = popen, process

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else self.process.pid

    def exited(self) -> bool:
        """True once the process ended; does not reap it (a killed, unreaped child stays a zombie)."""
        if self.popen:
            return _is_zombie_or_gone(self.popen.pid) or self.popen.returncode is not None
        return not self.process.is_alive()

    def kill(self) -> None:
        if self.popen:
            self.popen.send_signal(signal.SIGKILL)
        else:
            self.process.kill()

    def reap(self, timeout: float = 60) -> int:
        if self.popen:
            return self.popen.wait(timeout=timeout)
        self.process.join(timeout)
        return self.process.exitcode


def _is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def cli_subprocess(args: list[str], log: Path) -> Child:
    """`python -m byol ARGS`, a real command-line process (not waited for: the test reaps it itself)."""
    with open(log, "ab") as handle:
        popen = subprocess.Popen([sys.executable, "-m", "byol", *args], cwd=REPO, stdout=handle, stderr=handle)
    return Child(popen=popen)


# --- what the test reads -----------------------------------------------------------------------
def metric_lines(run_dir: Path) -> tuple[list[dict], bool]:
    """The rows of metrics.jsonl and whether its last line is torn (no newline: a kill mid-append)."""
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return metrics_file.read_rows(run_dir), bool(text) and not text.endswith("\n")


def step_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("kind") == "step"]


def checkpoint_temporaries(run_dir: Path) -> list[str]:
    return [n for n in os.listdir(run_dir) if n.endswith(".tmp") and (n.startswith(".last.pt.") or n.startswith(".step-"))]


def all_checkpoints_load(run_dir: Path) -> dict[str, int]:
    """Load every checkpoint file present (raises on any that cannot be used): name -> step."""
    return {path.name: int(load_checkpoint(path)["step"]) for path in sorted(run_dir.glob("*.pt"))}


class StatusWatch:
    """Reads the run's status over and over while `child` lives, and fails on any lie about it."""

    def __init__(self, run_dir: Path, child: Child):
        self.run_dir, self.child = run_dir, child
        self.saw_running = False

    def check_alive(self) -> None:
        status = runs.read_status(self.run_dir)
        state = status["state"]
        if state == runs.RUNNING:
            assert status["pid"] == self.child.pid, f"status claims running in process {status['pid']}: {status}"
            self.saw_running = True
        else:
            # Before the new process takes the run over, the record left by the killed one is read
            # as interrupted (or queued, for a run just created by this very process).
            assert state in (runs.INTERRUPTED, runs.QUEUED), status
            assert not self.saw_running or self.child.exited(), f"a live training reads {state}: {status}"
            if state == runs.QUEUED:
                assert status["pid"] == self.child.pid, status


def wait_until(condition: Callable[[], bool], watch: StatusWatch, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if watch.child.exited():
            raise AssertionError(f"the training process ended before {what} (exit code {watch.child.reap()})")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        watch.check_alive()
        time.sleep(0.005)


# --- one kill ------------------------------------------------------------------------------------
def kill_at(mode: str, rng: random.Random, run_dir: Path, watch: StatusWatch, steps_before: int, since: float) -> dict[str, Any]:
    """Wait for the moment `mode` picks, SIGKILL the child there, and check the status tells the truth."""
    child = watch.child
    detail: dict[str, Any] = {"mode": mode}
    if mode == "startup":
        deadline = time.monotonic() + rng.uniform(0.05, 1.0)
        wait_until(lambda: time.monotonic() >= deadline, watch, 30, "the start-up kill")
    elif mode == "steps":
        target = steps_before + rng.randint(1, MAX_STEPS_PER_ATTEMPT)
        detail["target_step"] = target

        def reached() -> bool:  # rows of this process only: the killed one's last rows are dropped on resume
            rows = [r for r in step_rows(metric_lines(run_dir)[0]) if r["time"] >= since]
            return bool(rows) and rows[-1]["step"] >= target

        wait_until(reached, watch, 90, f"step {target}")
        time.sleep(rng.uniform(0.0, 0.12))  # a random point inside the next step, evaluation or write
    elif mode == "mid-write":
        wanted = rng.randint(1, 2)  # the first or second checkpoint write of this process
        detail["write"] = wanted
        seen: set[str] = set()

        def half_written() -> bool:
            fresh = [name for name in checkpoint_temporaries(run_dir) if name not in stale]
            seen.update(fresh)
            return len(seen) >= wanted and any(name in seen for name in fresh)

        stale = set(checkpoint_temporaries(run_dir))  # partial files from earlier kills
        wait_until(half_written, watch, 90, "a checkpoint write")
    else:
        raise AssertionError(mode)

    in_flight = set(checkpoint_temporaries(run_dir))
    child.kill()
    if mode == "mid-write":
        # Still there after the kill: the write was cut off half-way, not finished and renamed.
        detail["cut_off"] = sorted(name for name in in_flight if (run_dir / name).exists())
    # The truth before anyone reaps the child: a killed process is a zombie until its parent
    # waits for it, and a zombie never writes again, so the run already reads interrupted.
    deadline = time.monotonic() + 5
    while runs.read_status(run_dir)["state"] != runs.INTERRUPTED:
        assert time.monotonic() < deadline, f"a killed run still reads {runs.read_status(run_dir)}"
        time.sleep(0.01)
    code = child.reap()
    assert code in (-signal.SIGKILL, 128 + signal.SIGKILL), f"the child was not killed but ended with {code}"
    time.sleep(0.05)
    assert runs.read_status(run_dir)["state"] == runs.INTERRUPTED  # and it stays so
    return detail


def work_lost(rows: list[dict], attempt_started: float, saved_step: int) -> tuple[float, int, float]:
    """Seconds and steps of training this attempt logged but did not checkpoint, and the longest
    time one step took (with the evaluation and writes that followed it)."""
    everything = step_rows(rows)
    gaps = [b["time"] - a["time"] for a, b in zip(everything, everything[1:]) if b["step"] == a["step"] + 1] or [0.0]
    mine = [r for r in everything if r["time"] >= attempt_started]
    lost_steps = mine[-1]["step"] - saved_step if mine else 0
    if lost_steps <= 0:
        return 0.0, 0, max(gaps)
    by_step = {r["step"]: r for r in mine}
    if saved_step in by_step:  # checkpointed by this attempt: lost since that save
        return mine[-1]["time"] - by_step[saved_step]["time"], lost_steps, max(gaps)
    # Not checkpointed since this process began: lost since its loop began, one step before its first row.
    return mine[-1]["time"] - mine[0]["time"] + statistics.median(gaps), lost_steps, max(gaps)


# --- the test --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """train/<class>/*.png and test/<class>/*.png: 26 + 10 images of each of the 10 synthetic classes."""
    return write_image_folder(tmp_path_factory.mktemp("kill-data"), train_per_class=26, test_per_class=10)


@pytest.fixture(scope="module")
def forkserver():
    """A multiprocessing context whose server has imported torch and the training code once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["byol.cli", "byol.train", "byol.checkpoint"])
    return context


def test_a_run_killed_twelve_times_finishes_with_nothing_lost(tmp_path, image_folder, forkserver):
    rng = random.Random(SEED)
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / RUN_NAME
    log = tmp_path / "children.log"
    modes = ["steps"] * 5 + ["mid-write"] * 4 + ["startup"] * 2
    rng.shuffle(modes)
    modes = ["steps", *modes]  # the first process creates the run: let it train a little first
    kills: list[dict[str, Any]] = []
    steps_done = 0

    for attempt, mode in enumerate(modes):
        attempt_started = time.time()
        if attempt == 0:
            args = ["train", "--runs-dir", str(runs_dir), "--name", RUN_NAME, "--data", str(image_folder), *TRAIN_ARGS]
            child = cli_subprocess(args, log)
        else:
            process = forkserver.Process(
                target=cli_child,
                args=(["resume", str(run_dir)], str(log), TORN_WRITE_PAUSE),
                daemon=True,
            )
            process.start()
            child = Child(process=process)
        watch = StatusWatch(run_dir, child)
        try:
            if attempt == 0:  # the run folder appears once the new process created it
                wait_until(lambda: (run_dir / "status.json").exists(), watch, 60, "the run folder")
            detail = kill_at(mode, rng, run_dir, watch, steps_done, attempt_started)
        finally:
            if not child.exited():
                child.kill()
                child.reap()

        # After every kill: checkpoints all load, the loss of work is bounded, and nothing torn counts.
        loaded = all_checkpoints_load(run_dir)
        saved_step = loaded.get("last.pt", 0)
        rows, torn = metric_lines(run_dir)
        lost_seconds, lost_steps, longest_step = work_lost(rows, attempt_started, saved_step)
        # The loop saves once a step ends past the interval: at most one interval plus one step
        # (with its evaluation and writes) can be lost; 0.5 s more for a busy machine.
        assert lost_seconds <= CHECKPOINT_SECONDS + longest_step + 0.5, (detail, lost_seconds, longest_step)
        assert saved_step >= steps_done, "a kill took away work that was already checkpointed"
        steps_done = saved_step
        kills.append(
            {
                **detail,
                "saved_step": saved_step,
                "lost_steps": lost_steps,
                "lost_seconds": round(lost_seconds, 2),
                "torn_metrics_line": torn,
            }
        )
        fault_figures.add("kills survived")

    mid_write = [k for k in kills if k["mode"] == "mid-write"]
    assert len(kills) >= 10 and len(mid_write) == 4
    assert all(k["cut_off"] for k in mid_write), "a mid-write kill did not cut a checkpoint write off"
    assert steps_done < TOTAL_STEPS

    # The last resume, a plain `python -m byol resume`, must finish the run.
    final = subprocess.run(
        [sys.executable, "-m", "byol", "resume", str(run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    finished = final.returncode == 0 and runs.read_status(run_dir)["state"] == runs.FINISHED
    fault_figures.add("runs lost", 0 if finished else 1)
    fault_figures.saw_message(final.stderr)
    assert finished, final.stderr[-3000:]
    assert "Traceback" not in final.stderr and final.stdout.strip().splitlines()[-1] == str(run_dir)

    # Nothing torn, nothing twice, nothing missing.
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    lines = text.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line is whole JSON
    steps = [r["step"] for r in parsed if r["kind"] == "step"]
    evals = [r["step"] for r in parsed if r["kind"] == "eval"]
    assert steps == list(range(1, TOTAL_STEPS + 1))  # strictly increasing, no duplicate, no gap
    assert evals == list(range(0, TOTAL_STEPS + 1, EVAL_EVERY_STEPS))
    assert [r["step"] for r in parsed] == sorted(r["step"] for r in parsed)
    assert all(r["loss"] is not None for r in parsed if r["kind"] == "step")

    loaded = all_checkpoints_load(run_dir)
    assert loaded.pop("last.pt") == TOTAL_STEPS
    assert loaded == {f"step-{s:08d}.pt": s for s in evals}
    assert [n for n in os.listdir(run_dir) if n.endswith(".tmp")] == []  # partial writes were cleaned up
    assert runs.read_status(run_dir)["state"] == runs.FINISHED

    print(
        f"\nkill test (seed {SEED}): {len(kills)} kills survived, {len(mid_write)} mid-checkpoint, "
        f"max work lost {max(k['lost_steps'] for k in kills)} steps / {max(k['lost_seconds'] for k in kills):.2f} s "
        f"(checkpoint interval {CHECKPOINT_SECONDS:g} s)"
    )
    for k in kills:
        print("  ", k)
