"""Page helpers for the Embeddings and Retrieval pages: shared objects, pickers, progress, pictures.

The pages stay "widgets -> guard -> one library call -> render"; what they share lives here. The
plain functions (`selected_test_indices`, `focus_index`, `map_figure`, `accuracy_figure`) take no
streamlit state, so tests can call them directly (AppTest cannot click a plotly chart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st

from byol import data as datasets
from byol import embed, retrieval, run_images, tasks
from byol.checkpoint import CheckpointChoice, checkpoint_choices, default_choice
from byol.config import IMAGE_FOLDER_WORDS, KNN_K, KNN_TEMPERATURE, TrainConfig
from byol.dataset import DataError, Dataset
from byol.runs import RunError, RunSummary, default_runs_dir, list_runs, read_config, set_data_source
from ui import common

# --------------------------------------------------------------------------------------------------
# Shared objects (one per server process)
# --------------------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def get_task_runner() -> tasks.TaskRunner:
    """The server's runner for embedding/map computations (one at a time: they use every core)."""
    return tasks.TaskRunner(max_workers=1)


@st.cache_resource(
    show_spinner="Loading the pictures (the first time decodes them: about 10 s for CIFAR-10's 60,000)...",
    max_entries=2,
)
def _dataset(data: str, data_root: str, image_size: int) -> Dataset:
    return datasets.load_for(TrainConfig(data=data, data_root=data_root, image_size=image_size))


def dataset_for(config: TrainConfig) -> Dataset:
    """The run's data set, loaded once per server and shared by every session (raises DataError)."""
    return _dataset(config.data, config.data_root or "", int(config.image_size))


# --------------------------------------------------------------------------------------------------
# Picking a run and a checkpoint
# --------------------------------------------------------------------------------------------------


def pick_run_and_checkpoint(page: str) -> tuple[RunSummary, CheckpointChoice]:
    """A run and one of its checkpoints (newest by default); stops the page with advice when there is none."""
    summaries = list_runs(default_runs_dir())
    if not summaries:
        st.info(
            "There are no training runs yet. Start one on the **Train** page (the *cpu* preset learns "
            "visibly in about 15 minutes on a laptop), then come back here to look inside it."
        )
        common.link("train", "Go to the Train page")
        st.stop()
    left, right = st.columns(2)
    with left:
        summary = common.run_picker(summaries, key=f"{page}-run")
    name = summary.name
    choices = checkpoint_choices(summary.path)
    if not choices:
        st.info(
            f"The run **{name}** has no saved checkpoint yet. Its first one is written a few seconds after "
            "training starts (the untrained network, as a baseline); wait a moment, or pick another run."
        )
        st.stop()
    by_file = {c.path.name: c for c in choices}
    files = list(by_file)
    chosen = right.selectbox(
        "Checkpoint (point in training)",
        files,
        index=files.index(default_choice(choices).path.name),
        format_func=lambda f: by_file[f].label,
        key=f"{page}-checkpoint-{name}",
        help=(
            "Which saved network to look at. The run saves one at every evaluation; step 0 is the untrained "
            "(random init) network. Pick an early one and then a late one to watch the picture sharpen."
        ),
    )
    choice = by_file[chosen]
    # A checkpoint saved after the run collapsed shows what the collapse left: say so before the pictures.
    if summary.collapse is not None and choice.step is not None and choice.step >= summary.collapse.step:
        st.warning(
            common.collapse_sentences(summary, f"The run **{name}**") + " What you see below is what that leaves.",
            icon=":material/trending_down:",
        )
    return summary, choice


# --------------------------------------------------------------------------------------------------
# Background computation with a progress bar that refreshes itself
# --------------------------------------------------------------------------------------------------


def pick_run_checkpoint_and_data(page: str) -> tuple[RunSummary, CheckpointChoice, TrainConfig, Dataset]:
    """A run, one of its checkpoints, its config and its data set; stops the page plainly on a problem."""
    run, choice = pick_run_and_checkpoint(page)
    try:
        config = read_config(run.path)
    except (RunError, ValueError) as error:
        st.error(str(error))
        st.stop()
    try:
        # dataset_for shows its own spinner; a demo naming "cifar10" falls back to the local copy here.
        config, data = run_images.load_run_images(run.path, config, dataset_for)
    except (DataError, ValueError, OSError) as error:
        st.error(str(error))
        relocate_data(run, config, page)
        st.stop()
    return run, choice, config, data


