"""Checkpoints: one explicit dict, written atomically, read back with `weights_only=True`.

Two kinds live in a run directory:
- `last.pt`, everything needed to resume: online and target networks, predictor, optimiser state,
  step, epoch, the augmentation RNG state and the config (a plain dict). Replaced atomically at every save.
- `step-NNNNNNNN.pt`, a snapshot at an evaluation point: only the online backbone in half
  precision plus the config and the kNN it scored, so the dashboard can compare a model over time
  without filling the disk.

Loading never unpickles code: `torch.load(..., weights_only=True)` accepts tensors and plain
containers only, and every failure becomes a `CheckpointError` with a sentence for the user.

Which checkpoints of a run can be looked at (`checkpoint_choices`), which one is looked at by
default (`default_choice`, shared by the dashboard and the command line) and which one a
command's `--checkpoint STEP` names (`pick_checkpoint`) are decided here too.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .errors import UserError
from .files import file_key, write_atomic
from .model import BYOLNetworks, ResNet18Backbone, resnet18_cifar
from .runs import LAST_CHECKPOINT, RANDOM_INIT_NAME, list_snapshots

FORMAT = "byol-studio/1"
FULL, BACKBONE = "full", "backbone"


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted or used; the message is meant for the user."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` via a temporary file and a rename, so a crash never leaves half a file."""
    write_atomic(Path(path), lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint safely, or raise CheckpointError saying in plain words what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"There is no checkpoint file at {path}.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"The checkpoint {path.name} is empty (0 bytes); it cannot be used.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # garbage, not a smuggled object
            raise CheckpointError(f"The checkpoint {path.name} is damaged or not a PyTorch checkpoint.") from None
        raise CheckpointError(
            f"The checkpoint {path.name} was refused: it holds Python objects other than weights, "
            "and loading them could run code. Only BYOL Studio checkpoints are accepted."
        ) from None
    except Exception as error:  # torch raises many kinds for damaged zip/pickle data
        raise CheckpointError(
            f"The checkpoint {path.name} is damaged or not a PyTorch checkpoint ({type(error).__name__})."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"The file {path.name} is not a BYOL Studio checkpoint.")
    return state


def restore_augment_rng(generator: torch.Generator, state: dict[str, Any]) -> None:
    """Put the run's augmentation generator back where the checkpoint left it."""
    generator.set_state(state["rng"]["augment"])


def _cpu_state_dict(module: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[key] = tensor.clone()
    return out


def full_state(
    networks: BYOLNetworks,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    step: int,
    epoch: int,
    step_in_epoch: int,
    augment_rng: torch.Generator,
    world_size: int = 1,
) -> dict[str, Any]:
    """Everything needed to resume exactly where training stands now.

    Nothing in it depends on how many processes trained: the networks are the plain modules (no
    DistributedDataParallel prefix) and the place in the epoch is also kept as images seen, which
    a resume on another number of processes turns into its own batches. `world_size` and the
    augmentation generator are those of the main process.
    """
    return {
        "format": FORMAT,
        "kind": FULL,
        "config": config.to_dict(),
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "images_in_epoch": step_in_epoch * config.batch_size * world_size,
        "world_size": world_size,
        "backbone": _cpu_state_dict(networks.backbone),
        "projector": _cpu_state_dict(networks.projector),
        "predictor": _cpu_state_dict(networks.predictor),
        "target_backbone": _cpu_state_dict(networks.target_backbone),
        "target_projector": _cpu_state_dict(networks.target_projector),
        "optimizer": optimizer.state_dict(),
        # The run's own augmentation generator, so a resumed run draws the same views (the data
        # order is a function of seed and epoch, and needs no state).
        "rng": {"augment": augment_rng.get_state()},
    }


def snapshot_state(backbone: torch.nn.Module, config: TrainConfig, step: int, epoch: float, knn: float | None) -> dict[str, Any]:
    """What evaluation needs: the online backbone in half precision, its config and score."""
    return {
        "format": FORMAT,
        "kind": BACKBONE,
        "config": config.to_dict(),
        "step": step,
        "epoch": epoch,
        "knn": knn,
        "backbone": _cpu_state_dict(backbone, torch.float16),
    }


def restore_networks(networks: BYOLNetworks, state: dict[str, Any]) -> None:
    """Load all five networks from a full checkpoint (raises CheckpointError on a shape mismatch)."""
    try:
        for name in ("backbone", "projector", "predictor", "target_backbone", "target_projector"):
            getattr(networks, name).load_state_dict(state[name])
    except (KeyError, RuntimeError) as error:
        raise CheckpointError(
            "This checkpoint's networks do not match its own settings (was it edited or made by "
            f"another program?): {str(error).splitlines()[0]}"
        ) from None


def load_backbone(path: Path) -> tuple[ResNet18Backbone, TrainConfig, dict[str, Any]]:
    """The online backbone (float32, eval mode) of a full checkpoint or a snapshot, its config and info."""
    state = load_checkpoint(path)
    try:
        config = TrainConfig.from_dict(state["config"])
        backbone = resnet18_cifar(config.width)
        weights = {k: v.float() if v.is_floating_point() else v for k, v in state["backbone"].items()}
        backbone.load_state_dict(weights)
    except (KeyError, TypeError, AttributeError, RuntimeError) as error:
        raise CheckpointError(
            f"The checkpoint {Path(path).name} does not hold a backbone that matches its settings ({type(error).__name__})."
        ) from None
    info = {k: state.get(k) for k in ("kind", "step", "epoch", "knn")}
    return backbone.eval(), config, info


# --- which checkpoints a run offers ---------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointChoice:
    path: Path
    step: int | None  # None when the file could not be read
    point: str  # where in training: "step 1,950 (epoch 10), kNN 41.0%"
    note: str = ""  # what else sets it apart: "random init (before any training)"

    @property
    def label(self) -> str:
        """What a person sees in a select box: the point in training, then the note."""
        return f"{self.point} · {self.note}" if self.note else self.point

    @property
    def random_init(self) -> bool:
        return self.path.name == RANDOM_INIT_NAME


def checkpoint_choices(run_dir: Path) -> list[CheckpointChoice]:
    """The run's evaluation-point checkpoints, oldest first, then last.pt when it is newer than all of them."""
    run_dir = Path(run_dir)
    choices = []
    for snapshot in list_snapshots(run_dir):
        note = "random init (before any training)" if snapshot.path.name == RANDOM_INIT_NAME else ""
        choices.append(CheckpointChoice(snapshot.path, snapshot.step, snapshot.label, note))
    last = run_dir / LAST_CHECKPOINT
    if last.is_file():
        step = checkpoint_step(last)
        newest = choices[-1].step if choices else None
        if newest is None or step is None or step > newest:
            where = f"step {step:,}" if step is not None else "unknown step"
            choices.append(CheckpointChoice(last, step, where, f"latest save ({LAST_CHECKPOINT})"))
    return choices


def default_choice(choices: list[CheckpointChoice]) -> CheckpointChoice:
    """Of a run's `checkpoint_choices` (at least one), the one looked at first: the newest."""
    return choices[-1]


def default_checkpoint(run_dir: Path) -> Path:
    """The checkpoint looked at first (`default_choice`); CheckpointError when the run has none yet."""
    choices = checkpoint_choices(run_dir)
    if not choices:
        raise CheckpointError(f"The run {Path(run_dir).name} has no checkpoint yet.")
    return default_choice(choices).path


def pick_checkpoint(run_dir: Path, which: str | None = None) -> Path:
    """The checkpoint the command line means by `--checkpoint`: a step number, a file, or (None) the default.

    A step picks among `checkpoint_choices`, so the command line offers what the dashboard's picker offers.
    """
    if which is None:
        return default_checkpoint(run_dir)
    choices = checkpoint_choices(run_dir)
    text = str(which).strip()
    if text.isdigit():
        for choice in choices:
            if choice.step == int(text):
                return choice.path
        steps = ", ".join(f"{c.step}" for c in choices if c.step is not None) or "none yet"
        raise CheckpointError(f"The run {Path(run_dir).name} has no checkpoint at step {int(text)}; its steps: {steps}.")
    if Path(text).is_file():
        return Path(text)
    raise CheckpointError(f"--checkpoint takes a step number or a checkpoint file; {text!r} is neither.")


def random_init_checkpoint(run_dir: Path) -> Path | None:
    """The run's untrained network (the step-0 snapshot), or None when the run has none."""
    path = Path(run_dir) / RANDOM_INIT_NAME
    return path if path.is_file() else None


_step_cache: dict[tuple, int | None] = {}


def checkpoint_step(path: Path) -> int | None:
    """The training step a checkpoint was saved at, read cheaply (tensors are memory-mapped, not loaded)."""
    try:
        key = file_key(path)
    except OSError:
        return None
    if key not in _step_cache:
        if len(_step_cache) > 1000:  # last.pt changes all through a long training: keep this bounded
            _step_cache.clear()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            _step_cache[key] = int(state["step"]) if isinstance(state, dict) and "step" in state else None
        except Exception:  # damaged or foreign file: the page shows the real error when it is used
            _step_cache[key] = None
    return _step_cache[key]
