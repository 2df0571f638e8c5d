"""TaskRunner: background computations that start once, report progress and keep their failure message."""

import threading

import pytest

from byol import tasks
from byol.checkpoint import CheckpointError


def blocking_task(started: threading.Event, release: threading.Event, calls: list):
    def run(report):
        calls.append(1)
        report("Halfway there", 0.5)
        started.set()
        assert release.wait(10)
        return "result"

    return run


def test_unknown_key_is_idle():
    status = tasks.TaskRunner().status("nothing")
    assert status.state == tasks.IDLE and not status.active


def test_progress_is_visible_while_running_and_result_kept():
    runner = tasks.TaskRunner()
    started, release, calls = threading.Event(), threading.Event(), []
    runner.submit("a", blocking_task(started, release, calls), label="demo")
    assert started.wait(10)
    status = runner.status("a")
    assert status.state == tasks.RUNNING and status.active
    assert status.message == "Halfway there" and status.fraction == 0.5 and status.label == "demo"
    release.set()
    status = runner.wait("a", timeout=10)
    assert status.state == tasks.DONE and status.fraction == 1.0 and status.finished is not None
    assert runner.result("a") == "result"


def test_submitting_a_running_or_done_key_does_not_start_it_twice():
    runner = tasks.TaskRunner()
    started, release, calls = threading.Event(), threading.Event(), []
    work = blocking_task(started, release, calls)
    runner.submit("a", work)
    assert started.wait(10)
    again = runner.submit("a", work)  # a second tab clicking the same button
    assert again.state == tasks.RUNNING
    release.set()
    runner.wait("a", timeout=10)
    assert runner.submit("a", work).state == tasks.DONE  # done: not redone unless asked
    assert len(calls) == 1
    runner.submit("a", work, again=True)  # asked explicitly (e.g. the result was deleted)
    assert runner.wait("a", timeout=10).state == tasks.DONE
    assert len(calls) == 2


def test_failure_keeps_the_plain_message_and_a_retry_is_allowed():
    runner = tasks.TaskRunner()

    def broken(report):
        raise CheckpointError("The checkpoint step-00000004.pt is damaged or not a PyTorch checkpoint (RuntimeError).")

    runner.submit("bad", broken)
    status = runner.wait("bad", timeout=10)
    assert status.state == tasks.FAILED
    assert status.message == "The checkpoint step-00000004.pt is damaged or not a PyTorch checkpoint (RuntimeError)."
    runner.submit("bad", lambda report: 42)  # a failed key can be tried again
    assert runner.wait("bad", timeout=10).state == tasks.DONE
    assert runner.result("bad") == 42


def test_unexpected_errors_are_named():
    runner = tasks.TaskRunner()
    runner.submit("boom", lambda report: {}["missing"])
    status = runner.wait("boom", timeout=10)
    assert status.state == tasks.FAILED and "KeyError" in status.message


def test_at_most_max_workers_run_at_once_and_the_rest_wait_as_pending():
    runner = tasks.TaskRunner(max_workers=1)
    started, release, calls = threading.Event(), threading.Event(), []
    runner.submit("first", blocking_task(started, release, calls))
    assert started.wait(10)
    second_ran = threading.Event()
    runner.submit("second", lambda report: second_ran.set())
    assert runner.status("second").state == tasks.PENDING
    assert not second_ran.wait(0.2)
    assert [s.key for s in runner.active()] == ["first", "second"]
    release.set()
    assert runner.wait("second", timeout=10).state == tasks.DONE and second_ran.is_set()


def test_fractions_are_clamped_and_old_records_are_forgotten():
    runner = tasks.TaskRunner(keep=3)

    def report_odd_values(report):
        report(fraction=7.0)

    runner.submit("clamp", report_odd_values)
    assert runner.wait("clamp", timeout=10).fraction == 1.0
    for i in range(5):
        runner.submit(f"k{i}", lambda report: None)
        runner.wait(f"k{i}", timeout=10)
    assert runner.status("clamp").state == tasks.IDLE  # dropped to keep memory bounded
    assert runner.status("k4").state == tasks.DONE  # the newest are kept


def test_max_workers_must_be_positive():
    with pytest.raises(ValueError):
        tasks.TaskRunner(max_workers=0)
