"""Data sets as whole uint8 tensors in memory: CIFAR-10, an image folder (or archive of one), or synthetic.

Every source ends up as the same `Dataset`: uint8 images [N, 3, S, S] on the CPU plus int64 labels, for
a train and a test split. Training keeps the whole set in memory and augments it with batched tensor
ops (byol/augment.py), so there is no per-image loader here, only "decode once, then slice tensors".

Sources, as the user types them:
- "cifar10":   torchvision's download (cifar10.py; fails without internet, and the error says what to do);
- a path:      a folder laid out as train/<class>/<images> and test/<class>/<images>, or a .tar.gz,
               .tgz, .tar or .zip archive of one (possibly inside one top-level folder). Archives are
               read in place and nothing is ever written beside the source, which may be read-only;
               decoded images are cached under the project cache instead (see images.py);
- "synthetic": shapes and textures drawn on the fly (synthetic.py), for demos and tests that need no files.

Problems the user can fix (missing path, wrong layout, corrupt archive...) raise `DataError` with a
plain-language message that the dashboard and the command line show as is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from byol import cifar10
from byol.cifar10 import CLASS_NAMES_CIFAR10  # noqa: F401  (kept importable from here)
from byol.config import ARCHIVE_EXTENSIONS, CIFAR10_KIND, IMAGE_FOLDER_WORDS, PATH_KIND, SYNTHETIC_KIND, TrainConfig, source_kind
from byol.dataset import DataError, Dataset
from byol.images import IMAGE_EXTENSIONS, cache_file, decode_image, read_cache, write_cache
from byol.synthetic import synthetic_dataset

log = logging.getLogger(__name__)

_EXPECTED_LAYOUT = (
    "Expected layout: train/<class>/<images> and test/<class>/<images>, for example "
    "train/cat/0001.jpg and test/cat/0001.jpg, at the top of the folder or archive or inside one "
    "folder there."
)


def default_cache_dir() -> Path:
    """The project cache: $BYOL_CACHE_DIR if set, else <repo root>/.cache (git-ignored)."""
    env = os.environ.get("BYOL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent.parent / ".cache"


def layout_problem(source: str) -> str | None:
    """What is wrong with the layout of an image folder or .zip `source`, as one sentence; None if fine.

    Cheap enough to run before a run folder is made (a folder's walk, a zip's table of contents), so
    the dashboard refuses a folder without train/<class>/ at once instead of queueing a run that
    fails. Named sources, missing paths (config validation says so) and tar archives (listing one
    means decompressing all of it) return None here and are checked when they load.
    """
    if source_kind(source) != PATH_KIND:
        return None
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            _find_layout(_list_folder(path), path.resolve())
        elif path.is_file() and path.name.lower().endswith(".zip"):
            _find_layout(_list_archive(path), path.resolve())
        elif path.is_file() and not _is_archive_name(path):
            raise _not_a_data_set_file(path.resolve())
    except DataError as error:
        return str(error)
    except OSError as error:
        return f"{path} cannot be read: {error.strerror or error}."
    return None


def load_dataset(source: str, root: str | None = None, cache_dir: Path | None = None, image_size: int = 32) -> Dataset:
    """Load a data set by the name or path the user gave.

    `root` is where torchvision keeps CIFAR-10 (only used for "cifar10"); `cache_dir` is the project
    cache (default `default_cache_dir()`), decoded image folders are cached in `<cache_dir>/data`.
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"The image size must be a whole number of at least 8 pixels (got {image_size!r}).")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kind = source_kind(source)
    if kind == SYNTHETIC_KIND:
        return synthetic_dataset(image_size=image_size)
    if kind == CIFAR10_KIND:
        return cifar10.load(root, cache_dir, image_size)
    return _load_folder_or_archive(Path(source).expanduser(), cache_dir / "data", image_size)


def load_for(config: TrainConfig) -> Dataset:
    """The data set a run trained on, as its config names it (pages cache this per process)."""
    return load_dataset(config.data, config.data_root or None, image_size=config.image_size)


# --------------------------------------------------------------------------------------------------
# Image folders and archives of them
# --------------------------------------------------------------------------------------------------
#
# All three containers (folder, tar, zip) are first reduced to the same listing: relative POSIX paths
# of folders and files. Layout checks work on that listing, so they behave the same everywhere and
# run before any image is decoded. Then the image bytes are read in the container's own order (a
# .tar.gz can only be read cheaply front to back) and decoded; the result is cached as one .npz.


