"""JobRunner: one training at a time, FIFO queue, stop/resume rules, failures that never kill the worker."""

from __future__ import annotations

import os
import re
import time

import pytest

from byol import jobs, metrics_file, runs
from byol.config import ConfigError
from byol.dataset import DataError
from byol.jobs import JobRunner
from byol.lock import DeviceBusy, DeviceLock


def state_of(run_dir) -> str:
    return runs.read_status(run_dir)["state"]


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def runner(runs_dir):
    runner = JobRunner(runs_dir)
    yield runner
    runner.shutdown(timeout=10)


def test_one_job_at_a_time_in_fifo_order(runner, fake_train, tiny_config):
    a = runner.launch(tiny_config(), "a")
    b = runner.launch(tiny_config(), "b")
    c = runner.launch(tiny_config(), "c")
    assert fake_train.wait_started("a")
    assert runner.current() == a
    assert runner.queue() == [b, c]
    assert state_of(b) == state_of(c) == runs.QUEUED
    time.sleep(0.1)
    assert fake_train.calls == ["a"]  # b waits while a trains

    fake_train.release("a")
    assert fake_train.wait_started("b")
    assert runner.queue() == [c]
    fake_train.release("b")
    fake_train.release("c")
    assert runner.wait(timeout=10)
    assert fake_train.calls == ["a", "b", "c"]
    assert [state_of(p) for p in (a, b, c)] == [runs.FINISHED] * 3
    assert runner.current() is None and runner.queue() == []


def test_stop_queued_run_removes_it_and_marks_it_stopped(runner, fake_train, tiny_config):
    a = runner.launch(tiny_config(), "a")
    b = runner.launch(tiny_config(), "b")
    assert fake_train.wait_started("a")
    assert runner.stop(b) == "dequeued"
    assert state_of(b) == runs.STOPPED
    assert runner.queue() == []
    fake_train.release("a")
    assert runner.wait(timeout=10)
    assert fake_train.calls == ["a"]
    assert state_of(a) == runs.FINISHED


def test_stop_running_run_sets_its_flag(runner, fake_train, tiny_config):
    a = runner.launch(tiny_config(), "a")
    assert fake_train.wait_started("a")
    assert runner.stop(a) == "stopping"
    assert runner.wait(timeout=10)
    assert state_of(a) == runs.STOPPED


def test_stop_finished_run_is_a_plain_error(runner, fake_train, tiny_config):
    fake_train.auto_release = True
    a = runner.launch(tiny_config(), "a")
    assert runner.wait(timeout=10)
    with pytest.raises(runs.RunError, match="^This run has already finished; there is nothing to stop.$"):
        runner.stop(a)


def test_resume_refuses_queued_running_and_foreign_live_runs(runner, fake_train, tiny_config, runs_dir):
    a = runner.launch(tiny_config(), "a")
    b = runner.launch(tiny_config(), "b")
    assert fake_train.wait_started("a")
    with pytest.raises(runs.RunError, match="already queued or training"):
        runner.resume(a)
    with pytest.raises(runs.RunError, match="already queued or training"):
        runner.resume(b)
    # A run that another live process trains (pid 1 is always alive) cannot be resumed here either.
    other = runs.create_run(runs_dir, tiny_config(), "other")
    record = runs.read_status(other)
    record.update(state=runs.RUNNING, pid=1, pid_start=None)
    from byol.files import write_json_atomic

    write_json_atomic(other / "status.json", record)
    with pytest.raises(runs.RunError, match="another process"):
        runner.resume(other)
    with pytest.raises(runs.RunError, match="another process"):
        runner.stop(other)
    fake_train.release("a")
    fake_train.release("b")
    assert runner.wait(timeout=10)


def test_resume_continues_and_extends(runner, fake_train, tiny_config):
    fake_train.auto_release = True
    a = runner.launch(tiny_config(epochs=2), "a")
    assert runner.wait(timeout=10)
    (a / runs.LAST_CHECKPOINT).touch()  # what a real training leaves; without it a finished run cannot continue
    with pytest.raises(runs.RunError, match="choose more epochs"):
        runner.resume(a)
    runner.resume(a, epochs=5)
    assert runner.wait(timeout=10)
    assert fake_train.calls == ["a", "a"]
    assert fake_train.configs["a"].epochs == 5
    assert runs.read_config(a).epochs == 5
    assert state_of(a) == runs.FINISHED


