"""What the Embeddings and Retrieval pages compute: everything heavy behind them, no rendering.

- Which checkpoints of a run can be inspected (`checkpoint_choices`): every evaluation point, so a
  map can be watched improving over training, plus `last.pt` when it is newer than all of them.
- Preparing a checkpoint (`prepare_checkpoint`, meant to run in a `tasks.TaskRunner`): training-split
  embeddings (the search bank), test-split embeddings, their 2-D UMAP map and the kNN accuracy,
  with progress. Results live in `<run>/embeddings/` (see embed.py) and are reused.
- Queries: a test image, or an uploaded file (`query_from_upload` turns any common image into the
  data set's uint8 format, or raises ValueError saying plainly what is wrong with the file).
- Nearest neighbours in the training split, three ways, so a page can show what the model learned:
  under the chosen checkpoint, under the same run's random-init network (`step-00000000.pt`), and
  under raw pixels (mean-centred, L2-normalised; the floor any learned representation must beat).
  Similarity is always cosine similarity, and a query taken from the bank never matches itself.

Loaded embeddings, backbones and the pixel bank are kept in small in-process caches keyed by file
path and modification time, so a page that reruns on every click does not reload them.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import embed
from .checkpoint import CheckpointError, load_backbone
from .config import TrainConfig
from .data import Dataset, image_to_uint8_tensor, load_dataset
from .device import resolve_device
from .files import read_json, write_atomic, write_json_atomic
from .knn import knn_predict, per_class_accuracy, pixel_features
from .runs import list_snapshots

RANDOM_INIT_NAME = "step-00000000.pt"  # train() saves the untrained network as the first snapshot
FULL, BANK = "full", "bank"  # what prepare_checkpoint computes: everything, or only the search bank
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_PIXELS = 50_000_000  # width x height; far above any photo's need, far below a decompression bomb
FEATURE_CHUNK = 2048  # images per progress report while computing embeddings
MIN_UMAP_POINTS = 20  # below this UMAP's neighbour graph breaks down; a plain 2-D projection is drawn instead

Report = Callable[..., None]  # report(message=None, fraction=None), as tasks.TaskRunner passes it


class NotPrepared(ValueError):
    """Embeddings (or the map) of a checkpoint have not been computed yet; the message says what to do."""


# --------------------------------------------------------------------------------------------------
# Checkpoints to choose from
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointChoice:
    path: Path
    step: int | None  # None when the file could not be read
    label: str  # what a person sees in a select box

    @property
    def random_init(self) -> bool:
        return self.path.name == RANDOM_INIT_NAME


def checkpoint_choices(run_dir: Path) -> list[CheckpointChoice]:
    """The run's evaluation-point checkpoints, oldest first, then last.pt when it is newer than all of them."""
    run_dir = Path(run_dir)
    choices = []
    for snapshot in list_snapshots(run_dir):
        label = snapshot.label
        if snapshot.path.name == RANDOM_INIT_NAME:
            label += " · random init (before any training)"
        choices.append(CheckpointChoice(snapshot.path, snapshot.step, label))
    last = run_dir / "last.pt"
    if last.is_file():
        step = checkpoint_step(last)
        newest = choices[-1].step if choices else None
        if newest is None or step is None or step > newest:
            where = f"step {step:,}" if step is not None else "unknown step"
            choices.append(CheckpointChoice(last, step, f"{where} · latest save (last.pt)"))
    return choices


def random_init_checkpoint(run_dir: Path) -> Path | None:
    """The run's untrained network (`step-00000000.pt`), or None when the run has none."""
    path = Path(run_dir) / RANDOM_INIT_NAME
    return path if path.is_file() else None


_step_cache: dict[tuple, int | None] = {}


