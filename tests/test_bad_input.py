"""Bad input, one table: every case through the door a user uses, with the plain message expected.

Doors: the command line (`byol.cli.main`, in process, what `python -m byol` runs), the dashboard's
launch (`JobRunner.launch`, whose plain errors the Train page shows with st.error), and the
Retrieval page's upload decoding (`images.query_from_upload`). Each case builds its input in a
playground (a runs folder that has trained before, holding one run, plus a folder of inputs),
photographs every file of the playground and of the data cache, goes through the door, and checks:

- the message holds the expected words and no traceback (the command line: exit code not 0, one
  `error:` line, at most a "Loading data..." progress line before it);
- nothing changed on disk: the photograph after equals the one before (so a refused launch leaves
  no run folder, a refused resume leaves its status as it was, a smuggled pickle did not run).

Uploads that are odd but valid (grayscale, transparent, 16-bit, animated) are in the table too:
they must be accepted as a 3×32×32 image, with nothing on disk changed either.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import fault_figures
from byol import images, runs
from byol.checkpoint import full_state, save_checkpoint, snapshot_state
from byol.cli import main as cli_main
from byol.errors import UserError
from byol.jobs import JobRunner
from byol.lock import DeviceLock
from byol.model import BYOLNetworks
from byol.optim import build_optimizer
from helpers import tiny_cli_settings, tiny_config, tree_snapshot
from test_retrieval import encode, huge_png, noise_rgb

TINY = [
    *tiny_cli_settings(),
    "--batch-size",
    "64",
    "--epochs",
    "1",
    "--device",
    "cpu",
]
EXISTING = "existing"  # a run in the playground's runs folder (queued, never trained)
PWNED = "pwned-by-a-pickle"  # the file a malicious checkpoint would create if it were unpickled unsafely


@dataclass
class Playground:
    root: Path
    runs: Path
    inputs: Path
    capsys: Any

    def cli(self, *args: str) -> "Outcome":
        """`python -m byol ARGS` in this process: its stderr and exit code."""
        try:
            code = cli_main([str(a) for a in args])
        except SystemExit as exit_:  # argparse refuses an option this way
            code = exit_.code
        captured = self.capsys.readouterr()
        return Outcome(captured.err, code=code)

    def train(self, *args: str) -> "Outcome":
        return self.cli("train", "--runs-dir", self.runs, *TINY, *args)

    def launch(self, name: str | None = None, **overrides: Any) -> "Outcome":
        """The Train page's launch: a plain error is shown with st.error, anything else would be a traceback."""
        runner = JobRunner(self.runs)
        try:
            run_dir = runner.launch(tiny_config(device="cpu", **overrides), name)
        except UserError as error:
            return Outcome(str(error))
        finally:
            runner.shutdown(timeout=10)
        return Outcome("", accepted=run_dir)

    def embed(self, checkpoint: Path) -> "Outcome":
        return self.cli("embed", self.runs / EXISTING, "--checkpoint", checkpoint)


@dataclass
class Outcome:
    message: str
    code: int | None = None  # the command line's exit code
    accepted: Any = None  # what a door returned when it did not refuse


# --- inputs ----------------------------------------------------------------------------------------
def png(picture: Image.Image) -> bytes:
    return encode(picture, "PNG")


def image_tree(root: Path, classes: dict[str, int], test_classes: dict[str, int] | None = None) -> Path:
    """train/<class>/<n>.png (and test/) with `classes[c]` small images each."""
    for split, counts in (("train", classes), ("test", test_classes if test_classes is not None else classes)):
        for cls, count in counts.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise_rgb(16, seed=i).save(root / split / cls / f"{i}.png")
    return root


def mostly_unreadable(root: Path) -> Path:
    image_tree(root, {"cat": 2, "dog": 2})
    for cls in ("cat", "dog"):
        for i in range(5):
            (root / "train" / cls / f"broken{i}.jpg").write_bytes(b"this is not a jpeg")
    return root


def one_class_unreadable(root: Path) -> Path:
    image_tree(root, {"cat": 4, "dog": 4})
    for path in (root / "train" / "dog").iterdir():
        path.write_bytes(b"\x89PNG but not really")
    return root


