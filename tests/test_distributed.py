"""Training on several processes: 2 gloo processes on this CPU, tiny synthetic runs.

One run goes through torchrun itself (`torch.distributed.run --nproc_per_node 2`, the command users
type) and is checked from every side: it finishes and writes each metric row once, every process
ends with the same online and target networks, kNN equals a single process's on the same weights,
batch norm is computed over the global batch, its checkpoint resumes in one process, and the
dashboard shows its process count. Stopping and dying start the two processes directly with
torchrun's environment (no launcher, one Python start fewer): a one-process checkpoint resumes on
two and a signal to one process stops both; a process that dies leaves the run interrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from byol import metrics_file, runs
from byol.checkpoint import load_backbone, load_checkpoint
from byol.data import load_dataset
from byol.knn import chosen_images, extract_features, knn_accuracy
from byol.schedules import learning_rate
from byol.train import train
from distributed_worker import batch_norm_inputs
from helpers import REPO, tiny_cli_settings, tiny_config

WORKER = REPO / "tests" / "distributed_worker.py"
# The tiny config of tests/helpers.py as options, with 32 images per process (64 per step with 2 processes).
TINY = [
    "--preset",
    "cpu",
    "--data",
    "synthetic",
    "--device",
    "cpu",
    "--batch-size",
    "32",
    *tiny_cli_settings(),
    "--set",
    "log_every=1",
    "--set",
    "precision=fp32",
]
NETWORKS = ("backbone", "projector", "predictor", "target_backbone", "target_projector")


def torchrun(weights_dir: Path, *args: str) -> list[str]:
    """The command that runs `python -m byol ARGS` as 2 torchrun processes (each saves its networks)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(weights_dir),
        *args,
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def step_rows(run_dir: Path) -> list[dict]:
    return [r for r in metrics_file.read_rows(run_dir) if r["kind"] == "step"]


