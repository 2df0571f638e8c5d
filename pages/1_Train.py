"""Train: launch a run from a preset or from another run's settings, watch it live, stop, resume or delete it."""

from __future__ import annotations

import streamlit as st

from byol import demos, metrics_file, runs
from byol.config import DEVICES, FIELD_WORDS, OPTIMIZERS, PRECISIONS, PRESET_HELP, PRESETS, TAU_SCHEDULES, TrainConfig
from byol.jobs import launch_problems
from ui.charts import collapse_figure, knn_figure, loss_figure, rank_figure
from ui.common import (
    NO_VALUE,
    data_source_input,
    device_facts,
    fmt_duration,
    fmt_number,
    fmt_pct,
    get_runner,
    link,
    page_setup,
    plain_errors,
    preset_label,
    redraw_while_live,
    run_picker,
    runs_dir,
    state_badge,
)
from ui.time_estimate import time_estimate
from ui.words import HELP

page_setup("Train", ":material/model_training:")
runner = get_runner()
device = device_facts()

st.title("Train")
st.caption(
    "Trainings run inside this app's server, one at a time per device; the others wait in a queue. "
    "Stopping the server stops them, and a stopped run can be resumed from its last checkpoint."
)

# A launch selects its new run on the next rerun (before the picker is drawn).
if "train_select_next" in st.session_state:
    st.session_state["train_run"] = st.session_state.pop("train_select_next")
    st.query_params["run"] = st.session_state["train_run"]

summaries = runs.list_runs(runs_dir())


def settings_source() -> tuple[str, TrainConfig] | None:
    """The run whose settings the new-run form starts from ("New run with these settings"), if any."""
    source = st.session_state.get("new_from_run")
    if not source:
        return None
    try:
        return source, runs.read_config(runs.run_path(runs_dir(), source)).replace(notes="")
    except (runs.RunError, OSError, ValueError, TypeError):  # deleted or unreadable meanwhile: back to the presets
        st.session_state.pop("new_from_run", None)
        return None


def label(field: str, hint: str = "") -> str:
    """A form box's label: the field's name in words, as validation messages say it (config.FIELD_WORDS)."""
    return f"{FIELD_WORDS[field]} ({hint})" if hint else FIELD_WORDS[field]


