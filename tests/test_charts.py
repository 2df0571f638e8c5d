"""The dashboard's charts: the collapse meter marks where the run's collapse began."""

import pandas as pd

from byol.collapse import Collapse
from ui.charts import collapse_figure


def spread_rows(values) -> pd.DataFrame:
    return pd.DataFrame([{"kind": "step", "step": 10 * (i + 1), "epoch": i / 10, "z_std": v} for i, v in enumerate(values)])


def test_the_collapse_meter_marks_the_collapse_it_is_given_and_nothing_else():
    metrics = spread_rows([0.08] * 5 + [0.001] * 10)
    marked = collapse_figure(metrics, 128, Collapse(step=60, recovered_step=None))
    lines = [shape for shape in marked.layout.shapes if shape.x0 == shape.x1]  # vertical lines
    assert [line.x0 for line in lines] == [0.5]  # step 60 is the sixth row: epoch 0.5
    assert not [shape for shape in collapse_figure(metrics, 128, None).layout.shapes if shape.x0 == shape.x1]