def class_without_images(root: Path) -> Path:
    image_tree(root, {"cat": 2, "dog": 2})
    (root / "train" / "yak").mkdir()
    (root / "train" / "yak" / "notes.txt").write_text("pictures to come")
    return root


def flat_folder(root: Path) -> Path:
    root.mkdir()
    for i in range(4):
        noise_rgb(16, seed=i).save(root / f"{i}.png")
    return root


def single_image(root: Path) -> Path:
    root.mkdir()
    noise_rgb(16).save(root / "photo.png")
    return root / "photo.png"


def damaged_archive(root: Path) -> Path:
    root.mkdir()
    (root / "images.tar.gz").write_bytes(np.random.default_rng(0).bytes(4096))
    return root / "images.tar.gz"


def networks_and_optimizer(width: int = 4):
    config = tiny_config(width=width)
    networks = BYOLNetworks.from_config(config)
    return config, networks, build_optimizer(config, networks.trainable_parameters())


def full_checkpoint(path: Path, width: int = 4) -> Path:
    config, networks, optimizer = networks_and_optimizer(width)
    save_checkpoint(
        path, full_state(networks, optimizer, config, step=4, epoch=1, step_in_epoch=0, augment_rng=torch.Generator())
    )
    return path


def checkpoint_file(content: Callable[[Path], None]) -> Callable[[Playground], Path]:
    """A checkpoint in the existing run's folder, written by `content(path)`."""

    def make(play: Playground) -> Path:
        path = play.runs / EXISTING / "step-00000004.pt"
        content(path)
        return path

    return make