def relocate_data(run: RunSummary, config: TrainConfig, page: str) -> None:
    """Let the user point a run at its images on this computer (a shipped demo run, a moved folder).

    The choice is saved in the run's local settings (never its config.json, which git may track) and
    only after the new source has loaded, so a wrong path changes nothing on disk.
    """
    st.markdown(
        f"The run **{run.name}** needs its images to show them. If you have CIFAR-10 on this computer "
        "(an image folder with `train/` and `test/`, or an archive of one), give its path; type `cifar10` "
        "to download it (about 170 MB, needs internet)."
    )
    source = st.text_input(
        "Where are the images?",
        key=f"{page}-relocate-{run.name}",
        placeholder="/path/to/cifar10 or cifar10",
        help=f"{IMAGE_FOLDER_WORDS.capitalize()}; or cifar10.",
    )
    if st.button("Use these images for this run", key=f"{page}-relocate-button-{run.name}", disabled=not source.strip()):
        moved = config.replace(data=source.strip(), data_root="")
        try:
            with st.spinner("Loading the images (the first time decodes and caches them)..."):
                dataset_for(moved)
        except (DataError, ValueError, OSError) as error:
            st.error(str(error))
            return
        set_data_source(run.path, moved.data)
        st.rerun()


# How the pages name what a checkpoint still lacks.
ARTEFACT_WORDS: dict[embed.Artefact, str] = {
    embed.Artefact.TRAIN_EMBEDDINGS: f"{embed.split_words('train')} embeddings",
    embed.Artefact.TEST_EMBEDDINGS: f"{embed.split_words('test')} embeddings",
    embed.Artefact.MAP: "the 2-D map (UMAP)",
    embed.Artefact.KNN: "the kNN accuracy",
}


def task_key(level: frozenset[embed.Artefact], checkpoint: Path) -> str:
    parts = "+".join(part.value for part in embed.Artefact if part in level)
    return f"prepare-{parts}:{Path(checkpoint).resolve()}"


