"""Tests for byol.data: image folders and archives of them, the decoded cache, synthetic data, CIFAR-10 offline.

Every test builds its own tiny data in tmp_path and caches into tmp_path, so nothing here needs the
network, the shared CIFAR copy, or the project cache.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from byol import data
from byol.data import CLASS_NAMES_CIFAR10, default_cache_dir, image_counts, load_dataset
from byol.dataset import DataError, Dataset
from byol.images import image_to_uint8_tensor
from byol.synthetic import synthetic_dataset

# One clear colour per class, so labels can be checked from the pixels.
COLOURS = {"cat": (220, 30, 30), "dog": (30, 200, 30), "owl": (30, 30, 220)}


def _save(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_tree(base: Path, train_per_class: int = 4, test_per_class: int = 2) -> Path:
    """train/<class>/ and test/<class>/ with PNG and JPEG files, odd sizes and odd modes mixed in."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for cls, colour in COLOURS.items():
            for i in range(count):
                img = Image.new("RGB", (32, 32), colour)
                ext = "png" if i % 2 else "jpg"
                if split == "train" and i == 0:
                    img = Image.new("RGB", (40, 50), colour)  # must be resized to 32x32
                if split == "train" and cls == "dog" and i == 1:
                    img = Image.new("RGBA", (32, 32), colour + (255,))
                if split == "train" and cls == "owl" and i == 1:
                    img = Image.new("L", (32, 32), 128)  # grayscale: label still comes from the folder
                _save(base / split / cls / f"{i:03d}.{ext}", img)
    return base


def make_tar(tree: Path, archive: Path, top: str | None = None) -> Path:
    mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tf:
        for split in ("train", "test"):
            tf.add(tree / split, arcname=f"{top}/{split}" if top else split)
    return archive


def make_zip(tree: Path, archive: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for file in sorted(tree.rglob("*")):
            if file.is_file():
                rel = file.relative_to(tree).as_posix()
                zf.write(file, f"{top}/{rel}" if top else rel)
    return archive


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "src" / "pets")


def check_pets(ds: Dataset, size: int = 32) -> None:
    assert ds.classes == ["cat", "dog", "owl"]
    assert ds.train_images.shape == (12, 3, size, size) and ds.test_images.shape == (6, 3, size, size)
    assert ds.train_images.dtype == torch.uint8 and ds.test_images.dtype == torch.uint8
    assert ds.train_labels.dtype == torch.int64 and ds.test_labels.dtype == torch.int64
    assert ds.train_images.is_contiguous() and ds.test_images.is_contiguous()
    assert ds.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2]
    # The right pictures sit under the right labels (pixels come from the class colour).
    for label, cls in enumerate(ds.classes):
        pick = ds.test_images[ds.test_labels == label].float().mean(dim=(0, 2, 3))
        assert torch.allclose(pick, torch.tensor(COLOURS[cls], dtype=torch.float32), atol=8)
    assert ds.skipped_files == 0


# -- image folders and archives --------------------------------------------------------------------


def test_folder_loads_with_labels_and_resizing(tree: Path, tmp_path: Path) -> None:
    ds = load_dataset(str(tree), cache_dir=tmp_path / "cache")
    check_pets(ds)
    assert ds.name == "folder:pets"
    assert ds.fingerprint.startswith("folder-")


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
@pytest.mark.parametrize("top", [None, "pets"])
def test_archives_read_in_place(tree: Path, tmp_path: Path, suffix: str, top: str | None) -> None:
    archive = tmp_path / "src" / f"pets{suffix}"
    (make_zip if suffix == ".zip" else make_tar)(tree, archive, top)
    before = listing(tmp_path / "src")
    ds = load_dataset(str(archive), cache_dir=tmp_path / "cache")
    check_pets(ds)
    assert ds.name == "folder:pets"
    assert listing(tmp_path / "src") == before  # nothing extracted or cached beside the source
    expected = load_dataset(str(tree), cache_dir=tmp_path / "cache")
    assert torch.equal(ds.train_images, expected.train_images)
    assert torch.equal(ds.test_images, expected.test_images)