def checkpoint_step(path: Path) -> int | None:
    """The training step a checkpoint was saved at, read cheaply (tensors are memory-mapped, not loaded)."""
    path = Path(path)
    try:
        key = _file_key(path)
    except OSError:
        return None
    if key not in _step_cache:
        if len(_step_cache) > 1000:  # last.pt changes all through a long training: keep this bounded
            _step_cache.clear()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            _step_cache[key] = int(state["step"]) if isinstance(state, dict) and "step" in state else None
        except Exception:  # damaged or foreign file: the page shows the real error when it is used
            _step_cache[key] = None
    return _step_cache[key]


def _file_key(path: Path) -> tuple:
    stat = Path(path).stat()
    return (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


# --------------------------------------------------------------------------------------------------
# Small thread-safe caches (pages rerun on every click; several sessions share one process)
# --------------------------------------------------------------------------------------------------


class _LRU:
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


_embeddings_cache = _LRU(4)
_backbone_cache = _LRU(3)
_pixel_bank_cache = _LRU(1)  # CIFAR-10's is 300 MB in float16: keep one data set's only
_pixel_bank_lock = threading.Lock()


def clear_caches() -> None:
    """Forget every cached embedding, backbone and pixel bank (tests; freeing memory)."""
    for cache in (_embeddings_cache, _backbone_cache, _pixel_bank_cache):
        cache.clear()
    _step_cache.clear()


# --------------------------------------------------------------------------------------------------
# Data and saved results
# --------------------------------------------------------------------------------------------------


def load_data(config: TrainConfig) -> Dataset:
    """The data set a run trained on (pages cache this per process)."""
    return load_dataset(config.data, config.data_root or None, image_size=config.image_size)


def _fresh(path: Path, checkpoint: Path) -> bool:
    """Whether a result file exists and belongs to the checkpoint's current contents.

    Only last.pt is ever replaced (training saves over it), so only results of last.pt can go stale.
    Snapshots are written once; their results are never compared by time, because copies of a run
    (a git checkout of a demo run, an rsync) do not keep the order of modification times.
    """
    try:
        stat = path.stat()
    except OSError:
        return False
    if Path(checkpoint).name != "last.pt":
        return True
    try:
        return stat.st_mtime_ns >= Path(checkpoint).stat().st_mtime_ns
    except OSError:
        return False


def load_split(run_dir: Path, checkpoint: Path, split: str) -> embed.Embeddings:
    """Saved embeddings of one split (cached in memory); NotPrepared when they are missing or stale."""
    path = embed.embedding_path(run_dir, checkpoint, split)
    if not _fresh(path, checkpoint):
        raise NotPrepared(
            f"The {_split_words(split)} embeddings of {Path(checkpoint).name} have not been computed yet; "
            "compute them first."
        )
    try:
        return _embeddings_cache.get(_file_key(path), lambda: embed.load_embeddings(path))
    except Exception as error:  # a damaged .npz raises BadZipFile, EOFError, KeyError...
        raise NotPrepared(
            f"The saved {_split_words(split)} embeddings of {Path(checkpoint).name} are unreadable "
            f"({type(error).__name__}); compute them again."
        ) from None


def _split_words(split: str) -> str:
    return {"train": "training-set", "test": "test-set"}.get(split, split)


def _embeddings_ok(run_dir: Path, checkpoint: Path, split: str, data: Dataset | None) -> bool:
    try:
        saved = load_split(run_dir, checkpoint, split)
    except NotPrepared:
        return False
    # A data set that changed since (an image folder edited) would make indices point at other images.
    return data is None or len(saved.labels) == len(embed.split_images(data, split)[1])


def _knn_path(run_dir: Path, checkpoint: Path) -> Path:
    return Path(run_dir) / "embeddings" / f"{Path(checkpoint).stem}-knn.json"


def _knn_key(k: int, temperature: float) -> str:
    return f"k={int(k)},T={float(temperature):g}"


def _umap_ok(run_dir: Path, checkpoint: Path, data: Dataset | None) -> bool:
    path = embed.umap_path(run_dir, checkpoint, "test")
    if not _fresh(path, checkpoint):
        return False
    if data is None:
        return True
    try:
        return len(np.load(path, mmap_mode="r", allow_pickle=False)) == len(data.test_labels)
    except Exception:  # damaged file: compute it again
        return False


def missing_work(
    run_dir: Path, checkpoint: Path, level: str = FULL, data: Dataset | None = None,
    k: int = 200, temperature: float = 0.1,
) -> list[str]:
    """What still has to be computed for a checkpoint, in words (empty list = ready).

    level BANK: only the training-set embeddings (enough to search); FULL: also the test-set
    embeddings, their 2-D map and the kNN accuracy with (k, temperature).
    """
    missing = []
    if not _embeddings_ok(run_dir, checkpoint, "train", data):
        missing.append("training-set embeddings")
    if level == FULL:
        if not _embeddings_ok(run_dir, checkpoint, "test", data):
            missing.append("test-set embeddings")
        if not _umap_ok(run_dir, checkpoint, data):
            missing.append("the 2-D map (UMAP)")
        knn_path = _knn_path(run_dir, checkpoint)
        cached = read_json(knn_path, {}) if _fresh(knn_path, checkpoint) else {}
        if not isinstance(cached, dict) or _knn_key(k, temperature) not in cached:
            missing.append("the kNN accuracy")
    return missing


# --------------------------------------------------------------------------------------------------
# Preparing a checkpoint (background work)
# --------------------------------------------------------------------------------------------------


def prepare_checkpoint(
    run_dir: Path,
    checkpoint: Path,
    progress: Report | None = None,
    data: Dataset | None = None,
    level: str = FULL,
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
        report(f"Loading the data set ({config.data})...", 0.0)
        data = load_data(config)

    splits = ["train", "test"] if level == FULL else ["train"]
    todo = [split for split in splits if not _embeddings_ok(run_dir, checkpoint, split, data)]
    need_map = level == FULL and ("test" in todo or not _umap_ok(run_dir, checkpoint, data))
    need_knn = level == FULL and (bool(todo) or "the kNN accuracy" in missing_work(run_dir, checkpoint, FULL, data, k, temperature))
    map_share = 0.35 if need_map else 0.0  # UMAP reports no progress of its own; give it a fixed share
    knn_share = 0.05 if need_knn else 0.0
    feature_share = 1.0 - map_share - knn_share

    total = sum(len(embed.split_images(data, split)[1]) for split in todo)
    done = 0
    if todo:
        device = resolve_device("auto")
        backbone = backbone.to(device)
        for split in todo:
            images, labels = embed.split_images(data, split)
            chunks = []
            for start in range(0, len(images), FEATURE_CHUNK):
                report(
                    f"Computing {_split_words(split)} embeddings with {checkpoint.name} on {device.type.upper()}: "
                    f"{start:,} of {len(images):,} images",
                    feature_share * done / max(total, 1),
                )
                batch = images[start : start + FEATURE_CHUNK]
                chunks.append(embed.compute_features(backbone, batch))
                done += len(batch)
            features = np.concatenate(chunks) if chunks else np.zeros((0, backbone.out_dim), np.float32)
            embed.save_embeddings(run_dir, checkpoint, split, features, labels.numpy(), data.classes)
        del backbone
        _knn_path(run_dir, checkpoint).unlink(missing_ok=True)  # measured on the old embeddings
    if need_map:
        stale = embed.umap_path(run_dir, checkpoint, "test")
        stale.unlink(missing_ok=True)  # a stale map (last.pt replaced) would otherwise be reused
        count = len(data.test_labels)
        report(
            f"Drawing the 2-D map (UMAP) of {count:,} test images. The first map after the server starts "
            "also compiles UMAP, which can take a minute or two...",
            feature_share,
        )
        if count >= MIN_UMAP_POINTS:
            embed.umap_coordinates(run_dir, checkpoint, "test", data)
        else:
            _save_pca_map(run_dir, checkpoint)
    if need_knn:
        report("Measuring the kNN accuracy on the test set...", 1.0 - knn_share)
        checkpoint_knn(run_dir, checkpoint, k, temperature, recompute=True)
    report("Done.", 1.0)


def _save_pca_map(run_dir: Path, checkpoint: Path) -> None:
    """The map of a tiny test set: its two main directions of variation (PCA) instead of UMAP."""
    features = load_split(run_dir, checkpoint, "test").features
    centred = features - features.mean(axis=0, keepdims=True) if len(features) else features
    coordinates = np.zeros((len(features), 2), dtype=np.float32)
    if len(features) > 1:
        _u, _s, vt = np.linalg.svd(centred, full_matrices=False)
        projected = centred @ vt[:2].T
        coordinates[:, : projected.shape[1]] = projected
    path = embed.umap_path(run_dir, checkpoint, "test")
    buffer = io.BytesIO()
    np.save(buffer, coordinates)
    write_atomic(path, lambda f: f.write(buffer.getvalue()))


# --------------------------------------------------------------------------------------------------
# Reading prepared results: the map and the kNN accuracy
# --------------------------------------------------------------------------------------------------


@dataclass
class MapData:
    coordinates: np.ndarray  # float32 [N, 2], one row per test image
    labels: np.ndarray  # int64 [N]
    indices: np.ndarray  # int64 [N], test-split positions (what a click on a point refers to)
    classes: list[str]


def load_map(run_dir: Path, checkpoint: Path) -> MapData:
    """The test split's 2-D map with its labels; NotPrepared when not computed yet."""
    path = embed.umap_path(run_dir, checkpoint, "test")
    test = load_split(run_dir, checkpoint, "test")
    if not _fresh(path, checkpoint):
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
    run_dir: Path, checkpoint: Path, k: int = 200, temperature: float = 0.1, recompute: bool = False
) -> KnnResult:
    """kNN accuracy from the saved embeddings: all training images vote, every test image is a query.

    Computed once per (k, temperature) and kept in `<checkpoint>-knn.json` beside the embeddings.
    """
    path = _knn_path(run_dir, checkpoint)
    key = _knn_key(k, temperature)
    cached = read_json(path, {}) if _fresh(path, checkpoint) else {}
    cached = cached if isinstance(cached, dict) else {}
    if key in cached and not recompute:
        row = cached[key]
        return KnnResult(
            float(row["accuracy"]), [float("nan") if v is None else float(v) for v in row["per_class"]],
            list(row["classes"]), int(row["k"]), float(row["temperature"]), int(row["bank_size"]), int(row["query_size"]),
        )
    bank = load_split(run_dir, checkpoint, "train")
    queries = load_split(run_dir, checkpoint, "test")
    if len(bank.labels) == 0 or len(queries.labels) == 0:
        raise NotPrepared("kNN accuracy needs both training and test images; this data set lacks one of them.")
    classes = bank.classes
    predicted = knn_predict(
        torch.from_numpy(bank.features), torch.from_numpy(bank.labels), torch.from_numpy(queries.features),
        len(classes), int(k), float(temperature),
    )
    labels = torch.from_numpy(queries.labels)
    accuracy = 100.0 * float((predicted == labels).float().mean())
    per_class = per_class_accuracy(predicted, labels, len(classes))
    result = KnnResult(accuracy, per_class, classes, int(k), float(temperature), len(bank.labels), len(queries.labels))
    cached[key] = {
        "accuracy": accuracy, "per_class": [None if math.isnan(v) else v for v in per_class], "classes": classes,
        "k": int(k), "temperature": float(temperature), "bank_size": len(bank.labels), "query_size": len(queries.labels),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, cached)
    return result


# --------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------

_NOT_AN_IMAGE = (
    "This file is not an image that can be read. Upload a picture file: PNG, JPEG, GIF, BMP, WebP or TIFF."
)
_DAMAGED = (
    "This image file is damaged or cut short (truncated), so it cannot be read in full. "
    "Try saving or downloading it again."
)


def query_from_upload(data: bytes, image_size: int = 32) -> torch.Tensor:
    """An uploaded file as the data set's image format (uint8 [3, S, S] RGB), or a plain ValueError.

    Refuses empty files, files that are not images, damaged or truncated files, and images over
    50 megapixels (checked from the header, before anything is decoded, so a decompression bomb
    costs nothing). Grayscale, 16-bit, palette, transparent and animated images (first frame) are
    converted the way the data sets are (see data.image_to_uint8_tensor).
    """
    if data is None or len(data) == 0:
        raise ValueError("The uploaded file is empty (0 bytes). Choose a picture file, such as a .png or .jpg.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(
            f"The file is {len(data) / 2**20:.0f} MB; files up to {MAX_UPLOAD_BYTES // 2**20} MB are accepted. "
            "The model looks at 32×32 pixels, so a small copy of the picture works just as well."
        )
    try:
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            width, height = img.size
            image_format = img.format
    except Image.DecompressionBombError:
        raise ValueError(_too_large_message(None, None)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError):
        raise ValueError(_NOT_AN_IMAGE) from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise ValueError(_too_large_message(width, height))
    if width < 1 or height < 1:
        raise ValueError(_NOT_AN_IMAGE)
    try:
        # verify() walks the file's structure and checksums without decoding (PNG: every chunk's CRC,
        # up to the end marker), which catches a cut-short file even though data.py lets Pillow decode
        # truncated images (data sets keep slightly damaged JPEGs; a query should not be half grey).
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception:  # Pillow raises many kinds for damaged data
        raise ValueError(_DAMAGED) from None
    if image_format in ("JPEG", "MPO") and _jpeg_cut_short(data):
        raise ValueError(_DAMAGED)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return image_to_uint8_tensor(img, image_size)
    except Image.DecompressionBombError:
        raise ValueError(_too_large_message(width, height)) from None
    except Exception:
        raise ValueError(_DAMAGED) from None


def _too_large_message(width: int | None, height: int | None) -> str:
    size = f"{width:,}×{height:,} pixels ({width * height / 1e6:.0f} megapixels)" if width else "too many pixels"
    return (
        f"This image is too large to open safely: {size}; the limit is {MAX_UPLOAD_PIXELS // 1_000_000} "
        "megapixels. Shrink it first (the model only looks at 32×32 pixels anyway)."
    )


def _jpeg_cut_short(data: bytes) -> bool:
    """True when a JPEG has no end-of-image marker after its last scan (a download cut short).

    Inside compressed scan data a 0xFF byte is always followed by 0x00 or a restart marker, so the
    two markers cannot appear by accident; an EXIF thumbnail's end marker comes before the main scan.
    """
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0


def image_at(data: Dataset, split: str, index: int) -> torch.Tensor:
    """Image `index` of a split (uint8 [3, S, S]); ValueError when there is no such image."""
    images, _labels = embed.split_images(data, split)
    if not 0 <= int(index) < len(images):
        raise ValueError(
            f"There is no {_split_words(split)} image #{index}; the numbers go from 0 to {len(images) - 1:,}."
        )
    return images[int(index)]


def gallery_indices(labels: Sequence[int] | np.ndarray | torch.Tensor, per_class: int, seed: int = 0,
                    only_class: int | None = None) -> list[int]:
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


def _as_image_tensor(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError("A query image must be uint8 with shape [3, height, width].")
    return tensor


def _backbone(checkpoint: Path) -> torch.nn.Module:
    # One image at a time: the CPU answers faster than a GPU round trip and never competes with training.
    return _backbone_cache.get(_file_key(checkpoint), lambda: load_backbone(checkpoint)[0].cpu())


def embed_query(checkpoint: Path, image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The L2-normalised feature vector (float32 [D]) of one image under `checkpoint`'s backbone."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"There is no checkpoint file at {checkpoint}.")
    features = embed.compute_features(_backbone(checkpoint), _as_image_tensor(image)[None])
    return features[0]


# --------------------------------------------------------------------------------------------------
# Nearest neighbours in the training split
# --------------------------------------------------------------------------------------------------


class Neighbour(NamedTuple):
    train_index: int  # position in the training split
    label: int
    similarity: float  # cosine similarity to the query, -1..1


def neighbours(
    run_dir: Path, checkpoint: Path, query_feature: np.ndarray, k: int, exclude_train_index: int | None = None
) -> list[Neighbour]:
    """The k training images most similar to `query_feature` under `checkpoint`, most similar first.

    `exclude_train_index`: the query's own position when it comes from the training split; it is
    never returned. NotPrepared when the checkpoint's training-set embeddings are missing.
    """
    bank = load_split(run_dir, checkpoint, "train")
    query = np.asarray(query_feature, dtype=np.float32).reshape(-1)
    if bank.features.shape[1:] != query.shape:
        raise ValueError(
            f"The query has {query.shape[0]} features but {Path(checkpoint).name} makes {bank.features.shape[1]}; "
            "embed the query with the same checkpoint."
        )
    _check_k(k)
    exclude_row = _row_of(bank.indices, exclude_train_index)
    rows, sims = embed.nearest_neighbours(bank.features, query, int(k), exclude_row)
    return [Neighbour(int(bank.indices[r]), int(bank.labels[r]), float(s)) for r, s in zip(rows, sims)]


def image_neighbours(
    run_dir: Path, checkpoint: Path, image: torch.Tensor | np.ndarray, k: int, exclude_train_index: int | None = None
) -> list[Neighbour]:
    """embed_query + neighbours: the k training images most similar to an image under `checkpoint`."""
    return neighbours(run_dir, checkpoint, embed_query(checkpoint, image), k, exclude_train_index)


def neighbours_of_test_image(run_dir: Path, checkpoint: Path, test_index: int, k: int) -> list[Neighbour]:
    """Neighbours of a test image (a point on the map), using its saved test-set embedding."""
    queries = load_split(run_dir, checkpoint, "test")
    row = _row_of(queries.indices, test_index)
    if row is None:
        raise ValueError(
            f"There is no test image #{test_index}; the numbers go from 0 to {len(queries.indices) - 1:,}."
        )
    return neighbours(run_dir, checkpoint, queries.features[row], k)


def _check_k(k: int) -> None:
    if int(k) < 1:
        raise ValueError(f"The number of neighbours must be at least 1; got {k}.")


def _row_of(indices: np.ndarray, index: int | None) -> int | None:
    if index is None:
        return None
    rows = np.flatnonzero(indices == int(index))
    return int(rows[0]) if len(rows) else None


def _pixel_bank(data: Dataset) -> tuple[np.ndarray, torch.Tensor]:
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
    _check_k(k)
    bank, mean = _pixel_bank(data)
    query = pixel_features(_as_image_tensor(image)[None], mean)[0][0].numpy().astype(np.float32)
    if query.shape[0] != bank.shape[1]:
        raise ValueError("The query image does not have the data set's image size.")
    similarity = np.empty(len(bank), dtype=np.float32)
    for start in range(0, len(bank), 8192):
        similarity[start : start + 8192] = bank[start : start + 8192].astype(np.float32) @ query
    if exclude_train_index is not None and 0 <= int(exclude_train_index) < len(similarity):
        similarity[int(exclude_train_index)] = -np.inf
    count = min(int(k), len(similarity) - (exclude_train_index is not None))
    if count <= 0:
        return []
    top = np.argpartition(-similarity, count - 1)[:count] if count < len(similarity) else np.arange(len(similarity))
    order = top[np.argsort(-similarity[top], kind="stable")]
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
