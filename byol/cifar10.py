"""CIFAR-10 itself: its class names, torchvision's download, and the local copies a run can fall back on.

A run names "cifar10"; torchvision downloads it once into the project cache. Machines without
internet keep a copy as an image-folder archive instead (the real one of this team lies at
../shared/data/cifar10-jpg.tar.gz), and a run naming "cifar10" can be pointed at such a copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from byol.config import CIFAR10_KIND, IMAGE_FOLDER_WORDS, TrainConfig, source_kind
from byol.dataset import DataError, Dataset
from byol.images import resize_batch

CLASS_NAMES_CIFAR10: list[str] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


SIZES = (50_000, 10_000)  # (train, test) images


def is_named(source: str) -> bool:
    """Whether a data source names CIFAR-10 itself (torchvision's download), not a folder or archive."""
    return source_kind(source) == CIFAR10_KIND


def local_copies() -> list[Path]:
    """The documented places of a local CIFAR-10 copy (an ImageFolder tree or an archive of one).

    $BYOL_CIFAR10_COPY when set, else `data/cifar10-jpg.tar.gz` in the project (git-ignored) and
    `../shared/data/cifar10-jpg.tar.gz` beside it, where this team's machines keep the real copy.
    """
    named = os.environ.get("BYOL_CIFAR10_COPY")
    if named is not None:
        return [Path(named).expanduser()] if named else []
    project = Path(__file__).resolve().parent.parent
    return [project / "data" / "cifar10-jpg.tar.gz", project.parent / "shared" / "data" / "cifar10-jpg.tar.gz"]


def local_copy() -> Path | None:
    """The first of `local_copies()` that exists, or None."""
    return next((path for path in local_copies() if path.exists()), None)


def with_local_copy(config: TrainConfig) -> TrainConfig | None:
    """`config` pointed at a local CIFAR-10 copy, for a run that names "cifar10"; None when it names
    something else or no copy lies at a documented place.

    A shipped demo run names "cifar10", which torchvision cannot download without internet; with
    the copy at hand the pages open on the demo without asking where its images are.
    """
    if not is_named(config.data):
        return None
    copy = local_copy()
    return config.replace(data=str(copy), data_root="") if copy else None


def load(root: str | None, cache_dir: Path, image_size: int) -> Dataset:
    """CIFAR-10 through torchvision, downloaded into `root` (default: the project cache) once."""
    from torchvision import datasets  # imported here: it is slow to import and only this source needs it

    folder = Path(root).expanduser() if root else cache_dir / "data" / "cifar10"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        train = datasets.CIFAR10(str(folder), train=True, download=True)
        test = datasets.CIFAR10(str(folder), train=False, download=True)
    except Exception as exc:  # URLError, OSError, RuntimeError (checksum)...: all mean "not available"
        # URLError is an OSError: no connection, no name lookup, a refused or timed-out download.
        if isinstance(exc, OSError):
            reason = "this computer could not reach its download site (no internet connection?)"
        else:
            reason = "the download failed"
        raise DataError(
            f"CIFAR-10 could not be downloaded: {reason}. "
            f"To use a local copy, give as the data source {IMAGE_FOLDER_WORDS} "
            f"(for example ../shared/data/cifar10-jpg.tar.gz). The error, for whoever looks into it: "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    def to_tensor(data: np.ndarray) -> torch.Tensor:
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return images if image_size == 32 else resize_batch(images, image_size)

    return Dataset(
        name="cifar10",
        classes=list(CLASS_NAMES_CIFAR10),
        train_images=to_tensor(train.data),
        train_labels=torch.as_tensor(train.targets, dtype=torch.int64),
        test_images=to_tensor(test.data),
        test_labels=torch.as_tensor(test.targets, dtype=torch.int64),
        fingerprint=f"cifar10-{image_size}",
    )
