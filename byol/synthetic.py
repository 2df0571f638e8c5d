"""The synthetic data set: ten classes of shapes and textures, drawn deterministically.

Ten classes, each a shape or texture drawn at a random position, size and angle, in a random
foreground colour on a random background colour, plus pixel noise. Colour dominates the pixels but
says nothing about the class, so raw pixels and an untrained network (whose pooled features are
mostly mean colour) do poorly, while a network that learns colour-invariant features (what BYOL's
colour jitter and grayscale push it to) can tell them apart, as can anyone looking at them.

`synthetic_dataset` draws both splits as a Dataset (data.load_dataset("synthetic") calls it), so demos
and tests need no files.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from byol.dataset import Dataset

SYNTHETIC_CLASSES: list[str] = [
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "diagonal stripes",
    "checkerboard",
    "dots",
]


TRAIN_PER_CLASS, TEST_PER_CLASS = 400, 100  # the data source "synthetic"
SIZES = (TRAIN_PER_CLASS * len(SYNTHETIC_CLASSES), TEST_PER_CLASS * len(SYNTHETIC_CLASSES))  # (train, test) images


def synthetic_dataset(
    train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS, seed: int = 0, image_size: int = 32
) -> Dataset:
    """Deterministic synthetic data set: same arguments, identical tensors."""
    # Independent streams per split, so the test set does not change when the training set grows.
    train_images, train_labels = _synthetic_split(train_per_class, np.random.default_rng([seed, 0]), image_size)
    test_images, test_labels = _synthetic_split(test_per_class, np.random.default_rng([seed, 1]), image_size)
    return Dataset(
        name="synthetic",
        classes=list(SYNTHETIC_CLASSES),
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        fingerprint=f"synthetic-v2-s{seed}-{train_per_class}-{test_per_class}-{image_size}",
    )


def _synthetic_split(per_class: int, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` images of each class, uint8 [N, 3, size, size], with their int64 labels [N]."""
    n_classes = len(SYNTHETIC_CLASSES)
    n = per_class * n_classes
    labels = np.arange(n) % n_classes  # interleaved: any prefix of the set is (nearly) balanced
    px = size / 32.0  # sizes below are chosen at 32x32 and scale with the image

    def per_image(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, n).astype(np.float32)[:, None, None]  # [n, 1, 1] broadcasts over pixels

    # Where and how big: shapes stay mostly inside the image; textures are centred on the same point.
    cx, cy = per_image(0.3 * size, 0.7 * size), per_image(0.3 * size, 0.7 * size)
    radius = per_image(7 * px, 12 * px)
    period = per_image(5 * px, 9 * px)  # texture period: above 4 px so nothing aliases at 32x32
    phase = per_image(0, 1)
    # Orientation is what tells the three stripe classes apart, so they only wobble a little;
    # everything else turns freely. Diagonal stripes lean either way (a horizontal flip swaps them).
    angle = per_image(0, 2 * math.pi)
    wobble = per_image(-0.2, 0.2)
    lean = np.where(rng.random(n) < 0.5, 1.0, -1.0).astype(np.float32)[:, None, None]
    stripe_angles = {"horizontal stripes": 0.0, "vertical stripes": math.pi / 2, "diagonal stripes": lean * math.pi / 4}
    for name, base in stripe_angles.items():
        pick = labels == SYNTHETIC_CLASSES.index(name)
        angle[pick] = (base + wobble)[pick]

    coords = np.arange(size, dtype=np.float32) + 0.5
    x, y = coords[None, None, :] - cx, coords[None, :, None] - cy
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * x + sin * y, -sin * x + cos * y  # pixel coordinates in the shape's own frame

    # Signed distance to each shape's edge, in pixels (negative inside), so one formula below gives
    # every class an antialiased one-pixel edge.
    sdf = np.empty((n, size, size), dtype=np.float32)
    for cls in range(n_classes):
        pick = labels == cls
        sdf[pick] = _shape_sdf(cls, u[pick], v[pick], radius[pick], period[pick], phase[pick])
    mask = np.clip(0.5 - sdf, 0.0, 1.0)[:, None]  # [n, 1, S, S]; 1 = foreground

    return torch.from_numpy(_paint(mask, rng)), torch.from_numpy(labels.astype(np.int64))


def _paint(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 images [n, 3, S, S]: a smooth random colour field as background, its inverse inside the shape.

    Why a field and not one flat colour per image: BYOL's two views are crops of the same image, and
    with one flat colour pair both crops share it, so the network first learns "which colours"
    (useless for the class) and its kNN falls below the random-init level for many epochs. With
    colours that change across the image, two crops disagree on colour and agree only on shape and
    texture, which is what the classes are; the inverse colour keeps every shape visible.
    Measured (width-8 ResNet-18, kNN k=20 on all 1,000 test images): random init 27.3%, after 8 epochs
    33.6%, after 16 epochs 48.7%; raw pixels 50.5%.
    """
    n, _, size, _ = mask.shape
    corners = torch.from_numpy(rng.uniform(0, 255, (n, 3, 3, 3)).astype(np.float32))
    background = F.interpolate(corners, size=(size, size), mode="bicubic", align_corners=True).clamp(0, 255).numpy()
    images = background * (1 - mask) + (255.0 - background) * mask
    # A little sensor-like noise, so flat areas are not perfectly flat (nothing should hinge on that).
    images += rng.standard_normal(images.shape, dtype=np.float32) * 8.0
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def _shape_sdf(cls: int, u: np.ndarray, v: np.ndarray, r: np.ndarray, period: np.ndarray, phase: np.ndarray) -> np.ndarray:
    def box(half_u: np.ndarray, half_v: np.ndarray) -> np.ndarray:
        du, dv = np.abs(u) - half_u, np.abs(v) - half_v
        outside = np.sqrt(np.maximum(du, 0) ** 2 + np.maximum(dv, 0) ** 2)
        return outside + np.minimum(np.maximum(du, dv), 0)

    def wrapped(t: np.ndarray) -> np.ndarray:
        return t - np.floor(t) - 0.5  # position within a period, in -0.5..0.5

    name = SYNTHETIC_CLASSES[cls]
    if name == "disk":
        return np.hypot(u, v) - r
    if name == "square":
        return box(0.8 * r, 0.8 * r)
    if name == "triangle":
        # Intersection of three half-planes at 120 degrees: exact inside, close enough at the edge.
        sides = [
            u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
        ]
        return np.maximum(np.maximum(sides[0], sides[1]), sides[2]) - 0.55 * r
    if name == "plus":
        return np.minimum(box(r, 0.3 * r), box(0.3 * r, r))
    if name == "ring":
        return np.abs(np.hypot(u, v) - 0.8 * r) - 0.25 * r
    if name in ("horizontal stripes", "vertical stripes", "diagonal stripes"):
        return (np.abs(wrapped(v / period + phase)) - 0.25) * period
    if name == "checkerboard":
        fu, fv = wrapped(u / period + phase), wrapped(v / period + phase)
        to_edge = (0.5 - np.maximum(np.abs(fu), np.abs(fv))) * period
        parity = (np.floor(u / period + phase) + np.floor(v / period + phase)) % 2
        return np.where(parity == 0, -to_edge, to_edge)
    if name == "dots":
        fu, fv = wrapped(u / period + phase), wrapped(v / period + phase)
        return np.hypot(fu, fv) * period - 0.3 * period
    raise AssertionError(name)
