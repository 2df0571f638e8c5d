"""The training loop: `train(config, run_dir, stop, on_event)`, readable top to bottom.

It trains a new run or resumes one from its `last.pt`, and leaves in the run directory everything
the dashboard reads: status.json (with a heartbeat), metrics.jsonl, checkpoints. The background
thread of the app and the command line both call this one function.

What happens, in order:
1. validate the config, take the device lock (refused plainly if another run trains there);
2. load the data into memory as uint8, on the training device;
3. build the networks and optimiser, or restore them from last.pt and drop metric rows logged
   after it (so curves never hold duplicates);
4. at step 0, measure kNN of the random-init network and of raw pixels: the two baselines;
5. for each step: two augmented views, the BYOL loss, an optimiser step, the EMA target update
   (with `cuda_graph` on one GPU, all of it replayed from a CUDA graph: graph_step.py);
   log every few steps, evaluate and snapshot every `eval_every` epochs, save last.pt at least
   every `checkpoint_minutes`;
6. end as finished, stopped (stop flag), or failed (NaN loss or any exception, message kept);
   a KeyboardInterrupt or SystemExit ends it interrupted (resumable), frees the device and goes on.

With several processes (torchrun; see distributed.py) every process runs this same code on its own
share of the images, with batch norm computed over the global batch and gradients averaged by DDP.
Only the main process reads and writes the run folder and takes the lock; one stop flag, one loss
value and one refusal are agreed by all, so they stop, fail or refuse together. A process that dies
leaves the run `interrupted`.

Input that turns out unusable only once it is opened (a data folder without classes, a batch larger
than the data, a damaged last.pt) is refused before anything is written: train() puts status.json
back as it was and raises the plain error, as it does for a bad config.
"""

from __future__ import annotations

import contextlib
import errno
import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import metrics_file, runs
from .allocator import keep_freed_memory
from .augment import byol_view_settings
from .checkpoint import (
    CheckpointError,
    full_state,
    load_checkpoint,
    restore_augment_rng,
    restore_networks,
    save_checkpoint,
    snapshot_state,
)
from .config import ConfigError, TrainConfig, check_against_data, step_plan, validate
from .data import default_cache_dir, load_for
from .dataset import DataError, Dataset
from .device import device_key, resolve_device, use_bf16, use_cuda_backend_speedups
from .distributed import ALONE, World
from .errors import plain_message
from .files import remove_stale_temporaries, write_atomic
from .graph_step import GraphedStep
from .knn import chosen_images, effective_rank, extract_features, knn_accuracy, pixel_knn_accuracy
from .lock import DeviceLock
from .model import networks_on, projection_spread, target_pairs
from .optim import optimizer_for, set_learning_rate
from .schedules import learning_rate, target_tau
from .step import training_step  # looked up at call time: the fault tests replace it
from .step_log import StepLog

EventCallback = Callable[[dict[str, Any]], None]
INTERRUPTED_MESSAGE = "Training was interrupted (the process was asked to exit). Resume to continue."


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class _Refused(Exception):
    """_train found the user's input unusable (`error`, a plain ConfigError/DataError/CheckpointError)
    before writing anything to the run."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class StatusWriter:
    """Writes status.json for a training run, and refreshes its heartbeat from a background thread.

    One lock guards every write, so the heartbeat can never overwrite a final state with "running".
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.progress: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_dir.name}", daemon=True)

    def set(self, state: str, message: str = "", **fields: Any) -> None:
        with self._lock:
            runs.write_status(self.run_dir, state, message, progress=dict(self.progress), **fields)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._done.wait(runs.HEARTBEAT_SECONDS):
            with self._lock:
                try:
                    runs.touch_heartbeat(self.run_dir, progress=dict(self.progress))
                except OSError:
                    pass  # a full disk must not kill training; the next beat tries again


