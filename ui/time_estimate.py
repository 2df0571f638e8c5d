"""How long a launch will take, before the click: the Train and Compare pages' time estimate.

The figure comes from real training steps timed on this device (byol/estimate.py), never from a
table of guesses: shown at once when this network was measured here before, else after one click on
"Estimate time" (a few seconds a run). For several runs queued one after the other (Compare's
batch-norm pair) it is their sum, with each run's share.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from byol.config import TrainConfig
from byol.estimate import Estimate, estimate_time
from ui.common import fmt_duration, plain_errors
from ui.words import HELP


def time_estimate(configs: Sequence[TrainConfig], names: Sequence[str], key: str, training_now: bool) -> float | None:
    """Shows the estimated time of training `configs` one after the other (`names`: each run in words,
    for more than one) and returns it in seconds; None while it is not measured (a button offers to).

    `training_now`: a run trains on this server, so a measurement now competes with it.
    """
    estimates: list[Estimate | None] = [None] * len(configs)
    with plain_errors():
        estimates = [estimate_time(config, measure=False) for config in configs]  # instant when measured before
        if None in estimates and st.button("Estimate time", key=key, help=HELP["estimate"], icon=":material/timer:"):
            if training_now:
                st.caption("A training is running, so this measurement competes with it and reads slower than it will be.")
            with st.spinner("Timing a few real training steps..."):
                estimates = [found or estimate_time(config) for found, config in zip(estimates, configs)]
    if not estimates or None in estimates:
        return None
    total = sum(e.seconds for e in estimates)
    if len(estimates) == 1:
        (only,) = estimates
        parts = f"training {fmt_duration(only.train_seconds)}, kNN measurements {fmt_duration(only.eval_seconds)}"
        st.info(f"**Estimated time: {fmt_duration(total)}** ({parts}).", icon=":material/timer:")
        st.caption(only.assumptions)
    else:
        parts = ", ".join(f"{name} {fmt_duration(e.seconds)}" for name, e in zip(names, estimates))
        st.info(f"**Estimated time: {fmt_duration(total)}** for the runs one after the other ({parts}).", icon=":material/timer:")
        st.caption(" ".join(f"{name.capitalize()}: {e.assumptions}" for name, e in zip(names, estimates)))
    return total
