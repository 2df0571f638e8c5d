"""The in-memory data set every source produces, and the error for data that cannot be used.

Kept apart from data.py (which finds and loads the sources) so that a source module such as
synthetic.py can build a `Dataset` without importing the loaders that import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from byol.errors import UserError

SPLITS = ("train", "test")


class DataError(UserError):
    """Bad or missing data, with a plain-language message meant for the user (no traceback needed)."""


@dataclass
class Dataset:
    """A whole data set in memory: both splits as uint8 image tensors with int64 labels."""

    name: str  # "cifar10", "synthetic", or "folder:<basename>"
    classes: list[str]
    train_images: torch.Tensor  # uint8 [N, 3, H, W], CPU, contiguous
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor  # uint8 [M, 3, H, W]
    test_labels: torch.Tensor  # int64 [M]
    fingerprint: str  # short stable string identifying the exact content source (a cache key elsewhere)
    skipped_files: int = 0  # image files that could not be read and were left out

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The images and labels of the split `name` ("train" or "test")."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
