"""Where a run's images are on this computer: its config, its local settings, or a local CIFAR-10 copy.

The pages and the command line (`embed`, `probe`, the film) load a run's images through here, so a
shipped demo naming "cifar10" opens on a local copy in both, without internet, and finds the
artefacts it ships wherever the copy holds the same images (shipped.adopt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import cifar10, shipped
from . import data as datasets
from .config import TrainConfig
from .dataset import DataError, Dataset
from .runs import RunError, read_config, set_data_source


def run_data(run_dir: Path, fallback: TrainConfig | None = None) -> Dataset:
    """The run's data set, from where its images are on this computer now (its local settings).

    `fallback` (a checkpoint's own config) is used when the run's config cannot be read.
    """
    try:
        source = read_config(run_dir)  # where the images are on this computer may have changed since
    except RunError:
        if fallback is None:
            raise
        source = fallback
    return load_run_images(run_dir, source)[1]


def load_run_images(
    run_dir: Path, config: TrainConfig, load: Callable[[TrainConfig], Dataset] | None = None
) -> tuple[TrainConfig, Dataset]:
    """The run's data set, and the config that found it (`load`: the pages pass their cached loader).

    A run naming "cifar10" that cannot be downloaded here (a shipped demo without internet) falls
    back to a local copy at a documented place (cifar10.local_copies), and the run remembers it in its
    local settings: the pages and the command line then find the images the same way. Raises
    DataError when there is no copy, or the copy's own DataError when it cannot be read.
    """
    load = load or datasets.load_for  # looked up per call, not bound at import
    try:
        data = load(config)
    except DataError:
        local = cifar10.with_local_copy(config)
        if local is None:
            raise
        data = load(local)
        set_data_source(run_dir, local.data)
        config = local
    shipped.adopt(run_dir, data)
    return config, data


def load_run_images_at_hand(
    run_dir: Path, config: TrainConfig, load: Callable[[TrainConfig], Dataset] | None = None
) -> tuple[TrainConfig, Dataset] | None:
    """`load_run_images` without a download: None when the run names "cifar10" and no local copy lies
    at a documented place. For showing a run's pictures where nobody asked for them (Home): a
    170 MB download must be something a person chose. Raises what `load_run_images` raises."""
    if cifar10.is_named(config.data):
        config = cifar10.with_local_copy(config)
        if config is None:
            return None
    return load_run_images(run_dir, config, load)
