"""The runs that ship with BYOL Studio: what marks one, which to show first, and the shipped pair.

A shipped run is a run folder in git that holds a `demo.json`: how it was trained and its result in
plain words (written by benchmarks/make_demo.py). Git tracks the folder, so the app and the command
line may add ignored files to it but never remove it. Two kinds ship: the main demo, the model worth
looking inside, and the batch-norm pair, the same recipe with and without batch norm in its heads,
whose second half collapsed and is no model to look inside. The artefacts a shipped run carries
(embeddings, map, film) are byol/shipped.py's business.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .files import read_json
from .pairs import latest_pair

if TYPE_CHECKING:
    from .runs import RunSummary

DEMO_RECORD = "demo.json"


def is_shipped_demo(run_dir: Path) -> bool:
    """Whether the run ships with BYOL Studio: one that holds a demo.json."""
    return (Path(run_dir) / DEMO_RECORD).is_file()


def demo_words(run_dir: Path) -> tuple[str, str]:
    """A shipped run's label (how it was trained) and plain summary (its result); ("", "") for any other run."""
    record = read_json(Path(run_dir) / DEMO_RECORD, {})
    if not isinstance(record, dict) or not record:
        return "", ""
    return str(record.get("label") or "Demo run shipped with BYOL Studio."), str(record.get("summary") or "")


def main_demo(summaries: list[RunSummary]) -> RunSummary | None:
    """The shipped run to show first: the one with the best kNN accuracy (never the collapsed one)."""
    demos = [s for s in summaries if s.demo]
    return max(demos, key=lambda s: float("-inf") if s.best_knn is None else s.best_knn) if demos else None


def shipped_pair(summaries: list[RunSummary]) -> tuple[RunSummary, RunSummary] | None:
    """The shipped batch-norm pair: (with batch norm, without), or None when none ships."""
    demos = {s.name: s for s in summaries if s.demo}
    pair = latest_pair(list(demos))
    return (demos[pair[0]], demos[pair[1]]) if pair else None
