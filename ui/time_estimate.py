"""How long a launch will take, before the click: the Train and Compare pages' time estimate.

The figure comes from real training steps timed on this device (byol/estimate.py), never from a
table of guesses: shown at once when this network was measured here before, else after one click on
"Estimate time" (a few seconds a run). For several runs queued one after the other (Compare's
batch-norm pair) it is their sum, with each run's share. A GPU recipe about to train on a CPU gets a
loud warning in hours, measured or by a rough rule until measured, so nobody queues hours by mistake.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from byol.config import TrainConfig
from byol.device import gpu_recipe_on_cpu
from byol.estimate import Estimate, estimate_time, rough_cpu_seconds
from ui.common import device_facts, fmt_duration, plain_errors
from ui.words import HELP


def time_estimate(configs: Sequence[TrainConfig], names: Sequence[str], key: str, training_now: bool) -> None:
    """The estimated time of training `configs` one after the other (`names`: each run in words, for
    more than one), or a button that measures it; and the warning when they are GPU recipes on a CPU.

    `training_now`: a run trains on this server, so a measurement now competes with it.
    """
    estimates: list[Estimate | None] = [None] * len(configs)
    with plain_errors():
        estimates = [estimate_time(config, measure=False) for config in configs]  # instant when measured before
        button_slot = st.empty()  # the button goes once it has been pressed: the estimate takes its place
        if None in estimates and button_slot.button("Estimate time", key=key, help=HELP["estimate"], icon=":material/timer:"):
            button_slot.empty()
            if training_now:
                st.caption("A training is running, so this measurement competes with it and reads slower than it will be.")
            with st.spinner("Timing a few real training steps..."):
                estimates = [found or estimate_time(config) for found, config in zip(estimates, configs)]
    measured = [e for e in estimates if e is not None]
    seconds = sum(e.seconds for e in measured) if measured and len(measured) == len(configs) else None
    if seconds is not None and len(measured) == 1:
        (only,) = measured
        parts = f"training {fmt_duration(only.train_seconds)}, kNN measurements {fmt_duration(only.eval_seconds)}"
        st.info(f"**Estimated time: {fmt_duration(seconds)}** ({parts}).", icon=":material/timer:")
        st.caption(only.assumptions)
    elif seconds is not None:
        parts = ", ".join(f"{name} {fmt_duration(e.seconds)}" for name, e in zip(names, measured))
        st.info(
            f"**Estimated time: {fmt_duration(seconds)}** for the runs one after the other ({parts}).", icon=":material/timer:"
        )
        speeds = " ".join(f"{name.capitalize()}: {e.measured_how}" for name, e in zip(names, measured))
        plans = list(dict.fromkeys(e.plan_notes for e in measured))  # the pair's runs share one schedule: said once
        st.caption(f"{speeds} {' '.join(plans)}")

    machine_is_cpu = device_facts()["is_cpu"]
    if any(gpu_recipe_on_cpu(config, machine_is_cpu) for config in configs):
        hours = (seconds if seconds is not None else sum(rough_cpu_seconds(config) for config in configs)) / 3600
        how = "measured" if seconds is not None else "by a rough rule; press Estimate time to measure"
        what = "this run" if len(configs) == 1 else f"the {len(configs)} runs"
        st.warning(
            f"**This is a GPU recipe and this machine trains on its CPU: about {hours:,.0f} hours for {what} ({how}).** "
            "Pick the cpu preset (or a width of 16) to see learning within minutes.",
            icon=":material/warning:",
        )
