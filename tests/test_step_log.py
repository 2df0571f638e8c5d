"""The step log: rows come out complete, in step order, and a deferred row waits for the next one or a flush."""

from __future__ import annotations

import pytest
import torch

from byol.step_log import StepLog


def row(step: int) -> dict:
    return {"kind": "step", "step": step, "loss": None, "lr": 0.1, "z_std": None}


def test_an_immediate_log_writes_each_row_with_its_device_values():
    written = []
    log = StepLog(written.append)
    log.add(row(1), torch.tensor(2.5), torch.tensor(0.125))
    assert written == [{"kind": "step", "step": 1, "loss": 2.5, "lr": 0.1, "z_std": 0.125}]
    assert list(written[0]) == ["kind", "step", "loss", "lr", "z_std"]  # the caller's field order is kept


def test_a_deferred_log_writes_a_row_one_window_later_and_the_rest_on_flush():
    written = []
    log = StepLog(written.append, defer=True)
    log.add(row(10), torch.tensor(3.0), torch.tensor(0.1))
    log.add(row(20), torch.tensor(2.0), torch.tensor(0.1))
    assert [r["step"] for r in written] == [10]
    log.flush()
    assert [(r["step"], r["loss"]) for r in written] == [(10, 3.0), (20, 2.0)]
    log.flush()  # nothing left: no repeat
    assert len(written) == 2


def test_a_deferred_row_keeps_its_values_when_the_tensors_change_afterwards():
    # The training loop reuses and overwrites tensors; the row must hold the values at logging time.
    written = []
    log = StepLog(written.append, defer=True)
    loss = torch.tensor(1.5)
    log.add(row(1), loss, torch.tensor(0.2))
    loss.fill_(99.0)
    log.flush()
    assert written[0]["loss"] == 1.5


def test_an_error_from_the_writer_reaches_the_caller():
    def refuse_nan(completed: dict) -> None:
        if completed["loss"] != completed["loss"]:
            raise ValueError(f"nan at step {completed['step']}")

    log = StepLog(refuse_nan, defer=True)
    log.add(row(5), torch.tensor(float("nan")), torch.tensor(0.1))
    with pytest.raises(ValueError, match="nan at step 5"):
        log.flush()