# --- start a new run -------------------------------------------------------------------------
source = settings_source()
# A new label is a new expander, so one started from a run's settings opens by itself.
new_run_label = f"Start a new run with the settings of {source[0]}" if source else "Start a new run"
with st.expander(new_run_label, expanded=not summaries or source is not None, icon=":material/rocket_launch:"):
    if source:
        form_name, base = source
        form_key = f"run-{form_name}"  # never a preset's name: the run may be called "cpu"
        st.caption(
            f"Every setting below starts as {form_name} had it; change what you like (the name and data too). "
            "Nothing is copied from its checkpoints: the new run trains from scratch."
        )
        if st.button("Start from a preset instead", key="new_from_presets", icon=":material/undo:"):
            st.session_state.pop("new_from_run", None)
            st.rerun()
    else:
        preset_names = list(PRESETS)
        default_preset = "cpu" if device["is_cpu"] else "gpu"
        form_name = st.selectbox(
            "Preset",
            preset_names,
            index=preset_names.index(default_preset),
            key="new_preset",
            format_func=preset_label,
            help=HELP["preset"],
        )
        st.caption(PRESET_HELP.get(form_name, ""))
        base = PRESETS[form_name]
        form_key = form_name
    data = data_source_input("new")

    # Widget keys carry the preset's (or source run's) name, so picking another shows its values.
    def key(field: str) -> str:
        return f"new_{field}_{form_key}"

    c1, c2, c3 = st.columns(3)
    epochs = c1.number_input(label("epochs"), value=base.epochs, step=1, key=key("epochs"), help=HELP["epochs"])
    batch_size = c2.number_input(label("batch_size"), value=base.batch_size, step=32, key=key("batch"), help=HELP["batch_size"])
    lr = c3.number_input(label("lr"), value=base.lr, format="%g", step=None, key=key("lr"), help=HELP["lr"])
    c1, c2, c3 = st.columns(3)
    width = c1.number_input(label("width"), value=base.width, step=8, key=key("width"), help=HELP["width"])
    seed = c2.number_input(label("seed"), value=base.seed, step=1, key=key("seed"), help=HELP["seed"])
    head_bn = c3.toggle(label("head_bn"), value=base.head_bn, key=key("head_bn"), help=HELP["head_bn"])

    with st.expander("Advanced settings"):
        a1, a2, a3 = st.columns(3)
        subset = a1.number_input(label("subset", "0 = all"), value=base.subset, step=1000, key=key("subset"), help=HELP["subset"])
        warmup = a2.number_input(
            label("warmup_epochs"),
            value=base.warmup_epochs,
            format="%g",
            step=None,
            key=key("warmup"),
            help=HELP["warmup_epochs"],
        )
        weight_decay = a3.number_input(
            label("weight_decay"), value=base.weight_decay, format="%g", step=None, key=key("wd"), help=HELP["weight_decay"]
        )
        projector_hidden = a1.number_input(
            label("projector_hidden"), value=base.projector_hidden, step=256, key=key("ph"), help=HELP["projector_hidden"]
        )
        projector_dim = a2.number_input(
            label("projector_dim", "d"), value=base.projector_dim, step=32, key=key("pd"), help=HELP["projector_dim"]
        )
        predictor_hidden = a3.number_input(
            label("predictor_hidden"), value=base.predictor_hidden, step=256, key=key("qh"), help=HELP["predictor_hidden"]
        )
        optimizers = list(OPTIMIZERS)
        optimizer = a1.selectbox(
            label("optimizer"), optimizers, index=optimizers.index(base.optimizer), key=key("opt"), help=HELP["optimizer"]
        )
        tau_base = a2.number_input(
            label("tau_base"), value=base.tau_base, format="%g", step=None, key=key("tau"), help=HELP["tau_base"]
        )
        schedules = list(TAU_SCHEDULES)
        tau_schedule = a3.selectbox(
            label("tau_schedule"),
            schedules,
            index=schedules.index(base.tau_schedule),
            key=key("tau_s"),
            help=HELP["tau_schedule"],
        )

        # Set by the presets, shown so that a run's whole recipe can be read and changed here.
        def recipe_number(column, field: str) -> float:
            value = getattr(base, field)
            return column.number_input(label(field), value=value, format="%g", step=None, key=key(field), help=HELP[field])

        lr_decay_share = recipe_number(a1, "lr_decay_share")
        view_resolution = recipe_number(a2, "view_resolution")
        crop_min_scale = recipe_number(a3, "crop_min_scale")
        jitter_strength = recipe_number(a1, "jitter_strength")
        predictor_lr_scale = recipe_number(a2, "predictor_lr_scale")
        eval_every = a3.number_input(
            label("eval_every"), value=base.eval_every, format="%g", step=None, key=key("eval"), help=HELP["eval_every"]
        )
        eval_bank = a1.number_input(
            label("eval_bank_size", "0 = all"), value=base.eval_bank_size, step=1000, key=key("bank"), help=HELP["eval_bank_size"]
        )
        eval_query = a2.number_input(
            label("eval_query_size", "0 = all"),
            value=base.eval_query_size,
            step=1000,
            key=key("query"),
            help=HELP["eval_query_size"],
        )
        knn_k = a3.number_input(label("knn_k", "k"), value=base.knn_k, step=10, key=key("k"), help=HELP["knn_k"])
        devices = list(DEVICES)
        device_choice = a1.selectbox(
            label("device"),
            devices,
            index=devices.index(base.device) if base.device in devices else 0,
            key=key("device"),
            help=HELP["device"],
        )
        precisions = list(PRECISIONS)
        precision = a2.selectbox(
            label("precision"),
            precisions,
            index=precisions.index(base.precision) if base.precision in precisions else 0,
            key=key("precision"),
            help=HELP["precision"],
        )
        run_name = st.text_input("Run name (optional)", key="new_run_name", help=HELP["run_name"]).strip()

    config = base.replace(
        data=data,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        width=width,
        seed=seed,
        head_bn=head_bn,
        subset=subset,
        warmup_epochs=warmup,
        weight_decay=weight_decay,
        projector_hidden=projector_hidden,
        projector_dim=projector_dim,
        predictor_hidden=predictor_hidden,
        optimizer=optimizer,
        tau_base=tau_base,
        tau_schedule=tau_schedule,
        lr_decay_share=lr_decay_share,
        view_resolution=view_resolution,
        crop_min_scale=crop_min_scale,
        jitter_strength=jitter_strength,
        predictor_lr_scale=predictor_lr_scale,
        eval_every=eval_every,
        eval_bank_size=eval_bank,
        eval_query_size=eval_query,
        knn_k=knn_k,
        device=device_choice,
        precision=precision,
    )
    problems = launch_problems(config)
    for problem in problems:
        st.error(problem, icon=":material/error:")

    # --- honest time estimate ---
    if not problems:
        time_estimate([config], ["this run"], key="estimate", training_now=runner.current() is not None)

    live_here = [p.name for p in runner.running()] + [p.name for p in runner.queue()]
    if live_here:
        st.caption(f"This run will wait for {len(live_here)} run(s) ahead of it on this server.")
    if st.button(
        "Launch training",
        type="primary",
        disabled=bool(problems),
        key="launch",
        icon=":material/play_arrow:",
        help="Create the run and start it (or queue it behind the current one).",
    ):
        with plain_errors():
            run_dir = runner.launch(config, run_name or None)
            st.session_state["train_select_next"] = run_dir.name
            st.rerun()

