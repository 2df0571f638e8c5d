"""BYOL's two asymmetric views, built for a whole batch at once on the training device.

Per-image PIL transforms in a DataLoader starve a GPU at 32×32 and cost more than they should on a
CPU, so every step here is one tensor operation over the batch with a separate random draw per
image: random resized crop and flip as one affine grid sample, colour jitter as per-image scalars
and one 3×3 colour matrix, grayscale and solarize as per-image masks.

Settings follow BYOL and solo-learn at 32 px: crop scale 0.08-1, flip 0.5, jitter
0.4/0.4/0.2/0.1 with p 0.8, grayscale p 0.2, solarize p 0 (view 1) / 0.2 (view 2), no blur.
Differences from torchvision, on purpose: jitter is applied in a fixed order (brightness,
contrast, then saturation and hue together as one matrix in YIQ space, which is what torchvision's
saturation does exactly and a close approximation of its HSV hue shift); an oversized crop is
clamped to the image instead of re-drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# RGB -> YIQ; Y is exactly the luma torchvision uses for grayscale and saturation.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class ViewSettings:
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    solarize_p: float = 0.0


VIEW1 = ViewSettings(solarize_p=0.0)
VIEW2 = ViewSettings(solarize_p=0.2)


def _uniform(n: int, low: float, high: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def _coin(n: int, p: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def _luma(x: torch.Tensor) -> torch.Tensor:
    weights = _RGB_TO_YIQ[0].to(x.device, x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def random_resized_crop_flip(
    x: torch.Tensor, size: int, s: ViewSettings, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop a random area (scale × image, aspect in ratio), maybe flip, resize to size×size: one grid sample."""
    n, device = x.shape[0], x.device
    area = _uniform(n, *s.crop_scale, device, generator)
    log_ratio = _uniform(n, math.log(s.crop_ratio[0]), math.log(s.crop_ratio[1]), device, generator)
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fraction of the image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - w)  # keep the crop inside
    cy = (torch.rand(n, device=device, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(_coin(n, s.flip_p, device, generator), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, s: ViewSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with one random factor each per image, applied with p."""
    n, device = x.shape[0], x.device
    apply = _coin(n, s.jitter_p, device, generator).view(n, 1, 1, 1)
    brightness = _uniform(n, 1 - s.brightness, 1 + s.brightness, device, generator).view(n, 1, 1, 1)
    contrast = _uniform(n, 1 - s.contrast, 1 + s.contrast, device, generator).view(n, 1, 1, 1)
    saturation = _uniform(n, 1 - s.saturation, 1 + s.saturation, device, generator)
    hue = _uniform(n, -s.hue, s.hue, device, generator) * 2 * math.pi

    out = (x * brightness).clamp(0, 1)
    mean = _luma(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    # Saturation scales the chroma plane (I, Q) of YIQ and hue rotates it: one 3×3 matrix per image.
    cos, sin = torch.cos(hue) * saturation, torch.sin(hue) * saturation
    chroma = torch.zeros(n, 3, 3, device=device)
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1], chroma[:, 1, 2] = cos, -sin
    chroma[:, 2, 1], chroma[:, 2, 2] = sin, cos
    matrix = _YIQ_TO_RGB.to(device) @ chroma @ _RGB_TO_YIQ.to(device)
    out = torch.einsum("nij,njhw->nihw", matrix.to(out.dtype), out).clamp(0, 1)
    return torch.where(apply, out, x)


def random_grayscale(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    apply = _coin(x.shape[0], p, x.device, generator).view(-1, 1, 1, 1)
    return torch.where(apply, _luma(x).expand_as(x), x)


def random_solarize(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Invert the pixels at or above one half, for a random share p of the images."""
    apply = _coin(x.shape[0], p, x.device, generator).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1 - x, x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale [0, 1] pixels by CIFAR-10's channel mean and std (the network's input convention)."""
    mean = torch.tensor(CIFAR_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 in [0, 1]."""
    return images.float().div_(255)


def augment(images: torch.Tensor, s: ViewSettings, size: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One augmented, normalised view of a uint8 batch; every image gets its own random draw."""
    x = to_float(images)
    x = random_resized_crop_flip(x, size or images.shape[-1], s, generator)
    x = color_jitter(x, s, generator)
    x = random_grayscale(x, s.grayscale_p, generator)
    x = random_solarize(x, s.solarize_p, generator)
    return normalize(x)


def byol_views(
    images: torch.Tensor, size: int | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BYOL's two asymmetric views of a uint8 batch, on the batch's device."""
    return augment(images, VIEW1, size, generator), augment(images, VIEW2, size, generator)


def plain_view(images: torch.Tensor) -> torch.Tensor:
    """The un-augmented, normalised input used for evaluation and embeddings."""
    return normalize(to_float(images))
