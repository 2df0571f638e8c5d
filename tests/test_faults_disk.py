"""Disk trouble: a checkpoint write that fails half-way (the disk fills up) loses nothing.

The real training loop runs on a small image folder; at step 8 the disk "fills up" in the middle of a
checkpoint write (half the file is written, then ENOSPC), either the evaluation snapshot's or
last.pt's. The run must end `failed` with a plain message, the previous last.pt must be intact
byte for byte, no partial file may be left, and once space is free again the run must resume
from step 4 and finish with every step logged exactly once.
"""

from __future__ import annotations

import errno
import io
import os

import pytest
import torch

import fault_figures
from byol import metrics_file, runs
from byol.checkpoint import load_checkpoint
from byol.train import train
from helpers import tiny_config, write_image_folder

FULL_AT_STEP = 8  # the last evaluation of a run of 2 epochs of 4 steps, evaluated every epoch


class FillingDisk:
    """Wraps torch.save: the chosen kind of checkpoint at FULL_AT_STEP gets half written, then ENOSPC."""

    def __init__(self, kind: str, run_dir):
        self.kind, self.run_dir = kind, run_dir
        self.whole_save = torch.save
        self.last_before: bytes | None = None  # last.pt as it was when the disk filled up
        self.failed = 0

    def __call__(self, obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("kind") == self.kind and obj.get("step") == FULL_AT_STEP:
            self.last_before = (self.run_dir / "last.pt").read_bytes()
            buffer = io.BytesIO()
            self.whole_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: buffer.tell() // 2])
            self.failed += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.whole_save(obj, f, *args, **kwargs)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("disk-data"), train_per_class=26, test_per_class=10)


@pytest.mark.parametrize("kind", ["full", "backbone"], ids=["last.pt", "snapshot"])
def test_a_checkpoint_write_failing_half_way_keeps_the_last_one_and_the_run_resumable(tmp_path, monkeypatch, kind, image_folder):
    # 256 of the 260 images in batches of 64: 4 steps per epoch, checkpoints at steps 4 and 8
    config = tiny_config(epochs=2, device="cpu", data=str(image_folder))
    run_dir = runs.create_run(tmp_path / "runs", config)
    disk = FillingDisk(kind, run_dir)
    monkeypatch.setattr(torch, "save", disk)

    assert train(config, run_dir) == runs.FAILED
    assert disk.failed == 1
    status = runs.read_status(run_dir)
    assert status["state"] == runs.FAILED
    assert status["message"] == (
        "The disk is full (no space left on device), so training stopped; the last checkpoint is intact. "
        "Free some space, then resume the run."
    )
    assert fault_figures.saw_message(status["message"])
    assert (run_dir / "last.pt").read_bytes() == disk.last_before  # the previous checkpoint, untouched
    assert load_checkpoint(run_dir / "last.pt")["step"] == FULL_AT_STEP - 4
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []  # no half file left
    for path in run_dir.glob("*.pt"):
        load_checkpoint(path)  # every checkpoint present can be used

    monkeypatch.setattr(torch, "save", disk.whole_save)  # space was freed
    resumed = train(config, run_dir)
    fault_figures.add("runs lost", 0 if resumed == runs.FINISHED else 1)
    assert resumed == runs.FINISHED
    rows = metrics_file.read_rows(run_dir)
    assert [r["step"] for r in rows if r["kind"] == "step"] == list(range(1, 9))  # each step once, in order
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 4, 8]
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["last.pt", "step-00000000.pt", "step-00000004.pt", "step-00000008.pt"]
    assert load_checkpoint(run_dir / "last.pt")["step"] == 8
    assert load_checkpoint(run_dir / "step-00000008.pt")["step"] == 8
