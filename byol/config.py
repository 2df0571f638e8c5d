"""Training configuration: one dataclass holding every knob, named presets, and validation.

A `TrainConfig` is passed whole to `train()`, saved as `config.json` in the run directory and inside
every checkpoint, and rebuilt from there on resume (the nanoGPT habit). `validate()` turns every bad
value into one plain sentence that names the field and the allowed range, so nothing starts on a
bad config and the dashboard can show the sentence as it is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError


class ConfigError(UserError):
    """A bad configuration value; the message is a plain sentence meant for the user."""


# The field's kNN monitor (InstDisc, MoCo's CIFAR demo, lightly, solo-learn): the 200 most similar training
# images vote, each weighted by exp(cosine / 0.1). Every kNN figure here uses these unless a run says otherwise.
KNN_K = 200
KNN_TEMPERATURE = 0.1


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------------
    data: str = "cifar10"  # "cifar10", "synthetic", or a path to an image folder / archive of one
    data_root: str = ""  # where torchvision keeps CIFAR-10 ("" = the project's data cache)
    subset: int = 0  # train on only this many training images (0 = all of them)
    image_size: int = 32
    # --- model ------------------------------------------------------------------------------
    width: int = 64  # channels of ResNet-18's first stage (64 = the standard network)
    projector_hidden: int = 4096
    projector_dim: int = 256
    predictor_hidden: int = 4096
    head_bn: bool = True  # batch norm in projector and predictor; off = the collapse experiment
    # --- augmentation -----------------------------------------------------------------------
    crop_min_scale: float = 0.08  # smallest area share of the random resized crop (BYOL, solo-learn: 0.08)
    # The colour jitter's ranges as a multiple of BYOL's (brightness and contrast ±0.4, saturation ±0.2,
    # hue ±0.1): SimCLR's colour strength. 0 = no colour change (grayscale and solarize stay).
    jitter_strength: float = 1.0
    # Side of the training views as a share of image_size (0.75: 24-pixel views of 32-pixel images).
    # Smaller views step faster (the backbone's work grows with the pixel count); kNN, maps and search
    # still embed whole images at image_size.
    view_resolution: float = 1.0
    # --- optimisation -----------------------------------------------------------------------
    optimizer: str = "lars"  # lars | sgd | adamw | adam
    lr: float = 1.0  # peak learning rate for a batch of 256; scaled linearly with batch size
    weight_decay: float = 1e-5
    momentum: float = 0.9  # for sgd and lars
    # The predictor's learning rate as a multiple of the rest's. BYOL's appendix (its table 21) finds that
    # a predictor which learns faster than the networks it predicts can keep up with a fast-moving target.
    predictor_lr_scale: float = 1.0
    warmup_epochs: float = 10.0
    # Share of the steps after the warm-up that the cosine decay takes; the learning rate holds its peak
    # before it (1 = the plain cosine of BYOL and solo-learn).
    lr_decay_share: float = 1.0
    epochs: int = 100
    batch_size: int = 256  # per process: under torchrun the global batch is this × the number of processes
    tau_base: float = 0.99  # target network EMA rate at the start
    tau_schedule: str = "cosine"  # cosine (tau_base -> 1) | fixed
    # --- monitoring -------------------------------------------------------------------------
    eval_every: float = 5.0  # epochs between kNN evaluations (fractions allowed for short runs)
    eval_bank_size: int = 0  # kNN bank: this many training images (0 = all)
    eval_query_size: int = 0  # kNN queries: this many test images (0 = all)
    knn_k: int = KNN_K
    knn_temperature: float = KNN_TEMPERATURE
    log_every: int = 10  # steps between logged loss rows
    checkpoint_minutes: float = 10.0  # also save last.pt at least this often (bounds work lost on a crash)
    # --- machine ----------------------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 where the hardware has it) | fp32 | bf16
    channels_last: bool = True
    compile: bool = False  # torch.compile the networks (GPU only pays off on long runs)
    # CUDA-only speed-ups: fused optimiser kernels, cuDNN autotuning, TF32 matrix products in the
    # heads, a step log that reads the loss one window late (byol/step_log.py). Off until measured on a GPU (no GPU has run them yet); ignored on a CPU.
    cuda_fast: bool = False
    # Capture the whole step (augmentation, forward, backward, optimiser, EMA) in a CUDA graph and
    # replay it: one launch instead of ~1,000 (byol/graph_step.py). CUDA and one process only; never
    # yet run on a GPU, so off. Ignored on a CPU; under torchrun the step runs eagerly, its optimiser
    # still built fused (and, for Adam/AdamW, capturable) by build_optimizer.
    cuda_graph: bool = False
    # --- bookkeeping ------------------------------------------------------------------------
    preset: str = ""  # name of the preset this config started from, for display only
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Rebuild a config from a saved dict, ignoring keys this version no longer knows."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def effective_lr(self) -> float:
        """Peak learning rate after the linear batch-size rule (lr is quoted for a batch of 256)."""
        return self.lr * self.batch_size / 256

    @property
    def training_view_size(self) -> int:
        """Side in pixels of the augmented views the networks train on: `view_resolution` × `image_size`."""
        return round(self.image_size * self.view_resolution)

    def peak_lr(self, world_size: int = 1) -> float:
        """The peak learning rate for the global batch: `batch_size` per process × `world_size` processes."""
        return self.effective_lr * world_size


# --- presets ---------------------------------------------------------------------------------
# gpu: solo-learn's BYOL CIFAR recipe (LARS, lr 1.0 per 256, wd 1e-5, 10 warm-up epochs, heads
#      4096/256, tau 0.99 -> 1 on a cosine), cut to 100 epochs.
# cpu: measured on a 2-core CPU to learn visibly in about 15 minutes (see README): a width-16 ResNet-18
#      in bf16 trained on 24-pixel views, SGD lr 0.12 with weight decay 5e-4, 10 epochs of all 50k
#      images, a fixed tau of 0.97, kNN on a fixed 5k bank / 1k queries.
PRESETS: dict[str, TrainConfig] = {
    "gpu": TrainConfig(preset="gpu"),
    "cpu": TrainConfig(
        preset="cpu",
        width=16,
        # Plain SGD with momentum, lightly's CIFAR settings (lr 0.12 per 256, weight decay 5e-4): 50.4% kNN on a
        # complete schedule (seed 0) against AdamW's 44.1% (lr 4e-3, weight decay 0.05), ahead from epoch 1.
        # Without batch norm in the heads it stays collapsed (32.6%, under raw pixels; seeds 1 and 2: 34.1% and
        # 33.0%, their spread back over the line only from epoch 6) where AdamW climbs back out (42.3%), so the
        # Compare page's experiment shows the collapse in kNN too. Half and twice the
        # rate reached 44.6% and 47.5% (lr 0.06 and 0.24, the same seed).
        optimizer="sgd",
        lr=0.12,
        weight_decay=5e-4,
        # The other choices below were measured with AdamW (lr 4e-3, weight decay 0.05) and kept with SGD.
        # Smaller than the field's 4096/256: those learn faster per epoch (+4.0 kNN points after 4 epochs) but
        # step 7% slower, and in the preset's 15 minutes reached 38.1% against these heads' 38.4%.
        projector_hidden=1024,
        projector_dim=128,
        predictor_hidden=1024,
        # A 2-epoch warm-up, the peak rate held for 70% of the schedule and a fixed tau (below), together with
        # AdamW's decay: 41.4 / 41.8 / 43.6 / 44.5% kNN (seeds 0-3) against the field's
        # 0.5-epoch warm-up, plain cosine and tau climbing to 1: 34.1 / 36.4 / 37.0 / 33.0%.
        warmup_epochs=2.0,
        lr_decay_share=0.3,
        # 24-pixel views step 1.6x faster than 32: 10 epochs of them reached 40.0 / 37.5 / 38.4% kNN (seeds
        # 0 / 1 / 2) against 8 epochs of 32-pixel views' 38.3 / 36.0 / 40.1%: as good within seed noise, in
        # a fifth less time. Smaller views learn too little per image (20 px: 34.8% after a time-matched 12
        # epochs); whole images still embed best.
        view_resolution=0.75,
        # Twice the schedule (20 epochs, twice the time) reached 44.0 / 43.6% kNN (seeds 0 / 1) against 10 epochs'
        # 41.4 / 41.8%: +2.2 points for double the minutes, still short of 45%.
        epochs=10,
        # 128 learns more per epoch (+3.6 kNN points on a complete 4-epoch schedule) at 2.5% fewer images/s
        # side by side, yet in 15 minutes it reached 37.6% against 256's 38.4% (timed one after the other).
        batch_size=256,
        tau_base=0.97,  # a faster-moving target than the field's 0.99: measured +5 kNN points after 2 epochs
        tau_schedule="fixed",  # the field's climb to 1 all but stops the target in a short run's last epochs
        # A predictor that learns 3x faster keeps up with that fast target: 44.1 / 46.0% kNN (seeds 0 / 1) against
        # 41.4 / 41.8% at 1x. 10x learned faster still (47.1%, seed 0) but kept the no-BN pair from collapsing.
        predictor_lr_scale=3.0,
        eval_every=1.0,
        eval_bank_size=5000,
        eval_query_size=1000,
        log_every=5,
        checkpoint_minutes=2.0,
    ),
}
PRESETS["no-bn"] = PRESETS["gpu"].replace(head_bn=False, preset="no-bn")
PRESETS["cpu-no-bn"] = PRESETS["cpu"].replace(head_bn=False, preset="cpu-no-bn")

PRESET_HELP: dict[str, str] = {
    "gpu": f"Full ResNet-18, {PRESETS['gpu'].epochs} epochs, the field's CIFAR-10 recipe. Needs a GPU (hours on a CPU).",
    "cpu": "Narrow ResNet-18 sized to learn visibly in about 15 minutes on a laptop CPU.",
    "no-bn": "The gpu preset with batch norm removed from the heads: watch it collapse.",
    "cpu-no-bn": "The cpu preset with batch norm removed from the heads: watch it collapse.",
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A copy of the named preset with some fields changed."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset '{name}'. Choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name].replace(**overrides)


def with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    """The same recipe over `epochs`. A schedule shorter than the recipe's keeps its warm-up as the same
    share of the schedule (the `cpu` preset's 2 of 10 epochs is 0.2 of 1), so it still fits; a longer one
    keeps the warm-up's length. Where only the epochs can be chosen, a short run stays valid."""
    if not isinstance(epochs, (int, float)) or epochs <= 0 or epochs >= config.epochs:
        return config.replace(epochs=epochs)
    return config.replace(epochs=epochs, warmup_epochs=round(config.warmup_epochs * epochs / config.epochs, 4))


# --- validation ------------------------------------------------------------------------------
OPTIMIZERS = ("lars", "sgd", "adamw", "adam")
CIFAR10_SOURCES = ("cifar10", "cifar-10")  # names of torchvision's CIFAR-10 download (cifar10.py)
SYNTHETIC_SOURCE = "synthetic"  # generated pictures, no files (synthetic.py)
# What a data source names (`source_kind`): CIFAR-10, generated pictures, or a path to an image folder.
CIFAR10_KIND, SYNTHETIC_KIND, PATH_KIND = "cifar10", "synthetic", "path"
ARCHIVE_EXTENSIONS: tuple[str, ...] = (".tar.gz", ".tgz", ".tar", ".zip")  # an image folder packed whole (data.py)
# What a path must hold, in the words every message and help text uses.
IMAGE_FOLDER_WORDS = (
    "a folder with train/<class>/ and test/<class>/ images, or a "
    f"{', '.join(ARCHIVE_EXTENSIONS[:-1])} or {ARCHIVE_EXTENSIONS[-1]} archive of one"
)
TAU_SCHEDULES = ("cosine", "fixed")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N for one GPU of several

# field -> (low, high, kind); bounds are inclusive, kind is int or float.
_NUMERIC_RANGES: dict[str, tuple[float, float, type]] = {
    "subset": (0, 10_000_000, int),
    "image_size": (16, 256, int),
    "width": (4, 256, int),
    "projector_hidden": (8, 16384, int),
    "projector_dim": (2, 8192, int),
    "predictor_hidden": (8, 16384, int),
    "lr": (1e-7, 100.0, float),
    "weight_decay": (0.0, 1.0, float),
    "momentum": (0.0, 0.999, float),
    "predictor_lr_scale": (0.01, 100.0, float),
    "warmup_epochs": (0.0, 10_000.0, float),
    "lr_decay_share": (0.01, 1.0, float),
    "epochs": (1, 10_000, int),
    "batch_size": (2, 65_536, int),
    "tau_base": (0.0, 1.0, float),
    "crop_min_scale": (0.01, 1.0, float),
    "jitter_strength": (0.0, 2.0, float),
    "view_resolution": (0.1, 1.0, float),
    "eval_every": (0.01, 10_000.0, float),
    "eval_bank_size": (0, 10_000_000, int),
    "eval_query_size": (0, 10_000_000, int),
    "knn_k": (1, 10_000, int),
    "knn_temperature": (1e-4, 100.0, float),
    "log_every": (1, 1_000_000, int),
    "checkpoint_minutes": (0.05, 10_000.0, float),
    "seed": (0, 2**31 - 1, int),
}

# Each field's name in words: the Train page's labels and every validation message use these.
FIELD_WORDS: dict[str, str] = {
    "data": "Data source",
    "data_root": "CIFAR-10 download folder",
    "preset": "Preset",
    "notes": "Notes",
    "subset": "Training subset",
    "image_size": "Image size",
    "width": "Backbone width",
    "projector_hidden": "Projector hidden size",
    "projector_dim": "Projector output size",
    "predictor_hidden": "Predictor hidden size",
    "lr": "Learning rate",
    "weight_decay": "Weight decay",
    "momentum": "Momentum",
    "predictor_lr_scale": "Predictor learning-rate multiple",
    "warmup_epochs": "Warm-up epochs",
    "lr_decay_share": "Learning-rate decay share",
    "epochs": "Epochs",
    "batch_size": "Batch size",
    "tau_base": "Target EMA rate τ at the start",
    "tau_schedule": "τ schedule",
    "optimizer": "Optimizer",
    "precision": "Precision",
    "device": "Device",
    "head_bn": "Batch norm in the heads",
    "channels_last": "Channels-last memory layout",
    "compile": "Compiling the networks",
    "cuda_fast": "CUDA speed-ups",
    "cuda_graph": "CUDA graph of the step",
    "crop_min_scale": "Smallest crop share",
    "jitter_strength": "Colour jitter strength",
    "view_resolution": "Training view resolution",
    "eval_every": "Epochs between kNN measurements",
    "eval_bank_size": "kNN bank size",
    "eval_query_size": "kNN test images",
    "knn_k": "kNN neighbours",
    "knn_temperature": "kNN temperature",
    "log_every": "Logging interval",
    "checkpoint_minutes": "Checkpoint interval",
    "seed": "Seed",
}


def _check_number(name: str, value: Any) -> str | None:
    low, high, kind = _NUMERIC_RANGES[name]
    label = f"{FIELD_WORDS[name]} ({name})"
    # Whole-number bounds in full ("0 to 2147483647", not "0 to 2.14748e+09"); others as short floats.
    span = f"{low:d} to {high:d}" if kind is int else f"{low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{label} must be a number from {span}; got {value!r}."
    if isinstance(value, float) and not math.isfinite(value):
        return f"{label} must be a finite number from {span}; got {value}."
    if kind is int and int(value) != value:
        return f"{label} must be a whole number from {span}; got {value}."
    if not low <= value <= high:
        return f"{label} must be from {span}; got {value:g}."
    return None


def source_kind(source: str) -> str:
    """What a data source names: CIFAR10_KIND, SYNTHETIC_KIND or PATH_KIND (a folder or archive).

    The names win over a folder of the same name; "./synthetic" still reaches such a folder."""
    key = source.strip().lower()
    if key in CIFAR10_SOURCES:
        return CIFAR10_KIND
    return SYNTHETIC_KIND if key == SYNTHETIC_SOURCE else PATH_KIND


def config_errors(config: TrainConfig) -> list[str]:
    """Every problem with `config`, each as one plain sentence (empty list = valid)."""
    errors = [e for name in _NUMERIC_RANGES if (e := _check_number(name, getattr(config, name)))]
    if not isinstance(config.data, str) or not config.data.strip():
        errors.append(f"{FIELD_WORDS['data']} (data) must be 'cifar10', 'synthetic' or a path to an image folder.")
    elif source_kind(config.data) == PATH_KIND and not Path(config.data).expanduser().exists():
        errors.append(
            f"{FIELD_WORDS['data']} (data): there is no folder or archive at {config.data}. Give 'cifar10', 'synthetic', "
            f"or the path of {IMAGE_FOLDER_WORDS}."
        )
    if config.optimizer not in OPTIMIZERS:
        errors.append(f"{FIELD_WORDS['optimizer']} (optimizer) must be one of {', '.join(OPTIMIZERS)}; got {config.optimizer!r}.")
    if config.tau_schedule not in TAU_SCHEDULES:
        errors.append(
            f"{FIELD_WORDS['tau_schedule']} (tau_schedule) must be one of {', '.join(TAU_SCHEDULES)}; got {config.tau_schedule!r}."
        )
    if config.precision not in PRECISIONS:
        errors.append(f"{FIELD_WORDS['precision']} (precision) must be one of {', '.join(PRECISIONS)}; got {config.precision!r}.")
    for name in ("head_bn", "channels_last", "compile", "cuda_fast", "cuda_graph"):
        if not isinstance(getattr(config, name), bool):
            errors.append(f"{FIELD_WORDS[name]} ({name}) must be true or false; got {getattr(config, name)!r}.")
    device = config.device
    if not isinstance(device, str) or not (device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit())):
        errors.append(f"{FIELD_WORDS['device']} (device) must be auto, cpu, cuda or cuda:N; got {device!r}.")
    if config.cuda_graph is True and config.compile is True:
        errors.append(
            "CUDA graph of the step (cuda_graph) and compiling the networks (compile) cannot both be on: "
            "choose one of the two ways to cut the GPU's launch overhead."
        )
    if not errors and config.training_view_size < 8:
        errors.append(
            f"Training view resolution (view_resolution) must leave views of at least 8 pixels; "
            f"{config.view_resolution:g} × {config.image_size} pixels gives {config.training_view_size}."
        )
    if not errors and config.warmup_epochs > config.epochs:
        errors.append(
            f"Warm-up epochs (warmup_epochs) must be at most the number of epochs ({config.epochs}); "
            f"got {config.warmup_epochs:g}."
        )
    if not errors and config.knn_k > 0 and config.eval_bank_size and config.knn_k > config.eval_bank_size:
        errors.append(f"kNN k (knn_k) must be at most the kNN bank size ({config.eval_bank_size}); got {config.knn_k}.")
    return errors