# --- the queue -------------------------------------------------------------------------------
running, waiting = runner.running(), runner.queue()
if running or waiting:
    parts = [f"Training now: **{', '.join(p.name for p in running) or 'nothing'}**"]
    if waiting:
        parts.append("Waiting: " + ", ".join(f"{i}. {p.name}" for i, p in enumerate(waiting, 1)))
    st.markdown(" · ".join(parts))

if not summaries:
    st.info(
        "No runs yet. Open **Start a new run** above, keep the suggested preset and data, and press "
        "**Launch training**; its progress and curves appear here.",
        icon=":material/info:",
    )
    st.stop()

# --- one run ---------------------------------------------------------------------------------
st.divider()
picked = run_picker(summaries, key="train_run", label="Show run")
run_dir = picked.path
config = runs.read_config(run_dir)
status = runs.read_status(run_dir)
state = status.get("state", runs.INTERRUPTED)
managed = runner.is_managed(run_dir)

title, badge = st.columns([6, 1])
title.subheader(picked.name)
with badge:
    state_badge(state)
st.caption(
    f"preset {config.preset or 'custom'} · width {config.width} · {config.epochs} epochs · batch {config.batch_size} · "
    f"data: {config.data} · batch norm in heads: {'yes' if config.head_bn else 'no'} · seed {config.seed}"
    + (
        f" · {picked.world_size} processes (torchrun), global batch {config.batch_size * picked.world_size}"
        if picked.world_size > 1
        else ""
    )
)

# Controls: Stop while the run is live (no empty column otherwise), Resume or Train further, Delete
live = state in runs.LIVE_STATES
c_stop, c_resume, c_delete = st.columns(3) if live else (None, *st.columns(2))
if c_stop is not None:
    with c_stop:
        if managed:
            if st.button(
                "Stop",
                key="stop",
                icon=":material/stop_circle:",
                help="Stops after the current step and saves a checkpoint; resume later to continue.",
            ):
                with plain_errors():
                    outcome = runner.stop(run_dir)
                    st.toast("Stopping after the current step..." if outcome == "stopping" else "Taken out of the queue.")
                    st.rerun()
        else:
            st.caption(runs.other_process_words(picked.name))
with c_resume:
    resume_problem = runs.resume_problem(run_dir, state)
    if resume_problem and not live:
        st.caption(resume_problem)
    elif state in runs.RESUMABLE_STATES or state == runs.FINISHED:
        fewest = runs.fewest_epochs_to_resume(config.epochs, picked.epochs_done, state)
        total = st.number_input(
            "Total epochs",
            min_value=fewest,
            value=max(fewest, config.epochs),  # the planned end, or one more epoch for a finished run
            step=1,
            key=f"resume_epochs_{picked.name}",
            help=HELP["resume_epochs"],
        )
        label = "Train further" if state == runs.FINISHED else "Resume"
        if st.button(label, key="resume", icon=":material/play_arrow:", help="Continue from the last checkpoint."):
            with plain_errors():
                runner.resume(run_dir, epochs=int(total))
                st.rerun()
    if not live and st.button(
        "New run with these settings",
        key="copy_settings",
        icon=":material/content_copy:",
        help="Fills in 'Start a new run' above with this run's settings, to train the same recipe again or a variation of it.",
    ):
        st.session_state["new_from_run"] = picked.name
        st.rerun()
with c_delete:
    if demos.is_shipped_demo(run_dir):
        st.caption(runs.kept_demo_words(picked.name))
    elif not live:
        sure = st.checkbox("Yes, delete this run", key=f"confirm_delete_{picked.name}", help=HELP["confirm_delete"])
        if st.button(
            "Delete run",
            key="delete",
            disabled=not sure,
            icon=":material/delete:",
            help="Removes the run folder and all its checkpoints (tick the box first).",
        ):
            with plain_errors():
                runs.delete_run(run_dir)
                st.session_state.pop("train_run", None)
                st.query_params.pop("run", None)
                st.rerun()


