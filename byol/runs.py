"""Run directories: create them, name them safely, read their status, summaries and checkpoints.

Everything the product shows comes from these folders, whoever trained them (the app's background
thread or the command line). README.md's "What a run leaves behind" lists what a run folder holds;
the file names are the constants below, and metrics.jsonl's are in byol/metrics_file.py.

A run is live while its process is: a status that says queued/running but whose process is gone
(same machine), or whose heartbeat is stale (another machine sharing the disk), reads `interrupted`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from . import demos
from .collapse import Collapse, find_collapse
from .config import PATH_KIND, TrainConfig, source_kind
from .errors import UserError
from .files import read_json, write_json_atomic
from .metrics_file import eval_rows, is_eval, read_rows, step_rows
from .processes import process_alive, process_start_time

QUEUED, RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED = (
    "queued",
    "running",
    "finished",
    "stopped",
    "failed",
    "interrupted",
)
LIVE_STATES = (QUEUED, RUNNING)
RESUMABLE_STATES = (STOPPED, FAILED, INTERRUPTED)
HEARTBEAT_SECONDS = 3.0
STALE_SECONDS = 60.0  # only used for runs whose process lives on another machine
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")

# The run folder's file names; every module finds a run's files through these.
CONFIG_FILE = "config.json"  # the TrainConfig as launched; a folder with one is a run folder
STATUS_FILE = "status.json"  # state, message, pid and heartbeat
LAST_CHECKPOINT = "last.pt"  # everything needed to resume
SNAPSHOT_GLOB = "step-*.pt"
EMBEDDINGS_FOLDER = "embeddings"
# This computer's choices for a run (where its images are), kept apart from config.json because a
# shipped demo run's config.json is tracked by git; .gitignore covers this file.
LOCAL_SETTINGS = "local-settings.json"
LOCAL_FIELDS = ("data", "data_root")  # the config fields a local setting may override


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a run folder: one with a config.json."""
    return (Path(folder) / CONFIG_FILE).is_file()


def snapshot_name(step: int) -> str:
    """The file name of the evaluation-point snapshot at `step` (step 0 is the untrained network)."""
    return f"step-{int(step):08d}.pt"


RANDOM_INIT_NAME = snapshot_name(0)


class RunError(UserError):
    """A run-level problem (bad name, missing run, run busy); the message is meant for the user."""


def existing_run(run_dir: Path) -> Path:
    """`run_dir`, or RunError when it is no run folder (a typo, a deleted run, some other folder)."""
    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise RunError(f"{run_dir} is not a run folder (it has no {CONFIG_FILE}).")
    return run_dir


