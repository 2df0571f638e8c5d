"""How often the nearest neighbours are right: mean precision@k over a fixed sample of test images.

The plainest single figure of what a network learned: for each of 500 fixed test images, the share
of its k = 10 nearest training images (cosine similarity, every training image in the bank) that
show its class, averaged over the 500. The same figure for raw pixels is the floor a learned
representation must beat, and guessing scores one in the number of classes.

The sample of test images is fixed (`score_indices`), so the figures of different runs and
checkpoints compare, and `benchmarks/neighbours.py` and the Retrieval page report the same number.

A score takes seconds (raw pixels' about ten on 2 cores), and Home and the Retrieval page show them on
every first visit, so each is remembered in memory and in the project cache (`SCORES_FILE`), keyed by
the exact checkpoint, bank and data set it was computed from: a restarted server shows them at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import embed, retrieval
from .data import default_cache_dir
from .dataset import Dataset
from .files import file_key, remembered
from .knn import eval_indices, pixel_features

QUERIES = 500  # enough for a figure steady to about ±2 points, few enough to score in a second
K = 10
QUERY_SEED = 1016  # fixes the sample; any fixed number would do

QUERY_CHUNK = 128  # queries per similarity block: 128 x 50,000 float32 is 25 MB

SCORES_FILE = "neighbour-scores.json"  # in the project cache
KEPT_SCORES = 200  # the newest scores the file keeps

_scores = embed.LRU(16)


def clear_cache() -> None:
    """Forget every remembered score, in memory and in the cache file (tests)."""
    _scores.clear()
    (default_cache_dir() / SCORES_FILE).unlink(missing_ok=True)


def _remembered(key: tuple, score: Callable[[], float]) -> float:
    """The score for `key`: from memory, else from the cache file, else computed and saved in both."""
    return _scores.get(key, lambda: remembered(default_cache_dir() / SCORES_FILE, json.dumps(key), score, KEPT_SCORES))


def score_indices(test_count: int, queries: int = QUERIES) -> np.ndarray:
    """The fixed test images scored: `queries` positions in the test split (all when it has fewer)."""
    return eval_indices(test_count, queries, seed=QUERY_SEED).numpy()


def neighbour_labels(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The classes [Q, k] of each query's k most cosine-similar bank rows, most similar first.

    `bank` and `queries` hold L2-normalised rows (the bank may be float16); exact search.
    """
    retrieval.check_k(k)
    bank_labels = np.asarray(bank_labels)
    k = min(int(k), len(bank))
    found = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), QUERY_CHUNK):
        block = np.asarray(queries[start : start + QUERY_CHUNK], dtype=np.float32)
        similarity = np.empty((len(block), len(bank)), dtype=np.float32)
        chunk = retrieval.BANK_CHUNK
        for row in range(0, len(bank), chunk):
            similarity[:, row : row + chunk] = block @ np.asarray(bank[row : row + chunk], dtype=np.float32).T
        for i, row_similarity in enumerate(similarity):
            found[start + i] = bank_labels[retrieval.top_k(row_similarity, k)]
    return found


def mean_precision(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray, k: int = K) -> float:
    """Mean precision@k (0..1): the average share of a query's k nearest bank rows that have its class."""
    if len(queries) == 0:
        raise ValueError("Scoring needs at least one query.")
    found = neighbour_labels(bank, bank_labels, queries, k)
    return float(np.mean(found == np.asarray(query_labels).reshape(-1, 1)))


def checkpoint_score(run_dir: Path, checkpoint: Path, data: Dataset, k: int = K, queries: int = QUERIES) -> float:
    """Mean precision@k of `checkpoint`'s backbone features over the fixed test images.

    The bank is the checkpoint's saved training-set embeddings (embed.NotPrepared when missing); the
    queries are embedded here, on the CPU. Cached per checkpoint file, bank file and data set.
    """
    bank = embed.load_split(run_dir, checkpoint, "train")
    bank_file = embed.embedding_path(run_dir, checkpoint, "train")
    key = ("checkpoint", file_key(checkpoint), file_key(bank_file), data.fingerprint, k, queries)

    def score() -> float:
        chosen = score_indices(len(data.test_labels), queries)
        features = retrieval.embed_images(checkpoint, data.test_images[torch.from_numpy(chosen)])
        return mean_precision(bank.features, bank.labels, features, data.test_labels.numpy()[chosen], k)

    return _remembered(key, score)


def pixel_score(data: Dataset, k: int = K, queries: int = QUERIES) -> float:
    """Mean precision@k of raw pixels (mean-centred, L2-normalised) over the fixed test images."""

    def score() -> float:
        bank, mean = retrieval.pixel_bank(data)
        chosen = score_indices(len(data.test_labels), queries)
        features = pixel_features(data.test_images[torch.from_numpy(chosen)], mean)[0].numpy()
        return mean_precision(bank, data.train_labels.numpy(), features, data.test_labels.numpy()[chosen], k)

    return _remembered(("pixels", data.fingerprint, tuple(data.train_images.shape), k, queries), score)


def chance(data: Dataset) -> float:
    """What guessing scores: one in the number of classes."""
    return 1 / max(len(data.classes), 1)