def test_zip_from_a_mac_ignores_metadata_and_finds_nested_images(tree: Path, tmp_path: Path) -> None:
    archive = make_zip(tree, tmp_path / "pets.zip", top="pets")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/pets/train/cat/._000.jpg", b"resource fork")
        zf.writestr("pets/train/cat/._000.jpg", b"resource fork")
        zf.writestr("pets/.DS_Store", b"\0")
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), COLOURS["owl"]).save(buffer, "PNG")
        zf.writestr("pets/train/owl/more/deep.png", buffer.getvalue())  # below the class folder
    ds = load_dataset(str(archive), cache_dir=tmp_path / "cache")
    assert ds.skipped_files == 0
    assert ds.train_labels.bincount().tolist() == [4, 4, 5]


def test_several_data_sets_in_one_folder_is_ambiguous(tmp_path: Path) -> None:
    make_tree(tmp_path / "both" / "a", 1, 1)
    make_tree(tmp_path / "both" / "b", 1, 1)
    with pytest.raises(DataError, match="several data sets"):
        load_dataset(str(tmp_path / "both"), cache_dir=tmp_path / "cache")
    ds = load_dataset(str(tmp_path / "both" / "a"), cache_dir=tmp_path / "cache")
    assert ds.train_images.shape[0] == 3


def test_second_load_comes_from_cache_in_cache_dir(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_tar(tree, tmp_path / "src" / "pets.tar.gz", top="pets")
    source_dir = tmp_path / "src"
    before = listing(source_dir)
    os.chmod(archive, 0o444)
    os.chmod(source_dir, 0o555)  # read-only source (root ignores this, hence the listing check too)
    try:
        first = load_dataset(str(archive), cache_dir=tmp_path / "cache")
        cache_files = list((tmp_path / "cache" / "data").iterdir())
        assert [p.suffix for p in cache_files] == [".npz"]  # one finished file, no leftover temp file

        def no_decoding(*args: object) -> None:
            raise AssertionError("decoded again although a cache exists")

        monkeypatch.setattr(data, "decode_image", no_decoding)
        monkeypatch.setattr(data, "_list_archive", no_decoding)
        second = load_dataset(str(archive), cache_dir=tmp_path / "cache")
    finally:
        os.chmod(source_dir, 0o755)
    assert listing(source_dir) == before
    assert second.fingerprint == first.fingerprint and second.name == first.name
    assert second.classes == first.classes and second.skipped_files == first.skipped_files
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(second, field), getattr(first, field))
        assert getattr(second, field).dtype == getattr(first, field).dtype


def test_cache_follows_changes_and_image_size(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "data").mkdir(parents=True)
    unnamed = cache / "data" / "folder-0123456789abcdef.npz"  # a cache file of the name without a <source>
    unnamed.write_bytes(b"decoded images of some source")
    first = load_dataset(str(tree), cache_dir=cache)
    small = load_dataset(str(tree), cache_dir=cache, image_size=16)
    assert small.train_images.shape == (12, 3, 16, 16)
    assert small.fingerprint != first.fingerprint
    _save(tree / "train" / "cat" / "new.png", Image.new("RGB", (32, 32), COLOURS["cat"]))
    changed = load_dataset(str(tree), cache_dir=cache)
    assert changed.train_images.shape[0] == 13
    assert changed.fingerprint != first.fingerprint
    (tree / "train" / "owl").rename(tree / "train" / "bat")  # same files, sizes and times
    (tree / "test" / "owl").rename(tree / "test" / "bat")
    renamed = load_dataset(str(tree), cache_dir=cache)
    assert renamed.classes == ["bat", "cat", "dog"]
    # Only the newest state of each (source, image size) is kept: the 16-pixel one and the renamed one;
    # the file of the older naming, which is never read again, is gone too.
    assert sorted(p.stem for p in (cache / "data").iterdir()) == sorted([small.fingerprint, renamed.fingerprint])


