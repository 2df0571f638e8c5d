"""Small shared pieces for the tests: a tiny config, helpers to run the CLI, tree snapshots, a busy task runner."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from byol import demos, runs
from byol.config import TrainConfig, preset

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def another_computation_under_way() -> Iterator[None]:
    """The pages' task runner busy with other work until the block ends (a page then asks, not queues)."""
    from ui import inspection  # imported here: the engine tests that use this module need no Streamlit

    release = threading.Event()
    inspection.get_task_runner().submit("other-work", lambda report: release.wait(60))
    try:
        yield
    finally:
        release.set()


def shipped_demo() -> Path:
    """The main demo run that ships with the repository, the one Home shows (beside it ships the
    Compare page's batch-norm pair, whose folders hold a demo.json too)."""
    demo = demos.main_demo(runs.list_runs(REPO / "checkpoints"))
    assert demo is not None, "no demo run in checkpoints/"
    return demo.path


def shipped_pair() -> tuple[Path, Path]:
    """The shipped batch-norm pair's run folders: (with batch norm, without)."""
    pair = demos.shipped_pair(runs.list_runs(REPO / "checkpoints"))
    assert pair is not None, "no batch-norm pair among the shipped demos"
    return pair[0].path, pair[1].path


def fresh_checkout(demo: Path, dest: Path) -> Path:
    """A copy of a demo folder as git gives it to a visitor: no artefact store, no local settings."""
    shutil.copytree(demo, dest, ignore=shutil.ignore_patterns(runs.EMBEDDINGS_FOLDER, runs.LOCAL_SETTINGS))
    return dest


# The network and evaluation sizes that make a run train in seconds: a width-4 ResNet, small heads,
# 256 training images, kNN on a 256-image bank and 100 queries; no warm-up and the plain cosine, so the
# learning rate changes at every step (tests that follow the schedule across a resume need that).
TINY_SETTINGS = dict(
    width=4,
    projector_hidden=32,
    projector_dim=16,
    predictor_hidden=32,
    subset=256,
    eval_bank_size=256,
    eval_query_size=100,
    knn_k=20,
    warmup_epochs=0,
    lr_decay_share=1.0,
)


def tiny_config(**overrides) -> TrainConfig:
    """A config that trains a few steps on synthetic data in seconds (width-4 ResNet, small heads)."""
    values = dict(TINY_SETTINGS, data="synthetic", epochs=2, batch_size=64, eval_every=1.0, log_every=1, precision="fp32")
    values.update(overrides)
    return preset("cpu", **values)


def tiny_cli_settings(**extra: object) -> list[str]:
    """TINY_SETTINGS (and `extra` config fields) as command-line options: ["--set", "width=4", ...]."""
    options: list[str] = []
    for field, value in {**TINY_SETTINGS, **extra}.items():
        options += ["--set", f"{field}={value}"]
    return options


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m byol ARGS` in a subprocess, with the project's cache kept out of the way."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "byol", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def cli_child(argv: list[str], log_path: str, torn_write_pause: float = 0.0) -> None:
    """Body of a child process that runs the command line (`python -m byol ARGV`) and exits with its code.

    The kill tests start it through a multiprocessing forkserver that has already imported torch,
    so a child starts in a fraction of a second instead of paying torch's import again. Its output
    goes to `log_path`. With `torn_write_pause` > 0, every checkpoint is written in two halves with
    that pause between them, so a kill can land while a checkpoint file is half written (the
    product code is unchanged: torch.save is wrapped in this child only).
    """
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import threading

    import tqdm

    # tqdm's default lock is a multiprocessing semaphore, which a SIGKILLed child would leak (and
    # the resource tracker would warn about); a thread lock is all one process needs.
    tqdm.tqdm.set_lock(threading.RLock())
    if torn_write_pause > 0:
        import torch

        whole_save = torch.save

        def save_in_two_halves(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):
                return whole_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            whole_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(torn_write_pause)
            f.write(data[len(data) // 2 :])

        torch.save = save_in_two_halves
    from byol.cli import main

    sys.exit(main(argv))


def tree_snapshot(*roots: Path) -> dict[str, str]:
    """Every folder and file under `roots` (the roots included) -> "dir" or its content's SHA-256."""
    snapshot = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for path in [root, *sorted(root.rglob("*"))]:
            if path.is_dir():
                snapshot[str(path)] = "dir"
            else:
                snapshot[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


def write_image_folder(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """An image-folder data set (train/<class>/*.png, test/<class>/*.png) cut from the synthetic one.

    Decoded once and then read from the data cache, so a training on it starts faster than on
    `synthetic`, which is drawn anew by every process.
    """
    from PIL import Image

    from byol.synthetic import synthetic_dataset

    data = synthetic_dataset(train_per_class=train_per_class, test_per_class=test_per_class)
    for split, images, labels in (("train", data.train_images, data.train_labels), ("test", data.test_images, data.test_labels)):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = Path(root) / split / data.classes[int(label)].replace(" ", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{index:04d}.png")
    return Path(root)