def truncated(path: Path) -> None:
    full_checkpoint(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def foreign_network(path: Path) -> None:
    torch.save({"state_dict": torch.nn.Linear(8, 2).state_dict(), "epoch": 3}, path)


def mismatched_architecture(path: Path) -> None:
    config, networks, _ = networks_and_optimizer(width=4)
    state = snapshot_state(networks.backbone, config, 4, 1.0, None)
    state["config"]["width"] = 8  # says width 8, holds width-4 weights
    save_checkpoint(path, state)


class RunsCode:
    """Unpickled unsafely, this would create a file next to the runs folder."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def code_in_a_pickle(path: Path) -> None:
    torch.save({"format": "byol-studio/1", "kind": "backbone", "payload": RunsCode(path.parent.parent.parent / PWNED)}, path)


def stopped_run_with_last(content: Callable[[Path], None]) -> Callable[[Playground], Path]:
    """A stopped run (trained elsewhere) whose last.pt is written by `content(path)`."""

    def make(play: Playground) -> Path:
        run_dir = runs.create_run(play.runs, tiny_config(device="cpu"), "stopped-run")
        runs.write_status(run_dir, runs.STOPPED, "Stopped at step 4 of 8; resume to continue.")
        content(run_dir / "last.pt")
        return run_dir

    return make


def gif_animation() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit() -> bytes:
    values = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    return png(Image.fromarray(values))


# --- the table ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    group: str  # hyperparameters | names and paths | data | checkpoints | uploads
    id: str
    act: Callable[[Playground, Any], Outcome]  # goes through a door with what `make` built
    expect: str | None  # words of the plain message; None = the input must be accepted
    make: Callable[[Playground], Any] = lambda play: None  # builds the input, before the photograph


def data(builder: Callable[[Path], Path]) -> Callable[[Playground], Path]:
    return lambda play: builder(play.inputs / "data")


def empty_folder(root: Path) -> Path:
    root.mkdir()
    return root


def a_file_instead_of_a_folder(play: Playground) -> Path:
    path = play.inputs / "not-a-folder"
    path.write_text("a file where the runs folder should be")
    return path


def upload(payload: bytes | Callable[[], bytes]) -> Callable[[Playground, Any], Outcome]:
    def act(play: Playground, _: Any) -> Outcome:
        try:
            image = images.query_from_upload(payload() if callable(payload) else payload)
        except ValueError as error:  # the Retrieval page shows st.error(f"{name}: {error}")
            return Outcome(str(error))
        return Outcome("", accepted=image)

    return act


NOT_A_NAME = "A run name may use only letters, digits, dots, dashes and underscores"
DAMAGED = "is damaged or not a PyTorch checkpoint"

CASES = [
    # hyperparameters
    Case(
        "hyperparameters",
        "epochs zero",
        lambda p, _: p.train("--data", "synthetic", "--epochs", "0"),
        "Epochs (epochs) must be from 1 to 10000; got 0.",
    ),
    Case(
        "hyperparameters",
        "batch size negative",
        lambda p, _: p.launch(batch_size=-8),
        "Batch size (batch_size) must be from 2 to 65536; got -8.",
    ),
    Case(
        "hyperparameters",
        "learning rate absurd",
        lambda p, _: p.train("--data", "synthetic", "--lr", "1e6"),
        "Learning rate (lr) must be from 1e-07 to 100; got 1e+06.",
    ),
    Case(
        "hyperparameters",
        "learning rate NaN",
        lambda p, _: p.train("--data", "synthetic", "--lr", "nan"),
        "Learning rate (lr) must be a finite number from 1e-07 to 100; got nan.",
    ),
    Case(
        "hyperparameters",
        "epochs not a number",
        lambda p, _: p.train("--data", "synthetic", "--epochs", "many"),
        "argument --epochs: invalid int value: 'many'",
    ),
    Case(
        "hyperparameters",
        "lr not a number via --set",
        lambda p, _: p.train("--data", "synthetic", "--set", "lr=fast"),
        "--set lr: expected a float, got 'fast'",
    ),
    Case(
        "hyperparameters",
        "width absurd",
        lambda p, _: p.launch(width=100_000),
        "Backbone width (width) must be from 4 to 256; got 100000.",
    ),
    Case(
        "hyperparameters",
        "width not a number",
        lambda p, _: p.launch(width="wide"),
        "Backbone width (width) must be a number from 4 to 256; got 'wide'.",
    ),
    Case(
        "hyperparameters",
        "checkpoint interval zero",
        lambda p, _: p.train("--data", "synthetic", "--set", "checkpoint_minutes=0"),
        "Checkpoint interval (checkpoint_minutes) must be from 0.05 to 10000; got 0.",
    ),
    Case("hyperparameters", "seed negative", lambda p, _: p.launch(seed=-1), "Seed (seed) must be from 0 to 2147483647; got -1."),
    Case(
        "hyperparameters",
        "warm-up longer than training",
        lambda p, _: p.launch(warmup_epochs=5.0, epochs=2),
        "Warm-up epochs (warmup_epochs) must be at most the number of epochs (2); got 5.",
    ),
    Case(
        "hyperparameters",
        "batch larger than the data",
        lambda p, _: p.train("--data", "synthetic", "--batch-size", "512"),
        "Batch size (batch_size) must be at most the number of training images (256); got 512.",
    ),
    # run names and paths
    Case("names and paths", "name with ../", lambda p, _: p.launch(name="../escape"), NOT_A_NAME),
    Case(
        "names and paths",
        "name an absolute path",
        lambda p, _: p.train("--data", "synthetic", "--name", "/tmp/escape"),
        NOT_A_NAME,
    ),
    Case("names and paths", "name empty", lambda p, _: p.launch(name=""), "A run name cannot be empty."),
    Case(
        "names and paths",
        "name blank",
        lambda p, _: p.train("--data", "synthetic", "--name", "   "),
        "A run name cannot be empty.",
    ),
    Case(
        "names and paths",
        "name very long",
        lambda p, _: p.launch(name="a" * 300),
        "A run name can be at most 80 characters long; this one has 300.",
    ),
    Case("names and paths", "name unicode", lambda p, _: p.train("--data", "synthetic", "--name", "résumé-🚀"), NOT_A_NAME),
    Case("names and paths", "name with a slash", lambda p, _: p.launch(name="runs/../../elsewhere"), NOT_A_NAME),
    Case(
        "names and paths",
        "runs folder is a file",
        lambda p, f: p.cli("train", "--runs-dir", f, *TINY, "--data", "synthetic"),
        "cannot be used: File exists.",
        make=a_file_instead_of_a_folder,
    ),
    Case(
        "names and paths",
        "resume a folder that is not a run",
        lambda p, _: p.cli("resume", p.inputs),
        "is not a run folder (it has no config.json).",
    ),
    Case(
        "names and paths",
        "resume via ../",
        lambda p, _: p.cli("resume", p.runs / EXISTING / ".."),
        "is not a run folder (it has no config.json).",
    ),
    Case(
        "names and paths",
        "embed a missing run",
        lambda p, _: p.cli("embed", p.runs / "no-such-run"),
        "is not a run folder (it has no config.json).",
    ),
    # data folders
    Case(
        "data",
        "data folder missing",
        lambda p, _: p.train("--data", p.inputs / "nowhere"),
        "Data source (data): there is no folder or archive at",
    ),
    Case(
        "data",
        "data folder empty",
        lambda p, d: p.train("--data", d),
        "does not look like an image data set: no train/ and test/ folders found",
        make=data(empty_folder),
    ),
    Case(
        "data",
        "data with one class",
        lambda p, d: p.train("--data", d),
        "the data set needs at least two classes",
        make=data(lambda r: image_tree(r, {"cat": 4})),
    ),
    Case(
        "data",
        "data mostly unreadable files",
        lambda p, d: p.train("--data", d),
        "10 of 18 image files could not be read (corrupt, or not really images)",
        make=data(mostly_unreadable),
    ),
    Case(
        "data",
        "data class with only unreadable files",
        lambda p, d: p.train("--data", d),
        "none of the images in train/dog/ could be read.",
        make=data(one_class_unreadable),
    ),
    Case(
        "data",
        "data class without images",
        lambda p, d: p.train("--data", d),
        "the class folder train/yak/ has no images",
        make=data(class_without_images),
    ),
    Case(
        "data",
        "data wrong layout",
        lambda p, d: p.train("--data", d),
        "does not look like an image data set",
        make=data(flat_folder),
    ),
    Case(
        "data",
        "data test class not in train",
        lambda p, d: p.train("--data", d),
        "test/ has class folders that are not in train/: yak",
        make=data(lambda r: image_tree(r, {"cat": 2, "dog": 2}, {"cat": 1, "yak": 1})),
    ),
    Case(
        "data",
        "data a single image",
        lambda p, d: p.train("--data", d),
        "is a single image, not a data set",
        make=data(single_image),
    ),
    Case(
        "data",
        "data archive damaged",
        lambda p, d: p.train("--data", d),
        "it is damaged or not a .gz archive (file could not be opened successfully).",
        make=data(damaged_archive),
    ),
    # checkpoints
    Case(
        "checkpoints",
        "checkpoint empty file",
        lambda p, c: p.embed(c),
        "is empty (0 bytes)",
        make=checkpoint_file(lambda path: path.write_bytes(b"")),
    ),
    Case(
        "checkpoints",
        "checkpoint random bytes",
        lambda p, c: p.embed(c),
        DAMAGED,
        make=checkpoint_file(lambda path: path.write_bytes(np.random.default_rng(1).bytes(5000))),
    ),
    Case(
        "checkpoints",
        "checkpoint plain pickle",
        lambda p, c: p.embed(c),
        DAMAGED,
        make=checkpoint_file(lambda path: path.write_bytes(pickle.dumps({"step": 4}))),
    ),
    Case("checkpoints", "checkpoint truncated", lambda p, c: p.embed(c), DAMAGED, make=checkpoint_file(truncated)),
    Case(
        "checkpoints",
        "checkpoint of another network",
        lambda p, c: p.embed(c),
        "is not a BYOL Studio checkpoint",
        make=checkpoint_file(foreign_network),
    ),
    Case(
        "checkpoints",
        "checkpoint of another architecture",
        lambda p, c: p.embed(c),
        "does not hold a backbone that matches its settings",
        make=checkpoint_file(mismatched_architecture),
    ),
    Case(
        "checkpoints",
        "checkpoint pickle that runs code",
        lambda p, c: p.embed(c),
        "was refused: it holds Python objects other than weights",
        make=checkpoint_file(code_in_a_pickle),
    ),
    Case(
        "checkpoints",
        "resume a damaged last.pt",
        lambda p, r: p.cli("resume", r),
        "The checkpoint last.pt " + DAMAGED,
        make=stopped_run_with_last(lambda path: path.write_bytes(np.random.default_rng(2).bytes(5000))),
    ),
    Case(
        "checkpoints",
        "resume a last.pt of another architecture",
        lambda p, r: p.cli("resume", r),
        "This checkpoint's networks do not match its own settings",
        make=stopped_run_with_last(lambda path: full_checkpoint(path, width=8)),
    ),
    Case(
        "checkpoints",
        "resume a last.pt that runs code",
        lambda p, r: p.cli("resume", r),
        "was refused: it holds Python objects other than weights",
        make=stopped_run_with_last(code_in_a_pickle),
    ),
    # uploads
    Case("uploads", "upload not an image", upload(b"name,age\nAda,36\n"), "This file is not an image that can be read."),
    Case(
        "uploads", "upload truncated PNG", upload(png(noise_rgb())[:900]), "This image file is damaged or cut short (truncated)"
    ),
    Case(
        "uploads",
        "upload truncated JPEG",
        upload(encode(noise_rgb(), "JPEG", quality=95)[:1200]),
        "This image file is damaged or cut short (truncated)",
    ),
    Case(
        "uploads",
        "upload 10000x10000",
        upload(huge_png),
        "This image is too large to open safely: 10,000×10,000 pixels (100 megapixels)",
    ),
    Case("uploads", "upload zero bytes", upload(b""), "The uploaded file is empty (0 bytes)."),
    Case("uploads", "upload grayscale", upload(png(Image.new("L", (40, 30), 100))), None),
    Case("uploads", "upload RGBA", upload(png(Image.new("RGBA", (40, 30), (255, 0, 0, 128)))), None),
    Case("uploads", "upload 16-bit", upload(sixteen_bit), None),
    Case("uploads", "upload animated GIF", upload(gif_animation), None),
]


@pytest.fixture
def playground(tmp_path, capsys, monkeypatch) -> Playground:
    runs_dir = tmp_path / "runs"
    monkeypatch.setenv("BYOL_RUNS_DIR", str(runs_dir))
    runs.create_run(runs_dir, tiny_config(device="cpu"), EXISTING)
    DeviceLock(runs_dir, "cpu", "earlier").acquire().release()  # a runs folder that has trained before
    (tmp_path / "inputs").mkdir()
    return Playground(tmp_path, runs_dir, tmp_path / "inputs", capsys)


def test_the_table_covers_what_the_issue_lists():
    assert len(CASES) >= 30 and len({case.id for case in CASES}) == len(CASES)
    groups = {case.group for case in CASES}
    assert groups == {"hyperparameters", "names and paths", "data", "checkpoints", "uploads"}
    assert all(sum(case.group == group for case in CASES) >= 5 for group in groups)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the 10000x10000 upload
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch, reading the plain pickle
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_a_plain_message_and_changes_nothing(case: Case, playground: Playground, session_cache_dir: Path):
    made = case.make(playground)
    playground.capsys.readouterr()  # whatever building the input printed is not the door's answer
    before = tree_snapshot(playground.root, session_cache_dir)

    outcome = case.act(playground, made)
    fault_figures.add("bad-input cases tried")

    assert fault_figures.saw_message(outcome.message), outcome.message
    if case.expect is None:
        assert outcome.message == "" and outcome.accepted is not None
        assert outcome.accepted.dtype == torch.uint8 and tuple(outcome.accepted.shape) == (3, 32, 32)
    else:
        assert case.expect in outcome.message, outcome.message
        assert outcome.accepted is None
    if outcome.code is not None:  # the command line: refused with one plain line
        assert outcome.code not in (0, None)
        lines = outcome.message.strip().splitlines()
        assert [line for line in lines if line.startswith("error:")] == [lines[-1]], lines
        # Before it, only progress lines (a run's status, the embed command's "Loading ..."), no traceback.
        assert all(line == "[running] Loading data..." or line.startswith("Loading ") for line in lines[:-1]), lines
    after = tree_snapshot(playground.root, session_cache_dir)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    assert not (playground.root / PWNED).exists()
