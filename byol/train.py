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
5. for each step: two augmented views, the BYOL loss, an optimiser step, the EMA target update;
   log every few steps, evaluate and snapshot every `eval_every` epochs, save last.pt at least
   every `checkpoint_minutes`;
6. end as finished, stopped (stop flag), or failed (NaN loss or any exception, message kept).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import runs
from .augment import byol_views
from .checkpoint import full_state, load_checkpoint, restore_augment_rng, restore_networks, save_checkpoint, snapshot_state
from .config import TrainConfig, check_against_data, validate
from .data import Dataset, default_cache_dir, load_dataset
from .device import device_key, resolve_device, use_bf16
from .knn import autocast_context, effective_rank, eval_indices, extract_features, knn_accuracy, pixel_knn_accuracy
from .lock import DeviceLock
from .model import BYOLNetworks, normalized_std, update_target
from .optim import build_optimizer, set_learning_rate
from .schedules import learning_rate, target_tau

EventCallback = Callable[[dict[str, Any]], None]
SUBSET_SEED = 4321  # fixed, so runs that train on a subset of the same size see the same images


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


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


def train(
    config: TrainConfig,
    run_dir: Path,
    stop: threading.Event | None = None,
    on_event: EventCallback | None = None,
) -> str:
    """Train or resume the run in `run_dir`; returns its final state (finished, stopped or failed).

    Raises ConfigError for a bad config and DeviceBusy when another run holds the device; in both
    cases nothing in the run directory has changed. Every other problem ends as status `failed`.
    """
    run_dir = Path(run_dir)
    stop = stop or threading.Event()
    emit = on_event or (lambda event: None)
    validate(config)
    device = resolve_device(config.device)
    bf16 = use_bf16(config.precision, device)
    lock = DeviceLock(run_dir.parent, device_key(device), run_dir.name).acquire()
    status = StatusWriter(run_dir)
    try:
        status.set(runs.RUNNING, "Loading data...", started=time.time(), device=str(device), bf16=bf16, world_size=1)
        status.start()
        emit({"kind": "status", "state": runs.RUNNING, "message": "Loading data..."})
        state, message = _train(config, run_dir, stop, emit, status, device, bf16)
    except TrainingDiverged as error:
        state, message = runs.FAILED, str(error)
    except Exception as error:  # any failure ends as a readable status, never a silent death
        state, message = runs.FAILED, plain_error(error)
    finally:
        status.stop()
    try:
        status.set(state, message, finished=time.time())
    finally:
        lock.release()
    emit({"kind": "status", "state": state, "message": message})
    return state


def plain_error(error: BaseException) -> str:
    """A one-paragraph explanation of an exception for the status file and the dashboard."""
    if isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower():
        return (
            "The device ran out of memory. Lower the batch size (or the backbone width) and resume the run."
        )
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    # Our own errors (config, data, checkpoint) already speak plainly.
    if isinstance(error, ValueError) and text:
        return text
    return f"Training stopped with an unexpected error: {type(error).__name__}: {text}" if text else (
        f"Training stopped with an unexpected error: {type(error).__name__}."
    )


