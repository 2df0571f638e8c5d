"""Which device trains, and in which precision.

`auto` picks the first GPU when there is one, else the CPU. bf16 autocast is used where the
hardware runs it natively: CUDA GPUs that support it, and CPUs with AMX or AVX-512 BF16 (on those,
a ResNet-18 forward+backward in bf16 with channels-last ran about twice as fast as fp32 here).
`precision="fp32"` turns it off.
"""

from __future__ import annotations

import os
import platform

import torch

from .config import ConfigError, TrainConfig

# From this backbone width up a recipe is made for a GPU: on a CPU it takes hours, not minutes.
GPU_RECIPE_WIDTH = 64


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a config's `device` field, or ConfigError when it is not there."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("Device (device) is set to a GPU, but no CUDA GPU is available here; use cpu or auto.")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"Device (device) asks for GPU {index}, but only {torch.cuda.device_count()} GPU(s) are present.")
        return torch.device("cuda", index)
    return device


def cpu_has_bf16() -> bool:
    """True when the CPU advertises native bf16 arithmetic (AMX or AVX-512 BF16); Linux only."""
    if os.environ.get("BYOL_DISABLE_BF16"):
        return False
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to train in bf16 autocast for this config precision on this device."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        if not bf16_available(device):
            raise ConfigError(f"Precision (precision) bf16 is not supported on this {device.type}; use auto or fp32.")
        return True
    return bf16_available(device)


def use_cuda_backend_speedups() -> None:
    """`cuda_fast`'s global switches: cuDNN autotuning (fixed input shapes, so the search pays after a
    few steps) and TF32 for the heads' matrix products (convolutions use TF32 already)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True


def device_key(device: torch.device) -> str:
    """A name for the device lock: "cpu" or "cuda-0"."""
    return "cpu" if device.type == "cpu" else f"{device.type}-{device.index or 0}"


def describe_device(device: torch.device | None = None) -> str:
    """One line for people: the GPU's name, or the CPU with its core count and bf16 support."""
    device = device or resolve_device("auto")
    if device.type == "cuda":
        return f"GPU {device.index or 0}: {torch.cuda.get_device_name(device)}"
    cores = os.cpu_count() or 1
    extra = ", bf16 capable" if cpu_has_bf16() else ""
    return f"CPU ({cores} cores{extra})"


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's on Linux, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_machine(device: torch.device) -> str:
    """One line for a benchmark's report: the device, the CPU model, cores and torch's threads, torch's version."""
    return (
        f"{describe_device(device)}; CPU: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}"
    )


def gpu_recipe_on_cpu(config: TrainConfig, machine_is_cpu: bool) -> bool:
    """True when `config` is a GPU-sized recipe that would train on the CPU of a machine without a GPU.

    `machine_is_cpu`: whether "auto" resolves to the CPU here (the pages pass what they already know).
    The Train and Compare pages warn with it before launching, so nobody queues hours by mistake.
    """
    return machine_is_cpu and not config.device.startswith("cuda") and config.width >= GPU_RECIPE_WIDTH
