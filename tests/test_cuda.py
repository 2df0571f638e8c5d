"""The GPU training step: no host synchronisation inside a step, and fused optimisers keep the numbers.

These run only where a CUDA device is visible; on a CPU-only machine (and in CI) they skip.
"""

from __future__ import annotations

import pytest
import torch

from byol.config import preset
from byol.model import BYOLNetworks, target_pairs
from byol.optim import build_optimizer
from byol.step import training_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def gpu_step_parts(optimizer_name: str, cuda_fast: bool, bf16: bool = True):
    config = preset(
        "gpu",
        width=16,
        projector_hidden=256,
        projector_dim=64,
        predictor_hidden=256,
        optimizer=optimizer_name,
        cuda_fast=cuda_fast,
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

    def step():
        return training_step(networks, optimizer, images, 0.99, generator, bf16, torch.channels_last, None, pairs)[0]

    return step


@pytest.mark.parametrize("optimizer_name", ["lars", "adamw", "sgd"])
def test_a_training_step_never_waits_for_the_gpu(optimizer_name):
    step = gpu_step_parts(optimizer_name, cuda_fast=True)
    step()  # the first step makes the cached constants and the optimiser state
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
