"""A run's metrics.jsonl: its two kinds of row, and writing and reading them.

Training writes a *step* row every few steps (loss, projection spread, learning rate, τ, speed) and an
*eval* row at each kNN measurement (kNN accuracy, raw pixels' kNN, effective rank). Every row carries
its `kind`, `step` and `epoch`; readers pick rows by kind through the names below. One JSON object a
line, appended as training goes, so a kill mid-write leaves at most a torn last line, which readers skip.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .files import write_atomic

if TYPE_CHECKING:  # for the annotation only: read_frame imports pandas when called
    import pandas as pd

NAME = "metrics.jsonl"  # in the run folder
STEP = "step"  # a logged training step
EVAL = "eval"  # a kNN evaluation
STATUS = "status"  # never a row: train()'s events are these rows and, with this kind, its changes of state


def is_step(row: dict[str, Any]) -> bool:
    return row.get("kind", STEP) == STEP


def is_eval(row: dict[str, Any]) -> bool:
    return row.get("kind") == EVAL


def step_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if is_step(row)]


def eval_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if is_eval(row)]


def append_rows(run_dir: Path, rows: list[dict[str, Any]], durable: bool = True) -> None:
    """Append rows to metrics.jsonl, one complete line each, flushed to the operating system.

    `durable` also syncs the file to disk (a few milliseconds of waiting): training asks for it with
    the rows written at checkpoints, not with every logged step. A killed process loses nothing
    either way; only a machine crash can lose the unsynced rows after the last checkpoint, which a
    resume would drop anyway.
    """
    if not rows:
        return
    text = "".join(json.dumps(_finite(row)) + "\n" for row in rows)
    with open(Path(run_dir) / NAME, "a") as handle:
        handle.write(text)
        handle.flush()
        if durable:
            os.fsync(handle.fileno())


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """All complete rows of metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    path = Path(run_dir) / NAME
    rows = []
    try:
        with open(path) as handle:
            for line in handle:
                if not line.endswith("\n"):
                    break  # torn final line
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def truncate_after(run_dir: Path, last_step: int) -> None:
    """Keep only rows up to `last_step` (the resumed checkpoint's step), so curves hold no duplicates.

    Eval rows are written at the step they measure and step rows after the step they log, so both
    compare against the step the checkpoint was taken at.
    """
    rows = [r for r in read_rows(run_dir) if int(r.get("step", 0)) <= last_step]
    write_atomic(Path(run_dir) / NAME, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows)), "w")


def read_frame(run_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame (column `kind` is STEP or EVAL); empty with the key columns when absent."""
    import pandas as pd

    rows = read_rows(run_dir)
    frame = pd.DataFrame(rows)
    for column in ("kind", "step", "epoch"):
        if column not in frame:
            frame[column] = pd.Series(dtype="object" if column == "kind" else "float")
    return frame
