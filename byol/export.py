"""Export a checkpoint's trained (online) backbone as a plain state dict, for use in other code.

The file holds only tensors, so `torch.load(path, weights_only=True)` reads it, in float32 even when
the snapshot was saved in half precision. `ResNet18Backbone` is built from torchvision's `BasicBlock`
with torchvision's own attribute names, so the keys need no renaming: a width-64 export loads
strictly into `torchvision.models.resnet18()` once its stem is the CIFAR one (`conv1` a 3×3 stride-1
convolution, `maxpool` and `fc` replaced by `Identity`). Other widths load into
`byol.model.resnet18_cifar(width)`, the width being the first dimension of `conv1.weight`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .checkpoint import checkpoint_choices, load_backbone
from .errors import UserError
from .files import write_atomic
from .runs import LAST_CHECKPOINT


class ExportError(UserError):
    """The backbone cannot be written where asked; the message says why."""


def backbone_state_dict(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's parameters and buffers as float32 CPU tensors (integer counters kept as they are)."""
    return {
        key: (tensor.detach().to("cpu", torch.float32) if tensor.is_floating_point() else tensor.detach().cpu()).clone()
        for key, tensor in backbone.state_dict().items()
    }


def _check_destination(run_dir: Path, out: Path) -> None:
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name, e.g. {out / 'backbone.pt'}.")
    if not out.parent.is_dir():
        raise ExportError(f"Cannot write {out}: the folder {out.parent} does not exist.")
    # Never overwrite one of the run's own checkpoints with a file the dashboard cannot read.
    own = {choice.path.resolve() for choice in checkpoint_choices(run_dir)} | {(Path(run_dir) / LAST_CHECKPOINT).resolve()}
    if out.resolve() in own:
        raise ExportError(f"--out {out} is one of the run's own checkpoints; write the export somewhere else.")


def export_backbone(run_dir: Path, checkpoint: Path, out: Path) -> dict[str, Any]:
    """Write `checkpoint`'s backbone to `out` atomically; returns what was written (step, width, tensors)."""
    run_dir, out = Path(run_dir), Path(out)
    _check_destination(run_dir, out)
    backbone, config, info = load_backbone(checkpoint)
    state = backbone_state_dict(backbone)
    try:
        write_atomic(out, lambda f: torch.save(state, f))
    except OSError as error:  # a read-only folder, a full disk
        raise ExportError(f"Cannot write {out}: {error.strerror or error}.") from None
    return {"step": info.get("step"), "width": config.width, "tensors": len(state), "path": out}
