"""Embeddings of a checkpoint: export, exact nearest neighbours, and the 2-D UMAP map (cached).

Files live in `<run>/embeddings/`, named after the checkpoint and the split:
`step-00001200-train.npz` holds L2-normalised features (float16), labels and data-set indices;
`step-00001200-test-umap.npy` the 2-D coordinates of that split. Retrieval searches the training
split (all of it); queries come from the test split, an upload, or the map, and a query taken from
the bank itself never matches itself.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoint import CheckpointError, load_backbone
from .data import Dataset, load_dataset
from .files import write_atomic
from .knn import extract_features

Progress = Callable[[str], None]
SPLITS = ("train", "test")


@dataclass
class Embeddings:
    features: np.ndarray  # float32 [N, D], L2-normalised
    labels: np.ndarray  # int64 [N]
    indices: np.ndarray  # int64 [N], positions in the data set's split
    classes: list[str]


def newest_checkpoint(run_dir: Path) -> Path:
    """last.pt when present (it is always the newest), else the latest evaluation snapshot."""
    run_dir = Path(run_dir)
    if (run_dir / "last.pt").is_file():
        return run_dir / "last.pt"
    snapshots = sorted(run_dir.glob("step-*.pt"))
    if not snapshots:
        raise CheckpointError(f"The run {run_dir.name} has no checkpoint yet.")
    return snapshots[-1]


def embedding_path(run_dir: Path, checkpoint: Path, split: str) -> Path:
    return Path(run_dir) / "embeddings" / f"{Path(checkpoint).stem}-{split}.npz"


def umap_path(run_dir: Path, checkpoint: Path, split: str) -> Path:
    return Path(run_dir) / "embeddings" / f"{Path(checkpoint).stem}-{split}-umap.npy"


def split_images(data: Dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if split == "train":
        return data.train_images, data.train_labels
    if split == "test":
        return data.test_images, data.test_labels
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def compute_features(backbone: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """L2-normalised backbone features of uint8 images, as float32 numpy."""
    return extract_features(backbone, images, batch_size=512).cpu().numpy().astype(np.float32)


def export_embeddings(
    run_dir: Path, checkpoint: Path, split: str, data: Dataset | None = None, progress: Progress | None = None
) -> Path:
    """Compute and save the features of one split under `checkpoint`; returns the .npz path."""
    say = progress or (lambda message: None)
    backbone, config, _info = load_backbone(checkpoint)  # fails early and plainly on a bad checkpoint
    if data is None:
        say(f"Loading data ({config.data})...")
        data = load_dataset(config.data, config.data_root or None, image_size=config.image_size)
    images, labels = split_images(data, split)
    say(f"Computing {split} embeddings for {len(labels):,} images with {Path(checkpoint).name}...")
    features = compute_features(backbone, images)
    path = embedding_path(run_dir, checkpoint, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, features=features.astype(np.float16), labels=labels.numpy(), indices=np.arange(len(labels)),
        classes=np.array(data.classes),
    )
    write_atomic(path, lambda f: f.write(buffer.getvalue()))
    return path


def load_embeddings(path: Path) -> Embeddings:
    with np.load(path, allow_pickle=False) as archive:
        features = archive["features"].astype(np.float32)
        # float16 storage loses a little norm; renormalise so dot products stay cosines.
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return Embeddings(features, archive["labels"].astype(np.int64), archive["indices"].astype(np.int64),
                          [str(c) for c in archive["classes"]])


def ensure_embeddings(
    run_dir: Path, checkpoint: Path, split: str, data: Dataset | None = None, progress: Progress | None = None
) -> Embeddings:
    """The split's embeddings, computed and saved first when missing."""
    path = embedding_path(run_dir, checkpoint, split)
    if not path.is_file():
        export_embeddings(run_dir, checkpoint, split, data, progress)
    return load_embeddings(path)


def nearest_neighbours(
    bank: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k: indices into `bank` and their similarities, most similar first.

    `exclude` is the bank row of the query itself (when the query comes from the bank), which is
    never returned.
    """
    similarity = bank @ query.astype(np.float32).reshape(-1)
    if exclude is not None:
        similarity[exclude] = -np.inf
    k = min(k, len(similarity) - (exclude is not None))
    top = np.argpartition(-similarity, k - 1)[:k] if k < len(similarity) else np.arange(len(similarity))
    order = top[np.argsort(-similarity[top], kind="stable")]
    return order, similarity[order]


def umap_coordinates(
    run_dir: Path, checkpoint: Path, split: str = "test", data: Dataset | None = None,
    progress: Progress | None = None, seed: int = 0,
) -> np.ndarray:
    """2-D UMAP coordinates of a split's embeddings, computed once and cached beside them."""
    path = umap_path(run_dir, checkpoint, split)
    if path.is_file():
        return np.load(path, allow_pickle=False)
    embeddings = ensure_embeddings(run_dir, checkpoint, split, data, progress)
    (progress or (lambda m: None))(f"Computing the UMAP map of {len(embeddings.labels):,} points (first time can take a minute)...")
    import umap  # slow import (numba): only when a map is actually needed

    reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed)
    coordinates = reducer.fit_transform(embeddings.features).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, coordinates)
    write_atomic(path, lambda f: f.write(buffer.getvalue()))
    return coordinates


def export_run_embeddings(
    run_dir: Path, checkpoint: Path | None = None, with_umap: bool = False, progress: Progress | None = None
) -> list[Path]:
    """What the dashboard needs for one checkpoint: the training bank and the test queries (and map)."""
    checkpoint = Path(checkpoint) if checkpoint else newest_checkpoint(run_dir)
    _backbone, config, _info = load_backbone(checkpoint)
    data = load_dataset(config.data, config.data_root or None, image_size=config.image_size)
    paths = [export_embeddings(run_dir, checkpoint, split, data, progress) for split in SPLITS]
    if with_umap:
        umap_coordinates(run_dir, checkpoint, "test", data, progress)
        paths.append(umap_path(run_dir, checkpoint, "test"))
    return paths


def save_embeddings(
    run_dir: Path, checkpoint: Path, split: str, features: np.ndarray, labels: np.ndarray, classes: list[str]
) -> Path:
    """Save features computed elsewhere (e.g. chunk by chunk with progress) in export_embeddings' format."""
    path = embedding_path(run_dir, checkpoint, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, features=np.asarray(features, dtype=np.float16), labels=np.asarray(labels, dtype=np.int64),
        indices=np.arange(len(labels)), classes=np.array(classes),
    )
    write_atomic(path, lambda f: f.write(buffer.getvalue()))
    return path
