"""Retrieval: neighbour search in a checkpoint's training-set embeddings, and the queries that feed it.

- Queries: a test image, or an uploaded file (images.query_from_upload turns any common image into
  the data set's uint8 format, or raises ValueError saying plainly what is wrong with the file).
- Nearest neighbours in the training split, three ways, so a page can show what the model learned:
  under the chosen checkpoint, under the same run's random-init network (the step-0 snapshot), and
  under raw pixels (mean-centred, L2-normalised; the floor any learned representation must beat).
  Similarity is always cosine similarity, and a query taken from the bank never matches itself.
  The search bank comes from the artefact store (embed.py), which computes it.

Backbones and the pixel bank are kept in small in-process caches keyed by file path and
modification time, so a page that reruns on every click does not reload them.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from . import embed
from .checkpoint import CheckpointError, load_backbone
from .dataset import Dataset
from .files import file_key
from .knn import pixel_features

# Bank rows cast to float32 at a time by the exact searches: a float16 bank's float32 copy stays small.
BANK_CHUNK = 8192

_backbone_cache = embed.LRU(3)
_pixel_bank_cache = embed.LRU(1)  # CIFAR-10's is 300 MB in float16: keep one data set's only
_pixel_bank_lock = threading.Lock()


def clear_caches() -> None:
    """Forget every cached embedding, backbone and pixel bank (tests; freeing memory)."""
    for cache in (_backbone_cache, _pixel_bank_cache):
        cache.clear()
    embed.clear_cache()


# --------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------


def _no_such_image(split: str, index: int, count: int) -> ValueError:
    kind = "training" if split == "train" else split
    return ValueError(f"There is no {kind} image #{index}; the numbers go from 0 to {count - 1:,}.")


def image_at(data: Dataset, split: str, index: int) -> torch.Tensor:
    """Image `index` of a split (uint8 [3, S, S]); ValueError when there is no such image."""
    images, _labels = data.split(split)
    if not 0 <= int(index) < len(images):
        raise _no_such_image(split, index, len(images))
    return images[int(index)]


def gallery_indices(
    labels: Sequence[int] | np.ndarray | torch.Tensor, per_class: int, seed: int = 0, only_class: int | None = None
) -> list[int]:
    """A few random test images per class (class order kept), reproducible for a given seed."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = [only_class] if only_class is not None else sorted(set(labels.tolist()))
    chosen: list[int] = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if len(members):
            chosen.extend(int(i) for i in rng.choice(members, size=min(per_class, len(members)), replace=False))
    return chosen


def sample_queries(labels: Sequence[int] | np.ndarray | torch.Tensor, count: int, seed: int = 0) -> list[int]:
    """`count` test images of different classes drawn at random (all classes when there are fewer),
    in class order; the same draw for the same seed. Drawn, never picked to look good."""
    one_per_class = gallery_indices(labels, 1, seed)
    rng = np.random.default_rng([seed, count])  # a stream of its own, not gallery_indices' draws again
    chosen = rng.choice(len(one_per_class), size=min(int(count), len(one_per_class)), replace=False)
    return [one_per_class[i] for i in sorted(chosen)]


