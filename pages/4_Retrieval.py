"""Retrieval: click a test image (or upload one) and see the training images the network finds most alike."""

import streamlit as st

from byol import embed, images, retrieval
from byol.checkpoint import CheckpointError, random_init_checkpoint
from ui import inspection, picture_grid, score_panel, words
from ui.common import page_setup

page_setup("Retrieval", ":material/image_search:")
st.title("Retrieval: find the most similar training images")
st.markdown(
    "Pick a picture and the network looks through all the training images for the ones it finds most "
    "alike. It was never told what the pictures show, so when the neighbours share the query's class, "
    "that is something it worked out on its own."
)
with st.expander("What am I looking at?"):
    st.markdown(words.explain("neighbours", "embedding", "cosine", "precision", "random_init", "pixels"))

UPLOAD = "upload"  # the query is the uploaded picture (else a test-image number, or None: nothing chosen)

# --- widgets and guards --------------------------------------------------------------------------
run, choice, config, data = inspection.pick_run_checkpoint_and_data("ret")

# The person came to search: the first visit computes the search bank by itself, with progress.
inspection.ensure_prepared(run.path, choice.path, embed.BANK, data, what="Searching", key="ret", start=True)

# The headline above the pictures, filled in after them: the pictures show at once, the score when computed.
headline = st.container()

state = st.session_state
state.setdefault("ret-query", None)
state.setdefault("ret-upload-generation", 0)  # bumping it empties the upload box
state.setdefault("ret-seed", 0)
# The results' own settings live in the results window, which is not drawn while it is closed;
# re-storing them keeps them for the next query (Streamlit forgets the values of widgets not drawn).
for setting, default in (("ret-k", 10), ("ret-compare", False)):
    state[setting] = state.get(setting, default)


def use_test_image(index: int) -> None:
    state["ret-query"] = index
    state["ret-upload-generation"] += 1  # a click on a picture replaces an earlier upload


def use_upload() -> None:
    state["ret-query"] = UPLOAD


def close_results() -> None:
    if state["ret-query"] == UPLOAD:
        state["ret-upload-generation"] += 1  # closing the results of an upload empties the box for the next one
    state["ret-query"] = None


def reshuffle() -> None:
    state["ret-seed"] += 1


gallery_tab, upload_tab = st.tabs(["Pick a test image", "Upload your own picture"])
with gallery_tab:
    filter_col, shuffle_col = st.columns([3, 1])
    everything = "all classes"
    shown_class = filter_col.selectbox(
        "Show test images of",
        [everything, *data.classes],
        key="ret-class",
        help="Narrow the pictures below to one class, or show a few of every class.",
    )
    shuffle_col.button("Reshuffle", key="ret-reshuffle", on_click=reshuffle, help="Show other randomly chosen test images.")
    only = None if shown_class == everything else data.classes.index(shown_class)
    candidates = retrieval.gallery_indices(data.test_labels, 3 if only is None else 20, state["ret-seed"], only)
    st.caption("Click a picture to find the training images most like it. These are test images, which training never used.")
    picture_grid.picture_grid(
        picture_grid.tiles(data.test_images, candidates, data.test_labels, data.classes),
        key="ret-gallery",
        on_click=use_test_image,
        size=72,  # nine or ten to a row on a laptop screen
        label="Test images: click one to search",
    )
with upload_tab:
    uploaded = st.file_uploader(
        "Upload a picture",
        key=f"ret-upload-{state['ret-upload-generation']}",
        max_upload_size=images.MAX_UPLOAD_MB,
        on_change=use_upload,
        help=f"Any common picture format ({', '.join(images.IMAGE_FORMATS)}), up to {images.MAX_UPLOAD_MB} MB. It is shrunk to "
        f"{config.image_size}×{config.image_size} pixels, the size the network was trained on.",
    )

with headline:  # how often this network's neighbours are right, against what it must beat
    score_panel.neighbour_score_panel(run.path, choice.path, data)

