"""Home's proof in pictures: a few test pictures, and the training pictures a run's network finds most alike.

Each row shows one test picture the network never trained on and its nearest training pictures, each
marked ✓ when it shows the same kind of thing and ✗ when not, with how many of the nearest by raw
pixels do. The pictures are drawn at random (a button draws others), never picked to look good; under
them, the Retrieval page's score over 500 fixed test pictures (byol/neighbour_score.py) says how
typical they are.

Home shows the strip only when it starts no long computation: the run's images are on this computer
(no download) and its newest checkpoint's search bank is ready, as a shipped demo's is. Then the
images load and the score takes seconds the first time, then comes from the project cache
(byol/neighbour_score.py). Otherwise it shows one line that
points to the Retrieval page, which computes what is missing.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from byol import embed, neighbour_score, retrieval, run_images, shipped
from byol.checkpoint import CheckpointError, checkpoint_choices, default_choice
from byol.dataset import DataError
from byol.runs import RunError, RunSummary, read_config
from ui import inspection, score_panel
from ui.common import link

ROWS = 3  # test pictures shown at once
NEIGHBOURS = 8  # training pictures per row: at 88 pixels with "✗ automobile" under each, one row on a laptop
SEED_KEY = "home-strip-seed"
NOT_READY = "Pick a test picture on **Find similar images** to see which training pictures this network finds most alike."


def draw_again() -> None:
    st.session_state[SEED_KEY] += 1  # set by the strip before its button is drawn


def _bank_may_be_ready(summary: RunSummary, checkpoint: Path) -> bool:
    """Whether the checkpoint's search bank is saved or ships with the run: known before any image is
    loaded, so Home decodes no images for a bank it would only find missing."""
    bank = embed.embedding_path(summary.path, checkpoint, "train")
    return bank.exists() or shipped.ships(summary.path, bank.name)


@st.fragment  # "Show other pictures" redraws the strip alone, not the whole Home page
def neighbour_strip(summary: RunSummary) -> None:
    """The strip for `summary`'s newest checkpoint, or a line pointing to the Retrieval page."""
    choices = checkpoint_choices(summary.path)
    checkpoint = default_choice(choices).path if choices else None
    found = None
    if checkpoint is not None and _bank_may_be_ready(summary, checkpoint):
        try:
            config = read_config(summary.path)
            found = run_images.load_run_images_at_hand(summary.path, config, inspection.dataset_for)
        except (RunError, DataError, ValueError, OSError):
            pass  # the Retrieval page says what is wrong, and asks where the images are
    if found is None or embed.missing_work(summary.path, checkpoint, embed.BANK, found[1]):
        st.caption(NOT_READY)
        link("retrieval", "Find similar images", query_params={"run": summary.name})
        return
    data = found[1]

    st.markdown(
        f"**What it learned, in pictures.** Test pictures it never trained on, drawn at random, each followed by "
        f"the {NEIGHBOURS} training pictures it finds most alike: ✓ when a neighbour shows the same kind of thing. "
        "Nobody told the network what any picture shows."
    )
    state = st.session_state
    state.setdefault(SEED_KEY, 0)
    for index in retrieval.sample_queries(data.test_labels, ROWS, state[SEED_KEY]):
        query = data.test_images[index]
        label = int(data.test_labels[index])
        try:
            found_here = retrieval.image_neighbours(summary.path, checkpoint, query, NEIGHBOURS)
            by_pixels = retrieval.pixel_neighbours(data, query, NEIGHBOURS)
        except (CheckpointError, embed.NotPrepared, ValueError) as error:
            st.error(str(error))
            return
        same = sum(n.label == label for n in found_here)
        same_by_pixels = sum(n.label == label for n in by_pixels)
        query_col, found_col = st.columns([1, 7], vertical_alignment="center")
        query_col.image(retrieval.thumbnail(query, 3), caption=f"#{index} {data.classes[label]}")
        found_col.image(
            [retrieval.thumbnail(data.train_images[n.train_index], 3) for n in found_here],
            caption=[("✓ " if n.label == label else "✗ ") + data.classes[n.label] for n in found_here],
            width=88,  # a fixed size: a long caption would otherwise widen its picture
        )
        found_col.caption(
            f"{same} of {NEIGHBOURS} are {data.classes[label]} pictures like it; "
            f"of the {NEIGHBOURS} nearest by raw pixels, {same_by_pixels}."
        )
    scores = score_panel.checkpoint_and_pixel_scores(summary.path, checkpoint, data)
    if scores is None:
        return
    trained, pixels = scores
    count = len(neighbour_score.score_indices(len(data.test_labels)))
    st.markdown(
        f"How typical are these? Over the same {count:,} test pictures for every run, **{trained:.0%}** of their "
        f"{neighbour_score.K} nearest training pictures show the same kind of thing; by raw pixels {pixels:.0%}, "
        f"by guessing {neighbour_score.chance(data):.0%}."
    )
    more, search = st.columns(2)
    more.button(f"Show {ROWS} other pictures", key="home-strip-more", icon=":material/shuffle:", on_click=draw_again)
    with search:
        link("retrieval", "Search with any picture", query_params={"run": summary.name})
