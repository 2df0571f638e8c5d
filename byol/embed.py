"""The checkpoint-artefact store: what is computed once per checkpoint and kept in `<run>/embeddings/`.

One prepare path (`prepare_checkpoint`) serves the command line (`python -m byol embed`) and the
dashboard (run in a `tasks.TaskRunner`), so whatever one computes the other finds. The artefacts:

- embeddings of a split, `step-00001200-train.npz`: L2-normalised features (float16), labels,
  data-set indices and class names. The training split is the search bank; the test split gives
  the queries and the map;
- the test split's 2-D map, `step-00001200-test-umap.npy` (drawn by maps.py: UMAP; a PCA projection for tiny test sets);
- the kNN accuracy and each test image's voted class per (k, temperature), `step-00001200-knn.json`;
- the linear probe's accuracy, `step-00001200-probe.json`, computed on request (byol/probe.py), not by
  `prepare_checkpoint`, which only deletes it when it recomputes the embeddings it was measured on.

`missing_work` says which of them a checkpoint still lacks, as `Artefact` flags (the pages word
them); the readers (`load_split`, `load_map`, `checkpoint_knn`) raise `NotPrepared` when something
is missing. Loaded embeddings are kept in a small in-process cache keyed by file path and
modification time, so a page that reruns on every click does not reload them.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .checkpoint import load_backbone
from .config import KNN_K, KNN_TEMPERATURE
from .dataset import SPLITS, Dataset
from .device import resolve_device
from .errors import UserError
from .files import file_key, read_json, write_atomic, write_json_atomic, write_npz_atomic
from .knn import (
    accuracy_percent,
    extract_features,
    knn_predict,
    per_class_accuracy,
    per_class_from_json,
    per_class_to_json,
)
from .maps import UMAP_FIRST_TIME, map_2d
from .run_images import run_data
from .runs import EMBEDDINGS_FOLDER, LAST_CHECKPOINT

FEATURE_CHUNK = 2048  # images per progress report while computing embeddings

Report = Callable[..., None]  # report(message=None, fraction=None), as tasks.TaskRunner passes it


class Artefact(enum.Enum):
    """One thing computed per checkpoint, in the order they are computed."""

    TRAIN_EMBEDDINGS = "train"
    TEST_EMBEDDINGS = "test"
    MAP = "map"
    KNN = "knn"


BANK = frozenset({Artefact.TRAIN_EMBEDDINGS})  # enough to search (the Retrieval page)
EMBEDDINGS = frozenset({Artefact.TRAIN_EMBEDDINGS, Artefact.TEST_EMBEDDINGS})  # bank and queries
FULL = frozenset(Artefact)  # also the map and the kNN accuracy (the Embeddings page)


class NotPrepared(UserError):
    """Embeddings (or the map) of a checkpoint have not been computed yet; the message says what to do."""


@dataclass
class Embeddings:
    features: np.ndarray  # float32 [N, D], L2-normalised
    labels: np.ndarray  # int64 [N]
    indices: np.ndarray  # int64 [N], positions in the data set's split
    classes: list[str]


# --- file names ------------------------------------------------------------------------------------


def embedding_path(run_dir: Path, checkpoint: Path, split: str) -> Path:
    return Path(run_dir) / EMBEDDINGS_FOLDER / f"{Path(checkpoint).stem}-{split}.npz"


def umap_path(run_dir: Path, checkpoint: Path, split: str) -> Path:
    return Path(run_dir) / EMBEDDINGS_FOLDER / f"{Path(checkpoint).stem}-{split}-umap.npy"


def knn_path(run_dir: Path, checkpoint: Path) -> Path:
    return Path(run_dir) / EMBEDDINGS_FOLDER / f"{Path(checkpoint).stem}-knn.json"


def probe_path(run_dir: Path, checkpoint: Path) -> Path:
    """The linear probe's result (byol/probe.py), measured on this checkpoint's embeddings."""
    return Path(run_dir) / EMBEDDINGS_FOLDER / f"{Path(checkpoint).stem}-probe.json"


def artefact_paths(run_dir: Path, checkpoint: Path) -> list[Path]:
    """The checkpoint's artefact files that exist, in `Artefact` order."""
    paths = [embedding_path(run_dir, checkpoint, s) for s in SPLITS]
    paths += [umap_path(run_dir, checkpoint, "test"), knn_path(run_dir, checkpoint)]
    return [p for p in paths if p.is_file()]


# --- splits and features ---------------------------------------------------------------------------