def default_runs_dir() -> Path:
    """`$BYOL_RUNS_DIR` if set, else the project's `checkpoints/` folder."""
    env = os.environ.get("BYOL_RUNS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


# --- names and creation ----------------------------------------------------------------------
def check_run_name(name: str) -> str:
    """Return `name` if it is a safe folder name, else raise RunError saying why."""
    if not isinstance(name, str) or not name.strip():
        raise RunError("A run name cannot be empty.")
    if len(name) > 80:
        raise RunError(f"A run name can be at most 80 characters long; this one has {len(name)}.")
    if not NAME_PATTERN.match(name) or ".." in name:
        raise RunError(
            "A run name may use only letters, digits, dots, dashes and underscores, and must start "
            f"with a letter or digit; got {name!r}."
        )
    return name


def slugify(text: str, max_len: int = 40) -> str:
    """A safe fragment for a generated run name: lower-case ASCII letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def run_path(runs_dir: Path, name: str) -> Path:
    """The folder of run `name` inside `runs_dir` (the name is checked, so it cannot escape)."""
    return Path(runs_dir) / check_run_name(name)


def create_run(runs_dir: Path, config: TrainConfig, name: str | None = None) -> Path:
    """Make a new run folder holding its config.json and a `queued` status, atomically.

    The folder is assembled under a hidden temporary name and renamed into place, so a reader never
    sees a run without its config, and two launches never get the same folder.
    """
    runs_dir = Path(runs_dir)
    if name is not None:
        check_run_name(name)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file of that name, no permission, a read-only disk: say so, no traceback
        raise RunError(f"The runs folder {runs_dir} cannot be used: {error.strerror or error}.") from None
    remove_abandoned_staging(runs_dir)
    base = name or default_run_name(config)
    staging = runs_dir / f".creating-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    try:
        write_json_atomic(staging / CONFIG_FILE, config.to_dict())
        write_json_atomic(staging / STATUS_FILE, _status_record(QUEUED, "Waiting to start.", created=time.time()))
        for candidate in name_candidates(base):
            target = runs_dir / candidate
            try:
                os.rename(staging, target)  # fails if target exists and is not empty
                return target
            except OSError:
                if not target.exists():
                    raise
        raise RunError(f"Could not find a free run name starting with {base}.")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def name_candidates(base: str, tries: int = 1000) -> Iterator[str]:
    """The names a new run tries in turn while they are taken: base, base-2, base-3, ..."""
    yield base
    for number in range(2, tries + 1):
        yield f"{base}-{number}"


def remove_abandoned_staging(runs_dir: Path) -> list[Path]:
    """Delete the `.creating-<pid>-*` folders whose creator died half-way (a kill during create_run).

    A live creator's folder is kept: it is about to be renamed into place.
    """
    removed = []
    for entry in Path(runs_dir).glob(".creating-*"):
        pid = entry.name.split("-")[1]
        if entry.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def default_run_name(config: TrainConfig, with_data: bool = True) -> str:
    """`<time>-<preset>-<data>`: the name of a run launched without one (at most 60 characters);
    `<time>-<preset>` without `with_data`."""
    name = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{slugify(config.preset or 'custom', 20)}"
    return f"{name}-{slugify(data_label(config.data), 24)}" if with_data else name


def data_label(source: str) -> str:
    """A data source in a few characters, for run names: a named source as it is, else the file or folder
    name without its extensions ("cifar10-jpg" for .../cifar10-jpg.tar.gz)."""
    if source_kind(source) != PATH_KIND:
        return source
    return Path(source).name.split(".")[0] or "folder"


def read_config(run_dir: Path) -> TrainConfig:
    """The run's config, with this computer's local settings (where the images are) applied."""
    values = read_json(Path(run_dir) / CONFIG_FILE)
    if not isinstance(values, dict):
        raise RunError(f"The run {Path(run_dir).name} has no readable config.json.")
    local = read_json(Path(run_dir) / LOCAL_SETTINGS, {})
    if isinstance(local, dict):
        values.update({k: v for k, v in local.items() if k in LOCAL_FIELDS and isinstance(v, str)})
    return TrainConfig.from_dict(values)


def set_data_source(run_dir: Path, data: str, data_root: str = "") -> None:
    """Remember where the run's images are on this computer (a moved folder, a demo run's CIFAR-10).

    Written to the run's local settings, never to config.json, so using the app leaves tracked files alone.
    """
    write_json_atomic(Path(run_dir) / LOCAL_SETTINGS, {"data": data, "data_root": data_root})


def update_config(run_dir: Path, config: TrainConfig) -> None:
    """Replace config.json (a resume that extends the run to more epochs)."""
    write_json_atomic(Path(run_dir) / CONFIG_FILE, config.to_dict())


# --- status ----------------------------------------------------------------------------------
def _status_record(state: str, message: str = "", **fields: Any) -> dict[str, Any]:
    now = time.time()
    pid = os.getpid()
    return {
        "state": state,
        "message": message,
        "pid": pid,
        "pid_start": process_start_time(pid),
        "host": socket.gethostname(),
        "heartbeat": now,
        "updated": now,
        **fields,
    }


def write_status(run_dir: Path, state: str, message: str = "", **fields: Any) -> dict[str, Any]:
    """Replace status.json, keeping fields such as `started` from the previous record."""
    previous = read_json(Path(run_dir) / STATUS_FILE, {}) or {}
    record = {
        **{k: v for k, v in previous.items() if k in ("created", "started", "progress", "world_size")},
        **_status_record(state, message, **fields),
    }
    write_json_atomic(Path(run_dir) / STATUS_FILE, record)
    return record


def touch_heartbeat(run_dir: Path, **fields: Any) -> None:
    """Refresh the heartbeat (and progress fields) of a live run without changing its state."""
    path = Path(run_dir) / STATUS_FILE
    record = read_json(path, {}) or {}
    if record.get("state") not in LIVE_STATES:
        return
    record.update(fields, heartbeat=time.time())
    write_json_atomic(path, record)


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json with the truth about liveness: a live state whose process is gone reads `interrupted`."""
    record = read_json(Path(run_dir) / STATUS_FILE)
    if not isinstance(record, dict) or "state" not in record:
        return {"state": INTERRUPTED, "message": "The run's status file is missing or damaged."}
    if record["state"] in LIVE_STATES and not _is_live(record):
        record = {
            **record,
            "state": INTERRUPTED,
            "message": "The process training this run ended without finishing (server restart, crash or kill). Resume to continue.",
        }
    return record


