"""The training-step race of the speed benchmark: how a step is timed, and the contenders it times.

Every contender is a zero-argument step function built for the same backbone, batch and device: this
engine (`byol.step.training_step`, or its CUDA graph), a compute-only floor of it, byol-pytorch as its
README uses it and lightly's BYOL recipe through its DataLoader. `bench_steps` times them one after the
other; on a CPU each runs in a fresh process of its own (`run_in_fresh_process`), a new interpreter of
speed.py with `--contender NAME`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightly_byol import LightlyBYOL, lightly_loader, lightly_step  # noqa: E402

from byol.allocator import keep_freed_memory  # noqa: E402
from byol.augment import byol_view_settings, plain_view  # noqa: E402
from byol.config import PRESETS  # noqa: E402
from byol.device import bf16_available, use_cuda_backend_speedups  # noqa: E402
from byol.graph_step import GraphedStep  # noqa: E402
from byol.knn import autocast_context  # noqa: E402
from byol.model import networks_on, target_pairs, update_target  # noqa: E402
from byol.optim import optimizer_for  # noqa: E402
from byol.step import training_step  # noqa: E402

SPEED_SCRIPT = Path(__file__).resolve().with_name("speed.py")  # whose --contender runs one contender


# --- measuring helpers ---------------------------------------------------------------------
class PeakMemory:
    """Peak memory while the block runs, above the level when it started (bytes).

    CUDA: the allocator's own peak counter. CPU: resident set size sampled every 2 ms by a thread
    (PyTorch's CPU allocator returns large blocks to the system, so RSS rises and falls per step).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, self._rss())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            gc.collect()
            self._base = self._max = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self._base


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StepResult:
    name: str
    images_per_s: float
    peak_memory_mb: float
    note: str = ""
    losses: list[float] = field(default_factory=list)
    gpu_busy_percent: float | None = None  # nvidia-smi's utilisation, averaged over the timed steps


class GpuBusy:
    """Samples nvidia-smi's GPU utilisation every 100 ms while in the block; `percent` is the mean.

    Utilisation is the share of time any kernel ran: a host-bound step shows as a GPU often idle.
    Stays None on a CPU, or where nvidia-smi is missing.
    """

    def __init__(self, device: torch.device):
        self.device, self.percent, self._process = device, None, None

    def __enter__(self) -> "GpuBusy":
        if self.device.type == "cuda" and shutil.which("nvidia-smi"):
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._process = subprocess.Popen(
                ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._process is None:
            return
        self._process.terminate()
        output, _ = self._process.communicate(timeout=10)
        samples = [float(line) for line in output.split() if line.strip().replace(".", "", 1).isdigit()]
        self.percent = sum(samples) / len(samples) if samples else None


def time_steps(
    name: str, step: Callable[[], torch.Tensor], batch: int, device: torch.device, warmup: int, steps: int, note: str = ""
) -> StepResult:
    """Run `warmup` untimed steps, then `steps` timed ones; the step returns its loss tensor."""
    losses = []
    # Memory is measured from before the first step, so optimiser state and (on a CPU) memory the
    # allocator keeps between steps count; time only over the steps after the warm-up.
    with PeakMemory(device) as memory:
        for _ in range(warmup):
            losses.append(float(step()))
        synchronize(device)
        with GpuBusy(device) as busy:
            started = time.perf_counter()
            last = None
            for _ in range(steps):
                last = step()
            float(last)  # one synchronisation at the end, as a training loop that logs rarely
            synchronize(device)
            elapsed = time.perf_counter() - started
    result = StepResult(name, batch * steps / elapsed, memory.peak / 2**20, note, losses, busy.percent)
    busy_text = f"   GPU busy {busy.percent:3.0f}%" if busy.percent is not None else ""
    print(f"  {name:<34} {result.images_per_s:8.1f} img/s   peak {result.peak_memory_mb:7.0f} MB{busy_text}   {note}", flush=True)
    return result


def batches(images: torch.Tensor, batch: int):
    """Endless batches of consecutive images (wrapping around)."""
    start = 0
    while True:
        if start + batch > len(images):
            start = 0
        yield images[start : start + batch]
        start += batch


# --- the contenders ------------------------------------------------------------------------
def our_config(width: int, batch: int, precision: str, channels_last: bool):
    """The `gpu` preset's network and optimiser (heads 4096/256 as byol-pytorch's defaults) at this size."""
    return PRESETS["gpu"].replace(width=width, batch_size=batch, precision=precision, channels_last=channels_last)


def ours(
    images: torch.Tensor,
    device: torch.device,
    width: int,
    batch: int,
    bf16: bool,
    channels_last: bool,
    cuda_fast: bool = False,
    cuda_graph: bool = False,
):
    """This engine's step as train() runs it; `cuda_fast` and `cuda_graph` are the config's CUDA switches."""
    config = our_config(width, batch, "bf16" if bf16 else "fp32", channels_last).replace(
        cuda_fast=cuda_fast, cuda_graph=cuda_graph
    )
    if cuda_fast:
        use_cuda_backend_speedups()  # global switches: the contenders that use them run last (step_contenders)
    networks, memory_format = networks_on(config, device)
    optimizer = optimizer_for(config, networks, device)
    pairs = target_pairs(networks.online_modules(), networks.target_modules())  # listed once, as train() does
    generator = torch.Generator(device=device).manual_seed(0)
    source = batches(images.to(device), batch)
    if cuda_graph:
        graphed = GraphedStep(networks, optimizer, generator, bf16, memory_format, pairs, byol_view_settings())
        # The replay's loss tensor is overwritten by the next replay: hand out a copy, as the step log does.
        return lambda: graphed(next(source), config.effective_lr, 0.99)[0].clone()

    def step() -> torch.Tensor:
        loss, _ = training_step(networks, optimizer, next(source), 0.99, generator, bf16, memory_format, None, pairs)
        return loss.detach()

    return step


def compute_floor(
    images: torch.Tensor, device: torch.device, width: int, batch: int, bf16: bool = False, channels_last: bool = False
):
    """Our network, loss, optimiser and EMA on one fixed, already normalised batch: no augmentation."""
    config = our_config(width, batch, "bf16" if bf16 else "fp32", channels_last)
    networks, memory_format = networks_on(config, device)
    optimizer = optimizer_for(config, networks, device)
    pairs = target_pairs(networks.online_modules(), networks.target_modules())
    fixed = plain_view(images[:batch].to(device)).contiguous(memory_format=memory_format)

    def step() -> torch.Tensor:
        with autocast_context(device, bf16):
            loss, _ = networks.forward_loss(fixed, fixed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_target(pairs, 0.99)
        return loss.detach()

    return step


def torchvision_cifar_resnet18(width_check: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem and no classifier: the backbone the peers get.

    It is the same network as ours at width 64 (our model test checks the parameter count).
    """
    import torchvision

    if width_check != 64:
        raise SystemExit("the peers use torchvision's ResNet-18, which only exists at width 64; run them with --width 64")
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def byol_pytorch(images: torch.Tensor, device: torch.device, width: int, batch: int, bf16: bool = False):
    """lucidrains' byol-pytorch as its README shows, with its default augmentation on float batches."""
    from byol_pytorch import BYOL

    learner = BYOL(torchvision_cifar_resnet18(width).to(device), image_size=32, hidden_layer="avgpool").to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-4)
    source = batches(images.to(device), batch)

    def step() -> torch.Tensor:
        with autocast_context(device, bf16):  # the one line a user of byol-pytorch adds for bf16
            loss = learner(next(source).float().div_(255))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        learner.update_moving_average()
        return loss.detach()

    return step


def lightly_recipe(images: torch.Tensor, device: torch.device, width: int, batch: int, workers: int):
    """lightly 1.6.0's BYOL example (examples/pytorch/byol.py) on torchvision's backbone, at 32 px without blur."""
    from lightly.loss import NegativeCosineSimilarity

    model = LightlyBYOL(torchvision_cifar_resnet18(width), 512).to(device)
    loader = lightly_loader(images, batch, workers)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    iterator = iter(loader)

    def step() -> torch.Tensor:
        nonlocal iterator
        try:
            (x0, x1), _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            (x0, x1), _ = next(iterator)
        return lightly_step(model, criterion, optimizer, x0.to(device), x1.to(device), m=0.99)

    return step


# --- the sections --------------------------------------------------------------------------
def step_contenders(images, device, args) -> list[tuple[str, Callable, str, bool]]:
    """(name, builder of its step function, note, keep freed memory as train() does: see byol/allocator.py)."""
    best_bf16 = bf16_available(device) and not args.no_bf16
    contenders: list[tuple[str, Callable, str, bool]] = [
        ("ours fp32", lambda: ours(images, device, args.width, args.batch, False, True), "channels-last", True),
        ("ours fp32, NCHW", lambda: ours(images, device, args.width, args.batch, False, False), "no channels-last", True),
        (
            "ours fp32, NCHW, default malloc",
            lambda: ours(images, device, args.width, args.batch, False, False),
            "no channels-last, no allocator setting",
            False,
        ),
    ]
    if best_bf16:
        contenders.append(
            ("ours bf16", lambda: ours(images, device, args.width, args.batch, True, True), "bf16 autocast, channels-last", True)
        )
    contenders.append(
        ("compute floor fp32", lambda: compute_floor(images, device, args.width, args.batch), "no augmentation, NCHW", False)
    )
    if best_bf16:
        contenders.append(
            (
                "compute floor bf16",
                lambda: compute_floor(images, device, args.width, args.batch, True, True),
                "no augmentation, bf16 autocast, channels-last",
                True,
            )
        )
    if not args.no_peers:
        contenders.append(
            ("byol-pytorch 0.9.1 fp32", lambda: byol_pytorch(images, device, args.width, args.batch), "README usage", False)
        )
        if best_bf16:
            contenders.append(
                (
                    "byol-pytorch 0.9.1 bf16",
                    lambda: byol_pytorch(images, device, args.width, args.batch, True),
                    "README usage under bf16 autocast",
                    False,
                )
            )
        contenders.append(
            (
                "byol-pytorch 0.9.1 fp32, our malloc",
                lambda: byol_pytorch(images, device, args.width, args.batch),
                "README usage inside allocator.keep_freed_memory()",
                True,
            )
        )
        for workers in args.lightly_workers:
            contenders.append(
                (
                    f"lightly 1.6.0 fp32 ({workers} workers)",
                    lambda w=workers: lightly_recipe(images, device, args.width, args.batch, w),
                    "example recipe, DataLoader",
                    False,
                )
            )
    if device.type != "cpu":  # the allocator setting is about CPU memory only
        contenders = [c for c in contenders if "malloc" not in c[0]]
    if device.type == "cuda":
        # Last: cuda_fast turns on global cuDNN and TF32 switches that would speed the others up too.
        for precision in ("fp32", "bf16") if best_bf16 else ("fp32",):
            bf16 = precision == "bf16"
            contenders.append(
                (
                    f"ours {precision}, cuda_fast",
                    lambda bf16=bf16: ours(images, device, args.width, args.batch, bf16, True, cuda_fast=True),
                    "fused optimiser, cuDNN autotuning, TF32 heads, channels-last",
                    True,
                )
            )
            contenders.append(
                (
                    f"ours {precision}, cuda_fast + CUDA graph",
                    lambda bf16=bf16: ours(images, device, args.width, args.batch, bf16, True, cuda_fast=True, cuda_graph=True),
                    "the whole step replayed from a CUDA graph",
                    True,
                )
            )
    return contenders


def run_contender(name: str, build: Callable, note: str, keep_memory: bool, device: torch.device, args) -> StepResult:
    """Build the contender's step and time it; raises ImportError when its library is not installed."""
    step = build()
    with keep_freed_memory() if keep_memory and device.type == "cpu" else contextlib.nullcontext():
        result = time_steps(name, step, args.batch, device, args.warmup, args.steps, note)
    del step
    gc.collect()
    return result


def print_skipped(name: str, reason: str) -> None:
    print(f"  {name:<34} skipped: {reason} (pip install -r benchmarks/requirements.txt)", flush=True)


def run_in_fresh_process(name: str, args) -> StepResult | None:
    """Time contender `name` in a new interpreter running this script (`--contender NAME`).

    On a CPU, contenders must not share a process: glibc keeps state from one to the next (memory an
    earlier contender freed is reused without raising the resident set, so a later one's peak looks
    smaller; and once any code has called mallopt, as our allocator setting does, glibc's mmap
    threshold stops adapting for the rest of the process, so a later "default malloc" contender would
    not run with glibc's defaults). A fresh process starts with neither.
    """
    command = [sys.executable, str(SPEED_SCRIPT), *args.argv, "--contender", name]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired:
        print(f"  {name:<34} failed in its own process: no result within 20 minutes", flush=True)
        return None
    try:
        answer = json.loads(finished.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"  {name:<34} failed in its own process: {finished.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    if "skipped" in answer:
        print_skipped(name, answer["skipped"])
        return None
    result = StepResult(**answer)
    print(f"  {name:<34} {result.images_per_s:8.1f} img/s   peak {result.peak_memory_mb:7.0f} MB   {result.note}", flush=True)
    return result


def bench_steps(images, device, args) -> list[StepResult]:
    isolated = device.type == "cpu"  # see run_in_fresh_process; a GPU's allocator statistics reset per contender
    print(
        f"Training step: ResNet-18 width {args.width}, batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps"
        + (", each contender in a fresh process" if isolated else ""),
        flush=True,
    )
    results = []
    torch.manual_seed(0)
    for name, build, note, keep_memory in step_contenders(images, device, args):
        if isolated:
            result = run_in_fresh_process(name, args)
        else:
            try:
                result = run_contender(name, build, note, keep_memory, device, args)
            except ImportError as error:
                print_skipped(name, str(error))
                result = None
            except Exception as error:  # one failing contender (a first run of the graph) must not cost the others
                print(f"  {name:<34} failed: {type(error).__name__}: {str(error)[:400]}", flush=True)
                result = None
        if result is not None:
            results.append(result)
    return results


def run_one_contender(name: str, images, device, args) -> int:
    """`--contender NAME`: time one contender in this (fresh) process; its result is the last line, as JSON."""
    for contender in step_contenders(images, device, args):
        if contender[0] == name:
            torch.manual_seed(0)
            try:
                result = run_contender(*contender, device, args)
            except ImportError as error:
                print(json.dumps({"skipped": str(error)}))
                return 0
            print(json.dumps(result.__dict__))
            return 0
    print(f"no contender named {name!r}", file=sys.stderr)
    return 2