def prepare_task(
    run_dir: Path,
    checkpoint: Path,
    level: frozenset[embed.Artefact],
    data: Dataset,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> tuple[Callable[[tasks.Report], None], str]:
    """The background work that computes the checkpoint's artefacts in `level`, and its label for the
    runner (run it under `task_key(level, checkpoint)`, so every page asking for it shares one task)."""

    def work(report: tasks.Report) -> None:
        embed.prepare_checkpoint(run_dir, checkpoint, report, data, level, k, temperature)

    return work, f"{task_key(level, checkpoint).split(':')[0]} {Path(checkpoint).name}"


def ensure_prepared(
    run_dir: Path,
    checkpoint: Path,
    level: frozenset[embed.Artefact],
    data: Dataset,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    what: str = "This page",
    key: str = "",
    stop: bool = True,
    start: bool = False,
) -> bool:
    """True when the checkpoint's artefacts in `level` are ready; otherwise compute them, or offer to.

    With `start` the computation begins by itself the first time (the person came for its result);
    it does not when another computation is under way (flicking through checkpoints would queue
    minutes of work), nor after a failure (the error shows with a "Try again" button, so a failing
    task never restarts itself in a loop). Without `start` a "Compute now" button asks first.
    While the work runs in the background a progress bar refreshes itself every second, and the
    whole page reruns when it is ready. With `stop` the rest of the page waits (st.stop()).
    """
    missing = embed.missing_work(run_dir, checkpoint, level, data, k, temperature)
    if not missing:
        return True
    runner = get_task_runner()
    # A full preparation also makes the search bank, so a smaller level waits on it too.
    keys = [task_key(level, checkpoint)] + ([task_key(embed.FULL, checkpoint)] if level != embed.FULL else [])
    active = next((runner.status(k_) for k_ in keys if runner.status(k_).active), None)

    def ready() -> bool:
        return not embed.missing_work(run_dir, checkpoint, level, data, k, temperature)

    work, label = prepare_task(run_dir, checkpoint, level, data, k, temperature)
    if active is None and start and runner.status(keys[0]).state == tasks.IDLE and not runner.active():
        runner.submit(keys[0], work, label=label, again=True)
        active = runner.status(keys[0])
    if active is not None:
        st.caption(
            f"{what} needs {_join([ARTEFACT_WORDS[m] for m in missing])} of **{Path(checkpoint).name}**: "
            "computing them now, once (the result is saved)."
        )
        progress_panel(runner, active.key, ready)
    else:
        failed = runner.status(keys[0])
        if failed.state == tasks.FAILED:
            st.error(failed.message)
        images = (len(data.train_labels) if embed.Artefact.TRAIN_EMBEDDINGS in missing else 0) + (
            len(data.test_labels) if embed.Artefact.TEST_EMBEDDINGS in missing else 0
        )
        cost = (
            f"That means running the network over {images:,} images: seconds on a GPU; on a CPU, seconds for a narrow network and up to several minutes for a full-width one on all of CIFAR-10. "
            if images
            else "That takes a few seconds. "
        )
        st.info(
            f"{what} needs {_join([ARTEFACT_WORDS[m] for m in missing])} of **{Path(checkpoint).name}**, "
            "which have not been computed yet. " + cost + "The result is saved, so this happens once."
        )
        if start and failed.state == tasks.IDLE:
            st.caption("Another computation is under way, so this one waits to be asked; it would start when that one ends.")
        task_button(
            runner,
            keys[0],
            work,
            label,
            "Compute now",
            key=f"compute-{key or task_key(level, checkpoint)}",
            help="Runs in the background: you can keep using the dashboard, and other tabs share the result.",
        )
    if stop:
        st.stop()
    return False


def task_button(
    runner: tasks.TaskRunner,
    task: str,
    work: Callable[[tasks.Report], Any],
    label: str,
    text: str,
    key: str,
    help: str,
    kind: str = "primary",
) -> None:
    """A button that starts `work` as the runner's task `task` and reruns the page (where progress_panel
    then shows it); it reads "Try again" once that task has failed (the caller shows the error)."""
    failed = runner.status(task).state == tasks.FAILED
    if st.button("Try again" if failed else text, key=key, type=kind, help=help):
        runner.submit(task, work, label=label, again=True)
        st.rerun()


def progress_panel(runner: tasks.TaskRunner, key: str, ready: Callable[[], bool]) -> None:
    """A progress bar for the runner's task `key` that refreshes itself every second; the whole page
    reruns when the task is done and `ready()` finds its result (or when it failed, to offer a retry)."""

    @st.fragment(run_every=1.0)
    def panel() -> None:
        status = runner.status(key)
        if status.active:
            st.progress(status.fraction or 0.0, text=f"{status.message}  ({status.elapsed:.0f} s)")
            st.caption("You can leave this page meanwhile: the computation goes on and its result is saved.")
        elif status.state == tasks.DONE and ready():
            st.rerun()  # the whole page, which now finds the result
        elif status.state == tasks.FAILED:
            st.error(status.message)
            st.rerun()  # back to the full page, which offers to try again
        else:
            st.info("The computation finished, but its result is not there (deleted meanwhile?). Compute it again.")

    panel()


def _join(parts: Sequence[str]) -> str:
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --------------------------------------------------------------------------------------------------
# The map: figure and selection (plain functions)
# --------------------------------------------------------------------------------------------------


def class_colours(count: int) -> list[str]:
    import plotly.express as px

    palette = px.colors.qualitative.D3 if count <= 10 else px.colors.qualitative.Alphabet
    return [palette[i % len(palette)] for i in range(count)]


def map_figure(map_data: embed.MapData, height: int = 560) -> Any:
    """The 2-D map as a WebGL scatter, one trace per class; each point's customdata is its test-image number."""
    import numpy as np
    import plotly.graph_objects as go

    figure = go.Figure()
    colours = class_colours(len(map_data.classes))
    for c, name in enumerate(map_data.classes):
        rows = np.flatnonzero(map_data.labels == c)
        if not len(rows):
            continue
        figure.add_trace(
            go.Scattergl(
                x=map_data.coordinates[rows, 0],
                y=map_data.coordinates[rows, 1],
                mode="markers",
                name=name,
                marker=dict(size=5, color=colours[c], opacity=0.8),
                # A plain list, not a numpy array: plotly would send an array as a typed array, which comes
                # back from a selection as {"0": 17} instead of [17].
                customdata=[[int(i)] for i in map_data.indices[rows]],
                hovertemplate=f"<b>{name}</b><br>test image #%{{customdata[0]}}<extra></extra>",
            )
        )
    figure.update_layout(
        height=height,
        margin=dict(l=10, r=10, t=30, b=10),
        legend=dict(title="class", itemsizing="constant"),
    )
    # No dragmode/clickmode here: Streamlit sets them for on_select (pan + click-to-select). A lasso or
    # box dragmode would switch click-to-select off.
    figure.update_xaxes(showticklabels=False, title=None)
    figure.update_yaxes(showticklabels=False, title=None)
    return figure


def selected_test_indices(event: Any) -> list[int]:
    """Test-image numbers of the points selected on the map (click, box or lasso), first-seen order, no repeats."""
    try:
        points = event["selection"]["points"] if event is not None else []
    except (KeyError, TypeError):
        return []
    chosen: list[int] = []
    for point in points or []:
        value = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(value, dict):  # a typed array serialised as {"0": 17}
            value = value.get("0")
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        try:
            index = int(value)
        except (TypeError, ValueError):
            continue
        if index not in chosen:
            chosen.append(index)
    return chosen


def focus_index(selected: Sequence[int], typed: int | None) -> int | None:
    """Whose neighbours to show: the typed test-image number if any, else the first selected point."""
    if typed is not None:
        return int(typed)
    return selected[0] if selected else None


def accuracy_figure(knn: embed.KnnResult, height: int = 360) -> Any:
    """Per-class kNN accuracy as horizontal bars, worst class at the bottom."""
    import plotly.graph_objects as go

    pairs = sorted(zip(knn.classes, knn.per_class), key=lambda p: (p[1] != p[1], p[1]))  # NaN last
    colours = class_colours(len(knn.classes))
    colour_of = dict(zip(knn.classes, colours))
    figure = go.Figure(
        go.Bar(
            x=[v for _, v in pairs],
            y=[c for c, _ in pairs],
            orientation="h",
            marker_color=[colour_of[c] for c, _ in pairs],
            hovertemplate="%{y}: %{x:.1f}%<extra></extra>",
            text=[f"{v:.0f}%" for _, v in pairs],
            textposition="auto",
        )
    )
    figure.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), xaxis=dict(range=[0, 100], title="kNN accuracy (%)"))
    return figure


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------


