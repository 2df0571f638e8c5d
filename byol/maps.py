"""How embeddings become a 2-D map: UMAP laid out from each image's exact nearest neighbours, or the two
main directions of variation (PCA) for a test set too small for UMAP.

The single map of a checkpoint (embed.py) and the training film (map_film.py) are both drawn with
`UMAP_SETTINGS`, and both hand UMAP what it would otherwise compute slowly itself: the single map gets
each image's nearest neighbours (`neighbour_graph`, an exact search of a second or a few, instead of
NN-descent, whose numba compile costs every new server process about half a minute), the film every
pair's distance (`cosine_distances`, instead of one Python call per pair).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn.functional as F

UMAP_FIRST_TIME = "The first map after the server starts also compiles UMAP, which can take half a minute or more..."
MIN_UMAP_POINTS = 20  # below this UMAP's neighbour graph breaks down; a plain 2-D projection is drawn instead
# How every map is laid out (the single map and the training film alike): UMAP's usual 15 neighbours and
# cosine distance, the similarity the network was trained with.
UMAP_SETTINGS: dict[str, Any] = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}
# Up to this many images the neighbours are searched exactly instead of by NN-descent, whose compile alone
# took 26 s in a new process on a 2-core AMD EPYC. The exact search grows with the square of the images:
# there 1.2 s for 10,000 images of 512 features, 4 s for 20,000, 27 s for 50,000.
EXACT_NEIGHBOURS_MAX = 20_000


def pca_2d(features: np.ndarray) -> np.ndarray:
    """The two main directions of variation (PCA) of `features`, float64 [N, 2]: the map of a tiny test set."""
    coordinates = np.zeros((len(features), 2), dtype=np.float64)
    if len(features) > 1:
        centred = features - features.mean(axis=0, keepdims=True)
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        projected = centred @ vt[:2].T
        coordinates[:, : projected.shape[1]] = projected
    return coordinates


def map_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D map of `features`, float32 [N, 2]: UMAP, or the two main directions of variation (PCA) for
    fewer than MIN_UMAP_POINTS images."""
    if len(features) < MIN_UMAP_POINTS:
        return pca_2d(features).astype(np.float32)
    import umap  # slow import (numba): only when a map is actually needed

    settings = dict(UMAP_SETTINGS)
    if len(features) <= EXACT_NEIGHBOURS_MAX:
        settings["precomputed_knn"] = neighbour_graph(features, UMAP_SETTINGS["n_neighbors"])
    with umap_quietly():
        return umap.UMAP(n_components=2, random_state=seed, **settings).fit_transform(features).astype(np.float32)


@torch.no_grad()
def neighbour_graph(features: np.ndarray, k: int, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `k` nearest rows by cosine similarity, searched exactly: indices int64 [N, k] and cosine
    distances (1 - similarity) float32 [N, k], nearest first, every row its own nearest at distance 0
    (the form UMAP's `precomputed_knn` takes)."""
    x = _unit_rows(features)
    k = min(int(k), x.shape[0])
    indices, distances = [], []
    for start in range(0, x.shape[0], chunk_size):
        similarity = x[start : start + chunk_size] @ x.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = 2.0  # above any cosine: each row first among its own neighbours,
        top, index = similarity.topk(k, dim=1)  # even beside an exact duplicate of it
        top[:, 0] = 1.0
        indices.append(index)
        distances.append((1.0 - top).clamp_min(0.0))
    if not indices:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return torch.cat(indices).numpy(), torch.cat(distances).numpy()


def cosine_distances(features: np.ndarray) -> np.ndarray:
    """All pairs' cosine distances (1 - similarity), float32 [N, N], 0 on the diagonal: UMAP_SETTINGS's
    metric, in the form UMAP's metric="precomputed" takes."""
    unit = _unit_rows(features)
    distances = (1.0 - unit @ unit.T).clamp_min(0.0)
    distances.fill_diagonal_(0.0)
    return distances.numpy()


def _unit_rows(features: np.ndarray) -> torch.Tensor:
    """`features` as float32 rows of length 1, whose dot products are cosine similarities."""
    return F.normalize(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), dim=1)


@contextlib.contextmanager
def umap_quietly() -> Iterator[None]:
    """Silences what umap-learn says on every map of ours, none of it a problem: that the seed makes it
    single-threaded, and that a map laid out from our neighbour graph or distances cannot place new
    points later nor map points back (UMAP.transform and inverse_transform, which nothing here asks for)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        warnings.filterwarnings("ignore", message="using precomputed metric", category=UserWarning)
        yield