class _SilentStatus:
    """The status of a process other than the main one: it keeps progress for nobody and writes nothing."""

    def __init__(self) -> None:
        self.progress: dict[str, Any] = {}

    def set(self, state: str, message: str = "", **fields: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def train(
    config: TrainConfig,
    run_dir: Path,
    stop: threading.Event | None = None,
    on_event: EventCallback | None = None,
    world: World | None = None,
) -> str:
    """Train or resume the run in `run_dir`; returns its final state (finished, stopped or failed;
    interrupted when another of several processes died).

    Raises ConfigError for a bad config (also one that does not fit the data, e.g. a batch larger
    than the data set), DataError for unusable data, CheckpointError for an unusable last.pt, and
    DeviceBusy when another run holds the device; in all these cases nothing in the run directory
    has changed. Every other problem ends as status `failed`.

    `world` is this process's place among several started by torchrun (see distributed.py); each
    of them calls train() and gets the same result, and events are emitted in every process.
    """
    run_dir = Path(run_dir)
    stop = stop or threading.Event()
    emit = on_event or (lambda event: None)
    world = world or ALONE
    validate(config)
    device = world.device_for(resolve_device(config.device))
    bf16 = use_bf16(config.precision, device)
    # The main process alone takes the lock and writes the run; the others share its refusal.
    lock = DeviceLock(run_dir.parent, device_key(device), run_dir.name)
    world.main_only(lock.acquire)
    status_path = run_dir / runs.STATUS_FILE
    status_before = status_path.read_bytes() if world.is_main and status_path.is_file() else None  # put back if refused
    status = StatusWriter(run_dir) if world.is_main else _SilentStatus()
    exit_request: BaseException | None = None  # KeyboardInterrupt or SystemExit, raised again at the end
    # A resumed run keeps the time it first started: the runs table's "Started" column.
    first_started = runs.read_status(run_dir).get("started") or time.time()
    try:
        status.set(
            runs.RUNNING, "Loading data...", started=first_started, device=str(device), bf16=bf16, world_size=world.world_size
        )
        status.start()
        emit({"kind": metrics_file.STATUS, "state": runs.RUNNING, "message": "Loading data..."})
        # On a CPU, keep freed activation memory for the next step instead of re-faulting it in (allocator.py).
        with keep_freed_memory() if device.type == "cpu" else contextlib.nullcontext():
            state, message = _train(config, run_dir, stop, emit, status, device, bf16, world)
    except _Refused as refused:
        # Nothing was trained or written: leave the run exactly as it was (the command line then
        # removes a run it has just created) and refuse plainly, like a bad config.
        status.stop()
        try:
            if world.is_main:  # the run folder is the main process's alone
                if status_before is None:
                    status_path.unlink(missing_ok=True)
                else:
                    write_atomic(status_path, lambda f: f.write(status_before))
        finally:
            lock.release()
        raise refused.error from None
    except TrainingDiverged as error:
        state, message = runs.FAILED, str(error)
    except Exception as error:  # any failure ends as a readable status, never a silent death
        if world.lost_peer(error):  # another process died: the run is fine, only cut short
            state, message = (
                runs.INTERRUPTED,
                (
                    f"One of the {world.world_size} training processes ended unexpectedly (crash, kill or lost "
                    "connection), so all of them stopped. Resume to continue."
                ),
            )
        else:
            state, message = runs.FAILED, plain_error(error)
    except BaseException as error:
        # KeyboardInterrupt, SystemExit: not the run's fault. Leave it resumable and free the device
        # (an app server lives on after a training thread dies), then let the exception go on.
        state, message, exit_request = runs.INTERRUPTED, INTERRUPTED_MESSAGE, error
    finally:
        status.stop()
    try:
        status.set(state, message, finished=time.time())
    finally:
        lock.release()
    if exit_request is not None:
        raise exit_request
    emit({"kind": metrics_file.STATUS, "state": state, "message": message})
    return state


def plain_error(error: BaseException) -> str:
    """A one-paragraph explanation of an exception for the status file and the dashboard."""
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower():
        return "The device ran out of memory. Lower the batch size (or the backbone width) and resume the run."
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return (
            "The disk is full (no space left on device), so training stopped; the last checkpoint is intact. "
            "Free some space, then resume the run."
        )
    return plain_message(error, "Training stopped")


def _train(
    config: TrainConfig,
    run_dir: Path,
    stop: threading.Event,
    emit: EventCallback,
    status: StatusWriter,
    device: torch.device,
    bf16: bool,
    world: World = ALONE,
) -> tuple[str, str]:
    # Weights are drawn from the global generator right after seeding it; augmentation draws come
    # from the run's own generator, so other threads of the app drawing random numbers (a time
    # estimate, another page) cannot shift this run's stream, and a resume repeats it exactly.
    torch.manual_seed(config.seed)
    augment_rng = torch.Generator(device=device).manual_seed(_augment_seed(config.seed, world.rank, 0))

    # --- data, resident on the training device as uint8 ---------------------------------------
    try:
        # Every process loads the data (the first on each machine before the others, so only it
        # downloads or decodes into the cache); a refusal in any one of them is a refusal in all.
        data = world.together(lambda: _load_checked(config, world.world_size), leaders_first=True)
    except (ConfigError, DataError) as error:
        raise _Refused(error) from None
    train_idx, bank_idx, query_idx = chosen_images(config, data)
    # Each process holds its own share: every world_size-th image (equal shares; a remainder is dropped).
    train_idx = train_idx[world.rank :: world.world_size][: len(train_idx) // world.world_size]
    train_images = data.train_images[train_idx].to(device)
    eval_device = device if world.is_main else torch.device("cpu")  # kNN runs on the main process alone
    bank_images, bank_labels = data.train_images[bank_idx].to(eval_device), data.train_labels[bank_idx]
    query_images, query_labels = data.test_images[query_idx].to(eval_device), data.test_labels[query_idx]

    # --- networks, optimiser, schedules ----------------------------------------------------------
    networks, memory_format = networks_on(config, device)
    networks = world.sync_batch_norm(networks, device)  # statistics over the global batch (alone: unchanged)
    optimizer = optimizer_for(config, networks, device)
    forward_loss = world.data_parallel(networks, device)  # DDP averages the gradients (alone: forward_loss)
    # Listed once the networks are final (device, memory format, synced batch norm): see TargetPairs.
    pairs = target_pairs(networks.online_modules(), networks.target_modules())
    if device.type == "cuda" and config.cuda_fast:
        use_cuda_backend_speedups()
    loss_fn = torch.compile(forward_loss) if config.compile else forward_loss
    views = byol_view_settings(config.crop_min_scale, config.jitter_strength)
    view_size = config.training_view_size
    # The captured step takes the networks whole, so it is for one process (DDP wraps the forward).
    graphed = device.type == "cuda" and config.cuda_graph and world.world_size == 1
    if graphed:
        run_step = GraphedStep(networks, optimizer, augment_rng, bf16, memory_format, pairs, views, view_size=view_size)
    else:

        def run_step(batch: torch.Tensor, lr: float, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
            set_learning_rate(optimizer, lr)
            return training_step(
                networks,
                optimizer,
                batch,
                tau,
                augment_rng,
                bf16,
                memory_format,
                loss_fn,
                pairs,
                views=views,
                view_size=view_size,
            )

    plan = step_plan(config, len(data.train_labels), len(data.test_labels), world.world_size)
    steps_per_epoch, total_steps = plan.steps_per_epoch, plan.total_steps
    global_batch = config.batch_size * world.world_size

    step, epoch, start_in_epoch = 0, 0, 0
    last_path = run_dir / runs.LAST_CHECKPOINT
    try:
        # The main process reads last.pt and sends it to the others (they may not see the run folder).
        saved = world.from_main(lambda: load_checkpoint(last_path) if last_path.exists() else None)
        if saved is not None:
            restore_networks(networks, saved)
    except CheckpointError as error:
        raise _Refused(error) from None
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        if world.is_main:
            restore_augment_rng(augment_rng, saved)
        else:  # only the main process's generator is saved; the others start a stream of their own
            augment_rng.manual_seed(_augment_seed(config.seed, world.rank, saved["step"]))
        step, epoch = saved["step"], saved["epoch"]
        start_in_epoch = _resume_batch(saved, config.batch_size, global_batch, steps_per_epoch)
    # `step` counts optimiser steps over the run's life (metric rows, snapshots); the schedules and
    # epochs follow the place in the data, `step - offset`. They differ only once a run was resumed
    # on another number of processes, whose batches cover more or fewer images.
    offset = step - (epoch * steps_per_epoch + start_in_epoch)
    if world.is_main:
        # The first write of this training: clear what writers killed mid-write left (partial checkpoints).
        remove_stale_temporaries(run_dir)
        metrics_file.truncate_after(run_dir, step if saved is not None else -1)

    def write_step_row(row: dict[str, Any]) -> None:
        if not math.isfinite(row["loss"]):
            raise TrainingDiverged(
                f"The loss became {row['loss']} at step {row['step']:,}, so training was stopped. "
                "Lower the learning rate (or use fp32 precision) and start a new run."
            )
        if world.is_main:  # flushed, not synced: an fsync here would stall the training thread
            metrics_file.append_rows(run_dir, [row], durable=False)
        eta = (total_steps + offset - row["step"]) * global_batch / max(row["images_per_s"], 1e-9)
        status.progress.update(step=row["step"], epoch=row["epoch"], images_per_s=row["images_per_s"], eta_seconds=round(eta))
        emit({**row, "total_steps": total_steps + offset})

    # Deferred on CUDA with cuda_fast or the graph only: never yet measured on a GPU (see byol/step_log.py).
    step_log = StepLog(write_step_row, defer=device.type == "cuda" and (config.cuda_fast or graphed))

    def save_last(step_in_epoch: int) -> None:
        step_log.flush()  # the checkpoint's metric rows are all written before it
        if world.is_main:  # the networks are identical in every process
            state = full_state(networks, optimizer, config, step, epoch, step_in_epoch, augment_rng, world.world_size)
            save_checkpoint(last_path, state)

    def evaluate() -> dict[str, Any]:
        step_log.flush()  # step rows before the evaluation's row
        if not world.is_main:  # the main process measures; the others wait for it at the next step
            return {}
        started = time.perf_counter()
        bank = extract_features(networks.backbone, bank_images, use_bf16=bf16, channels_last=config.channels_last)
        queries = extract_features(networks.backbone, query_images, use_bf16=bf16, channels_last=config.channels_last)
        knn = knn_accuracy(bank, bank_labels, queries, query_labels, len(data.classes), config.knn_k, config.knn_temperature)
        row = {
            "kind": metrics_file.EVAL,
            "step": step,
            "epoch": round((step - offset) / steps_per_epoch, 4),
            "knn": knn,
            "effective_rank": effective_rank(bank),
            "feature_dim": bank.shape[1],
            "pixel_knn": pixel_floor,
            "bank_size": len(bank_idx),
            "query_size": len(query_idx),
            "k": config.knn_k,
            "eval_seconds": round(time.perf_counter() - started, 2),
            "time": time.time(),
        }
        metrics_file.append_rows(run_dir, [row])
        save_checkpoint(run_dir / runs.snapshot_name(step), snapshot_state(networks.backbone, config, step, row["epoch"], knn))
        emit(row)
        return row

    pixel_floor = _pixel_floor(data, bank_idx, query_idx, config) if world.is_main else None
    status.progress.update(
        step=step, total_steps=total_steps + offset, epoch=(step - offset) / max(steps_per_epoch, 1), epochs=config.epochs
    )
    if step == 0:
        status.set(runs.RUNNING, "Measuring the random-init baseline...")
        evaluate()
    status.set(runs.RUNNING, "Training.")

    # --- the loop ------------------------------------------------------------------------------
    networks.train()
    last_save = window_start = time.monotonic()
    window_steps = 0
    while epoch < config.epochs:
        order = _epoch_order(len(train_idx), config.seed, epoch, world.rank).to(device)
        for i in range(start_in_epoch, steps_per_epoch):
            batch = train_images[order[i * config.batch_size : (i + 1) * config.batch_size]]
            lr = learning_rate(
                step - offset, total_steps, config.peak_lr(world.world_size), plan.warmup_steps, config.lr_decay_share
            )
            tau = target_tau(step - offset, total_steps, config.tau_base, config.tau_schedule)
            loss, projections = run_step(batch, lr, tau)
            step += 1
            window_steps += 1
            at_epoch_end = i == steps_per_epoch - 1
            stopping = world.any(stop.is_set())  # a stop asked of any process stops all at this step

            if step % config.log_every == 0 or at_epoch_end or stopping:
                elapsed = time.monotonic() - window_start
                speed = window_steps * global_batch / max(elapsed, 1e-9)
                row = {
                    "kind": metrics_file.STEP,
                    "step": step,
                    "epoch": round((step - offset) / steps_per_epoch, 4),
                    "loss": None,  # the loss over the global batch, filled in by the step log
                    "lr": lr,
                    "tau": tau,
                    "z_std": None,  # the projections' spread, filled in by the step log
                    "images_per_s": round(speed, 1),
                    "time": time.time(),
                }
                step_log.add(row, world.mean(loss.detach()), projection_spread(projections))
                window_start, window_steps = time.monotonic(), 0

            # A stop asked while logging (by an event callback) takes effect at this step too; `stopping`
            # is the same in every process, so they all skip or all join this agreement.
            stopping = stopping or world.any(stop.is_set())
            if plan.evaluates_at(step - offset):
                evaluate()
                save_last(i + 1)
                last_save = time.monotonic()
            elif stopping or time.monotonic() - last_save > config.checkpoint_minutes * 60:
                save_last(i + 1)
                last_save = time.monotonic()
            if stopping:
                return runs.STOPPED, f"Stopped at step {step:,} of {total_steps + offset:,}; resume to continue."
        epoch += 1
        start_in_epoch = 0
    step_log.flush()
    return runs.FINISHED, f"Finished {config.epochs} epoch{'s' if config.epochs != 1 else ''} ({total_steps + offset:,} steps)."


def _epoch_order(n: int, seed: int, epoch: int, rank: int = 0) -> torch.Tensor:
    """The shuffled image order of one epoch; a function of (seed, epoch, rank) only, so resume repeats it.

    Process `rank` of several shuffles its share with the rank-th permutation of the epoch's stream,
    so a single process (and the main one) keeps the order it always had.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    for _ in range(rank):
        torch.randperm(n, generator=generator)
    return torch.randperm(n, generator=generator)


def _augment_seed(seed: int, rank: int, step: int) -> int:
    """The augmentation seed of process `rank` starting at `step`: the run's seed for the main (or only)
    process; a stream of their own for the others, whose generators are not checkpointed."""
    return seed if rank == 0 else seed + 1_000_003 * rank + 7_919 * step


def _resume_batch(saved: dict[str, Any], batch_size: int, global_batch: int, steps_per_epoch: int) -> int:
    """The batch of its epoch a resume starts at, from the images the checkpoint had seen in it.

    Counting images makes a checkpoint independent of the number of processes: the same number
    continues exactly where it stopped, another one at its next whole batch (the few images of a
    partial batch are skipped). Checkpoints older than this count came from one process.
    """
    images = saved.get("images_in_epoch", saved["step_in_epoch"] * batch_size)
    return min(-(-images // global_batch), steps_per_epoch)


def _load_checked(config: TrainConfig, world_size: int) -> Dataset:
    """The run's data set, once its size is known to fit the config (ConfigError / DataError if not)."""
    data = load_for(config)
    check_against_data(config, len(data.train_labels), len(data.test_labels), world_size)
    return data


def _pixel_floor(data: Dataset, bank_idx: torch.Tensor, query_idx: torch.Tensor, config: TrainConfig) -> float:
    """kNN on raw pixels for this data set and bank/query choice, cached in the project's data cache."""
    key = f"{data.fingerprint}|bank={len(bank_idx)}|queries={len(query_idx)}|k={config.knn_k}|T={config.knn_temperature}"
    return pixel_knn_accuracy(
        data.train_images[bank_idx],
        data.train_labels[bank_idx],
        data.test_images[query_idx],
        data.test_labels[query_idx],
        len(data.classes),
        config.knn_k,
        config.knn_temperature,
        cache_file=default_cache_dir() / "pixel_knn.json",
        cache_key=key,
    )
