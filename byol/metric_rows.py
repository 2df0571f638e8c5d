"""The two kinds of row in a run's metrics.jsonl, named once.

Training writes a *step* row every few steps (loss, projection spread, learning rate, τ, speed) and an
*eval* row at each kNN measurement (kNN accuracy, raw pixels' kNN, effective rank). Every row carries
its `kind`, `step` and `epoch`; readers pick rows by kind through these names.
"""

from __future__ import annotations

from typing import Any, Iterable

STEP = "step"  # a logged training step
EVAL = "eval"  # a kNN evaluation


def is_step(row: dict[str, Any]) -> bool:
    return row.get("kind", STEP) == STEP


def is_eval(row: dict[str, Any]) -> bool:
    return row.get("kind") == EVAL


def step_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if is_step(row)]


def eval_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if is_eval(row)]
