"""The training loop: what a run leaves behind, stop, resume, failures, the device lock, a kill."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from byol import metrics_file, runs
from byol.checkpoint import load_checkpoint
from byol.config import ConfigError
from byol.dataset import DataError
from byol.device import device_key, resolve_device
from byol.lock import DeviceBusy, DeviceLock, lock_holder
from byol.model import BYOLNetworks, ResNet18Backbone
from byol.train import train
from helpers import REPO, tiny_config


def new_run(tmp_path, **overrides):
    config = tiny_config(**overrides)
    return config, runs.create_run(tmp_path / "runs", config)


def step_rows(run_dir):
    return [r for r in metrics_file.read_rows(run_dir) if r["kind"] == "step"]


def eval_rows(run_dir):
    return [r for r in metrics_file.read_rows(run_dir) if r["kind"] == "eval"]


def test_a_run_leaves_everything_the_dashboard_reads(tmp_path):
    config, run_dir = new_run(tmp_path)
    events = []
    assert train(config, run_dir, on_event=events.append) == runs.FINISHED
    status = runs.read_status(run_dir)
    assert status["state"] == runs.FINISHED and status["pid"] == os.getpid()
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()
    steps = [r["step"] for r in step_rows(run_dir)]
    assert steps == list(range(1, 9))  # 256 images / 64 per batch = 4 steps per epoch, 2 epochs, logged every step
    evals = eval_rows(run_dir)
    assert [r["step"] for r in evals] == [0, 4, 8]  # step 0 is the random-init baseline
    assert all(0 <= r["knn"] <= 100 and r["pixel_knn"] is not None and r["effective_rank"] >= 1 for r in evals)
    assert all(0 <= r["loss"] <= 8 and r["z_std"] > 0 for r in step_rows(run_dir))
    assert sorted(p.name for p in run_dir.glob("step-*.pt")) == ["step-00000000.pt", "step-00000004.pt", "step-00000008.pt"]
    assert load_checkpoint(run_dir / "last.pt")["step"] == 8
    assert {e["kind"] for e in events} >= {"status", "step", "eval"}


def test_stop_finishes_the_step_and_leaves_a_loadable_checkpoint(tmp_path):
    config, run_dir = new_run(tmp_path, epochs=3)
    stop = threading.Event()

    def stop_at_step_3(event):
        if event.get("kind") == "step" and event["step"] == 3:
            stop.set()

    assert train(config, run_dir, stop, stop_at_step_3) == runs.STOPPED
    assert runs.read_status(run_dir)["state"] == runs.STOPPED
    state = load_checkpoint(run_dir / "last.pt")
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (3, 0, 3)


# The faster predictor has optimiser groups of its own, which must come back from last.pt as they were.
@pytest.mark.parametrize("recipe", [{}, {"predictor_lr_scale": 10.0}], ids=["preset", "faster-predictor"])
def test_resume_continues_at_the_same_step_and_matches_an_uninterrupted_run(tmp_path, recipe):
    config, straight = new_run(tmp_path, epochs=3, **recipe)
    train(config, straight)

    _, resumed = new_run(tmp_path, epochs=3, **recipe)
    stop = threading.Event()
    train(config, resumed, stop, lambda e: e.get("kind") == "step" and e["step"] == 6 and stop.set())
    # Simulate rows written after the checkpoint by a process that died: resume must drop them.
    metrics_file.append_rows(resumed, [{"kind": "step", "step": 7, "loss": 9.0}])
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "st')  # a torn line from a kill mid-write
    assert train(config, resumed) == runs.FINISHED

    steps = [r["step"] for r in step_rows(resumed)]
    assert steps == sorted(set(steps)) == list(range(1, 13))
    # Same data order, same augmentation draws, same optimiser state: the same numbers. CPU kernels
    # repeat themselves to the last bits; CUDA's (atomics in backward passes) differ in the last few,
    # and 12 steps grow that to about 1e-4 of the loss, so the GPU gets a wider, still tight, band.
    on_cuda = resolve_device(config.device).type == "cuda"
    loss_rel, weight_rtol, weight_atol = (2e-3, 2e-2, 2e-3) if on_cuda else (1e-4, 1e-3, 1e-4)
    for a, b in zip(step_rows(straight), step_rows(resumed)):
        assert a["loss"] == pytest.approx(b["loss"], rel=loss_rel, abs=1e-5)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in a["backbone"]:
        torch.testing.assert_close(a["backbone"][key], b["backbone"][key], rtol=weight_rtol, atol=weight_atol)


def test_the_learning_rate_holds_its_peak_until_the_configured_decay(tmp_path):
    # 4 epochs of 4 steps, no warm-up: a decay share of 0.5 holds the peak for the first 8 steps.
    config, run_dir = new_run(tmp_path, epochs=4, warmup_epochs=0.0, lr_decay_share=0.5)
    assert train(config, run_dir) == runs.FINISHED
    rates = [r["lr"] for r in step_rows(run_dir)]
    peak = config.peak_lr()
    assert len(rates) == 16 and rates[:8] == pytest.approx([peak] * 8)
    assert all(a >= b for a, b in zip(rates[8:], rates[9:])) and rates[-1] < 0.1 * peak


def test_networks_train_on_views_of_the_view_resolution_and_evaluate_whole_images(tmp_path, monkeypatch):
    seen = {True: set(), False: set()}  # training mode -> the input sides the backbone saw
    plain_forward = ResNet18Backbone.forward

    def recording_forward(self, x):
        seen[self.training].add(x.shape[-1])
        return plain_forward(self, x)

    monkeypatch.setattr(ResNet18Backbone, "forward", recording_forward)
    config, run_dir = new_run(tmp_path, view_resolution=0.5, epochs=1)
    assert config.image_size == 32
    assert train(config, run_dir) == runs.FINISHED
    assert seen == {True: {16}, False: {32}}
    assert all(r["loss"] > 0 for r in step_rows(run_dir)) and len(eval_rows(run_dir)) == 2


def test_resume_extended_to_more_epochs(tmp_path):
    config, run_dir = new_run(tmp_path, epochs=1)
    train(config, run_dir)
    first_started = runs.read_status(run_dir)["started"]
    longer = config.replace(epochs=2)
    runs.update_config(run_dir, longer)
    assert train(longer, run_dir) == runs.FINISHED
    assert [r["step"] for r in step_rows(run_dir)] == list(range(1, 9))
    assert load_checkpoint(run_dir / "last.pt")["step"] == 8
    assert runs.read_status(run_dir)["started"] == first_started  # the runs table's "Started": its first start


def test_nan_loss_fails_with_advice(tmp_path, monkeypatch):
    config, run_dir = new_run(tmp_path)

    def nan_loss(self, v1, v2):
        loss, projections = original(self, v1, v2)
        return loss * float("nan"), projections

    original = BYOLNetworks.forward_loss
    monkeypatch.setattr(BYOLNetworks, "forward_loss", nan_loss)
    assert train(config, run_dir) == runs.FAILED
    message = runs.read_status(run_dir)["message"]
    assert "loss became nan" in message and "Lower the learning rate" in message


def test_any_exception_ends_as_failed_with_its_message(tmp_path, monkeypatch):
    config, run_dir = new_run(tmp_path)

    def boom(self, v1, v2):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(BYOLNetworks, "forward_loss", boom)
    assert train(config, run_dir) == runs.FAILED
    status = runs.read_status(run_dir)
    assert status["state"] == runs.FAILED and "injected fault" in status["message"]
    assert eval_rows(run_dir)[0]["step"] == 0  # what was measured before the fault is kept


def test_out_of_memory_gets_a_plain_message(tmp_path, monkeypatch):
    config, run_dir = new_run(tmp_path)

    def oom(self, v1, v2):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(BYOLNetworks, "forward_loss", oom)
    assert train(config, run_dir) == runs.FAILED
    assert "ran out of memory" in runs.read_status(run_dir)["message"]


def test_keyboard_interrupt_leaves_the_run_resumable_and_the_device_free(tmp_path):
    config, run_dir = new_run(tmp_path)

    def interrupt_at_step_3(event):
        if event.get("kind") == "step" and event.get("step", 0) >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, run_dir, on_event=interrupt_at_step_3)
    assert runs.read_status(run_dir)["state"] == runs.INTERRUPTED
    assert lock_holder(run_dir.parent, device_key(resolve_device(config.device))) is None
    assert train(config, run_dir) == runs.FINISHED  # resumes on the same, now free, device


def test_missing_data_is_refused_before_anything_changes(tmp_path):
    config, run_dir = new_run(tmp_path, data=str(tmp_path / "no-such-folder"))
    with pytest.raises(ConfigError, match="no-such-folder"):
        train(config, run_dir)
    assert runs.read_status(run_dir)["state"] == runs.QUEUED


def test_unusable_data_is_refused_and_leaves_the_run_as_it_was(tmp_path):
    (tmp_path / "empty-folder").mkdir()
    config, run_dir = new_run(tmp_path, data=str(tmp_path / "empty-folder"))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(DataError, match="train/"):
        train(config, run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert runs.read_status(run_dir)["state"] == runs.QUEUED
    assert lock_holder(run_dir.parent, device_key(resolve_device(config.device))) is None  # released


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_written(tmp_path):
    config, run_dir = new_run(tmp_path, batch_size=512)  # 256 training images
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    with pytest.raises(ConfigError, match=r"at most the number of training images \(256\); got 512"):
        train(config, run_dir)
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_second_training_on_a_locked_device_is_refused(tmp_path):
    config, run_dir = new_run(tmp_path)
    before = sorted(p.name for p in run_dir.iterdir())
    # Lock the device this config trains on: the CPU here, the GPU where one is visible.
    with DeviceLock(run_dir.parent, device_key(resolve_device(config.device)), "someone-else"):
        with pytest.raises(DeviceBusy, match="someone-else"):
            train(config, run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == before
    assert runs.read_status(run_dir)["state"] == runs.QUEUED
    assert train(config, run_dir) == runs.FINISHED  # free again once the holder is gone


def test_a_refusal_names_a_holder_that_has_locked_but_not_yet_written_its_name(tmp_path):
    # The holder takes the flock first and writes its name a moment later; a refusal in between
    # must still name it rather than read the empty file.
    holder = DeviceLock(tmp_path, "cpu", "early-bird")
    holder.path.parent.mkdir(parents=True)
    fd = os.open(holder.path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    writer = threading.Timer(0.1, lambda: os.write(fd, b'{"run": "early-bird", "pid": 1}'))
    writer.start()
    try:
        with pytest.raises(DeviceBusy, match="early-bird"):
            DeviceLock(tmp_path, "cpu", "late").acquire()
    finally:
        writer.join()
        os.close(fd)
    assert lock_holder(tmp_path, "cpu") is None


KILL_SCRIPT = """
import sys, threading
from byol import runs
from byol.train import train
from byol.config import TrainConfig
run_dir = sys.argv[1]
train(runs.read_config(run_dir), run_dir)
"""


def test_a_killed_run_reads_interrupted_and_resumes(tmp_path):
    config, run_dir = new_run(tmp_path, epochs=40, checkpoint_minutes=0.05, eval_every=100.0)
    runs.update_config(run_dir, config.replace(eval_every=40.0))
    process = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(run_dir)], cwd=REPO)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            rows = step_rows(run_dir)
            if (run_dir / "last.pt").exists() and rows and rows[-1]["step"] >= 12:
                break
            time.sleep(0.2)
        assert runs.read_status(run_dir)["state"] == runs.RUNNING
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    status = runs.read_status(run_dir)
    assert status["state"] == runs.INTERRUPTED and "Resume" in status["message"]
    saved_step = load_checkpoint(run_dir / "last.pt")["step"]
    assert saved_step > 0
    short = runs.read_config(run_dir).replace(epochs=(saved_step // 4) + 2)
    runs.update_config(run_dir, short)
    assert train(short, run_dir) == runs.FINISHED
    steps = [r["step"] for r in step_rows(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == short.epochs * 4
