"""BYOL's two asymmetric views, built for a whole batch at once on the training device.

Per-image PIL transforms in a DataLoader starve a GPU at 32×32 and cost more than they should on a
CPU, so every step here is one tensor operation over the batch with a separate random draw per
image: random resized crop and flip as one affine grid sample, colour jitter as per-image scalars
and one 3×3 colour matrix, grayscale and solarize as per-image masks.

Both views are built as one batch of 2N images whose settings are per-image columns, with all the
random numbers of the batch drawn in one call, and every constant (colour matrices, the settings
columns, the normalisation) is made once per device: a tensor built on the host and copied to a GPU
on every call would make each step wait for the previous one.

Settings follow BYOL and solo-learn at 32 px: crop scale 0.08-1, flip 0.5, jitter
0.4/0.4/0.2/0.1 with p 0.8, grayscale p 0.2, solarize p 0 (view 1) / 0.2 (view 2), no blur.
Differences from torchvision, on purpose: jitter is applied in a fixed order (brightness,
contrast, then saturation and hue together as one matrix in YIQ space, which is what torchvision's
saturation does exactly and a close approximation of its HSV hue shift); an oversized crop is
clamped to the image instead of re-drawn.
"""

from __future__ import annotations

import functools
import math
from dataclasses import astuple, dataclass, replace

import torch
import torch.nn.functional as F

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)

# RGB -> YIQ; Y is exactly the luma torchvision uses for grayscale and saturation.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
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


def byol_view_settings(
    crop_min_scale: float = VIEW1.crop_scale[0], jitter_strength: float = 1.0
) -> tuple[ViewSettings, ViewSettings]:
    """BYOL's two views, with the random resized crop's smallest area share set (the config's `crop_min_scale`)
    and the colour jitter's four ranges multiplied by `jitter_strength` (the config's; SimCLR's strength s)."""

    def adjusted(view: ViewSettings) -> ViewSettings:
        return replace(
            view,
            crop_scale=(crop_min_scale, 1.0),
            brightness=view.brightness * jitter_strength,
            contrast=view.contrast * jitter_strength,
            saturation=view.saturation * jitter_strength,
            hue=view.hue * jitter_strength,
        )

    return adjusted(VIEW1), adjusted(VIEW2)


# The uniform draws each image needs, as columns of one random matrix.
_CROP, _JITTER, _GRAY, _SOLARIZE = slice(0, 5), slice(5, 10), 10, 11
_DRAWS = 12


@dataclass(frozen=True)
class _Columns:
    """Every field of ViewSettings as a per-image column [N, 1], so one pass can mix settings."""

    scale_low: torch.Tensor
    scale_high: torch.Tensor
    log_ratio_low: torch.Tensor
    log_ratio_high: torch.Tensor
    flip_p: torch.Tensor
    jitter_p: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    grayscale_p: torch.Tensor
    solarize_p: torch.Tensor


@functools.lru_cache(maxsize=32)
def _columns(views: tuple[ViewSettings, ...], per_view: int, device: torch.device) -> _Columns:
    """The settings of `per_view` images of each view in turn, made once per (views, size, device)."""
    rows = []
    for v in views:
        (s_lo, s_hi), (r_lo, r_hi) = v.crop_scale, v.crop_ratio
        rows.append([s_lo, s_hi, math.log(r_lo), math.log(r_hi), *astuple(v)[2:]])
    table = torch.tensor(rows, device=device).repeat_interleave(per_view, dim=0)
    return _Columns(*table.unsqueeze(-1).unbind(1))


def _columns_for(s: ViewSettings, n: int, device: torch.device) -> _Columns:
    return _columns((s,), n, torch.device(device))