def image_grid(images: Sequence[Any], captions: Sequence[str], columns: int, scale: int = 4) -> None:
    """uint8 [3, H, W] images in rows of `columns`, upscaled with sharp pixels, each with its caption."""
    for start in range(0, len(images), columns):
        cells = st.columns(columns)
        for cell, image, caption in zip(cells, images[start : start + columns], captions[start : start + columns]):
            cell.image(retrieval.thumbnail(image, scale), caption=caption, width=int(image.shape[-1]) * scale)


def similarity_decimals(similarities: Sequence[float], most: int = 4) -> int:
    """Decimals that show a similarity below 1 as below 1: two, or up to `most` where two would round
    one up to "1.00". An untrained network's features all point nearly one way (its neighbours' cosine
    similarities sit near 0.996), and "1.00" under a horse would read as "identical to the car"."""
    decimals = 2
    while decimals < most and any(s < 1 and round(s, decimals) >= 1 for s in similarities):
        decimals += 1
    return decimals


def neighbour_captions(found: Sequence[retrieval.Neighbour], classes: Sequence[str], prefix: str = "neighbour") -> list[str]:
    """Stable, findable captions: "neighbour 1: cat (0.93)" (browser tests look for them), with the
    same number of decimals for every neighbour of one query (`similarity_decimals`)."""
    decimals = similarity_decimals([n.similarity for n in found])
    return [f"{prefix} {i}: {classes[n.label]} ({n.similarity:.{decimals}f})" for i, n in enumerate(found, start=1)]


# At most this many selected pictures under a map (four rows): enough to see what a lasso caught.
SELECTION_SHOWN = 40


def selection_grid(data: Dataset, shown: Sequence[int], limit: int = SELECTION_SHOWN) -> None:
    """Selected test images under a heading with their count, 10 a row; an even spread of `limit` when there are more."""
    import numpy as np

    shown = list(shown)
    if len(shown) > limit:  # an even spread over the selection, which comes ordered by class
        st.subheader(f"Selected images ({len(shown):,}; {limit} of them shown, spread over the selection)")
        shown = [shown[int(i)] for i in np.linspace(0, len(shown) - 1, limit)]
    else:
        st.subheader(f"Selected images ({len(shown):,})")
    image_grid(
        [data.test_images[i] for i in shown],
        [f"#{i} {data.classes[int(data.test_labels[i])]}" for i in shown],
        columns=10,
        scale=3,
    )