def _as_image_tensor(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError("A query image must be uint8 with shape [3, height, width].")
    return tensor


def _backbone(checkpoint: Path) -> torch.nn.Module:
    # One image at a time: the CPU answers faster than a GPU round trip and never competes with training.
    return _backbone_cache.get(file_key(checkpoint), lambda: load_backbone(checkpoint)[0].cpu())


def embed_query(checkpoint: Path, image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The L2-normalised feature vector (float32 [D]) of one image under `checkpoint`'s backbone."""
    return embed_images(checkpoint, _as_image_tensor(image)[None])[0]


def embed_images(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    """L2-normalised feature vectors (float32 [N, D]) of uint8 images [N, 3, S, S] under `checkpoint`."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"There is no checkpoint file at {checkpoint}.")
    return embed.compute_features(_backbone(checkpoint), images)


# --------------------------------------------------------------------------------------------------
# Nearest neighbours in the training split
# --------------------------------------------------------------------------------------------------


def top_k(similarity: np.ndarray, k: int, exclude: int | None = None) -> np.ndarray:
    """Rows of the `k` largest similarities, largest first; row `exclude` (the query itself) never.

    Modifies `similarity` in place when `exclude` is given.
    """
    if exclude is not None and 0 <= int(exclude) < len(similarity):
        similarity[int(exclude)] = -np.inf
    k = min(int(k), len(similarity) - (exclude is not None))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-similarity, k - 1)[:k] if k < len(similarity) else np.arange(len(similarity))
    return top[np.argsort(-similarity[top], kind="stable")]


def nearest_neighbours(bank: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k of L2-normalised rows: indices into `bank` and their similarities, most similar first."""
    similarity = bank @ query.astype(np.float32).reshape(-1)
    order = top_k(similarity, k, exclude)
    return order, similarity[order]


class Neighbour(NamedTuple):
    train_index: int  # position in the training split
    label: int
    similarity: float  # cosine similarity to the query, -1..1


def neighbours(
    run_dir: Path, checkpoint: Path, query_feature: np.ndarray, k: int, exclude_train_index: int | None = None
) -> list[Neighbour]:
    """The k training images most similar to `query_feature` under `checkpoint`, most similar first.

    `exclude_train_index`: the query's own position when it comes from the training split; it is
    never returned. embed.NotPrepared when the checkpoint's training-set embeddings are missing.
    """
    bank = embed.load_split(run_dir, checkpoint, "train")
    query = np.asarray(query_feature, dtype=np.float32).reshape(-1)
    if bank.features.shape[1:] != query.shape:
        raise ValueError(
            f"The query has {query.shape[0]} features but {Path(checkpoint).name} makes {bank.features.shape[1]}; "
            "embed the query with the same checkpoint."
        )
    check_k(k)
    exclude_row = _row_of(bank.indices, exclude_train_index)
    rows, sims = nearest_neighbours(bank.features, query, int(k), exclude_row)
    return [Neighbour(int(bank.indices[r]), int(bank.labels[r]), float(s)) for r, s in zip(rows, sims)]


def image_neighbours(
    run_dir: Path, checkpoint: Path, image: torch.Tensor | np.ndarray, k: int, exclude_train_index: int | None = None
) -> list[Neighbour]:
    """embed_query + neighbours: the k training images most similar to an image under `checkpoint`."""
    return neighbours(run_dir, checkpoint, embed_query(checkpoint, image), k, exclude_train_index)


def neighbours_of_test_image(run_dir: Path, checkpoint: Path, test_index: int, k: int) -> list[Neighbour]:
    """Neighbours of a test image (a point on the map), using its saved test-set embedding."""
    queries = embed.load_split(run_dir, checkpoint, "test")
    row = _row_of(queries.indices, test_index)
    if row is None:
        raise _no_such_image("test", test_index, len(queries.indices))
    return neighbours(run_dir, checkpoint, queries.features[row], k)


def check_k(k: int) -> None:
    """ValueError, said plainly, unless at least one neighbour is asked for."""
    if int(k) < 1:
        raise ValueError(f"The number of neighbours must be at least 1; got {k}.")


def _row_of(indices: np.ndarray, index: int | None) -> int | None:
    if index is None:
        return None
    rows = np.flatnonzero(indices == int(index))
    return int(rows[0]) if len(rows) else None


def pixel_bank(data: Dataset) -> tuple[np.ndarray, torch.Tensor]:
    """Mean-centred, L2-normalised raw pixels of the training split (float16) and the mean used."""

    def build() -> tuple[np.ndarray, torch.Tensor]:
        images = data.train_images
        flat_count = int(np.prod(images.shape[1:]))
        total = torch.zeros(flat_count, dtype=torch.float64)
        for start in range(0, len(images), 4096):  # in chunks: a float copy of CIFAR-10 would be 600 MB
            total += images[start : start + 4096].reshape(-1, flat_count).double().sum(dim=0) / 255
        mean = (total / max(len(images), 1)).float()
        bank = np.empty((len(images), flat_count), dtype=np.float16)
        for start in range(0, len(images), 4096):
            bank[start : start + 4096] = pixel_features(images[start : start + 4096], mean)[0].numpy()
        return bank, mean

    key = (data.fingerprint, tuple(data.train_images.shape))
    with _pixel_bank_lock:  # one build at a time: two sessions asking together share the result
        return _pixel_bank_cache.get(key, build)


def pixel_neighbours(
    data: Dataset, image: torch.Tensor | np.ndarray, k: int, exclude_train_index: int | None = None
) -> list[Neighbour]:
    """The k training images closest to `image` in raw pixels (cosine similarity of mean-centred pixels)."""
    check_k(k)
    bank, mean = pixel_bank(data)
    query = pixel_features(_as_image_tensor(image)[None], mean)[0][0].numpy().astype(np.float32)
    if query.shape[0] != bank.shape[1]:
        raise ValueError("The query image does not have the data set's image size.")
    similarity = np.empty(len(bank), dtype=np.float32)
    for start in range(0, len(bank), BANK_CHUNK):
        similarity[start : start + BANK_CHUNK] = bank[start : start + BANK_CHUNK].astype(np.float32) @ query
    order = top_k(similarity, k, exclude_train_index)
    labels = data.train_labels
    return [Neighbour(int(i), int(labels[i]), float(similarity[i])) for i in order]


def precision_at_k(neighbour_labels: Sequence[int], query_label: int) -> float:
    """Share (0..1) of the neighbours whose class is the query's class; ValueError without neighbours."""
    labels = list(neighbour_labels)
    if not labels:
        raise ValueError("precision@k needs at least one neighbour.")
    return sum(int(label) == int(query_label) for label in labels) / len(labels)


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------


def thumbnail(image: torch.Tensor | np.ndarray, scale: int = 4) -> Image.Image:
    """A uint8 [3, H, W] image as a PIL image `scale` times larger, pixels kept sharp (nearest neighbour)."""
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError("thumbnail expects an image of shape [3, height, width].")
    picture = Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)).astype(np.uint8), "RGB")
    scale = max(int(scale), 1)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
