"""The training loop's step rows, read from the device without stalling it.

Reading a value that a GPU computes makes the CPU wait until the GPU has finished every kernel queued
so far; the CPU then cannot queue the next step while the GPU works. With `defer`, a row's device
values (the loss and the projections' spread) are copied to pinned host memory without waiting, and
the row is completed, checked and written one log window later, by when the copy has long finished.
The loss check (NaN, infinity) then lags one log window: a diverged run stops a few steps later.

Without `defer` (a CPU, or CUDA without `cuda_fast`) each row is read and written at once. Before a
checkpoint or an evaluation the caller flushes, so the metric file stays in step order and holds every
row up to the saved step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

RowWriter = Callable[[dict[str, Any]], None]
DEVICE_FIELDS = ("loss", "z_std")  # the row fields read from the device, in this order


@dataclass
class _Pending:
    row: dict[str, Any]  # every field but DEVICE_FIELDS
    values: torch.Tensor  # DEVICE_FIELDS on the host (filled by a copy still in flight when deferred)
    ready: torch.cuda.Event | None  # recorded after the copy; None when the copy was synchronous


class StepLog:
    """Collects step rows; `write(row)` receives each completed row, in step order."""

    def __init__(self, write: RowWriter, defer: bool = False):
        self._write = write
        self._defer = defer
        self._pending: _Pending | None = None

    def add(self, row: dict[str, Any], loss: torch.Tensor, spread: torch.Tensor) -> None:
        """A row whose "loss" and "z_std" are the 0-d device tensors `loss` and `spread`."""
        values = torch.stack([loss.detach().float(), spread.detach().float()])
        if self._defer and values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host, ready = values.cpu(), None
        previous, self._pending = self._pending, _Pending(dict(row), host, ready)
        if previous is not None:
            self._complete(previous)
        if not self._defer:
            self.flush()

    def flush(self) -> None:
        """Write the row still waiting for its device values, if any (waits for them)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._complete(pending)

    def _complete(self, pending: _Pending) -> None:
        if pending.ready is not None:
            pending.ready.synchronize()
        row = dict(pending.row)
        row.update(zip(DEVICE_FIELDS, pending.values.tolist()))
        self._write(row)