def validate(config: TrainConfig) -> TrainConfig:
    """Return `config` unchanged, or raise ConfigError listing every problem in plain words."""
    errors = config_errors(config)
    if errors:
        raise ConfigError(" ".join(errors))
    return config


@dataclass(frozen=True)
class StepPlan:
    """How a run divides its data into steps: the arithmetic training, its time estimate and the checks share."""

    images: int  # training images the run draws from: its subset, or all of them
    images_per_process: int  # each process's equal share (a remainder is dropped)
    steps_per_epoch: int  # full batches of each process's share (the last partial batch is dropped)
    total_steps: int
    warmup_steps: int
    eval_interval: int  # steps between kNN evaluations
    bank: int  # training images in the kNN bank
    queries: int  # test images graded by the kNN

    def evaluates_at(self, step: int) -> bool:
        """Whether the kNN is measured after `step` (counted from the schedule's start): every
        `eval_interval` steps and after the last one. Step 0, the untrained network, is measured too."""
        return step % self.eval_interval == 0 or step == self.total_steps

    @property
    def evaluations(self) -> int:
        """How many kNN measurements a whole run makes: at step 0, then at each step `evaluates_at`."""
        return 1 + math.ceil(self.total_steps / self.eval_interval)


def step_plan(config: TrainConfig, train_size: int, test_size: int, world_size: int = 1) -> StepPlan:
    """The step plan of `config` on a data set of `train_size` / `test_size` images, over `world_size` processes."""
    images = min(config.subset, train_size) if config.subset > 0 else train_size
    per_process = images // world_size
    steps_per_epoch = per_process // config.batch_size
    return StepPlan(
        images=images,
        images_per_process=per_process,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.epochs,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        eval_interval=max(1, round(config.eval_every * steps_per_epoch)),
        bank=min(config.eval_bank_size or train_size, train_size),
        queries=min(config.eval_query_size or test_size, test_size),
    )


def check_against_data(config: TrainConfig, train_size: int, test_size: int, world_size: int = 1) -> None:
    """The checks that need the data set's size (raised once the data is loaded, before training).

    With several processes (torchrun) each takes its own batch of `batch_size`, so the data must
    hold `batch_size × world_size` images.
    """
    plan = step_plan(config, train_size, test_size, world_size)
    used = plan.images
    if world_size > 1 and config.batch_size * world_size > used:
        raise ConfigError(
            f"Batch size (batch_size) times the {world_size} processes must be at most the number of training "
            f"images ({used}); got {config.batch_size} × {world_size} = {config.batch_size * world_size}."
        )
    if config.batch_size > used:
        raise ConfigError(
            f"Batch size (batch_size) must be at most the number of training images ({used}); got {config.batch_size}."
        )
    if config.knn_k > plan.bank:
        raise ConfigError(f"kNN k (knn_k) must be at most the kNN bank size ({plan.bank}); got {config.knn_k}.")
    if test_size == 0:
        raise ConfigError("The data set has no test images, so kNN accuracy cannot be measured.")