def show_run(run_path: str, live_at_start: bool) -> None:
    """Progress, message and the four curves; re-run every few seconds by the fragment while live."""
    folder = runs.run_path(runs_dir(), run_path)
    status = runs.read_status(folder)
    state = status.get("state", runs.INTERRUPTED)
    if live_at_start and state not in runs.LIVE_STATES:
        st.rerun()  # the run just ended: redraw the whole page (controls change, the timer stops)
    message = status.get("message", "")
    progress = status.get("progress") or {}
    summary = runs.summarize_run(folder)
    projector_dim = runs.read_config(folder).projector_dim

    if state == runs.QUEUED:
        st.info(f"Waiting for its turn. {message}", icon=":material/hourglass_top:")
    elif state == runs.RUNNING:
        total_steps = int(progress.get("total_steps") or 0)
        step = int(progress.get("step") or 0)
        fraction = min(1.0, step / total_steps) if total_steps else 0.0
        st.progress(
            fraction,
            text=f"Epoch {fmt_number(round(float(progress.get('epoch') or 0), 2))} of {progress.get('epochs', '?')} · "
            f"step {step:,} of {total_steps:,} · {message}",
        )
    elif state == runs.FINISHED:
        st.success(message or "Finished.", icon=":material/check_circle:")
    elif state == runs.FAILED:
        st.error(message or "Training failed.", icon=":material/error:")
    elif state == runs.STOPPED:
        st.info(message or "Stopped; resume to continue.", icon=":material/pause_circle:")
    else:
        st.warning(message or "Interrupted; resume to continue.", icon=":material/power_off:")
    if state not in runs.LIVE_STATES:
        # The batch-norm experiment's second run starts as the first ends: one click follows it here.
        training, waiting = runner.running(), runner.queue()
        following = [p for p in training + waiting if p.name != folder.name]
        if following:
            which = "the run training now" if following[0] in training else "the next run"
            link("train", f"Watch {which}: {following[0].name}", query_params={"run": following[0].name})

    m1, m2, m3, m4, m5 = st.columns(5)
    m1.metric("Epochs done", f"{fmt_number(summary.epochs_done)} / {summary.epochs_total}")
    m2.metric(
        "Images / s",
        fmt_number(progress.get("images_per_s")) if state == runs.RUNNING else NO_VALUE,
        help="Training speed over the last few steps.",
    )
    m3.metric(
        "Time left",
        fmt_duration(progress.get("eta_seconds")) if state == runs.RUNNING else NO_VALUE,
        help="From the current speed; kNN measurements add a little.",
    )
    untrained_only = summary.best_knn is None  # only the untrained network is measured yet: say so, not "+0.0 vs random init"
    if untrained_only:
        delta = None if summary.latest_knn is None else "untrained network"
    else:
        delta = None if summary.baseline_knn is None else f"{summary.latest_knn - summary.baseline_knn:+.1f} vs random init"
    m4.metric(
        "Latest kNN",
        fmt_pct(summary.latest_knn),
        delta=delta,
        delta_color="off" if untrained_only else "normal",
        delta_arrow="off" if untrained_only else "auto",
        help="kNN accuracy of the newest measurement; the delta is against the untrained network (measured at step 0, "
        "before training).",
    )
    m5.metric("Raw pixels", fmt_pct(summary.pixel_knn), help=HELP["pixel_knn"])

    metrics = metrics_file.read_frame(folder)
    if metrics.empty:
        st.info(
            "No measurements yet: the first curves appear after the data is loaded and the first steps ran.",
            icon=":material/hourglass_top:",
        )
        return
    left, right = st.columns(2)
    left.plotly_chart(loss_figure(metrics), key="chart_loss")
    right.plotly_chart(knn_figure(metrics, summary.baseline_knn, summary.pixel_knn), key="chart_knn")
    left.plotly_chart(collapse_figure(metrics, projector_dim, summary.collapse), key="chart_collapse")
    right.plotly_chart(rank_figure(metrics), key="chart_rank")
    st.caption(
        "Read kNN against its two dashed lines: above **random init** means training helped, above "
        "**raw pixels** means the features beat comparing pixels. The collapse meter should stay near "
        "its green line; a fall towards zero means every image is getting the same vector."
    )


redraw_while_live(show_run, live)(picked.name, live)

st.divider()
links = st.columns(3)
with links[0]:
    link("compare", "Compare runs")
with links[1]:
    link("embeddings", "See the learned map", query_params={"run": picked.name})
with links[2]:
    link("retrieval", "Find similar images", query_params={"run": picked.name})
