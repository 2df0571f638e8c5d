"""Compare: overlay runs' curves, see which settings differ, and launch the BN vs no-BN experiment."""

from __future__ import annotations

import streamlit as st

from byol import metrics_file, runs
from byol.collapse import DEFAULT_SMOOTHING, criterion_text, healthy_std
from byol.config import PRESET_HELP, PRESETS, TrainConfig, preset, with_epochs
from byol.jobs import launch_problems
from byol.pairs import latest_pair, pair_configs
from ui.charts import add_knn_baselines, add_spread_lines, overlay_figure
from ui.common import (
    NO_VALUE,
    RUNS_TABLE_COLUMNS,
    collapse_sentences,
    config_differences,
    data_source_input,
    get_runner,
    link,
    page_setup,
    plain_errors,
    preset_label,
    redraw_while_live,
    runs_dir,
    runs_table,
    shared_value,
    state_text,
)
from ui.time_estimate import time_estimate
from ui.words import HELP

page_setup("Compare", ":material/compare_arrows:")
runner = get_runner()

st.title("Compare runs")
st.markdown(
    "**Collapse** is BYOL's typical failure: the network learns to give every image the same vector, "
    "which makes the two copies agree perfectly, so the loss looks excellent while nothing useful is "
    "learned. Batch norm in the projector and predictor is what usually prevents it; the experiment "
    "below trains the same recipe with and without it. Look at the **spread** chart: a healthy run "
    "stays near the green 1/√d line, a collapsing one slides towards zero (marked ✕) and its loss "
    "falls towards 0, while its kNN accuracy falls far behind the healthy run's. With the cpu recipe "
    "(plain SGD) the run without batch norm stays collapsed, or climbs out only late with its kNN accuracy "
    "far behind; with AdamW or LARS a run often climbs partly out again early (marked as spread back), "
    "and its kNN accuracy can then catch up."
)

# --- the BN vs no-BN experiment ------------------------------------------------------------
with st.expander("Run the batch-norm experiment", icon=":material/science:", expanded=False):
    st.caption(
        "Launches two runs that are identical (same seed too) except for batch norm in the heads; "
        "they train one after the other and appear here as a pair. The run without batch norm goes "
        "first: its collapse shows in the charts below within its first epoch."
    )
    bases = [name for name, config in PRESETS.items() if config.head_bn]
    b1, b2 = st.columns([1, 2])
    base_name = b1.selectbox(
        "Base recipe",
        bases,
        index=bases.index("cpu") if "cpu" in bases else 0,
        format_func=preset_label,
        key="pair_preset",
        help=HELP["bn_base"],
    )
    b1.caption(PRESET_HELP.get(base_name, ""))
    epochs = b1.number_input(
        "Epochs for each run", value=PRESETS[base_name].epochs, step=1, key=f"pair_epochs_{base_name}", help=HELP["epochs"]
    )
    with b2:
        data = data_source_input("pair")
    experiment = with_epochs(preset(base_name, data=data), epochs)
    problems = launch_problems(experiment)
    for problem in problems:
        st.error(problem, icon=":material/error:")
    if not problems:
        time_estimate(
            pair_configs(experiment)[::-1],  # in the order they train
            ["without batch norm", "with"],
            key="pair_estimate",
            training_now=runner.current() is not None,
        )
    if st.button(
        "Launch both runs",
        type="primary",
        disabled=bool(problems),
        key="launch_pair",
        icon=":material/play_arrow:",
        help="Queue the run without batch norm, then the one with it.",
    ):
        with plain_errors():
            with_bn, without_bn = runner.launch_pair_bn_experiment(experiment)
            st.session_state["compare_runs"] = [with_bn.name, without_bn.name]
            st.success(f"Queued {without_bn.name}, then {with_bn.name}.", icon=":material/check:")
    link("train", "Watch them train")

# --- pick runs -------------------------------------------------------------------------------
summaries = runs.list_runs(runs_dir())
if not summaries:
    st.info(
        "No runs to compare yet. Launch the batch-norm experiment above (two runs, one click), or start runs on the Train page.",
        icon=":material/info:",
    )
    link("train", "Go to Train")
    st.stop()

names = [s.name for s in summaries]
by_name = {s.name: s for s in summaries}
if "compare_runs" in st.session_state:
    st.session_state["compare_runs"] = [n for n in st.session_state["compare_runs"] if n in names]
else:
    pair = latest_pair(names)
    st.session_state["compare_runs"] = list(pair) if pair else names[:2]