def split_words(split: str) -> str:
    return {"train": "training-set", "test": "test-set"}.get(split, split)


def compute_features(backbone: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    """L2-normalised backbone features of uint8 images, as float32 numpy.

    In fp32 with the network in the channels-last layout (converted in place, once): the same features
    as the default layout up to float rounding, twice as fast on a CPU (the demo's network on 10,000
    CIFAR-10 test images: 4.9 s against 10.1 s on a 2-core AMD EPYC).
    """
    backbone = backbone.to(memory_format=torch.channels_last)
    return extract_features(backbone, images, batch_size=512, channels_last=True).cpu().numpy().astype(np.float32)


def save_embeddings(
    run_dir: Path, checkpoint: Path, split: str, features: np.ndarray, labels: np.ndarray, classes: list[str]
) -> Path:
    """Save one split's features under `checkpoint` (atomically); returns the .npz path."""
    path = embedding_path(run_dir, checkpoint, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "features": np.asarray(features, dtype=np.float16),
        "labels": np.asarray(labels, dtype=np.int64),
        "indices": np.arange(len(labels)),
        "classes": np.array(classes),
    }
    write_npz_atomic(path, arrays)
    return path


def load_embeddings(path: Path) -> Embeddings:
    with np.load(path, allow_pickle=False) as archive:
        features = archive["features"].astype(np.float32)
        # float16 storage loses a little norm; renormalise so dot products stay cosines.
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        return Embeddings(
            features,
            archive["labels"].astype(np.int64),
            archive["indices"].astype(np.int64),
            [str(c) for c in archive["classes"]],
        )


# --- the in-process cache ----------------------------------------------------------------------------


class LRU:
    """A small thread-safe least-recently-used cache (pages rerun on every click; sessions share a process)."""

    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()  # outside the lock: slow, and two makers of one key only waste work
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_embeddings_cache = LRU(4)


def clear_cache() -> None:
    """Forget every loaded embedding (tests; freeing memory)."""
    _embeddings_cache.clear()


# --- what is there, what is missing --------------------------------------------------------------------


def is_fresh(path: Path, checkpoint: Path) -> bool:
    """Whether a result file exists and belongs to the checkpoint's current contents.

    Only last.pt is ever replaced (training saves over it), so only results of last.pt can go stale.
    Snapshots are written once; their results are never compared by time, because copies of a run
    (a git checkout of a demo run, an rsync) do not keep the order of modification times.
    """
    try:
        stat = path.stat()
    except OSError:
        return False
    if Path(checkpoint).name != LAST_CHECKPOINT:
        return True
    try:
        return stat.st_mtime_ns >= Path(checkpoint).stat().st_mtime_ns
    except OSError:
        return False


def load_split(run_dir: Path, checkpoint: Path, split: str) -> Embeddings:
    """Saved embeddings of one split (cached in memory); NotPrepared when they are missing or stale."""
    path = embedding_path(run_dir, checkpoint, split)
    if not is_fresh(path, checkpoint):
        raise NotPrepared(
            f"The {split_words(split)} embeddings of {Path(checkpoint).name} have not been computed yet; compute them first."
        )
    try:
        return _embeddings_cache.get(file_key(path), lambda: load_embeddings(path))
    except Exception as error:  # a damaged .npz raises BadZipFile, EOFError, KeyError...
        raise NotPrepared(
            f"The saved {split_words(split)} embeddings of {Path(checkpoint).name} are unreadable "
            f"({type(error).__name__}); compute them again."
        ) from None


def _embeddings_ok(run_dir: Path, checkpoint: Path, split: str, data: Dataset | None) -> bool:
    try:
        saved = load_split(run_dir, checkpoint, split)
    except NotPrepared:
        return False
    # A data set that changed since (an image folder edited) would make indices point at other images.
    return data is None or len(saved.labels) == len(data.split(split)[1])


def _map_ok(run_dir: Path, checkpoint: Path, data: Dataset | None) -> bool:
    path = umap_path(run_dir, checkpoint, "test")
    if not is_fresh(path, checkpoint):
        return False
    if data is None:
        return True
    try:
        return len(np.load(path, mmap_mode="r", allow_pickle=False)) == len(data.test_labels)
    except Exception:  # damaged file: compute it again
        return False


def _knn_key(k: int, temperature: float) -> str:
    return f"k={int(k)},T={float(temperature):g}"


def _saved_knn(run_dir: Path, checkpoint: Path) -> dict:
    path = knn_path(run_dir, checkpoint)
    cached = read_json(path, {}) if is_fresh(path, checkpoint) else {}
    return cached if isinstance(cached, dict) else {}


def missing_work(
    run_dir: Path,
    checkpoint: Path,
    level: frozenset[Artefact] = FULL,
    data: Dataset | None = None,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> list[Artefact]:
    """Which of the artefacts in `level` a checkpoint still lacks, in `Artefact` order (empty = ready).

    The kNN accuracy counts as there only for this (k, temperature).
    """
    ready = {
        Artefact.TRAIN_EMBEDDINGS: lambda: _embeddings_ok(run_dir, checkpoint, "train", data),
        Artefact.TEST_EMBEDDINGS: lambda: _embeddings_ok(run_dir, checkpoint, "test", data),
        Artefact.MAP: lambda: _map_ok(run_dir, checkpoint, data),
        Artefact.KNN: lambda: "predicted" in _saved_knn(run_dir, checkpoint).get(_knn_key(k, temperature), {}),
    }
    return [part for part in Artefact if part in level and not ready[part]()]


# --- computing them ----------------------------------------------------------------------------------


def prepare_checkpoint(
    run_dir: Path,
    checkpoint: Path,
    progress: Report | None = None,
    data: Dataset | None = None,
    level: frozenset[Artefact] = FULL,
    k: int | None = None,
    temperature: float | None = None,
) -> None:
    """Compute whatever `missing_work` lists for this checkpoint, reporting progress as it goes.

    Raises CheckpointError / DataError (plain messages) when the checkpoint or data cannot be used.
    `k` and `temperature` default to the checkpoint's own kNN settings.
    """
    report = progress or (lambda message=None, fraction=None: None)
    run_dir, checkpoint = Path(run_dir), Path(checkpoint)
    report(f"Loading {checkpoint.name}...", 0.0)
    backbone, config, _info = load_backbone(checkpoint)
    k = int(k if k is not None else config.knn_k)
    temperature = float(temperature if temperature is not None else config.knn_temperature)
    if data is None:
        report("Loading the data set...", 0.0)
        data = run_data(run_dir, config)

    # The map is drawn from the test embeddings, and kNN needs both splits.
    splits = ["train"] * (Artefact.TRAIN_EMBEDDINGS in level or Artefact.KNN in level) + ["test"] * bool(
        level & {Artefact.TEST_EMBEDDINGS, Artefact.MAP, Artefact.KNN}
    )
    todo = [split for split in splits if not _embeddings_ok(run_dir, checkpoint, split, data)]
    need_map = Artefact.MAP in level and ("test" in todo or not _map_ok(run_dir, checkpoint, data))
    need_knn = Artefact.KNN in level and (
        bool(todo) or Artefact.KNN in missing_work(run_dir, checkpoint, level, data, k, temperature)
    )
    map_share = 0.35 if need_map else 0.0  # UMAP reports no progress of its own; give it a fixed share
    knn_share = 0.05 if need_knn else 0.0
    feature_share = 1.0 - map_share - knn_share

    total = sum(len(data.split(split)[1]) for split in todo)
    done = 0
    if todo:
        device = resolve_device("auto")
        backbone = backbone.to(device)
        for split in todo:
            images, labels = data.split(split)
            chunks = []
            for start in range(0, len(images), FEATURE_CHUNK):
                report(
                    f"Computing {split_words(split)} embeddings with {checkpoint.name} on {device.type.upper()}: "
                    f"{start:,} of {len(images):,} images",
                    feature_share * done / max(total, 1),
                )
                batch = images[start : start + FEATURE_CHUNK]
                chunks.append(compute_features(backbone, batch))
                done += len(batch)
            features = np.concatenate(chunks) if chunks else np.zeros((0, backbone.out_dim), np.float32)
            save_embeddings(run_dir, checkpoint, split, features, labels.numpy(), data.classes)
        del backbone
        for measured in (knn_path(run_dir, checkpoint), probe_path(run_dir, checkpoint)):
            measured.unlink(missing_ok=True)  # measured on the old embeddings
    if need_map:
        stale = umap_path(run_dir, checkpoint, "test")
        stale.unlink(missing_ok=True)  # a stale map (last.pt replaced) would otherwise be reused
        count = len(data.test_labels)
        report(f"Drawing the 2-D map (UMAP) of {count:,} test images. {UMAP_FIRST_TIME}", feature_share)
        _save_map(run_dir, checkpoint)
    if need_knn:
        report("Measuring the kNN accuracy on the test set...", 1.0 - knn_share)
        checkpoint_knn(run_dir, checkpoint, k, temperature, recompute=True)
    report("Done.", 1.0)


def _save_map(run_dir: Path, checkpoint: Path) -> None:
    """The test split's 2-D map (`map_2d`), saved beside its embeddings."""
    coordinates = map_2d(load_split(run_dir, checkpoint, "test").features)
    path = umap_path(run_dir, checkpoint, "test")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: np.save(f, coordinates))


# --- reading the map and the kNN accuracy ------------------------------------------------------------


@dataclass
class MapData:
    coordinates: np.ndarray  # float32 [N, 2], one row per test image
    labels: np.ndarray  # int64 [N]
    indices: np.ndarray  # int64 [N], test-split positions (what a click on a point refers to)
    classes: list[str]


def load_map(run_dir: Path, checkpoint: Path) -> MapData:
    """The test split's 2-D map with its labels; NotPrepared when not computed yet."""
    path = umap_path(run_dir, checkpoint, "test")
    test = load_split(run_dir, checkpoint, "test")
    if not is_fresh(path, checkpoint):
        raise NotPrepared(f"The map of {Path(checkpoint).name} has not been computed yet; compute it first.")
    try:
        coordinates = np.load(path, allow_pickle=False)
    except Exception:  # damaged file
        coordinates = np.zeros((0, 2), np.float32)
    if len(coordinates) != len(test.labels):
        raise NotPrepared(f"The saved map of {Path(checkpoint).name} does not match its embeddings; compute it again.")
    return MapData(coordinates, test.labels, test.indices, test.classes)


@dataclass(frozen=True)
class KnnResult:
    accuracy: float  # percent of test images whose k nearest training images vote for their class
    per_class: list[float]  # percent per class (NaN for a class without test images)
    classes: list[str]
    k: int
    temperature: float
    bank_size: int
    query_size: int


def checkpoint_knn(
    run_dir: Path, checkpoint: Path, k: int = KNN_K, temperature: float = KNN_TEMPERATURE, recompute: bool = False
) -> KnnResult:
    """kNN accuracy from the saved embeddings: all training images vote, every test image is a query.

    Computed once per (k, temperature) and kept in `<checkpoint>-knn.json` beside the embeddings.
    """
    path = knn_path(run_dir, checkpoint)
    key = _knn_key(k, temperature)
    cached = _saved_knn(run_dir, checkpoint)
    if "predicted" in cached.get(key, {}) and not recompute:
        row = cached[key]
        return KnnResult(
            float(row["accuracy"]),
            per_class_from_json(row["per_class"]),
            list(row["classes"]),
            int(row["k"]),
            float(row["temperature"]),
            int(row["bank_size"]),
            int(row["query_size"]),
        )
    bank = load_split(run_dir, checkpoint, "train")
    queries = load_split(run_dir, checkpoint, "test")
    if len(bank.labels) == 0 or len(queries.labels) == 0:
        raise NotPrepared("kNN accuracy needs both training and test images; this data set lacks one of them.")
    classes = bank.classes
    predicted = knn_predict(
        torch.from_numpy(bank.features),
        torch.from_numpy(bank.labels),
        torch.from_numpy(queries.features),
        len(classes),
        int(k),
        float(temperature),
    )
    labels = torch.from_numpy(queries.labels)
    accuracy = accuracy_percent(predicted, labels)
    per_class = per_class_accuracy(predicted, labels, len(classes))
    result = KnnResult(accuracy, per_class, classes, int(k), float(temperature), len(bank.labels), len(queries.labels))
    cached[key] = {
        "accuracy": accuracy,
        "per_class": per_class_to_json(per_class),
        "classes": classes,
        "k": int(k),
        "temperature": float(temperature),
        "bank_size": len(bank.labels),
        "query_size": len(queries.labels),
        # Each test image's voted class, in test-split order: the map colours the images it gets wrong.
        "predicted": [int(p) for p in predicted],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, cached)
    return result


def saved_knn_votes(run_dir: Path, checkpoint: Path, k: int = KNN_K, temperature: float = KNN_TEMPERATURE) -> np.ndarray | None:
    """Each test image's kNN-voted class (int64, test-split order) as `checkpoint_knn` saved it; None when not computed."""
    row = _saved_knn(run_dir, checkpoint).get(_knn_key(k, temperature), {})
    predicted = row.get("predicted") if isinstance(row, dict) else None
    return np.asarray(predicted, dtype=np.int64) if isinstance(predicted, list) else None
