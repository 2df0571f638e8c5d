"""The linear probe on the Embeddings page: its saved figure as a metric, or a button that measures it.

The fit runs in the inspection pages' background task runner (byol/probe.py does the work), with the
same self-refreshing progress bar as the embeddings; the page reruns when the figure is saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from byol import probe, tasks
from byol.dataset import Dataset
from ui import inspection

HELP = (
    "A linear probe trains one linear classifier (logistic regression) on the frozen features of all training "
    "images, using their labels, and grades it on the test images: the field's standard measure beside kNN. "
    "The network itself is not changed. Chance is 100% divided by the number of classes."
)


def linear_probe_metric(column: Any, run_dir: Path, checkpoint: Path, data: Dataset) -> None:
    """In `column`: the checkpoint's linear-probe accuracy, its progress while measured, or a button to measure it."""
    with column:
        saved = probe.saved_probe(run_dir, checkpoint)
        if saved is not None:
            st.metric("Linear probe accuracy", f"{saved.accuracy:.1f}%", help=HELP)
            return
        runner = inspection.get_task_runner()
        key = f"probe:{Path(checkpoint).resolve()}"
        status = runner.status(key)
        if status.active:
            inspection.progress_panel(runner, key, lambda: probe.saved_probe(run_dir, checkpoint) is not None)
            return
        st.caption("Linear probe accuracy", help=HELP)
        if status.state == tasks.FAILED:
            st.error(status.message)
        inspection.task_button(
            runner,
            key,
            lambda report: probe.run_probe(run_dir, checkpoint, report, data),
            f"linear probe {Path(checkpoint).name}",
            "Measure",
            key="probe-measure",
            help="Fits a logistic regression on the saved embeddings in the background (seconds to a few minutes); "
            "the result is saved, so this happens once per checkpoint.",
            kind="secondary",
        )
