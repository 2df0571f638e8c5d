"""The GPU training step: no host synchronisation inside a step, fused optimisers and the CUDA graph
keep the numbers, and a run with the graph trains and resumes.

These run only where a CUDA device is visible; on a CPU-only machine (and in CI) they skip.
"""

from __future__ import annotations

import pytest
import torch

from byol import metrics_file, runs
from byol.augment import byol_view_settings
from byol.config import preset
from byol.graph_step import GraphedStep
from byol.model import BYOLNetworks, target_pairs
from byol.optim import build_optimizer
from byol.step import training_step
from byol.train import train
from helpers import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_step_parts(optimizer_name: str, cuda_fast: bool, bf16: bool = True, graphed: bool = False):
    """A step function on fixed images: eager, or (graphed) replayed by GraphedStep after its eager steps."""
    config = preset(
        "gpu",
        width=16,
        projector_hidden=256,
        projector_dim=64,
        predictor_hidden=256,
        optimizer=optimizer_name,
        cuda_fast=cuda_fast,
        cuda_graph=graphed,
        batch_size=64,
    )
    device = torch.device("cuda")
    torch.manual_seed(0)
    networks = BYOLNetworks.from_config(config).to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(config, networks.trainable_parameters(), device)
    pairs = target_pairs(networks.online_modules(), networks.target_modules())
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(
        0, 256, (64, 3, 32, 32), dtype=torch.uint8, device=device, generator=torch.Generator(device=device).manual_seed(1)
    )
    if graphed:
        graph_step = GraphedStep(networks, optimizer, generator, bf16, torch.channels_last, pairs, byol_view_settings())
        return lambda: graph_step(images, config.effective_lr, 0.99)[0]  # the eager step's rate, as built

    def step():
        return training_step(networks, optimizer, images, 0.99, generator, bf16, torch.channels_last, None, pairs)[0]

    return step


@pytest.mark.parametrize("optimizer_name", ["lars", "adamw", "sgd"])
@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graph-replay"])
def test_a_training_step_never_waits_for_the_gpu(optimizer_name, graphed):
    step = gpu_step_parts(optimizer_name, cuda_fast=True, graphed=graphed)
    # The first step makes the cached constants and the optimiser state; graphed, the first three
    # run eagerly and the fourth is captured, so the steps watched below are replays.
    for _ in range(4 if graphed else 1):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("optimizer_name", ["lars", "adamw"])
def test_cuda_speed_ups_give_the_same_losses_as_the_plain_path(optimizer_name):
    plain, fast = gpu_step_parts(optimizer_name, cuda_fast=False), gpu_step_parts(optimizer_name, cuda_fast=True)
    plain_losses = [float(plain()) for _ in range(4)]
    fast_losses = [float(fast()) for _ in range(4)]
    assert fast_losses == pytest.approx(plain_losses, rel=2e-2)  # bf16 autocast tolerance over 4 steps


def test_a_deferred_step_log_reads_the_gpu_without_waiting():
    from byol.step_log import StepLog

    written = []
    log = StepLog(written.append, defer=True)
    values = [torch.tensor(float(i), device="cuda") for i in range(3)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        log.add({"step": 1, "loss": None, "z_std": None}, values[0], values[1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    log.add({"step": 2, "loss": None, "z_std": None}, values[1], values[2])  # completes step 1
    log.flush()
    assert [(r["step"], r["loss"], r["z_std"]) for r in written] == [(1, 0.0, 1.0), (2, 1.0, 2.0)]


@pytest.mark.parametrize("optimizer_name", ["lars", "adamw", "sgd"])
def test_the_graphed_step_gives_the_losses_of_the_eager_step(optimizer_name):
    # Same start, same augmentation stream: the first 3 steps run eagerly inside GraphedStep, the
    # 4th is captured and replayed, and so are the rest. fp32, so only kernel order can differ.
    eager = gpu_step_parts(optimizer_name, cuda_fast=True, bf16=False)
    graphed = gpu_step_parts(optimizer_name, cuda_fast=True, bf16=False, graphed=True)
    eager_losses = [float(eager()) for _ in range(7)]
    graphed_losses = [float(graphed()) for _ in range(7)]
    assert graphed_losses == pytest.approx(eager_losses, rel=1e-3)


def test_a_run_with_the_cuda_graph_trains_and_resumes(tmp_path):
    config = tiny_config(device="cuda", cuda_graph=True, cuda_fast=True, epochs=2, log_every=2)
    run_dir = runs.create_run(tmp_path / "runs", config)
    assert train(config, run_dir) == runs.FINISHED
    steps = [r for r in metrics_file.read_rows(run_dir) if r["kind"] == "step"]
    assert steps and all(0 <= r["loss"] <= 4 for r in steps)
    runs.update_config(run_dir, config.replace(epochs=3))
    assert train(runs.read_config(run_dir), run_dir) == runs.FINISHED
    resumed = [r for r in metrics_file.read_rows(run_dir) if r["kind"] == "step"]
    assert resumed[-1]["step"] > steps[-1]["step"] and all(0 <= r["loss"] <= 4 for r in resumed)
