"""The dashboard's charts: the collapse meter marks where the run's collapse began; a log axis is
labelled in full numbers."""

import pandas as pd

from byol.collapse import Collapse
from ui.charts import collapse_figure, overlay_figure


def spread_rows(values) -> pd.DataFrame:
    return pd.DataFrame([{"kind": "step", "step": 10 * (i + 1), "epoch": i / 10, "z_std": v} for i, v in enumerate(values)])


def test_the_collapse_meter_marks_the_collapse_it_is_given_and_nothing_else():
    metrics = spread_rows([0.08] * 5 + [0.001] * 10)
    marked = collapse_figure(metrics, 128, Collapse(step=60, recovered_step=None))
    lines = [shape for shape in marked.layout.shapes if shape.x0 == shape.x1]  # vertical lines
    assert [line.x0 for line in lines] == [0.5]  # step 60 is the sixth row: epoch 0.5
    assert not [shape for shape in collapse_figure(metrics, 128, None).layout.shapes if shape.x0 == shape.x1]


def loss_rows(values) -> pd.DataFrame:
    return pd.DataFrame([{"kind": "step", "step": 10 * (i + 1), "epoch": i / 10, "loss": v} for i, v in enumerate(values)])


def test_compares_log_scale_loss_axis_labels_every_tick_as_a_whole_number_readers_can_read():
    healthy, collapsed = loss_rows([3.9, 1.2, 0.8, 0.7]), loss_rows([0.5, 0.01, 0.003, 0.0021])
    axis = overlay_figure({"bn": healthy, "no-bn": collapsed}, "loss", log_y=True).layout.yaxis
    assert axis.type == "log"
    assert list(axis.tickvals) == [0.01, 0.1, 1.0]  # four decades: the decades only
    assert list(axis.ticktext) == ["0.01", "0.1", "1"]  # never plotly's bare "2" and "5" between them

    narrow = overlay_figure({"bn": healthy}, "loss", log_y=True).layout.yaxis
    assert list(narrow.ticktext) == ["1", "2"]  # one decade: 1, 2 and 5 per decade, those inside the values

    flat = overlay_figure({"bn": loss_rows([0.7, 0.8, 0.9])}, "loss", log_y=True).layout.yaxis
    assert list(flat.ticktext) == ["0.5", "1"]  # too close for two ticks inside: the two around them,
    assert 10 ** flat.range[0] <= 0.5 and 10 ** flat.range[1] >= 1.0  # and an axis that shows both
