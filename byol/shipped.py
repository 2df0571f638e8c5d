"""A demo run's precomputed artefacts: shipped with it, adopted where the local images are the same.

Embeddings, the 2-D map, the kNN votes and the training film of a CIFAR-10 run take minutes of CPU to
compute, and a visitor opening the demo should not wait for them. A demo therefore carries them in
`<run>/shipped/` (tracked by git), beside a record of the images they were computed from.

Saved embeddings point at images by their position in the data set's split, so they are right only for
a copy that lists the same images in the same order. CIFAR-10 read from torchvision's files lists the
test images in another order than an image folder of it does, for example. `adopt` therefore checks the
local images against the record (every label in order, and a few images pixel by pixel, within what
two JPEG decoders can differ by) before it copies anything into the run's artefact store
(`<run>/embeddings/`, ignored by git). There the store finds the files as if they had been computed
here. A copy that does not match adopts nothing, and the pages compute the artefacts as for any run.

`ship` writes the folder (benchmarks/make_demo.py); `adopt` runs whenever a run's images are loaded
(`run_images.load_run_images`), so the pages and the command line find the same files.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from .dataset import SPLITS, Dataset
from .files import write_atomic, write_npz_atomic
from .runs import EMBEDDINGS_FOLDER

log = logging.getLogger(__name__)

SHIPPED_FOLDER = "shipped"
IDENTITY_FILE = "data-identity.npz"  # what the shipped artefacts were computed from
PROBES_PER_SPLIT = 16  # images compared pixel by pixel; together with the labels they pin the order
# Mean absolute difference, in 0-255 levels, under which two images are the same picture. Two JPEG
# decoders give the same file's pixels within a level or two; two different CIFAR images differ by tens.
PIXEL_TOLERANCE = 4.0


def shipped_folder(run_dir: Path) -> Path:
    return Path(run_dir) / SHIPPED_FOLDER


def _probe_rows(count: int) -> np.ndarray:
    """The positions compared pixel by pixel: spread evenly over the split, ends included."""
    return np.unique(np.linspace(0, max(count - 1, 0), min(PROBES_PER_SPLIT, count)).astype(np.int64))


def data_identity(data: Dataset) -> dict[str, np.ndarray]:
    """What identifies the images and their order: each split's labels in order and a few of its images."""
    identity: dict[str, np.ndarray] = {"classes": np.array(data.classes)}
    for split in SPLITS:
        images, labels = (tensor.numpy() for tensor in data.split(split))
        rows = _probe_rows(len(labels))
        identity[f"{split}_labels"] = labels.astype(np.int64)
        identity[f"{split}_probe_rows"] = rows
        identity[f"{split}_probe_images"] = images[rows]
    return identity


def identity_problem(recorded: dict[str, np.ndarray], data: Dataset) -> str | None:
    """Why `data` is not the data set `recorded` describes, in words; None when it is."""
    if [str(c) for c in recorded["classes"]] != list(data.classes):
        return "its classes differ"
    for split in SPLITS:
        images, labels = (tensor.numpy() for tensor in data.split(split))
        if not np.array_equal(recorded[f"{split}_labels"], labels):
            return f"its {split} images are other images, or in another order (the labels differ)"
        rows, probes = recorded[f"{split}_probe_rows"], recorded[f"{split}_probe_images"]
        if probes.shape[1:] != images.shape[1:]:
            return f"its images are {images.shape[-1]} pixels wide, the shipped ones {probes.shape[-1]}"
        difference = np.abs(images[rows].astype(np.float32) - probes.astype(np.float32)).mean(axis=(1, 2, 3))
        if difference.max() > PIXEL_TOLERANCE:
            return f"its {split} images are other images, or in another order (compared pixel by pixel)"
    return None


def read_identity(run_dir: Path) -> dict[str, np.ndarray] | None:
    """The record of the images the run's shipped artefacts were computed from; None when absent or unreadable."""
    path = shipped_folder(run_dir) / IDENTITY_FILE
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except Exception:  # missing, or damaged (BadZipFile, EOFError...): then nothing is adopted
        return None


def shipped_files(run_dir: Path) -> list[Path]:
    """The run's shipped artefact files (the identity record left out)."""
    folder = shipped_folder(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != IDENTITY_FILE and not p.name.startswith("."))


def ships(run_dir: Path, name: str) -> bool:
    """Whether the run carries an artefact file of this name, to be adopted if its local images match."""
    return (shipped_folder(run_dir) / name).is_file()


def ship(run_dir: Path, data: Dataset, artefacts: list[Path]) -> list[Path]:
    """Copy `artefacts` (files of the run's artefact store) into `<run>/shipped/`, with the identity of
    `data`, the images they were computed from. Returns the shipped copies."""
    folder = shipped_folder(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_npz_atomic(folder / IDENTITY_FILE, data_identity(data))
    copies = []
    for artefact in artefacts:
        copies.append(folder / Path(artefact).name)
        _copy_atomic(Path(artefact), copies[-1])
    return copies


def adopt(run_dir: Path, data: Dataset) -> list[str]:
    """Copy the shipped artefacts the run's artefact store lacks into it, if `data` is the data set they
    were computed from. Returns the names copied (none when nothing is shipped, missing, or the images
    differ). Files already in the store are kept: they were computed here."""
    store = Path(run_dir) / EMBEDDINGS_FOLDER
    missing = [p for p in shipped_files(run_dir) if not (store / p.name).exists()]
    if not missing:
        return []
    recorded = read_identity(run_dir)
    if recorded is None or identity_problem(recorded, data) is not None:
        return []
    copied = []
    try:
        store.mkdir(exist_ok=True)
        for path in missing:
            _copy_atomic(path, store / path.name)
            copied.append(path.name)
    except OSError as error:  # a read-only checkout or a full disk: the pages compute what is missing
        log.warning("could not adopt the shipped artefacts of %s: %s", run_dir, error)
    return copied


def _copy_atomic(source: Path, target: Path) -> None:
    def write(handle) -> None:
        with source.open("rb") as original:
            shutil.copyfileobj(original, handle)

    write_atomic(target, write)