# --- the query -----------------------------------------------------------------------------------
query, query_label, query_words = None, None, ""
if state["ret-query"] == UPLOAD:
    if uploaded is None:  # the file was taken out of the box
        state["ret-query"] = None
    else:
        try:
            query = images.query_from_upload(uploaded.getvalue(), config.image_size)
        except ValueError as error:
            upload_tab.error(f"{uploaded.name}: {error}")  # next to the box the file went into
            state["ret-query"] = None
        else:
            query_words = f"your picture ({uploaded.name})"
elif state["ret-query"] is not None:
    try:
        query = retrieval.image_at(data, "test", state["ret-query"])
    except ValueError:  # a number from another run's data set
        state["ret-query"] = None
    else:
        query_label = int(data.test_labels[state["ret-query"]])
        query_words = f"test image #{state['ret-query']} ({data.classes[query_label]})"
if query is None:
    st.stop()


# --- the results, in a window over the page: they appear where the person is looking, at any scroll ---
def show_column(found_here: list, prefix: str) -> None:
    if query_label is not None:
        share = retrieval.precision_at_k([n.label for n in found_here], query_label)
        st.caption(f"precision@{len(found_here)}: {share:.0%} share the query's class")
    st.image(
        [retrieval.thumbnail(data.train_images[n.train_index], 3) for n in found_here],
        caption=inspection.neighbour_captions(found_here, data.classes, prefix),
        width=3 * int(data.train_images.shape[-1]),  # 96 px for 32x32 images: three fit side by side
    )


@st.dialog(f"Training images most like {query_words}", width="large", on_dismiss=close_results)
def results() -> None:
    left, right = st.columns([2, 1])
    k = left.slider(
        "Neighbours to show (k)",
        min_value=1,
        max_value=30,
        key="ret-k",
        help="How many of the most similar training images to show, most similar first.",
    )
    compare = right.toggle(
        "Compare with random init and raw pixels",
        key="ret-compare",
        help="Show side by side what the untrained network (random init) and plain pixel comparison find for the "
        "same picture, to see what training added.",
    )

    # One library call: the neighbours.
    try:
        found = retrieval.image_neighbours(run.path, choice.path, query, k)
    except (CheckpointError, embed.NotPrepared, ValueError) as error:
        st.error(str(error))
        return

    query_col, results_col = st.columns([1, 5] if compare else [1, 4])
    with query_col:
        st.image(retrieval.thumbnail(query, 4), caption=f"query: {query_words}", width=4 * int(query.shape[-1]))
        if query_label is not None:
            precision = retrieval.precision_at_k([n.label for n in found], query_label)
            st.metric(f"precision@{len(found)}", f"{precision:.0%}", help=words.TERMS["precision"])
        else:
            st.caption("Your picture has no class, so precision@k cannot be measured: judge the neighbours by eye.")
    with results_col:
        if not compare:
            st.caption("Each picture shows its class and its cosine similarity to the query (1 = identical direction).")
            inspection.image_grid(
                [data.train_images[n.train_index] for n in found],
                inspection.neighbour_captions(found, data.classes),
                columns=5,
                scale=4,
            )
            return
        trained_col, random_col, pixel_col = st.columns(3)
        with trained_col:
            st.markdown(f"**This checkpoint** ({choice.point})")
            show_column(found, "neighbour")
        with random_col:
            st.markdown("**Random init** (the same network before training)")
            untrained = random_init_checkpoint(run.path)
            if untrained is None:
                st.info("This run has no saved random-init network (step 0) to compare with.")
            elif untrained == choice.path:
                st.info("The chosen checkpoint already is the random-init network; pick a later one to compare.")
            elif inspection.ensure_prepared(
                run.path, untrained, embed.BANK, data, what="This comparison", key="ret-random", stop=False, start=True
            ):
                try:
                    show_column(retrieval.image_neighbours(run.path, untrained, query, k), "random init")
                except (CheckpointError, embed.NotPrepared, ValueError) as error:
                    st.error(str(error))
        with pixel_col:
            st.markdown("**Raw pixels** (no network at all)")
            with st.spinner("Preparing the pixel comparison (once per data set)..."):
                show_column(retrieval.pixel_neighbours(data, query, k), "pixels")


results()