def eval_rows(run_dir: Path) -> list[dict]:
    return [r for r in metrics_file.read_rows(run_dir) if r["kind"] == "eval"]


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out waiting for the training processes"
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_processes(logs: Path, *args: str) -> list[subprocess.Popen]:
    """`python -m byol ARGS` as ranks 0 and 1, with the environment torchrun gives its processes.

    Without the launcher, to spare a third Python start: what is tested (a signal to one process,
    one process dying) is handled by the processes themselves. Output goes to logs/rank-N.log.
    """
    port, processes = free_port(), []
    logs.mkdir(parents=True, exist_ok=True)
    for rank in (0, 1):
        env = {
            **environment(),
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        with open(logs / f"rank-{rank}.log", "w") as log:
            processes.append(
                subprocess.Popen([sys.executable, "-m", "byol", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    return processes


def tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("rank-*.log")))


def end_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A run trained by `torchrun --nproc_per_node 2 -m byol train`: 2 epochs of 4 steps of 2 × 32 images."""
    runs_dir, weights = tmp_path_factory.mktemp("ddp-runs"), tmp_path_factory.mktemp("ddp-weights")
    result = subprocess.run(
        torchrun(weights, "train", "--epochs", "2", "--runs-dir", str(runs_dir), "--name", "two", *TINY),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return runs_dir / "two", weights, result


def test_two_processes_finish_and_write_each_row_once(two_process_run):
    run_dir, _, result = two_process_run
    status = runs.read_status(run_dir)
    assert status["state"] == runs.FINISHED and status["world_size"] == 2
    assert [r["step"] for r in step_rows(run_dir)] == list(range(1, 9))  # 256 images / (2 × 32) per step
    assert [r["step"] for r in eval_rows(run_dir)] == [0, 4, 8]
    assert sorted(p.name for p in run_dir.glob("step-*.pt")) == ["step-00000000.pt", "step-00000004.pt", "step-00000008.pt"]
    assert result.stdout.split() == [str(run_dir)]  # the main process alone prints the run folder
    saved = load_checkpoint(run_dir / "last.pt")
    assert (saved["step"], saved["world_size"], saved["images_in_epoch"]) == (8, 2, 256)
    assert not [key for name in NETWORKS for key in saved[name] if key.startswith("module.")]


def test_every_process_ends_with_the_same_online_and_target_networks(two_process_run):
    run_dir, weights, _ = two_process_run
    rank0, rank1 = (torch.load(weights / f"rank-{rank}.pt", weights_only=True) for rank in (0, 1))
    assert {key.split(".")[0] for key in rank0} == set(NETWORKS)
    assert rank0.keys() == rank1.keys()
    different = [key for key in rank0 if not torch.equal(rank0[key], rank1[key])]
    assert different == []  # weights and batch-norm statistics, online and target, bit for bit
    saved = load_checkpoint(run_dir / "last.pt")
    assert all(torch.equal(tensor, rank0[f"{name}.{key}"]) for name in NETWORKS for key, tensor in saved[name].items())
    # They trained: the online backbone left its random init, and the target trails it.
    start = load_checkpoint(run_dir / "step-00000000.pt")["backbone"]["conv1.weight"].float()
    assert not torch.allclose(rank0["backbone.conv1.weight"], start, atol=1e-3)
    assert not torch.equal(rank0["backbone.conv1.weight"], rank0["target_backbone.conv1.weight"])


def test_knn_measured_by_two_processes_equals_one_process_on_the_same_weights(two_process_run):
    run_dir, _, _ = two_process_run
    config = runs.read_config(run_dir)
    backbone, _, _ = load_backbone(run_dir / "last.pt")
    data = load_dataset(config.data)
    _, bank_idx, query_idx = chosen_images(config, data)
    bank = extract_features(backbone, data.train_images[bank_idx], channels_last=config.channels_last)
    queries = extract_features(backbone, data.test_images[query_idx], channels_last=config.channels_last)
    knn = knn_accuracy(
        bank,
        data.train_labels[bank_idx],
        queries,
        data.test_labels[query_idx],
        len(data.classes),
        config.knn_k,
        config.knn_temperature,
    )
    assert eval_rows(run_dir)[-1]["knn"] == pytest.approx(knn, abs=1e-9)


def test_batch_norm_on_two_processes_equals_batch_norm_over_their_whole_batch(two_process_run):
    halves = [torch.load(two_process_run[1] / f"batch-norm-{rank}.pt", weights_only=True) for rank in (0, 1)]
    x, weight, bias, upstream = batch_norm_inputs()
    whole = nn.BatchNorm2d(3)
    whole.weight.data.copy_(weight)
    whole.bias.data.copy_(bias)
    inputs = x.clone().requires_grad_()
    y = whole(inputs)
    (y * upstream).sum().backward()
    torch.testing.assert_close(torch.cat([h["y"] for h in halves]), y.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat([h["grad_x"] for h in halves]), inputs.grad, rtol=1e-4, atol=1e-5)
    # DDP averages parameter gradients over the processes; their sum is the whole batch's gradient.
    torch.testing.assert_close(halves[0]["grad_weight"] + halves[1]["grad_weight"], whole.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(halves[0]["grad_bias"] + halves[1]["grad_bias"], whole.bias.grad, rtol=1e-4, atol=1e-5)
    for half in halves:
        torch.testing.assert_close(half["running_mean"], whole.running_mean)
        torch.testing.assert_close(half["running_var"], whole.running_var)


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    run_dir = tmp_path / "runs" / "two"
    shutil.copytree(two_process_run[0], run_dir)
    config = runs.read_config(run_dir).replace(epochs=3)
    runs.update_config(run_dir, config)
    assert train(config, run_dir) == runs.FINISHED
    rows = step_rows(run_dir)
    # 8 steps of 2 × 32 images, then the third epoch in steps of 32: step numbers go on, never repeat.
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert [r["epoch"] for r in rows[8:]] == [2 + k / 8 for k in range(1, 9)]
    # The schedule goes on from the same fraction (2 of 3 epochs), with the peak for a global batch of 32.
    assert rows[8]["lr"] == pytest.approx(learning_rate(16, 24, config.lr * 32 / 256, 0))
    assert runs.read_status(run_dir)["world_size"] == 1 and load_checkpoint(run_dir / "last.pt")["world_size"] == 1


def test_a_one_process_checkpoint_resumes_on_two_and_a_signal_to_one_process_stops_both(tmp_path):
    config = tiny_config(batch_size=32, epochs=3, eval_every=1000.0, device="cpu")
    run_dir = runs.create_run(tmp_path / "runs", config, "grows")
    stop = threading.Event()
    assert train(config, run_dir, stop, lambda e: e.get("kind") == "step" and e["step"] == 3 and stop.set()) == runs.STOPPED
    runs.update_config(run_dir, config.replace(epochs=500))  # long enough to be stopped mid-way

    processes = start_processes(tmp_path / "logs", "resume", str(run_dir))
    try:
        wait_for(lambda: len(step_rows(run_dir)) > 4 or any(p.poll() is not None for p in processes))
        processes[1].send_signal(signal.SIGTERM)  # the process that writes nothing
        codes = [p.wait(timeout=120) for p in processes]
    finally:
        end_all(processes)
    assert codes == [0, 0], tails(tmp_path / "logs")

    status = runs.read_status(run_dir)
    assert status["state"] == runs.STOPPED and status["world_size"] == 2
    rows = step_rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    # 3 steps of 32 = 96 images into epoch 0; steps of 2 × 32 go on at their next whole batch (the 3rd of 4).
    assert [r["epoch"] for r in rows[3:5]] == [0.75, 1.0]
    saved = load_checkpoint(run_dir / "last.pt")
    assert (saved["step"], saved["world_size"]) == (rows[-1]["step"], 2)


def test_a_process_that_dies_ends_the_others_and_leaves_the_run_interrupted(tmp_path):
    runs_dir = tmp_path / "runs"
    run_dir = runs_dir / "dies"
    processes = start_processes(
        tmp_path / "logs",
        "train",
        "--epochs",
        "500",
        "--eval-every",
        "1000",
        "--runs-dir",
        str(runs_dir),
        "--name",
        "dies",
        *TINY,
    )
    try:
        wait_for(lambda: len(step_rows(run_dir)) >= 2 or any(p.poll() is not None for p in processes))
        processes[1].kill()
        code = processes[0].wait(timeout=120)
    finally:
        end_all(processes)
    assert code == 1, tails(tmp_path / "logs")
    status = runs.read_status(run_dir)
    assert status["state"] == runs.INTERRUPTED
    assert "training processes ended unexpectedly" in status["message"]  # said by the survivor, not guessed


def test_the_dashboard_shows_how_many_processes_trained_a_run(two_process_run, runs_dir, app_test):
    shutil.copytree(two_process_run[0], runs_dir / "two")
    at = app_test("app.py")
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["Run"]) == ["two"] and table["Processes"].iloc[0] == 2

    at = app_test("pages/1_Train.py", {"run": "two"})
    at.run()
    assert not at.exception
    assert any("2 processes (torchrun), global batch 64" in c.value for c in at.caption)