@functools.lru_cache(maxsize=16)
def _colour_constants(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Luma weights [1,3,1,1]; K0, K1, K2 [3,3] with YIQ⁻¹·R(hue, sat)·YIQ = K0 + sat·cos·K1 + sat·sin·K2;
    the channel mean and std [1,3,1,1]."""
    a, b = _YIQ_TO_RGB, _RGB_TO_YIQ
    k0 = torch.outer(a[:, 0], b[0])
    k1 = torch.outer(a[:, 1], b[1]) + torch.outer(a[:, 2], b[2])
    k2 = torch.outer(a[:, 2], b[1]) - torch.outer(a[:, 1], b[2])
    luma = b[0].view(1, 3, 1, 1)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return tuple(t.to(device=device, dtype=dtype) for t in (luma, k0, k1, k2, mean, std))


def _draws(n: int, device: torch.device, generator: torch.Generator | None, count: int = _DRAWS) -> torch.Tensor:
    return torch.rand(n, count, device=device, generator=generator)


def _luma(x: torch.Tensor) -> torch.Tensor:
    luma = _colour_constants(x.device, x.dtype)[0]
    return (x * luma).sum(dim=1, keepdim=True)


def _between(u: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    return low + u * (high - low)


def _crop_flip(x: torch.Tensor, size: int, c: _Columns, u: torch.Tensor) -> torch.Tensor:
    """Crop a random area (scale × image, aspect in ratio), maybe flip, resize: one grid sample.

    `u` holds five uniform draws per image: area, aspect, centre x, centre y, flip.
    """
    area = _between(u[:, 0:1], c.scale_low, c.scale_high)
    ratio = torch.exp(_between(u[:, 1:2], c.log_ratio_low, c.log_ratio_high))
    w = torch.sqrt(area * ratio).clamp(max=1.0)  # fraction of the image width
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (u[:, 2:3] * 2 - 1) * (1 - w)  # keep the crop inside
    cy = (u[:, 3:4] * 2 - 1) * (1 - h)
    flip = torch.where(u[:, 4:5] < c.flip_p, -1.0, 1.0)
    zero = torch.zeros_like(w)
    theta = torch.cat([w * flip, zero, cx, zero, h, cy], dim=1).view(-1, 2, 3).to(x.dtype)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _jitter(x: torch.Tensor, c: _Columns, u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with one factor each per image, applied where u₀ < p."""
    n = x.shape[0]
    apply = (u[:, 0:1] < c.jitter_p).view(n, 1, 1, 1)
    brightness = _between(u[:, 1:2], 1 - c.brightness, 1 + c.brightness).view(n, 1, 1, 1).to(x.dtype)
    contrast = _between(u[:, 2:3], 1 - c.contrast, 1 + c.contrast).view(n, 1, 1, 1).to(x.dtype)
    saturation = _between(u[:, 3:4], 1 - c.saturation, 1 + c.saturation).view(n, 1, 1)
    hue = _between(u[:, 4:5], -c.hue, c.hue).view(n, 1, 1) * (2 * math.pi)

    out = (x * brightness).clamp(0, 1)
    mean = _luma(out).mean(dim=(2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean).clamp(0, 1)
    # Saturation scales the chroma plane (I, Q) of YIQ and hue rotates it: one 3×3 matrix per image.
    _, k0, k1, k2, _, _ = _colour_constants(x.device, x.dtype)
    matrix = k0 + (torch.cos(hue) * saturation).to(x.dtype) * k1 + (torch.sin(hue) * saturation).to(x.dtype) * k2
    out = torch.bmm(matrix, out.flatten(2)).view_as(out).clamp(0, 1)
    return torch.where(apply, out, x)


def _grayscale(x: torch.Tensor, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    apply = (u.view(-1, 1) < p).view(-1, 1, 1, 1)
    return torch.where(apply, _luma(x).expand_as(x), x)


def _solarize(x: torch.Tensor, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    apply = (u.view(-1, 1) < p).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1 - x, x)


def random_resized_crop_flip(
    x: torch.Tensor, size: int, s: ViewSettings, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop a random area (scale × image, aspect in ratio), maybe flip, resize to size×size: one grid sample."""
    return _crop_flip(x, size, _columns_for(s, x.shape[0], x.device), _draws(x.shape[0], x.device, generator, 5))


def color_jitter(x: torch.Tensor, s: ViewSettings, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness, contrast, saturation and hue with one random factor each per image, applied with p."""
    return _jitter(x, _columns_for(s, x.shape[0], x.device), _draws(x.shape[0], x.device, generator, 5))


def random_grayscale(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    s = ViewSettings(grayscale_p=p)
    return _grayscale(x, _columns_for(s, x.shape[0], x.device).grayscale_p, _draws(x.shape[0], x.device, generator, 1))


def random_solarize(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Invert the pixels at or above one half, for a random share p of the images."""
    s = ViewSettings(solarize_p=p)
    return _solarize(x, _columns_for(s, x.shape[0], x.device).solarize_p, _draws(x.shape[0], x.device, generator, 1))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Scale [0, 1] pixels by CIFAR-10's channel mean and std (the network's input convention)."""
    *_, mean, std = _colour_constants(x.device, x.dtype)
    return (x - mean) / std


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float32 in [0, 1]."""
    return images.float().div_(255)


def _augment_rows(images: torch.Tensor, c: _Columns, size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Augment a float batch whose image i follows the settings in row i of `c`."""
    u = _draws(images.shape[0], images.device, generator)
    x = _crop_flip(images, size, c, u[:, _CROP])
    x = _jitter(x, c, u[:, _JITTER])
    x = _grayscale(x, c.grayscale_p, u[:, _GRAY])
    x = _solarize(x, c.solarize_p, u[:, _SOLARIZE])
    return normalize(x)


def augment(
    images: torch.Tensor, s: ViewSettings, size: int | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One augmented, normalised view of a uint8 batch; every image gets its own random draw."""
    c = _columns_for(s, images.shape[0], images.device)
    return _augment_rows(to_float(images), c, size or images.shape[-1], generator)


def byol_views_batch(
    images: torch.Tensor,
    size: int | None = None,
    generator: torch.Generator | None = None,
    views: tuple[ViewSettings, ViewSettings] = (VIEW1, VIEW2),
) -> torch.Tensor:
    """Both views of a uint8 batch of N as one batch of 2N: rows [0, N) are view 1, [N, 2N) view 2."""
    n = images.shape[0]
    c = _columns(tuple(views), n, torch.device(images.device))
    x = to_float(images)
    return _augment_rows(torch.cat([x, x]), c, size or images.shape[-1], generator)


def byol_views(
    images: torch.Tensor, size: int | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BYOL's two asymmetric views of a uint8 batch, on the batch's device."""
    view1, view2 = byol_views_batch(images, size, generator).chunk(2)
    return view1, view2


def plain_view(images: torch.Tensor) -> torch.Tensor:
    """The un-augmented, normalised input used for evaluation and embeddings."""
    return normalize(to_float(images))