# What a damaged or mislabelled archive raises, depending on where the damage is (header, index,
# compressed stream, or the end cut off).
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


@dataclass
class _Listing:
    dirs: set[tuple[str, ...]]  # every folder, given or implied by a file inside it
    files: list[tuple[str, ...]]  # every regular file, in the container's order
    stamp: list  # for folders: what the cache key covers besides the path (count, size, newest time)


@dataclass
class _Layout:
    prefix: tuple[str, ...]  # folder holding train/ and test/: () or one top-level folder
    classes: list[str]
    files: dict[tuple[str, ...], tuple[int, int]]  # image file -> (split 0=train 1=test, class index)


def _is_archive_name(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_EXTENSIONS)


def _dataset_name(path: Path) -> str:
    name = path.name
    for ext in ARCHIVE_EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return f"folder:{name}"


def image_counts(path: Path) -> tuple[int, int] | None:
    """(training images, test images) of an image folder or archive by the loader's own rules (the files
    it would decode), or None when it is no usable data set. Lists it without decoding anything; a
    .tar.gz is decompressed once to be listed."""
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            listing = _list_folder(path)
        elif _is_archive_name(path):
            listing = _list_archive(path)
        else:
            return None
        layout = _find_layout(listing, path.resolve())
    except (DataError, OSError):
        return None
    train = sum(1 for split, _ in layout.files.values() if split == 0)
    return train, len(layout.files) - train


def _load_folder_or_archive(path: Path, cache_folder: Path, image_size: int) -> Dataset:
    if not path.exists():
        raise DataError(f"Data source not found: {path}. Give 'cifar10', 'synthetic', or the path of {IMAGE_FOLDER_WORDS}.")
    path = path.resolve()
    listing: _Listing | None = None
    if path.is_dir():
        listing = _list_folder(path)  # walking the folder is also how its cache stamp is taken
        stamp = listing.stamp
    elif _is_archive_name(path):
        st = path.stat()  # an archive changes as a whole: size and time are stamp enough
        stamp = ["archive", st.st_size, st.st_mtime_ns]
    else:
        raise _not_a_data_set_file(path)

    kept = cache_file(cache_folder, path, stamp, image_size)
    fingerprint = kept.stem
    cached = read_cache(kept)
    if cached is not None:
        return Dataset(name=_dataset_name(path), fingerprint=fingerprint, **cached)

    # Listing a .tar.gz means decompressing all of it, so it is only done when the cache missed.
    layout = _find_layout(listing or _list_archive(path), path)
    started = time.perf_counter()
    arrays = _decode_all(path, layout, image_size)
    decoded = _assemble(path, layout, arrays)
    log.info("decoded %d images from %s in %.1f s", len(arrays), path, time.perf_counter() - started)
    write_cache(kept, decoded)
    return Dataset(name=_dataset_name(path), fingerprint=fingerprint, **decoded)


def _not_a_data_set_file(path: Path) -> DataError:
    kind = "a single image, not a data set" if path.suffix.lower() in IMAGE_EXTENSIONS else "not a supported file type"
    return DataError(f"{path} is {kind}. Give {IMAGE_FOLDER_WORDS}.")


def _clean_parts(name: str) -> tuple[str, ...] | None:
    """Archive member name as path parts, or None for entries to ignore (hidden, macOS metadata, unsafe)."""
    parts = tuple(p for p in name.replace("\\", "/").split("/") if p not in ("", "."))
    # "._x.jpg" and "__MACOSX/" are resource forks macOS adds to zips; ".DS_Store", ".git" etc. are
    # never images either; ".." (starts with a dot too) would point outside the archive.
    if not parts or any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts


def _with_parents(files: list[tuple[str, ...]], dirs: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    # Archives need not list folders as entries; a file implies all its parent folders. Only the
    # first three levels ([top/]train/<class>) matter for the layout.
    for parts in files:
        for depth in range(1, min(len(parts), 4)):
            dirs.add(parts[:depth])
    return dirs


def _list_folder(path: Path) -> _Listing:
    """Files under train/ and test/ of `path`, or of its subfolders (one level down)."""
    tops = [()] + sorted((entry.name,) for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))
    dirs: set[tuple[str, ...]] = set()
    files: list[tuple[str, ...]] = []
    count, total_size, newest = 0, 0, 0
    for top in tops:
        for split in ("train", "test"):
            split_dir = path.joinpath(*top, split)
            if not split_dir.is_dir():
                continue
            for folder, subdirs, names in os.walk(split_dir, followlinks=True):
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
                rel = Path(folder).relative_to(path).parts
                dirs.add(rel)
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    files.append(rel + (name,))
                    # A cheap stand-in for the content: count, total size and newest change time.
                    st = os.stat(os.path.join(folder, name))
                    count, total_size, newest = count + 1, total_size + st.st_size, max(newest, st.st_mtime_ns)
    # The names go in too (hashed), so renaming a class folder or moving files between classes,
    # which changes no size or time, still gives a new cache entry.
    names = hashlib.sha256("\n".join("/".join(f) for f in files).encode()).hexdigest()
    return _Listing(dirs=_with_parents(files, dirs), files=files, stamp=["folder", count, total_size, newest, names])


def _first_line(error: BaseException) -> str:
    """An archive library's error in one line: tarfile lists every method it tried, one per line,
    and the message must stay one plain line (the command line prints it as its only line)."""
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(":") if lines else type(error).__name__


def _list_archive(path: Path) -> _Listing:
    dirs: set[tuple[str, ...]] = set()
    files: list[tuple[str, ...]] = []
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                entries = [(info.filename, info.is_dir()) for info in zf.infolist()]
        else:
            with tarfile.open(path, "r:*") as tf:  # "r:*" reads plain, gzip, bz2 and xz tars alike
                entries = [(m.name, m.isdir()) for m in tf.getmembers() if m.isfile() or m.isdir()]
    except _ARCHIVE_ERRORS as exc:
        raise DataError(
            f"Could not read the archive {path}: it is damaged or not a {path.suffix} archive ({_first_line(exc)})."
        ) from exc
    for name, is_dir in entries:
        parts = _clean_parts(name)
        if parts is None:
            continue
        (dirs.add if is_dir else files.append)(parts)  # type: ignore[operator]
    return _Listing(dirs=_with_parents(files, dirs), files=files, stamp=[])


def _data_root(listing: _Listing, path: Path) -> tuple[str, ...]:
    """The folder holding train/ and test/: the top itself, or the one folder there that has both."""
    candidates = [
        p
        for p in [()] + sorted(d for d in listing.dirs if len(d) == 1)
        if p + ("train",) in listing.dirs and p + ("test",) in listing.dirs
    ]
    if not candidates:
        has = {name for d in listing.dirs if len(d) <= 2 for name in ("train", "test") if d[-1] == name}
        if has == {"train"}:
            problem = "it has a train/ folder but no test/ folder"
        elif has == {"test"}:
            problem = "it has a test/ folder but no train/ folder"
        else:
            problem = "no train/ and test/ folders found"
        raise DataError(f"{path} does not look like an image data set: {problem}. {_EXPECTED_LAYOUT}")
    if len(candidates) > 1 and candidates[0] != ():  # a layout at the top wins over ones inside
        found = ", ".join(c[0] + "/" for c in candidates)
        raise DataError(f"{path} holds several data sets ({found}). Point at one of them.")
    return candidates[0]


def _find_layout(listing: _Listing, path: Path) -> _Layout:
    """Locate train/ and test/, check the class folders, and list the image files to decode."""
    prefix = _data_root(listing, path)
    depth = len(prefix)
    where = "".join(part + "/" for part in prefix)  # "" or "top/", for messages

    # One pass each over folders and files: class folders per split, image files per (split, class).
    # Images may sit at any depth below their class folder; other files (notes, thumbnails) are ignored.
    class_folders: dict[str, set[str]] = {"train": set(), "test": set()}
    for d in listing.dirs:
        if len(d) == depth + 2 and d[:depth] == prefix and d[depth] in class_folders:
            class_folders[d[depth]].add(d[depth + 1])
    images: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for f in listing.files:
        if len(f) > depth + 2 and f[:depth] == prefix and f[depth] in class_folders and f[-1].lower().endswith(IMAGE_EXTENSIONS):
            images.setdefault((f[depth], f[depth + 1]), []).append(f)

    classes, test_classes = sorted(class_folders["train"]), sorted(class_folders["test"])
    if len(classes) < 2:
        found = f"found only '{classes[0]}'" if classes else "found none"
        raise DataError(
            f"{path}: the data set needs at least two classes, one folder per class inside "
            f"{where}train/ ({found}). {_EXPECTED_LAYOUT}"
        )
    if not test_classes:
        raise DataError(f"{path}: {where}test/ has no class folders. {_EXPECTED_LAYOUT}")
    unknown = [c for c in test_classes if c not in class_folders["train"]]
    if unknown:
        raise DataError(
            f"{path}: {where}test/ has class folders that are not in {where}train/: "
            f"{', '.join(unknown)}. Test classes must be among the training classes."
        )

    files: dict[tuple[str, ...], tuple[int, int]] = {}
    for split_index, (split, names) in enumerate((("train", classes), ("test", test_classes))):
        for cls in names:
            if (split, cls) not in images:
                raise DataError(
                    f"{path}: the class folder {where}{split}/{cls}/ has no images (looked for {', '.join(IMAGE_EXTENSIONS)})."
                )
            for f in images[(split, cls)]:
                files[f] = (split_index, classes.index(cls))
    return _Layout(prefix=prefix, classes=classes, files=files)