def _is_live(record: dict[str, Any]) -> bool:
    if record.get("host") == socket.gethostname():
        return process_alive(record.get("pid"), record.get("pid_start"))
    return time.time() - float(record.get("heartbeat", 0)) < STALE_SECONDS


# --- checkpoints and listing -----------------------------------------------------------------
@dataclass
class Snapshot:
    path: Path
    step: int
    label: str  # what a person sees: "step 1,200 (epoch 3)"


def list_snapshots(run_dir: Path) -> list[Snapshot]:
    """Evaluation-point checkpoints (`step-*.pt`), oldest first, labelled with their epoch and kNN."""
    run_dir = Path(run_dir)
    evals = {int(r["step"]): r for r in read_rows(run_dir) if is_eval(r)}
    snapshots = []
    for path in sorted(run_dir.glob(SNAPSHOT_GLOB)):
        try:
            step = int(path.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        row = evals.get(step, {})
        epoch = row.get("epoch")
        knn = row.get("knn")
        # Evaluations land on step boundaries, so the epoch is fractional (10.0103): one decimal reads cleanly.
        label = f"step {step:,}" + (f" (epoch {round(epoch, 1):g})" if epoch is not None else "")
        if knn is not None:
            label += f", kNN {knn:.1f}%"
        snapshots.append(Snapshot(path, step, label))
    return snapshots


def resume_problem(run_dir: Path, state: str | None = None) -> str | None:
    """Why the run cannot be continued, as a sentence for the user, or None when it can.

    A run continues from its last.pt. Without one it can only start over, which is right for a run
    stopped, failed or interrupted before its first save (or killed while writing it), and wrong for
    a finished one: starting over would throw its result away. A shipped demo run is finished and
    keeps its snapshots and metrics but no optimiser state.
    """
    run_dir = Path(run_dir)
    state = state or read_status(run_dir)["state"]
    if state in LIVE_STATES:
        return f"The run {run_dir.name} is {state} right now; it cannot be resumed twice."
    if state == FINISHED and not (run_dir / LAST_CHECKPOINT).is_file():
        return (
            f"The run {run_dir.name} keeps no optimiser state ({LAST_CHECKPOINT}), so it cannot continue; "
            "start a new run with its settings to train further."
        )
    return None


def fewest_epochs_to_resume(planned: int, done: float, state: str) -> int:
    """The smallest total of epochs a resume accepts, for a run of `planned` epochs that has done `done`:
    one more than planned for a finished run (it has nothing left to do), else `done` rounded up."""
    if state == FINISHED:
        return planned + 1
    return max(1, math.ceil(done))


def extended_config(run_dir: Path, state: str | None, epochs: int | None) -> TrainConfig:
    """The run's config for resuming, with `epochs` as its new total when given; RunError when it is not a
    valid total (fewer than `fewest_epochs_to_resume`) or when a finished run is resumed without more epochs."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    state = state or read_status(run_dir)["state"]
    if epochs is None or epochs == config.epochs:
        if state == FINISHED:
            raise RunError(
                f"The run {run_dir.name} has finished all its {config.epochs} epochs; choose more epochs to extend it."
            )
        return config
    done = summarize_run(run_dir).epochs_done
    fewest = fewest_epochs_to_resume(config.epochs, done, state)
    if epochs < fewest:
        raise RunError(f"The new number of epochs must be at least {fewest}: this run has already done {done:g}; got {epochs}.")
    return config.replace(epochs=int(epochs))


def disk_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(run_dir).rglob("*") if p.is_file())


@dataclass
class RunSummary:
    name: str
    path: Path
    state: str
    message: str
    preset: str
    data: str
    head_bn: bool
    epochs_done: float
    epochs_total: int
    step: int
    latest_knn: float | None
    best_knn: float | None  # the trained network's best: evaluations after step 0 (None before the first)
    baseline_knn: float | None  # the random-init network at step 0
    pixel_knn: float | None
    last_loss: float | None
    last_z_std: float | None
    collapse: Collapse | None  # the Compare page's collapse verdict on its step rows; None = no collapse (yet)
    disk_bytes: int
    started: str
    created: float
    world_size: int
    demo: str  # for a shipped demo run: how it was trained, in words (from demo.json); else ""
    demo_summary: str  # for a shipped demo run: its result in plain words (demo.json's "summary"); else ""


def knn_baselines(eval_rows: list[dict]) -> tuple[float | None, float | None]:
    """What a run's kNN accuracy is read against, from its eval rows: the untrained network's (the
    evaluation at step 0; None when the run has none) and raw pixels' (the newest measured)."""
    random_init = eval_rows[0]["knn"] if eval_rows and eval_rows[0].get("step") == 0 else None
    pixels = next((r["pixel_knn"] for r in reversed(eval_rows) if r.get("pixel_knn") is not None), None)
    return random_init, pixels


def summarize_run(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    status = read_status(run_dir)
    rows = read_rows(run_dir)
    evals = [r for r in eval_rows(rows) if r.get("knn") is not None]
    steps = step_rows(rows)
    last_row = rows[-1] if rows else {}
    started = status.get("started")
    demo_label, demo_summary = demos.demo_words(run_dir)
    baseline_knn, pixel_knn = knn_baselines(evals)
    # The untrained network's figure is the baseline, not something training reached: a collapsed run
    # that never beat it must not read as having scored it.
    trained = [r["knn"] for r in evals if r.get("step", 0) > 0]
    return RunSummary(
        name=run_dir.name,
        path=run_dir,
        state=status.get("state", INTERRUPTED),
        message=status.get("message", ""),
        preset=config.preset,
        data=config.data,
        head_bn=config.head_bn,
        epochs_done=float(last_row.get("epoch", 0) or 0),
        epochs_total=config.epochs,
        step=int(last_row.get("step", 0) or 0),
        latest_knn=evals[-1]["knn"] if evals else None,
        best_knn=max(trained) if trained else None,
        baseline_knn=baseline_knn,
        pixel_knn=pixel_knn,
        last_loss=steps[-1].get("loss") if steps else None,
        last_z_std=steps[-1].get("z_std") if steps else None,
        collapse=find_collapse(steps, config.projector_dim),
        disk_bytes=disk_bytes(run_dir),
        started=datetime.fromtimestamp(started, timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M") if started else "",
        created=float(status.get("created") or (run_dir / CONFIG_FILE).stat().st_mtime),
        world_size=int(status.get("world_size", 1) or 1),
        demo=demo_label,
        demo_summary=demo_summary,
    )


def list_runs(runs_dir: Path | None = None) -> list[RunSummary]:
    """Every readable run in `runs_dir`, newest first; folders that are not runs are skipped."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    if not runs_dir.is_dir():
        return []
    summaries = []
    for folder in runs_dir.iterdir():
        if folder.name.startswith(".") or not is_run_folder(folder):
            continue
        try:
            summaries.append(summarize_run(folder))
        except (RunError, OSError, ValueError, TypeError):
            continue
    return sorted(summaries, key=lambda s: s.created, reverse=True)


def kept_demo_words(name: str) -> str:
    """Why a run that ships with BYOL Studio cannot be deleted (its files are the repository's)."""
    return f"The run {name} comes with BYOL Studio: it is part of its files, so it cannot be deleted."


def other_process_words(name: str) -> str:
    """Why this server cannot stop a run: another process (the command line) trains it."""
    return f"The run {name} trains in another process (probably the command line); stop it there with Ctrl-C."


def delete_run(run_dir: Path, force: bool = False) -> None:
    """Remove a run folder; refuses a shipped demo run, and a live run unless `force` (one that never started)."""
    run_dir = existing_run(run_dir)
    if demos.is_shipped_demo(run_dir):
        raise RunError(kept_demo_words(run_dir.name))
    if not force and read_status(run_dir).get("state") in LIVE_STATES:
        raise RunError(f"The run {run_dir.name} is still queued or training; stop it before deleting it.")
    shutil.rmtree(run_dir)
