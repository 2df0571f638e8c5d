"""Where a run's images come from when its embeddings are computed (byol/run_images.py).

The pages and the command line (`python -m byol embed`, `probe`) load a run's images the same way, so a
shipped demo naming "cifar10" opens on a local copy in both, without internet.
"""

import json

import pytest

from byol import cifar10, run_images, runs
from byol.config import TrainConfig
from byol.dataset import DataError
from helpers import write_image_folder


@pytest.fixture
def cifar10_run(tmp_path, runs_dir, monkeypatch):
    def no_download(*args, **kwargs):
        raise DataError("CIFAR-10 could not be downloaded (no internet?).")

    monkeypatch.setattr(cifar10, "load", no_download)
    run_dir = runs_dir / "demo-like"
    run_dir.mkdir()
    runs.update_config(run_dir, TrainConfig(data="cifar10"))
    return run_dir


def test_a_run_naming_cifar10_loads_a_local_copy_and_remembers_it(cifar10_run, tmp_path, monkeypatch):
    copy = write_image_folder(tmp_path / "cifar-copy", train_per_class=4, test_per_class=2)
    monkeypatch.setenv("BYOL_CIFAR10_COPY", str(copy))
    data = run_images.run_data(cifar10_run)
    assert len(data.train_images) == 4 * len(data.classes) and len(data.test_images) == 2 * len(data.classes)
    assert runs.read_config(cifar10_run).data == str(copy)  # the next load goes straight to the copy
    assert json.loads((cifar10_run / "config.json").read_text())["data"] == "cifar10"  # tracked file untouched


def test_without_a_local_copy_the_download_error_says_what_to_do(cifar10_run, monkeypatch):
    monkeypatch.setenv("BYOL_CIFAR10_COPY", "")
    with pytest.raises(DataError, match="could not be downloaded"):
        run_images.run_data(cifar10_run)
    assert not (cifar10_run / runs.LOCAL_SETTINGS).exists()


def test_images_at_hand_never_download(cifar10_run, monkeypatch):
    monkeypatch.setenv("BYOL_CIFAR10_COPY", "")
    calls = []
    monkeypatch.setattr(cifar10, "load", lambda *args, **kwargs: calls.append(args))
    assert run_images.load_run_images_at_hand(cifar10_run, runs.read_config(cifar10_run)) is None
    assert calls == []  # not even tried: a download is something a person chooses


def test_images_at_hand_come_from_a_local_copy(cifar10_run, tmp_path, monkeypatch):
    copy = write_image_folder(tmp_path / "cifar-copy", train_per_class=4, test_per_class=2)
    monkeypatch.setenv("BYOL_CIFAR10_COPY", str(copy))
    config, data = run_images.load_run_images_at_hand(cifar10_run, runs.read_config(cifar10_run))
    assert config.data == str(copy) and len(data.test_images) == 2 * len(data.classes)
