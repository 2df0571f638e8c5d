"""An honest training-time estimate: time a few real training steps of the config on this device.

`estimate_time(config)` measures images per second with the training loop's own step
(`step.training_step`: the config's networks and optimiser, both views, the loss under the same bf16
autocast and channels-last layout as train.py, backward, optimiser step, EMA target update) on random uint8
images at the config's batch size: 2 warm-up steps, then 3 timed ones. The speed is cached in
`<project cache>/speed.json` keyed by (device, width, heads, batch, precision, ...), so the next
estimate for the same shape of network is instant.

Assumptions, also returned with every estimate so the dashboard can show them:
- training time = images per epoch (subset, or the data set's training split, rounded down to whole
  batches) x epochs / measured images per second;
- every evaluation (one at step 0, then every `eval_every` epochs and at the end) runs the backbone
  forward over the kNN bank and queries; one such image is taken to cost 1/3 of a training image
  (a training image is two augmented views through the online network forward and backward and the
  target network forward; an evaluation image is one plain forward pass, plus its share of the kNN
  similarity search), which errs on the slow side;
- loading or decoding the data set, checkpoint writes and the raw-pixel baseline are not counted
  (about a second for cached data; the first decode of CIFAR-10's archive took 10.6 s on a 2-core
  AMD EPYC, and bigger image folders take longer);
- on a CPU a first step on 16 images tells how slow a step is; when the full batch would not fit in
  ~15 s of measuring, 1 step is timed at a smaller batch instead. Images per second at a small batch
  are usually a little lower than at the full batch, so that estimate also errs on the slow side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from . import cifar10, synthetic
from .config import CIFAR10_KIND, SYNTHETIC_KIND, ConfigError, TrainConfig, source_kind, step_plan, validate
from .data import default_cache_dir, image_counts
from .device import describe_device, resolve_device, use_bf16
from .files import read_json, write_json_atomic
from .model import networks_on
from .optim import optimizer_for
from .step import training_step

EVAL_COST_PER_IMAGE = 1 / 3  # an evaluation image costs this fraction of a training image (see above)
WARMUP_STEPS, TIMED_STEPS = 2, 3
# A rule of thumb for warnings before anything is measured: CPU seconds per (image x width^2) of one
# training step, from one measured fp32 step of ResNet-18 width 64 on 128 images: ~8.7 s on 2 cores.
CPU_SECONDS_PER_IMAGE_WIDTH2 = 8.7 / (128 * 64 * 64)
CPU_MEASURE_BUDGET_S = 15.0  # seconds a CPU measurement may take, network construction included
PROBE_BATCH = 16
KNOWN_SIZES = {CIFAR10_KIND: cifar10.SIZES, SYNTHETIC_KIND: synthetic.SIZES}  # by config.source_kind


@dataclass
class Estimate:
    seconds: float  # the whole run: training plus evaluations
    train_seconds: float
    eval_seconds: float
    images_per_s: float  # measured training images per second
    measured_on: str  # the device, in words
    measured_how: str  # how the speed was measured, one plain sentence
    plan_notes: str  # what the run's schedule adds up to, in plain sentences
    from_cache: bool  # the speed came from speed.json (measured earlier), not a fresh measurement
    measured_batch: int  # batch size the speed was measured at

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    @property
    def assumptions(self) -> str:
        """What the number rests on: the measurement, then the schedule."""
        return f"{self.measured_how} {self.plan_notes}"


# --- data size -------------------------------------------------------------------------------
def data_sizes(source: str) -> tuple[int, int] | None:
    """(training images, test images) of a data source, or None when they cannot be told cheaply.

    Known for cifar10 and synthetic; a folder or archive is counted by listing it (a .tar.gz must
    be decompressed to list it: about a second for CIFAR-10), cached in memory per file version.
    """
    kind = source_kind(source)
    if kind in KNOWN_SIZES:
        return KNOWN_SIZES[kind]
    path = Path(source).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return None
    return _count_images(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _count_images(path: str, size: int, mtime_ns: int) -> tuple[int, int] | None:
    """data.image_counts, remembered per file version (size and time are part of the key)."""
    return image_counts(Path(path))


# --- speed -----------------------------------------------------------------------------------
def speed_key(config: TrainConfig, device: torch.device, bf16: bool) -> str:
    """What the measured speed depends on; everything else in the config does not change it."""
    return "|".join(
        str(part)
        for part in (
            describe_device(device),
            f"width={config.width}",
            f"heads={config.projector_hidden}/{config.projector_dim}/{config.predictor_hidden}/bn={config.head_bn}",
            f"batch={config.batch_size}",
            f"bf16={bf16}",
            f"size={config.image_size}",
            f"view={config.training_view_size}",
            f"opt={config.optimizer}",
            f"cl={config.channels_last}",
        )
    )


def _speed_file(cache_dir: Path | None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "speed.json"


def cached_speed(config: TrainConfig, cache_dir: Path | None = None) -> dict | None:
    """The stored measurement for this config on its device ({images_per_s, batch, measured}), or None."""
    device = resolve_device(config.device)
    bf16 = use_bf16(config.precision, device)
    table = read_json(_speed_file(cache_dir), {})
    entry = table.get(speed_key(config, device, bf16)) if isinstance(table, dict) else None
    return entry if isinstance(entry, dict) and entry.get("images_per_s") else None


def measure_speed(config: TrainConfig, budget_s: float = CPU_MEASURE_BUDGET_S) -> tuple[float, int]:
    """Time real training steps of `config` on its device; returns (images per second, batch used).

    On a GPU: 2 warm-up steps and 3 timed ones at the config's batch. On a CPU the first warm-up
    step runs on a small probe batch; its time says whether the full batch fits the budget
    (`budget_s`, about 15 s in all). If not, 1 step is timed at the largest batch that fits.
    Timed steps also end early at the deadline (at least one is always timed).

    Random images come from a private generator, so this does not change the random stream of a
    training running in another thread (building the networks still draws their initial weights
    from torch's global generator, as any network construction does).
    """
    deadline = time.perf_counter() + budget_s
    device = resolve_device(config.device)
    try:
        return _time_training_steps(config, device, deadline)  # its networks and optimiser are freed as it returns
    except torch.cuda.OutOfMemoryError:
        pass  # leaving this clause drops the error, and with it the networks its traceback holds
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand the freed memory back to the device
    raise ConfigError(
        f"The device ran out of memory at batch size {config.batch_size}; lower the batch size or the backbone width."
    )


def _time_training_steps(config: TrainConfig, device: torch.device, deadline: float) -> tuple[float, int]:
    """measure_speed's timing: build the config's networks on `device`, time steps until `deadline`."""
    bf16 = use_bf16(config.precision, device)
    networks, memory_format = networks_on(config, device)
    optimizer = optimizer_for(config, networks, device)
    generator = torch.Generator(device=device).manual_seed(0)
    size = config.image_size
    networks.train()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(batch: int) -> float:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device, generator=generator)
        begin = time.perf_counter()
        training_step(networks, optimizer, images, 0.99, generator, bf16, memory_format, view_size=config.training_view_size)
        sync()
        return time.perf_counter() - begin

    batch, timed = config.batch_size, TIMED_STEPS
    if device.type == "cpu":
        probe = min(config.batch_size, PROBE_BATCH)
        per_image = step(probe) / probe  # the first warm-up; pessimistic (one-time set-up costs)
        remaining = deadline - time.perf_counter()
        if per_image * config.batch_size * (1 + TIMED_STEPS) <= remaining:
            step(batch)  # the second warm-up, at the real batch
        else:
            batch, timed = max(probe, min(config.batch_size, int(remaining / per_image))), 1
    else:
        for _ in range(WARMUP_STEPS):
            step(batch)
    seconds, done = 0.0, 0
    while done < timed:
        seconds += step(batch)
        done += 1
        if time.perf_counter() > deadline:
            break
    return done * batch / max(seconds, 1e-9), batch


# --- the estimate ----------------------------------------------------------------------------
def estimate_time(
    config: TrainConfig,
    measure: bool = True,
    cache_dir: Path | None = None,
    sizes: tuple[int, int] | None = None,
) -> Estimate | None:
    """How long training `config` on its device will take, from a measured speed.

    Uses the cached speed when there is one; otherwise measures (a few seconds) when `measure`,
    else returns None. `sizes` = (train, test) images overrides the data set's own sizes.
    Raises ConfigError for a config that cannot run here.
    """
    validate(config)
    device = resolve_device(config.device)
    bf16 = use_bf16(config.precision, device)
    key = speed_key(config, device, bf16)
    speed_file = _speed_file(cache_dir)
    entry = cached_speed(config, cache_dir)
    from_cache = entry is not None
    if entry is None:
        if not measure:
            return None
        images_per_s, batch = measure_speed(config)
        entry = {"images_per_s": round(images_per_s, 2), "batch": batch, "measured": time.time()}
        table = read_json(speed_file, {})
        table = table if isinstance(table, dict) else {}
        table[key] = entry
        try:
            speed_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(speed_file, table)
        except OSError:
            pass  # a read-only cache only costs a new measurement next time
    images_per_s = float(entry["images_per_s"])
    batch = int(entry.get("batch", config.batch_size))

    notes = []
    known = sizes or data_sizes(config.data)
    if known is None:
        known = KNOWN_SIZES["cifar10"]
        notes.append("The data set's size could not be read without loading it, so CIFAR-10's 50,000/10,000 images are assumed.")
    train_size, test_size = known
    plan = step_plan(config, train_size, test_size)
    steps_per_epoch, bank, queries = plan.steps_per_epoch, plan.bank, plan.queries
    train_images = plan.total_steps * config.batch_size
    train_seconds = train_images / images_per_s

    evaluations = plan.evaluations
    eval_seconds = evaluations * (bank + queries) * EVAL_COST_PER_IMAGE / images_per_s

    measured_how = (
        f"Measured {images_per_s:,.0f} training images/s on {describe_device(device)}"
        f"{' in bf16' if bf16 else ' in fp32'} at batch {batch}"
        + (" (a smaller batch than the run's, so the estimate errs on the slow side)" if batch < config.batch_size else "")
        + (" earlier on this machine" if from_cache else "")
        + "."
    )
    notes = [
        f"Training: {train_images:,} images ({steps_per_epoch:,} steps of {config.batch_size} per epoch × {config.epochs} epochs).",
        f"Evaluation: {evaluations} kNN measurements of {bank:,} + {queries:,} images, each image counted "
        f"as {EVAL_COST_PER_IMAGE:.2g} of a training image.",
        *notes,
        "Loading the data (slow only the first time an archive is decoded) is not included.",
    ]
    return Estimate(
        seconds=train_seconds + eval_seconds,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        images_per_s=images_per_s,
        measured_on=describe_device(device),
        measured_how=measured_how,
        plan_notes=" ".join(notes),
        from_cache=from_cache,
        measured_batch=batch,
    )


def rough_cpu_seconds(config: TrainConfig, train_size: int = cifar10.SIZES[0]) -> float:
    """A rule-of-thumb CPU training time (no measurement), only to warn before anything is measured."""
    used = step_plan(config, train_size, test_size=0).images
    return CPU_SECONDS_PER_IMAGE_WIDTH2 * config.width**2 * used * config.epochs
