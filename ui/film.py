"""The Embeddings page's training film: one aligned map per snapshot, a slider and a play button.

The film steps through Streamlit's own slider, advanced by a timed fragment while playing, rather
than a plotly animation (`frames` with a play button inside the chart). Clicking or lassoing a point
reruns the page, and a rerun draws a plotly chart afresh from the figure it was sent, which would
jump an in-chart animation back to its first frame; with the slider the server always knows which
snapshot is on screen, so the picked image's picture, its ring on the map, the grid of a lasso
selection and the kNN-vote colours all refer to the frame the person is looking at.

`film_figure` is a plain function (tests call it; AppTest cannot click a chart); `film_section`
draws the whole section, computing the film in the server's task runner when it is missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import streamlit as st

from byol import embed, map_film, retrieval, tasks
from byol.dataset import Dataset
from byol.runs import RunSummary, list_snapshots
from ui import inspection

FRAME_SECONDS = 1.2  # between frames while playing: long enough to see where the points went
THUMBNAIL_SCALE = 8  # 32 x 32 pixels shown as 256 x 256, each pixel a sharp square
BY_CLASS, BY_VOTE = "class", "kNN vote right or wrong"
RIGHT_COLOUR, WRONG_COLOUR, UNKNOWN_COLOUR = "#9ab8d6", "#d62728", "#b0b0b0"


def film_task_key(run_dir: Path) -> str:
    return f"film:{Path(run_dir).resolve()}"


# --- the figure (plain) ----------------------------------------------------------------------------


def _padded_range(values: np.ndarray) -> list[float]:
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    return [low - pad, high + pad]


def film_figure(
    film: map_film.Film,
    frame: int,
    colour: str = BY_CLASS,
    votes: np.ndarray | None = None,
    picked: Sequence[int] = (),
    title: str = "",
    height: int = 560,
) -> Any:
    """Frame `frame` of the film as a scatter; each point's customdata is its test-image number.

    The axes span every frame, so a point that stays put stays put on screen. `colour` is BY_CLASS
    (one trace per class) or BY_VOTE (right and wrong kNN votes; grey when `votes` is None). The
    `picked` test images get a black ring. SVG points (not WebGL): a few thousand draw quickly, and
    each point is an element a browser test can click.
    """
    import plotly.graph_objects as go

    coordinates = film.coordinates[frame]
    names = film.classes
    figure = go.Figure()

    def add(rows: np.ndarray, name: str, colour_value: str) -> None:
        figure.add_trace(
            go.Scatter(
                x=coordinates[rows, 0],
                y=coordinates[rows, 1],
                mode="markers",
                name=name,
                marker=dict(size=6, color=colour_value, opacity=0.8),
                # Plain lists: an array would come back from a selection as {"0": 17} instead of [17].
                customdata=[[int(film.indices[r])] for r in rows],
                text=[hover[r] for r in rows],
                hovertemplate="%{text}<extra></extra>",
            )
        )

    if colour == BY_VOTE and votes is not None:
        hover = [
            f"<b>{names[label]}</b> · test image #{index}<br>kNN vote: {names[vote]}"
            for label, index, vote in zip(film.labels, film.indices, votes)
        ]
        right = votes == film.labels
        add(np.flatnonzero(right), "kNN vote right", RIGHT_COLOUR)
        add(np.flatnonzero(~right), "kNN vote wrong", WRONG_COLOUR)
    else:
        hover = [f"<b>{names[label]}</b> · test image #{index}" for label, index in zip(film.labels, film.indices)]
        if colour == BY_VOTE:
            add(np.arange(len(film.labels)), "kNN vote not computed for this snapshot", UNKNOWN_COLOUR)
        else:
            colours = inspection.class_colours(len(names))
            for c, name in enumerate(names):
                rows = np.flatnonzero(film.labels == c)
                if len(rows):
                    add(rows, name, colours[c])
    rows = np.flatnonzero(np.isin(film.indices, list(picked)))
    if len(rows):
        figure.add_trace(
            go.Scatter(
                x=coordinates[rows, 0],
                y=coordinates[rows, 1],
                mode="markers",
                name="picked",
                marker=dict(size=16, color="black", symbol="circle-open", line=dict(width=2)),
                customdata=[[int(film.indices[r])] for r in rows],
                hoverinfo="skip",
            )
        )
    figure.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=40, b=10),
        title=dict(text=title, x=0.01),
        legend=dict(itemsizing="constant"),
    )
    figure.update_xaxes(showticklabels=False, title=None, range=_padded_range(film.coordinates[..., 0]))
    figure.update_yaxes(showticklabels=False, title=None, range=_padded_range(film.coordinates[..., 1]))
    return figure


# --- the section -----------------------------------------------------------------------------------


def film_section(run: RunSummary, data: Dataset, k: int, temperature: float) -> None:
    """'Watch the map form': compute the film if needed (in the background), then play it."""
    st.subheader("Watch the map form during training")
    try:
        film = map_film.load_film(run.path)
    except embed.NotPrepared as problem:
        _offer_to_compute(run, data, str(problem))
        return
    votes = map_film.film_votes(run.path, film, k, temperature)
    labels = {s.path.name: s.label for s in list_snapshots(run.path)}
    titles = [labels.get(name, name) for name in film.snapshots]
    drawn = (
        f"{len(film.indices):,} of the {film.test_size:,} test images" if film.sampled else f"all {film.test_size:,} test images"
    )
    st.caption(
        f"One map per saved snapshot ({len(film.snapshots)}), laid out together ({film.method}) so each image keeps "
        f"its place unless the network moved it. Press play or drag the slider: as training goes on, the colours "
        f"gather into groups. The film draws {drawn}"
        + (", the same number from every class, to keep it quick to compute." if film.sampled else ".")
        + " Click a dot to see its picture beside the map (it keeps a ring in every frame); lasso dots to see them all."
    )
    _player(run, data, film, votes, titles)


def _offer_to_compute(run: RunSummary, data: Dataset, problem: str) -> None:
    runner = inspection.get_task_runner()
    key = film_task_key(run.path)
    status = runner.status(key)
    if status.active:
        inspection.progress_panel(runner, key, lambda: map_film.film_ready(run.path))
        return
    if status.state == tasks.FAILED:
        st.error(status.message)
    snapshots = len(list_snapshots(run.path))
    st.info(
        f"{problem} The film needs the test-set embeddings of each of the run's {snapshots} snapshots (those not "
        "computed yet take a few seconds to a minute or two each on a CPU) and then one aligned layout of all of "
        "them (a minute or a few). The result is saved, so this happens once."
    )
    inspection.task_button(
        runner,
        key,
        lambda report: map_film.prepare_film(run.path, report, data),
        f"film {run.name}",
        "Compute the film",
        key="compute-film",
        help="Runs in the background; other tabs share it.",
    )


def _player(run: RunSummary, data: Dataset, film: map_film.Film, votes: list, titles: list[str]) -> None:
    # The slider's options are its labels (unique: one snapshot per step), so its state reads as text.
    options = [f"step {step:,}" for step in film.steps]
    last = len(options) - 1
    frame_key, playing_key, picked_key, advanced_key = (
        f"film-{part}-{run.name}" for part in ("frame", "playing", "picked", "advanced")
    )
    # The trained network's map first; Play then starts from the untrained one.
    if st.session_state.setdefault(frame_key, options[-1]) not in options:  # the film was redrawn since
        st.session_state[frame_key] = options[-1]

    @st.fragment(run_every=FRAME_SECONDS if st.session_state.get(playing_key) else None)
    def player() -> None:
        # Every rerun runs this body, not only the timer's (a click elsewhere reruns the whole page), so a
        # frame is shown for at least most of FRAME_SECONDS before the next one.
        now = time.monotonic()
        if st.session_state.get(playing_key) and now - st.session_state.get(advanced_key, 0.0) >= 0.9 * FRAME_SECONDS:
            st.session_state[advanced_key] = now
            frame = options.index(st.session_state[frame_key])
            if frame >= last:
                st.session_state[playing_key] = False
                st.rerun(scope="app")  # stops the timer
            st.session_state[frame_key] = options[frame + 1]
        button_col, slider_col, colour_col = st.columns([1, 5, 3], vertical_alignment="bottom")
        playing = bool(st.session_state.get(playing_key))
        icon = ":material/pause:" if playing else ":material/play_arrow:"
        if button_col.button("Pause" if playing else "Play", key=f"film-play-{run.name}", icon=icon, disabled=not last):
            if not playing and st.session_state[frame_key] == options[-1]:
                st.session_state[frame_key] = options[0]  # play again from the start
            st.session_state[playing_key] = not playing
            st.session_state[advanced_key] = time.monotonic()  # the current frame shows for a whole tick first
            st.rerun(scope="app")  # starts or stops the timer
        if last:
            frame = options.index(slider_col.select_slider("Point in training", options=options, key=frame_key))
        else:
            frame = 0
            slider_col.caption("The run has one snapshot so far: the film grows as training saves more.")
        colour = colour_col.radio("Colour by", [BY_CLASS, BY_VOTE], key=f"film-colour-{run.name}", horizontal=True)
        frame_votes = votes[frame] if colour == BY_VOTE else None
        picked = st.session_state.get(picked_key, [])

        map_col, picture_col = st.columns([5, 2])  # the picture column fits 256 px on a laptop screen
        with map_col:
            chart_key = f"film-map-{run.name}-{frame}-{colour}"
            st.plotly_chart(
                film_figure(film, frame, colour, frame_votes, picked, titles[frame]),
                key=chart_key,
                on_select=lambda: st.session_state.__setitem__(
                    picked_key, inspection.selected_test_indices(st.session_state.get(chart_key))
                ),
                selection_mode=("points", "box", "lasso"),
                width="stretch",
            )
            if colour == BY_VOTE and votes[frame] is None:
                st.caption(
                    "This snapshot's kNN votes have not been computed: pick it as the checkpoint at the top of the page "
                    "to compute them (that embeds the training images too)."
                )
        with picture_col:
            _picture(film, data, picked, frame_votes)
        if len(picked) > 1:
            inspection.selection_grid(data, picked)

    player()


def _picture(film: map_film.Film, data: Dataset, picked: Sequence[int], votes: np.ndarray | None) -> None:
    if not picked:
        st.info("Click a dot on the map to see its picture here.")
        return
    index = int(picked[0])
    label = data.classes[int(data.test_labels[index])]
    caption = f"test image #{index} ({label})"
    if votes is not None:
        rows = np.flatnonzero(film.indices == index)
        if len(rows):
            caption += f"; kNN vote here: {film.classes[int(votes[rows[0]])]}"
    image = data.test_images[index]
    st.image(retrieval.thumbnail(image, THUMBNAIL_SCALE), caption=caption, width=THUMBNAIL_SCALE * int(image.shape[-1]))
    if len(picked) > 1:
        st.caption(f"The first of {len(picked):,} selected images; all of them are below the map.")
