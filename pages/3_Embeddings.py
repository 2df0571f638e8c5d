"""Embeddings: the test images as a 2-D map (UMAP) coloured by class; pick points to see them and their neighbours."""

import streamlit as st

from byol import embed, neighbour_score, retrieval
from byol.checkpoint import CheckpointError
from ui import inspection, words
from ui.common import page_setup
from ui.film import film_section
from ui.probe import linear_probe_metric

page_setup("Embeddings", ":material/scatter_plot:")
st.title("Embeddings: what the network learned, as a map")
st.markdown(
    "Every dot is one test image, placed by the network's own idea of similarity. If training worked, "
    "dots of the same colour (class) gather in groups, although the network never saw a single label."
)
with st.expander("What am I looking at?"):
    st.markdown(words.explain("embedding", "umap", "knn", "checkpoint", "cosine"))

NEIGHBOURS_SHOWN = 8

# --- widgets and guards --------------------------------------------------------------------------
run, choice, config, data = inspection.pick_run_checkpoint_and_data("emb")

# The person came for the map: the first visit computes it by itself (the film, minutes more, still asks).
inspection.ensure_prepared(
    run.path, choice.path, embed.FULL, data, config.knn_k, config.knn_temperature, what="The map page", key="emb", start=True
)

# --- one library call: the prepared map and its kNN accuracy --------------------------------------
try:
    map_data = embed.load_map(run.path, choice.path)
    knn = embed.checkpoint_knn(run.path, choice.path, config.knn_k, config.knn_temperature)
except (embed.NotPrepared, CheckpointError, ValueError) as error:
    st.error(str(error))
    st.stop()

# --- render --------------------------------------------------------------------------------------
first, probe_column, second, third = st.columns(4)
first.metric(
    "kNN accuracy",
    f"{knn.accuracy:.1f}%",
    help=f"{words.TERMS['knn']} Here every one of the {knn.bank_size:,} training images votes and "
    f"all {knn.query_size:,} test images are graded, with k = {knn.k}. The Train page measures while training, "
    "often on a smaller sample and always with the full-precision network (snapshots are saved in half "
    "precision), so its number can differ a little.",
)
linear_probe_metric(probe_column, run.path, choice.path, data)
second.metric("Chance level", f"{neighbour_score.chance(data):.0%}", help="What guessing a class at random would score.")
third.metric(
    "Checkpoint",
    f"step {choice.step:,}" if choice.step is not None else choice.path.name,
    help=f"{choice.label}. {words.TERMS['checkpoint']}",
)
if choice.random_init:
    st.caption(
        "This is the untrained network (random init). Even so, similar-looking images often land near each "
        "other; compare with a later checkpoint to see what training added."
    )

film_section(run, data, config.knn_k, config.knn_temperature)


def _clear_typed_number() -> None:
    # A new selection on the map wins over a number typed earlier: the latest action is what is shown.
    st.session_state["emb-test-image"] = None


left, right = st.columns([3, 2])
with left:
    st.subheader("The map")
    st.caption(
        "Hover a dot to see its class. Click a dot to see it and its nearest training images below; to see "
        "many at once, pick the lasso or box tool (top right of the chart) and draw around them. "
        "Double-click an empty spot to clear the selection."
    )
    event = st.plotly_chart(
        inspection.map_figure(map_data),
        key=f"map-{run.name}-{choice.path.stem}",
        on_select=_clear_typed_number,
        selection_mode=("points", "box", "lasso"),
        width="stretch",
    )
with right:
    st.subheader("Accuracy per class")
    st.caption("How often the nearest training images vote for the right class, for test images of each class.")
    st.plotly_chart(inspection.accuracy_figure(knn), key="per-class", width="stretch")

selected = inspection.selected_test_indices(event)
typed = st.number_input(
    "Or look at test image number",
    min_value=0,
    max_value=len(map_data.indices) - 1,
    value=None,
    step=1,
    key="emb-test-image",
    placeholder="e.g. 0",
    help="Type the number of a test image (hover a dot to see its number) to show it and its nearest "
    "training images, without clicking on the map. Clear the box to go back to the map's selection.",
)
focus = inspection.focus_index(selected, typed)
if focus is None:
    st.info("Click a dot on the map (or type a test image number above) to see the image and its nearest neighbours.")
    st.stop()

shown = ([focus] if focus not in selected else []) + selected
if len(shown) > 1:
    inspection.selection_grid(data, shown)

st.subheader(f"Test image #{focus} and its {NEIGHBOURS_SHOWN} nearest training images")
st.caption(words.TERMS["neighbours"] + " " + words.TERMS["cosine"])
try:
    found = retrieval.neighbours_of_test_image(run.path, choice.path, focus, NEIGHBOURS_SHOWN)
except (embed.NotPrepared, ValueError) as error:
    st.error(str(error))
    st.stop()
query_label = int(data.test_labels[focus])
query_col, result_col = st.columns([1, 4])
query_col.image(
    retrieval.thumbnail(data.test_images[focus], 5),
    caption=f"query: test image #{focus} ({data.classes[query_label]})",
    width=5 * int(data.test_images.shape[-1]),
)
with result_col:
    inspection.image_grid(
        [data.train_images[n.train_index] for n in found], inspection.neighbour_captions(found, data.classes), columns=4, scale=4
    )
precision = retrieval.precision_at_k([n.label for n in found], query_label)
st.caption(
    f"{round(precision * len(found))} of {len(found)} neighbours are {data.classes[query_label]} images "
    f"(precision@{len(found)} {precision:.0%})."
)