def _train(
    config: TrainConfig,
    run_dir: Path,
    stop: threading.Event,
    emit: EventCallback,
    status: StatusWriter,
    device: torch.device,
    bf16: bool,
) -> tuple[str, str]:
    # Weights are drawn from the global generator right after seeding it; augmentation draws come
    # from the run's own generator, so other threads of the app drawing random numbers (a time
    # estimate, another page) cannot shift this run's stream, and a resume repeats it exactly.
    torch.manual_seed(config.seed)
    augment_rng = torch.Generator(device=device).manual_seed(config.seed)

    # --- data, resident on the training device as uint8 ---------------------------------------
    data = load_dataset(config.data, config.data_root or None, image_size=config.image_size)
    check_against_data(config, len(data.train_labels), len(data.test_labels))
    train_idx = eval_indices(len(data.train_labels), config.subset, seed=SUBSET_SEED)
    train_images = data.train_images[train_idx].to(device)
    bank_idx = eval_indices(len(data.train_labels), config.eval_bank_size)
    query_idx = eval_indices(len(data.test_labels), config.eval_query_size)
    bank_images, bank_labels = data.train_images[bank_idx].to(device), data.train_labels[bank_idx]
    query_images, query_labels = data.test_images[query_idx].to(device), data.test_labels[query_idx]

    # --- networks, optimiser, schedules ----------------------------------------------------------
    networks = BYOLNetworks.from_config(config).to(device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    networks = networks.to(memory_format=memory_format)
    optimizer = build_optimizer(config, networks.trainable_parameters())
    loss_fn = torch.compile(networks.forward_loss) if config.compile else networks.forward_loss
    steps_per_epoch = len(train_idx) // config.batch_size  # the last partial batch is dropped
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    eval_interval = max(1, round(config.eval_every * steps_per_epoch))

    step, epoch, start_in_epoch = 0, 0, 0
    last_path = run_dir / "last.pt"
    if last_path.exists():
        saved = load_checkpoint(last_path)
        restore_networks(networks, saved)
        optimizer.load_state_dict(saved["optimizer"])
        restore_augment_rng(augment_rng, saved)
        step, epoch, start_in_epoch = saved["step"], saved["epoch"], saved["step_in_epoch"]
    runs.truncate_metrics(run_dir, step if last_path.exists() else -1)

    def save_last(step_in_epoch: int) -> None:
        save_checkpoint(last_path, full_state(networks, optimizer, config, step, epoch, step_in_epoch, augment_rng))

    def evaluate() -> dict[str, Any]:
        started = time.perf_counter()
        bank = extract_features(networks.backbone, bank_images, use_bf16=bf16, channels_last=config.channels_last)
        queries = extract_features(networks.backbone, query_images, use_bf16=bf16, channels_last=config.channels_last)
        knn = knn_accuracy(bank, bank_labels, queries, query_labels, len(data.classes), config.knn_k, config.knn_temperature)
        row = {
            "kind": "eval", "step": step, "epoch": round(step / steps_per_epoch, 4), "knn": knn,
            "effective_rank": effective_rank(bank), "feature_dim": bank.shape[1],
            "pixel_knn": pixel_floor, "bank_size": len(bank_idx), "query_size": len(query_idx),
            "k": config.knn_k, "eval_seconds": round(time.perf_counter() - started, 2), "time": time.time(),
        }
        runs.append_metrics(run_dir, [row])
        save_checkpoint(run_dir / f"step-{step:08d}.pt", snapshot_state(networks.backbone, config, step, row["epoch"], knn))
        emit(row)
        return row

    pixel_floor = _pixel_floor(data, bank_idx, query_idx, config)
    status.progress.update(step=step, total_steps=total_steps, epoch=step / max(steps_per_epoch, 1), epochs=config.epochs)
    if step == 0:
        status.set(runs.RUNNING, "Measuring the random-init baseline...")
        evaluate()
    status.set(runs.RUNNING, "Training.")

    # --- the loop ------------------------------------------------------------------------------
    networks.train()
    last_save = window_start = time.monotonic()
    window_steps = 0
    while epoch < config.epochs:
        order = _epoch_order(len(train_idx), config.seed, epoch).to(device)
        for i in range(start_in_epoch, steps_per_epoch):
            batch = train_images[order[i * config.batch_size : (i + 1) * config.batch_size]]
            lr = learning_rate(step, total_steps, config.effective_lr, warmup_steps)
            tau = target_tau(step, total_steps, config.tau_base, config.tau_schedule)
            set_learning_rate(optimizer, lr)

            loss, projections = training_step(networks, optimizer, batch, tau, augment_rng, bf16, memory_format, loss_fn)
            step += 1
            window_steps += 1
            at_epoch_end = i == steps_per_epoch - 1

            # Reading the loss synchronises with the device, so it happens only when logging.
            if step % config.log_every == 0 or at_epoch_end or stop.is_set():
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"The loss became {loss_value} at step {step:,}, so training was stopped. "
                        "Lower the learning rate (or use fp32 precision) and start a new run."
                    )
                elapsed = time.monotonic() - window_start
                speed = window_steps * config.batch_size / max(elapsed, 1e-9)
                row = {
                    "kind": "step", "step": step, "epoch": round(step / steps_per_epoch, 4), "loss": loss_value,
                    "lr": lr, "tau": tau, "z_std": normalized_std(projections), "images_per_s": round(speed, 1),
                    "time": time.time(),
                }
                runs.append_metrics(run_dir, [row])
                eta = (total_steps - step) * config.batch_size / max(speed, 1e-9)
                status.progress.update(step=step, epoch=row["epoch"], images_per_s=row["images_per_s"], eta_seconds=round(eta))
                emit({**row, "total_steps": total_steps})
                window_start, window_steps = time.monotonic(), 0

            if step % eval_interval == 0 or step == total_steps:
                evaluate()
                save_last(i + 1)
                last_save = time.monotonic()
            elif stop.is_set() or time.monotonic() - last_save > config.checkpoint_minutes * 60:
                save_last(i + 1)
                last_save = time.monotonic()
            if stop.is_set():
                return runs.STOPPED, f"Stopped at step {step:,} of {total_steps:,}; resume to continue."
        epoch += 1
        start_in_epoch = 0
    return runs.FINISHED, f"Finished {config.epochs} epoch{'s' if config.epochs != 1 else ''} ({total_steps:,} steps)."


def training_step(
    networks: BYOLNetworks,
    optimizer: torch.optim.Optimizer,
    batch: torch.Tensor,
    tau: float,
    augment_rng: torch.Generator,
    bf16: bool,
    memory_format: torch.memory_format = torch.contiguous_format,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One BYOL step on a uint8 batch: two views, the loss, an optimiser step, the target's EMA update.

    Returns the loss and the online projections, still on the device (reading them synchronises).
    """
    view1, view2 = byol_views(batch, generator=augment_rng)
    view1 = view1.contiguous(memory_format=memory_format)
    view2 = view2.contiguous(memory_format=memory_format)
    with autocast_context(batch.device, bf16):
        loss, projections = (loss_fn or networks.forward_loss)(view1, view2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    update_target(networks.online_modules(), networks.target_modules(), tau)
    return loss, projections


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled image order of one epoch; a function of (seed, epoch) only, so resume repeats it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def _pixel_floor(data: Dataset, bank_idx: torch.Tensor, query_idx: torch.Tensor, config: TrainConfig) -> float:
    """kNN on raw pixels for this data set and bank/query choice, cached in the project's data cache."""
    key = f"{data.fingerprint}|bank={len(bank_idx)}|queries={len(query_idx)}|k={config.knn_k}|T={config.knn_temperature}"
    return pixel_knn_accuracy(
        data.train_images[bank_idx], data.train_labels[bank_idx],
        data.test_images[query_idx], data.test_labels[query_idx],
        len(data.classes), config.knn_k, config.knn_temperature,
        cache_file=default_cache_dir() / "pixel_knn.json", cache_key=key,
    )
