"""BYOL Studio, home: what BYOL does, which device trains, the runs, and where to go next.

Start with `streamlit run app.py`. The other pages live in pages/.
"""

from __future__ import annotations

import streamlit as st

from byol import demos, metrics_file, runs
from ui.charts import knn_figure
from ui.common import (
    NO_VALUE,
    RUNS_TABLE_COLUMNS,
    collapse_sentences,
    device_facts,
    fmt_pct,
    get_runner,
    link,
    page_setup,
    plain_errors,
    redraw_while_live,
    runs_dir,
    runs_table,
)
from ui.neighbour_strip import neighbour_strip
from ui.words import HELP

page_setup("Home", ":material/home:")

st.title("BYOL Studio")
st.markdown(
    "BYOL teaches a network to describe images **without any labels**: it shows the network two "
    "randomly edited copies of each picture (cropped, recoloured, flipped) and trains it to give both "
    "the same description. Images that look alike then end up with similar descriptions, which we "
    "measure with **kNN accuracy**: how often a test image's most similar training images share its class."
)

device = device_facts()
precision = "bf16 (fast half-size numbers)" if device["bf16"] else "fp32 (full precision)"
if device["is_cpu"]:
    st.warning(
        f"Training device: **{device['name']}**, {precision}. No GPU here: training will be slow, "
        "use the **cpu** preset (it learns visibly in minutes).",
        icon=":material/memory:",
    )
else:
    st.info(f"Training device: **{device['name']}**, {precision}.", icon=":material/memory:")
st.caption(
    "Training runs inside this app's server: stopping the server stops the training. A stopped or "
    "interrupted run keeps its last checkpoint and can be resumed from the Train page."
)

summaries = runs.list_runs(runs_dir())
nav = st.columns(4)
with nav[0]:
    link("train", "Train a model")
with nav[1]:
    link("compare", "Compare runs")
with nav[2]:
    link("embeddings", "Explore the learned map")
with nav[3]:
    link("retrieval", "Find similar images")

if not summaries:
    st.info(
        "**No runs yet.** Go to **Train a model**, keep the suggested preset and data source, and press "
        "**Launch training**. Then watch loss and kNN accuracy climb; to see BYOL fail without batch "
        "norm, launch the one-click experiment on **Compare runs**.",
        icon=":material/lightbulb:",
    )
    st.stop()

# --- something worth showing -----------------------------------------------------------------
demo = demos.main_demo(summaries)
finished = [s for s in summaries if s.state == runs.FINISHED and s.best_knn is not None]
showcase = demo or (max(finished, key=lambda s: s.best_knn) if finished else None)
if showcase is not None:
    st.subheader(f"{'Demo run' if showcase is demo else 'Best finished run'}: {showcase.name}")
    if showcase is demo and demo.demo_summary:
        st.markdown(demo.demo_summary)
        with st.expander("How it was trained"):
            st.caption(demo.demo)
    elif showcase is demo:
        st.caption(demo.demo)
    chart, facts = st.columns([3, 1])
    chart.plotly_chart(
        knn_figure(metrics_file.read_frame(showcase.path), showcase.baseline_knn, showcase.pixel_knn),
        key="home_knn",
    )
    with facts:
        st.metric("Best kNN accuracy", fmt_pct(showcase.best_knn), help="Highest kNN accuracy this run reached.")
        st.metric("Untrained network", fmt_pct(showcase.baseline_knn), help=HELP["random_init_knn"])
        st.metric("Raw pixels", fmt_pct(showcase.pixel_knn), help=HELP["pixel_knn"])
        link("train", "Open this run", query_params={"run": showcase.name})
        link("embeddings", "See its map", query_params={"run": showcase.name})
    neighbour_strip(showcase)

# --- the batch-norm experiment, shipped already run ------------------------------------------
shipped_pair = demos.shipped_pair(summaries)
if shipped_pair is not None:
    with_bn, without_bn = shipped_pair
    if without_bn.collapse is None:
        failure = f"Without it, kNN accuracy reached {fmt_pct(without_bn.best_knn)}."
    else:
        failure = collapse_sentences(without_bn, "Without it, the network")
    st.subheader("Watch BYOL fail: the batch-norm experiment, already run")
    st.markdown(
        "Two more runs came with BYOL Studio: the same recipe trained twice from the same start, once without "
        f"batch norm in its projector and predictor. With batch norm, kNN accuracy reached {fmt_pct(with_bn.best_knn)}. "
        + failure
        + " To watch it happen, run the experiment yourself from Compare: the run without batch norm "
        "trains first, and the page marks its collapse within its first epoch (about half a minute on a "
        "2-core CPU)."
    )
    link("compare", "Compare the two runs, or run them again")
    if without_bn.collapse is not None:
        link("retrieval", "See what the collapsed network finds alike, in pictures", query_params={"run": without_bn.name})

# --- runs left behind by a previous server ---------------------------------------------------
interrupted = [s for s in summaries if s.state == runs.INTERRUPTED and not runs.resume_problem(s.path, s.state)]
if interrupted:
    st.subheader("Interrupted runs")
    st.caption("These runs stopped when their server or process ended; each can continue from its last checkpoint.")
    runner = get_runner()
    for s in interrupted:
        text, button = st.columns([4, 1])
        text.markdown(f"**{s.name}**: epoch {s.epochs_done:g} of {s.epochs_total}, latest kNN {fmt_pct(s.latest_knn)}")
        if button.button(
            "Resume",
            key=f"resume_{s.name}",
            icon=":material/play_arrow:",
            help="Queue this run again; it continues from its last checkpoint.",
        ):
            with plain_errors():
                runner.resume(s.path)
                st.rerun()


# --- all runs --------------------------------------------------------------------------------
def show_runs(states_at_start: list[tuple[str, str]]) -> None:
    """The runs table; re-run every few seconds by the fragment while a run trains or waits, so its
    epochs and kNN follow the training without a reload."""
    now = runs.list_runs(runs_dir())
    if [(s.name, s.state) for s in now] != states_at_start:
        st.rerun()  # a run started, ended or was deleted: redraw the whole page (the sections above)
    st.dataframe(runs_table(now), hide_index=True, column_config=RUNS_TABLE_COLUMNS, placeholder=NO_VALUE)


st.subheader("Runs")
states = [(s.name, s.state) for s in summaries]
live = any(s.state in runs.LIVE_STATES for s in summaries)
redraw_while_live(show_runs, live)(states)
st.caption(f"Run folders live in {runs_dir()}; runs started from the command line appear here too.")