def test_resume_refuses_a_finished_run_without_optimiser_state(runner, fake_train, tiny_config):
    fake_train.auto_release = True
    a = runner.launch(tiny_config(epochs=2), "a")  # the fake leaves no last.pt, as the shipped demo run
    assert runner.wait(timeout=10)
    with pytest.raises(runs.RunError, match="no optimiser state"):
        runner.resume(a, epochs=5)
    assert fake_train.calls == ["a"] and runs.read_config(a).epochs == 2


def test_resume_interrupted_run(runner, fake_train, tiny_config, runs_dir):
    fake_train.auto_release = True
    run = runs.create_run(runs_dir, tiny_config(), "dead")
    record = runs.read_status(run)
    record.update(state=runs.RUNNING, pid=2**22 + 12345, pid_start=None)  # no such process
    from byol.files import write_json_atomic

    write_json_atomic(run / "status.json", record)
    assert state_of(run) == runs.INTERRUPTED
    runner.resume(run)
    assert runner.wait(timeout=10)
    assert fake_train.calls == ["dead"]
    assert state_of(run) == runs.FINISHED


def test_exception_in_train_marks_failed_and_next_job_runs(runner, fake_train, tiny_config):
    fake_train.auto_release = True
    fake_train.fail["a"] = RuntimeError("boom")
    a = runner.launch(tiny_config(), "a")
    b = runner.launch(tiny_config(), "b")
    assert runner.wait(timeout=10)
    status = runs.read_status(a)
    assert status["state"] == runs.FAILED
    assert "RuntimeError: boom" in status["message"]
    assert state_of(b) == runs.FINISHED
    assert fake_train.calls == ["a", "b"]


def test_system_exit_in_train_leaves_the_run_resumable_and_next_job_runs(runner, fake_train, tiny_config):
    fake_train.auto_release = True
    fake_train.fail["a"] = SystemExit(3)  # a library calling sys.exit() inside the training thread
    a = runner.launch(tiny_config(), "a")
    b = runner.launch(tiny_config(), "b")
    assert runner.wait(timeout=10)
    assert state_of(a) == runs.INTERRUPTED
    assert state_of(b) == runs.FINISHED
    del fake_train.fail["a"]
    runner.resume(a)
    assert runner.wait(timeout=10)
    assert state_of(a) == runs.FINISHED


def test_device_busy_from_train_marks_failed_with_its_message(runner, fake_train, tiny_config):
    fake_train.auto_release = True
    fake_train.fail["a"] = DeviceBusy("The cpu device is busy training run 'cli' (process 7).")
    a = runner.launch(tiny_config(), "a")
    b = runner.launch(tiny_config(), "b")
    assert runner.wait(timeout=10)
    assert runs.read_status(a)["message"] == "The cpu device is busy training run 'cli' (process 7)."
    assert state_of(a) == runs.FAILED
    assert state_of(b) == runs.FINISHED


def test_real_train_refused_by_a_held_device_lock(runner, tiny_config, runs_dir):
    """The real train() meets a lock held elsewhere (as the command line would): failed, plainly."""
    lock = DeviceLock(runs_dir, "cpu", "cli-run").acquire()
    try:
        a = runner.launch(tiny_config(device="cpu"), "a")
        assert runner.wait(timeout=60)
    finally:
        lock.release()
    status = runs.read_status(a)
    assert status["state"] == runs.FAILED
    assert "busy" in status["message"] and "cli-run" in status["message"]


