"""lightly 1.6.0's BYOL recipe in one place, for the speed and the quality benchmarks.

It is lightly's example (examples/pytorch/byol.py) and its CIFAR-10 benchmark model: the backbone
followed by `BYOLProjectionHead` and `BYOLPredictionHead`, momentum copies of backbone and projector
updated with `update_momentum`, `NegativeCosineSimilarity` between each view's prediction and the
other view's momentum projection, and `BYOLTransform` on PIL images through a DataLoader, at 32 px
without blur. The backbone is the caller's (speed.py: torchvision's ResNet-18; quality.py: ours at
the same width), so only the recipe around it is lightly's.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn


class PILImages(torch.utils.data.Dataset):
    """uint8 tensors served as PIL images, as torchvision's CIFAR10 data set does."""

    def __init__(self, images: torch.Tensor, transform):
        self.arrays = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[index])), 0


class LightlyBYOL(nn.Module):
    """lightly's BYOL module around `backbone` (whose pooled output has `feature_dim` values)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 1024, out_dim: int = 256):
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(feature_dim, hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(start_dim=1)))

    def forward_momentum(self, x):
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(start_dim=1)).detach()


def lightly_transform(size: int = 32):
    """lightly's BYOLTransform (two asymmetric views) at `size` px, without blur (as for CIFAR-10)."""
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    return BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=size, gaussian_blur=0.0),
        view_2_transform=BYOLView2Transform(input_size=size, gaussian_blur=0.0),
    )


def lightly_loader(images: torch.Tensor, batch: int, workers: int, size: int = 32, seed: int | None = None):
    """A shuffling DataLoader of lightly's two views of uint8 `images` (last partial batch dropped)."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.utils.data.DataLoader(
        PILImages(images, lightly_transform(size)),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=generator,
    )


def lightly_step(
    model: LightlyBYOL, criterion, optimizer, x0: torch.Tensor, x1: torch.Tensor, m: float, autocast=None
) -> torch.Tensor:
    """One step of lightly's example: momentum update, symmetric loss, optimiser step. Returns the loss."""
    from lightly.models.utils import update_momentum

    update_momentum(model.backbone, model.backbone_momentum, m=m)
    update_momentum(model.projection_head, model.projection_head_momentum, m=m)
    with autocast if autocast is not None else contextlib.nullcontext():
        p0, z0 = model(x0), model.forward_momentum(x0)
        p1, z1 = model(x1), model.forward_momentum(x1)
        loss = 0.5 * (criterion(p0.float(), z1.float()) + criterion(p1.float(), z0.float()))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()
