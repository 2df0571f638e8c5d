"""The Retrieval page's headline: how often the neighbours are right, for this checkpoint and what it must beat.

One figure per contender, the same fixed test images for every run (byol/neighbour_score.py does the
work): this checkpoint, the run's untrained network (its step-0 snapshot), raw pixels, and guessing.
The untrained network's figure needs its own search bank; a button computes it in the inspection
pages' background task runner, sharing the task the page's side-by-side comparison starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from byol import embed, neighbour_score, tasks
from byol.checkpoint import CheckpointError, random_init_checkpoint
from byol.dataset import Dataset
from ui import inspection, words
from ui.common import NO_VALUE

TITLE = "How often are the neighbours right?"


def checkpoint_and_pixel_scores(run_dir: Path, checkpoint: Path, data: Dataset) -> tuple[float, float] | None:
    """precision@K over the fixed test pictures of the checkpoint and of raw pixels (computed once per
    checkpoint, under a spinner), or None after saying why they cannot be had."""
    count = len(neighbour_score.score_indices(len(data.test_labels)))
    try:
        with st.spinner(f"Scoring {count:,} test pictures (once per checkpoint)..."):
            return neighbour_score.checkpoint_score(run_dir, checkpoint, data), neighbour_score.pixel_score(data)
    except (CheckpointError, embed.NotPrepared, ValueError) as error:
        st.error(str(error))
        return None


def neighbour_score_panel(run_dir: Path, checkpoint: Path, data: Dataset) -> None:
    """A bordered row of metrics: precision@10 of the checkpoint, the untrained network, raw pixels and guessing."""
    k = neighbour_score.K
    count = len(neighbour_score.score_indices(len(data.test_labels)))
    with st.container(border=True):
        st.markdown(
            f"**{TITLE}** For the same {count:,} test pictures with every run, the share of each one's {k} most "
            "similar training images that show the same kind of thing, on average.",
            help=words.TERMS["precision"],
        )
        scores = checkpoint_and_pixel_scores(run_dir, checkpoint, data)
        if scores is None:
            return
        trained, pixels = scores
        this_col, untrained_col, pixel_col, chance_col = st.columns(4)
        this_col.metric(
            "This checkpoint",
            f"{trained:.0%}",
            delta=f"{100 * (trained - pixels):+.0f} points against raw pixels",  # the sign sets the arrow
            delta_color="normal",
            help="The network at the point in training picked above.",
        )
        _untrained_metric(untrained_col, run_dir, checkpoint, data)
        pixel_col.metric("Raw pixels", f"{pixels:.0%}", help=words.TERMS["pixels"])
        chance_col.metric(
            "Guessing",
            f"{neighbour_score.chance(data):.0%}",
            help="Picking training images at random: one in the number of classes.",
        )


def _untrained_metric(column: Any, run_dir: Path, checkpoint: Path, data: Dataset) -> None:
    """The untrained network's figure, its progress while its search bank is computed, or a button to compute it."""
    with column:
        untrained = random_init_checkpoint(run_dir)
        if untrained is None or untrained == checkpoint:
            reason = (
                "This run has no saved untrained network."
                if untrained is None
                else "The checkpoint picked is the untrained network."
            )
            st.metric("Untrained network", NO_VALUE, help=reason + " " + words.TERMS["random_init"])
            return

        def ready() -> bool:
            return not embed.missing_work(run_dir, untrained, embed.BANK, data)

        if ready():
            try:
                score = neighbour_score.checkpoint_score(run_dir, untrained, data)
            except (CheckpointError, embed.NotPrepared, ValueError) as error:
                st.error(str(error))
            else:
                st.metric("Untrained network", f"{score:.0%}", help=words.TERMS["random_init"])
            return
        runner = inspection.get_task_runner()
        key = inspection.task_key(embed.BANK, untrained)
        status = runner.status(key)
        if status.active:
            inspection.progress_panel(runner, key, ready)
            return
        st.caption("Untrained network", help=words.TERMS["random_init"])
        if status.state == tasks.FAILED:
            st.error(status.message)
        work, label = inspection.prepare_task(run_dir, untrained, embed.BANK, data)
        inspection.task_button(
            runner,
            key,
            work,
            label,
            "Measure",
            key="score-untrained",
            help="Runs the untrained network over the training images once, in the background, and saves the result.",
            kind="secondary",
        )