def test_bn_pair_differs_only_in_head_bn(runner, fake_train, tiny_config):
    first, second = runner.launch_pair_bn_experiment(tiny_config(seed=7), name="exp")
    assert (first.name, second.name) == ("exp-bn", "exp-no-bn")
    assert fake_train.wait_started("exp-no-bn")  # the collapsing run first: its collapse shows at once
    assert runner.queue() == [first]  # queued one after the other
    a, b = runs.read_config(first).to_dict(), runs.read_config(second).to_dict()
    assert a["head_bn"] is True and b["head_bn"] is False
    assert {k for k in a if a[k] != b[k]} == {"head_bn"}
    assert a["seed"] == 7
    fake_train.release("exp-bn")
    fake_train.release("exp-no-bn")
    assert runner.wait(timeout=10)
    # A second pair with the same base name gets a fresh one.
    third, fourth = runner.launch_pair_bn_experiment(tiny_config(), name="exp")
    assert (third.name, fourth.name) == ("exp-2-bn", "exp-2-no-bn")
    runner.stop_all()


def test_a_pair_launched_without_a_name_is_named_by_time_and_preset_short_enough_to_read_side_by_side(
    runner, fake_train, tiny_config
):
    with_bn, without_bn = runner.launch_pair_bn_experiment(tiny_config(preset="cpu", data="synthetic"))
    assert re.fullmatch(r"\d{8}-\d{6}-cpu-pair-bn", with_bn.name), with_bn.name
    assert without_bn.name == with_bn.name.removesuffix("-bn") + "-no-bn"
    assert len(without_bn.name) <= 32  # Compare's picker shows both names and their states in one row
    runner.stop_all()


def test_bad_config_or_missing_data_creates_nothing(runner, fake_train, tiny_config, runs_dir):
    with pytest.raises(ConfigError, match=r"Epochs \(epochs\) must be from 1 to 10000; got 0\."):
        runner.launch(tiny_config(epochs=0))
    with pytest.raises((ConfigError, DataError), match="no-such-folder"):
        runner.launch(tiny_config(data=str(runs_dir / "no-such-folder")))
    with pytest.raises(runs.RunError, match="run name"):
        runner.launch(tiny_config(), "../escape")
    # A folder that exists but is not laid out as a data set is refused before a run exists, too.
    not_a_data_set = runs_dir.parent / "holiday-photos"
    (not_a_data_set / "beach").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holiday-photos.*train/"):
        runner.launch(tiny_config(data=str(not_a_data_set)))
    only_train = runs_dir.parent / "only-train"
    (only_train / "train" / "cat").mkdir(parents=True)
    (only_train / "train" / "cat" / "1.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="test/"):
        runner.launch(tiny_config(data=str(only_train)))
    assert list(runs_dir.iterdir()) == []
    assert fake_train.calls == []


def test_shutdown_stops_running_and_queued(runs_dir, fake_train, tiny_config):
    runner = JobRunner(runs_dir)
    a = runner.launch(tiny_config(), "a")
    b = runner.launch(tiny_config(), "b")
    assert fake_train.wait_started("a")
    runner.shutdown(timeout=10)
    assert state_of(a) == runs.STOPPED
    assert state_of(b) == runs.STOPPED
    assert fake_train.calls == ["a"]
    with pytest.raises(runs.RunError, match="shutting down"):
        runner.launch(tiny_config(), "c")


def test_shared_runner_is_one_per_runs_dir(runs_dir, tmp_path):
    assert jobs.shared_runner(runs_dir) is jobs.shared_runner(str(runs_dir))
    assert jobs.shared_runner(runs_dir) is jobs.shared_runner()  # BYOL_RUNS_DIR points at runs_dir
    assert jobs.shared_runner(tmp_path / "elsewhere") is not jobs.shared_runner(runs_dir)


def test_finished_run_fixture_is_a_real_finished_run(finished_run):
    summary = runs.summarize_run(finished_run)
    assert summary.state == runs.FINISHED
    assert summary.baseline_knn is not None and summary.pixel_knn is not None
    metrics = metrics_file.read_frame(finished_run)
    assert set(metrics[metrics["kind"] == "eval"]["step"]) == {0, 4, 8}
    assert (finished_run / "last.pt").is_file()
    assert os.path.isfile(finished_run / "step-00000008.pt")