c1, c2 = st.columns([3, 1])
picked = c1.multiselect(
    "Runs", names, key="compare_runs", help=HELP["compare_runs"], format_func=lambda n: f"{n} · {state_text(by_name[n].state)}"
)
smoothing = c2.slider("Smoothing", 0.0, 0.99, DEFAULT_SMOOTHING, 0.01, key="compare_smoothing", help=HELP["smoothing"])
if not picked:
    st.info("Pick one or more runs above to draw their curves.", icon=":material/info:")
    st.stop()

configs = {name: runs.read_config(by_name[name].path) for name in picked}


def show_curves(picked: list[str], configs: dict[str, TrainConfig], smoothing: float, states_at_start: list[str]) -> None:
    """The overlaid curves and the verdict; re-run every few seconds by the fragment while a picked
    run trains or waits, so a person who launched the experiment watches the collapse happen here."""
    try:
        shown = {name: runs.summarize_run(runs.run_path(runs_dir(), name)) for name in picked}
    except (runs.RunError, OSError, ValueError):
        st.rerun()  # a picked run was deleted meanwhile (another tab): the whole page leaves it out
    if [shown[name].state for name in picked] != states_at_start:
        st.rerun()  # a run started or ended: redraw the whole page (the picker's labels, the timer)
    metrics = {name: metrics_file.read_frame(shown[name].path) for name in picked}
    # Chart markers: each run's collapse step, read with the run by the one rule (RunSummary.collapse).
    collapsed = {name: shown[name].collapse.step if shown[name].collapse else None for name in picked}

    # --- curves ----------------------------------------------------------------------------------
    left, right = st.columns(2)
    left.plotly_chart(
        overlay_figure(metrics, "loss", smoothing=smoothing, log_y=True, markers=collapsed),
        key="overlay_loss",
    )
    knn_chart = overlay_figure(metrics, "knn")
    # The baselines are drawn when every picked run that measured one measured the same (bank, queries, start).
    add_knn_baselines(
        knn_chart, shared_value(shown[n].baseline_knn for n in picked), shared_value(shown[n].pixel_knn for n in picked)
    )
    right.plotly_chart(knn_chart, key="overlay_knn")
    spread = overlay_figure(metrics, "z_std", smoothing=smoothing, markers=collapsed)
    for d in sorted({c.projector_dim for c in configs.values()}):
        add_spread_lines(spread, d)
    spread.update_yaxes(rangemode="tozero")
    left.plotly_chart(spread, key="overlay_spread")
    right.plotly_chart(
        overlay_figure(metrics, "effective_rank"),
        key="overlay_rank",
    )

    st.subheader("Verdict")
    for name in picked:
        if shown[name].collapse is not None:
            st.warning(collapse_sentences(shown[name], f"**{name}**"), icon=":material/trending_down:")
            link("retrieval", f"See what {name} finds alike, in pictures", query_params={"run": name})
    verdict = runs_table([shown[name] for name in picked])  # each run as Home's table reads it, then the collapse figures
    verdict["Random init %"] = [shown[name].baseline_knn for name in picked]
    verdict["Raw pixels %"] = [shown[name].pixel_knn for name in picked]
    verdict["Last spread"] = [shown[name].last_z_std for name in picked]
    verdict["Healthy spread"] = [healthy_std(configs[name].projector_dim) for name in picked]
    st.dataframe(
        verdict[
            [
                "Run",
                "Status",
                "BN in heads",
                "Collapsed",
                "Best kNN %",
                "Random init %",
                "Raw pixels %",
                "Last spread",
                "Healthy spread",
                "Epochs",
            ]
        ],
        hide_index=True,
        placeholder=NO_VALUE,
        column_config={
            **RUNS_TABLE_COLUMNS,
            "Random init %": st.column_config.NumberColumn(format="%.1f", help=HELP["random_init_knn"]),
            "Raw pixels %": st.column_config.NumberColumn(format="%.1f", help=HELP["pixel_knn"]),
            "Last spread": st.column_config.NumberColumn(format="%.4f", help="z_std at the newest logged step"),
            "Healthy spread": st.column_config.NumberColumn(format="%.4f", help="1/√d for this run's projector size"),
        },
    )
    st.caption(criterion_text())
    shipped = [name for name in picked if shown[name].demo]
    if shipped:
        with st.expander("These runs came with BYOL Studio: how they were trained"):
            for name in shipped:
                st.caption(f"**{name}**: {shown[name].demo}")


states = [by_name[name].state for name in picked]
live = any(state in runs.LIVE_STATES for state in states)
redraw_while_live(show_curves, live)(picked, configs, smoothing, states)

# --- settings --------------------------------------------------------------------------------
st.subheader("Settings that differ")
if len(picked) < 2:
    st.caption("Pick two or more runs to see which settings differ.")
else:
    differences = config_differences(configs)
    if differences.empty:
        st.caption("These runs have identical settings.")
    else:
        st.dataframe(differences, hide_index=True, placeholder=NO_VALUE)