def test_torn_cache_is_ignored_and_rewritten(tree: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = load_dataset(str(tree), cache_dir=cache)
    cache_file = cache / "data" / f"{first.fingerprint}.npz"
    cache_file.write_bytes(cache_file.read_bytes()[:100])
    again = load_dataset(str(tree), cache_dir=cache)
    assert torch.equal(again.train_images, first.train_images)
    assert cache_file.stat().st_size > 1000


def test_unreadable_files_are_skipped_and_counted(tree: Path, tmp_path: Path) -> None:
    (tree / "train" / "cat" / "broken.jpg").write_bytes(b"this is not a jpeg")
    (tree / "train" / "dog" / "notes.txt").write_text("not an image, and not counted")
    (tree / "train" / ".DS_Store").write_bytes(b"\0\0")
    ds = load_dataset(str(tree), cache_dir=tmp_path / "cache")
    assert ds.skipped_files == 1
    assert ds.train_images.shape[0] == 12
    assert load_dataset(str(tree), cache_dir=tmp_path / "cache").skipped_files == 1  # also from the cache


def test_mostly_unreadable_files_raise(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "pets", train_per_class=1, test_per_class=1)
    for cls in COLOURS:
        for i in range(3):
            (root / "train" / cls / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could not be read"):
        load_dataset(str(root), cache_dir=tmp_path / "cache")


# -- mistakes a user can make ----------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope"), cache_dir=tmp_path / "cache")


def test_wrong_layout_explains_expected_layout(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    _save(flat / "a.png", Image.new("RGB", (8, 8)))
    with pytest.raises(DataError, match=r"train/<class>"):
        load_dataset(str(flat), cache_dir=tmp_path / "cache")
    only_train = make_tree(tmp_path / "only_train")
    shutil.rmtree(only_train / "test")
    with pytest.raises(DataError, match="train/ folder but no test/ folder"):
        load_dataset(str(only_train), cache_dir=tmp_path / "cache")


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    root = tmp_path / "one"
    for split in ("train", "test"):
        _save(root / split / "cat" / "0.png", Image.new("RGB", (32, 32)))
    with pytest.raises(DataError, match="at least two classes"):
        load_dataset(str(root), cache_dir=tmp_path / "cache")


def test_empty_class_folder(tree: Path, tmp_path: Path) -> None:
    (tree / "train" / "yak").mkdir()
    with pytest.raises(DataError, match=r"train/yak/ has no images"):
        load_dataset(str(tree), cache_dir=tmp_path / "cache")


def test_test_class_not_in_train(tree: Path, tmp_path: Path) -> None:
    _save(tree / "test" / "yak" / "0.png", Image.new("RGB", (32, 32)))
    with pytest.raises(DataError, match="yak"):
        load_dataset(str(tree), cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("name", ["broken.tar.gz", "broken.zip", "broken.tar"])
def test_corrupt_archive(tmp_path: Path, name: str) -> None:
    bad = tmp_path / name
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(DataError, match="damaged"):
        load_dataset(str(bad), cache_dir=tmp_path / "cache")


def test_truncated_tar_gz(tree: Path, tmp_path: Path) -> None:
    archive = make_tar(tree, tmp_path / "pets.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="damaged"):
        load_dataset(str(cut), cache_dir=tmp_path / "cache")


def test_unsupported_file_type(tmp_path: Path) -> None:
    text = tmp_path / "data.csv"
    text.write_text("a,b\n")
    with pytest.raises(DataError, match="not a supported file type"):
        load_dataset(str(text), cache_dir=tmp_path / "cache")
    image = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(DataError, match="single image"):
        load_dataset(str(image), cache_dir=tmp_path / "cache")


# -- single images ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode", ["RGB", "L", "LA", "P", "RGBA", "I;16", "I", "F", "CMYK", "1", "YCbCr", "LAB", "HSV", "RGBa", "La", "PA"]
)
def test_image_to_uint8_tensor_any_mode(mode: str) -> None:
    try:
        img = Image.new("RGB", (48, 20), (200, 100, 50)).convert(mode)
    except ValueError:  # Pillow cannot convert to every mode; a blank image of that mode will do
        img = Image.new(mode, (48, 20))
    out = image_to_uint8_tensor(img, 32)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    values = np.full((10, 10), 32768, dtype=np.uint16)
    out = image_to_uint8_tensor(Image.fromarray(values), 10)
    assert 120 <= int(out[0, 0, 0]) <= 135  # mid-grey, not clipped to white


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert image_to_uint8_tensor(img, 8).min() == 255


def test_animation_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with Image.open(path) as img:
        img.seek(1)
        out = image_to_uint8_tensor(img, 16)
    assert out[0].float().mean() > 200 and out[2].float().mean() < 50


# -- synthetic -------------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_balanced() -> None:
    a = synthetic_dataset(train_per_class=20, test_per_class=5, seed=3)
    b = synthetic_dataset(train_per_class=20, test_per_class=5, seed=3)
    c = synthetic_dataset(train_per_class=20, test_per_class=5, seed=4)
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_images, b.test_images)
    assert not torch.equal(a.train_images, c.train_images)
    assert a.train_images.shape == (200, 3, 32, 32) and a.test_images.shape == (50, 3, 32, 32)
    assert a.train_images.dtype == torch.uint8 and a.train_labels.dtype == torch.int64
    assert a.train_labels.bincount().tolist() == [20] * 10 and a.test_labels.bincount().tolist() == [5] * 10
    assert len(a.classes) == 10 and a.name == "synthetic"
    assert a.fingerprint == "synthetic-v2-s3-20-5-32" and a.fingerprint != c.fingerprint
    # Train and test are different pictures.
    assert not torch.equal(a.train_images[:50], a.test_images)


def test_synthetic_through_load_dataset() -> None:
    ds = load_dataset("synthetic", image_size=24)
    assert ds.train_images.shape == (4000, 3, 24, 24) and ds.test_images.shape == (1000, 3, 24, 24)
    assert ds.train_images.is_contiguous()


# -- CIFAR-10 --------------------------------------------------------------------------------------


def test_cifar10_offline_says_how_to_use_a_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", cache_dir=tmp_path)
    message = str(info.value)
    assert "could not be downloaded: this computer could not reach" in message
    assert "local copy" in message and ".tar.gz" in message
    assert message.index("local copy") < message.index("URLError")  # the advice first, the technical detail last


def test_cifar10_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            n = 6 if train else 4
            self.data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
            self.data[..., 0] = 255  # red channel set: NHWC -> NCHW must move it to channel 0
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", cache_dir=tmp_path)
    assert ds.classes == CLASS_NAMES_CIFAR10
    assert ds.train_images.shape == (6, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_images[:, 0].min() == 255 and ds.train_images[:, 1:].max() == 0
    assert ds.train_labels.dtype == torch.int64 and ds.test_labels.tolist() == [0, 1, 2, 3]
    assert (tmp_path / "data" / "cifar10").is_dir()


# -- small helpers ---------------------------------------------------------------------------------


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BYOL_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("BYOL_CACHE_DIR")
    assert default_cache_dir() == Path(data.__file__).resolve().parent.parent / ".cache"


def test_bad_image_size(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image size"):
        load_dataset(str(tree), cache_dir=tmp_path, image_size=0)


def test_image_counts_are_the_files_the_loader_decodes(tree: Path, tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tree / "train" / "stray.png")  # beside the class folders: not loaded
    archive = make_zip(tree, tmp_path / "pets.zip")
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("__MACOSX/train/cat/._a.png", b"resource fork")  # macOS's metadata: not loaded
    for source in (tree, archive):
        loaded = load_dataset(str(source), cache_dir=tmp_path / f"cache-{source.name}")
        assert image_counts(source) == (len(loaded.train_labels), len(loaded.test_labels)) == (12, 6)
    assert image_counts(tmp_path / "missing") is None
    assert image_counts(tree / "train") is None  # no train/ and test/ inside