def _read_members(path: Path, wanted: set[tuple[str, ...]]) -> Iterator[tuple[tuple[str, ...], bytes | None]]:
    """(parts, bytes) for each wanted file, in the container's own order; None bytes = unreadable."""
    if path.is_dir():
        for parts in sorted(wanted):
            try:
                content: bytes | None = path.joinpath(*parts).read_bytes()
            except OSError:  # permission denied, vanished meanwhile...: skipped like a corrupt image
                content = None
            yield parts, content
    elif path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                parts = _clean_parts(info.filename)
                if parts in wanted:
                    try:
                        content = zf.read(info)
                    except _ARCHIVE_ERRORS:  # one damaged member (bad CRC...): skip just that file
                        content = None
                    yield parts, content
    else:
        # Front to back: jumping around inside a .tar.gz would decompress it again for every jump.
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                parts = _clean_parts(member.name)
                if member.isfile() and parts in wanted:
                    handle = tf.extractfile(member)
                    yield parts, handle.read() if handle is not None else None


def _decode_all(path: Path, layout: _Layout, size: int) -> dict[tuple[str, ...], np.ndarray | None]:
    # Plain PIL in one loop: 60k CIFAR JPEGs take ~10 s once, then the cache makes it moot; a process
    # pool would save a few seconds at the price of much more code.
    arrays: dict[tuple[str, ...], np.ndarray | None] = {}
    try:
        for parts, data in _read_members(path, set(layout.files)):
            arrays[parts] = decode_image(data, size) if data is not None else None
    except _ARCHIVE_ERRORS as exc:
        raise DataError(f"Could not read the archive {path}: it is damaged or cut short ({_first_line(exc)}).") from exc
    for parts in layout.files:  # listed but never reached (a truncated archive): count as unreadable
        arrays.setdefault(parts, None)
    return arrays


def _assemble(path: Path, layout: _Layout, arrays: dict[tuple[str, ...], np.ndarray | None]) -> dict:
    """Stack decoded images into the Dataset's tensors (sorted by class, then file name)."""
    skipped = sum(a is None for a in arrays.values())
    total = len(arrays)
    if skipped * 2 > total:
        raise DataError(
            f"{path}: {skipped:,} of {total:,} image files could not be read (corrupt, or not really "
            "images). Is this the right folder?"
        )
    if skipped:
        log.warning("%s: skipped %d unreadable image files of %d", path, skipped, total)

    splits = []
    for split_index, split in enumerate(("train", "test")):
        items = sorted((cls, parts) for parts, (s, cls) in layout.files.items() if s == split_index and arrays[parts] is not None)
        unreadable = {cls for s, cls in layout.files.values() if s == split_index} - {cls for cls, _ in items}
        if unreadable:
            folder = "/".join(layout.prefix + (split, layout.classes[min(unreadable)]))
            raise DataError(f"{path}: none of the images in {folder}/ could be read.")
        images = np.stack([arrays[parts] for _, parts in items]).transpose(0, 3, 1, 2)  # NHWC -> NCHW
        labels = np.array([cls for cls, _ in items], dtype=np.int64)
        splits.append((torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)))
    (train_images, train_labels), (test_images, test_labels) = splits
    return dict(
        classes=list(layout.classes),
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        skipped_files=skipped,
    )
