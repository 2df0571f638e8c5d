"""The dashboard's plotly charts of a run's curves: loss, kNN with its baselines, collapse meter, effective rank, overlays.

Each `*_figure()` takes the metrics DataFrame from `byol.metrics_file.read_frame` and returns a figure for
`st.plotly_chart`; nothing here reads files or calls streamlit, so tests can build the figures directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from byol import metrics_file
from byol.collapse import DEFAULT_FRACTION, Collapse, collapse_line, healthy_std, smooth


@dataclass(frozen=True)
class Curve:
    """How a logged metric is charted, the same on a run's own charts and on Compare's overlays."""

    title: str
    y_title: str
    subtitle: str
    kind: str  # the metric rows it is logged in (metrics_file.STEP or EVAL)


CURVES: dict[str, Curve] = {
    "loss": Curve("Loss", "loss", "lower = the two copies agree more", metrics_file.STEP),
    "z_std": Curve("Collapse meter", "spread (z_std)", "projection spread; falling to 0 = collapse", metrics_file.STEP),
    "knn": Curve("kNN accuracy", "kNN accuracy (%)", "higher = better features", metrics_file.EVAL),
    "effective_rank": Curve(
        "Effective rank", "effective rank", "directions the backbone features spread over", metrics_file.EVAL
    ),
}

PALETTE = ["#3b5bdb", "#e8590c", "#2b8a3e", "#c2255c", "#7048e8", "#0b7285", "#e67700", "#495057"]


def _base_figure(title: str, y_title: str, x_title: str = "epoch", height: int = 320, subtitle: str = "") -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=dict(text=title, x=0, font=dict(size=15), subtitle=dict(text=subtitle, font=dict(size=12, color="#868e96"))),
        height=height,
        margin=dict(l=10, r=10, t=60 if subtitle else 40, b=10),
        xaxis_title=x_title,
        yaxis_title=y_title,
        hovermode="x unified",
        showlegend=False,
    )
    figure.update_xaxes(rangemode="tozero")
    return figure


def step_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["kind"] == metrics_file.STEP] if "kind" in metrics else metrics.iloc[0:0]


def eval_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[metrics["kind"] == metrics_file.EVAL] if "kind" in metrics else metrics.iloc[0:0]


def _column(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of `frame` that have a value in `name` (always with step, epoch and `name` columns)."""
    if name not in frame or "epoch" not in frame or "step" not in frame:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "epoch": pd.Series(dtype="float"), name: pd.Series(dtype="float")})
    return frame[frame[name].notna()]


def _curve_figure(column: str) -> go.Figure:
    curve = CURVES[column]
    return _base_figure(curve.title, curve.y_title, subtitle=curve.subtitle)


def _smoothed(values: Sequence[float], weight: float) -> list[float | None]:
    return smooth(list(values), weight) if weight > 0 else list(values)


def loss_figure(metrics: pd.DataFrame, smoothing: float = 0.0) -> go.Figure:
    rows = _column(step_rows(metrics), "loss")
    figure = _curve_figure("loss")
    if smoothing > 0:
        figure.add_scatter(x=rows["epoch"], y=rows["loss"], mode="lines", name="raw", line=dict(color="#adb5bd", width=1))
    figure.add_scatter(
        x=rows["epoch"],
        y=_smoothed(rows["loss"], smoothing),
        mode="lines" if len(rows) >= 20 else "lines+markers",
        name="loss",
        line=dict(color=PALETTE[0], width=2),
        customdata=rows["step"],
        hovertemplate="%{y:.4f} (step %{customdata})",
    )
    return figure


def knn_figure(metrics: pd.DataFrame, baseline: float | None = None, pixel: float | None = None) -> go.Figure:
    """kNN accuracy over training with the random-init and raw-pixel baselines as reference lines."""
    rows = _column(eval_rows(metrics), "knn")
    figure = _curve_figure("knn")
    figure.add_scatter(
        x=rows["epoch"],
        y=rows["knn"],
        mode="lines+markers",
        name="kNN accuracy",
        line=dict(color=PALETTE[2], width=2),
        customdata=rows["step"],
        hovertemplate="%{y:.1f}% (step %{customdata})",
    )
    add_knn_baselines(figure, baseline, pixel)
    return figure


def add_knn_baselines(figure: go.Figure, baseline: float | None, pixel: float | None) -> None:
    """The kNN charts' reference lines: the untrained network (random init) and raw pixels, where known."""
    if baseline is not None:
        figure.add_hline(
            y=baseline,
            line=dict(color="#868e96", dash="dash"),
            annotation_text=f"random init {baseline:.1f}%",
            annotation_position="bottom right",
        )
    if pixel is not None:
        figure.add_hline(
            y=pixel,
            line=dict(color="#e8590c", dash="dot"),
            annotation_text=f"raw pixels {pixel:.1f}%",
            annotation_position="top right",
        )


def add_spread_lines(figure: go.Figure, projector_dim: int, fraction: float = DEFAULT_FRACTION) -> None:
    """The collapse meter's two reference lines: the healthy spread 1/√d and the collapse line under it."""
    healthy = healthy_std(projector_dim)
    figure.add_hline(
        y=healthy,
        line=dict(color="#2b8a3e", dash="dash"),
        annotation_text=f"healthy 1/√{projector_dim} = {healthy:.3f}",
        annotation_position="top right",
    )
    figure.add_hline(
        y=collapse_line(projector_dim, fraction),
        line=dict(color="#c92a2a", dash="dot"),
        annotation_text=f"collapse line ({fraction:.0%} of healthy)",
        annotation_position="bottom right",
    )


def collapse_figure(
    metrics: pd.DataFrame,
    projector_dim: int,
    collapse: Collapse | None,
    smoothing: float = 0.0,
    fraction: float = DEFAULT_FRACTION,
) -> go.Figure:
    """The collapse meter: projection spread with the healthy level 1/√d and the collapse threshold, and
    the run's `collapse` (RunSummary.collapse, found by the one rule) marked where it began."""
    rows = _column(step_rows(metrics), "z_std")
    figure = _curve_figure("z_std")
    figure.add_scatter(
        x=rows["epoch"],
        y=_smoothed(rows["z_std"], smoothing),
        mode="lines" if len(rows) >= 20 else "lines+markers",
        name="spread",
        line=dict(color=PALETTE[3], width=2),
        customdata=rows["step"],
        hovertemplate="%{y:.4f} (step %{customdata})",
    )
    add_spread_lines(figure, projector_dim, fraction)
    began = rows[rows["step"] == collapse.step] if collapse is not None else rows.iloc[0:0]
    if len(began):
        epoch = float(began["epoch"].iloc[0])
        figure.add_vline(x=epoch, line=dict(color="#c92a2a"), annotation_text="collapsed", annotation_position="top left")
    figure.update_yaxes(rangemode="tozero")
    return figure


def rank_figure(metrics: pd.DataFrame) -> go.Figure:
    rows = _column(eval_rows(metrics), "effective_rank")
    figure = _curve_figure("effective_rank")
    figure.add_scatter(
        x=rows["epoch"],
        y=rows["effective_rank"],
        mode="lines+markers",
        name="effective rank",
        line=dict(color=PALETTE[4], width=2),
        customdata=rows["step"],
        hovertemplate="%{y:.1f} (step %{customdata})",
    )
    if "feature_dim" in rows and len(rows):
        figure.add_hline(
            y=float(rows["feature_dim"].iloc[-1]),
            line=dict(color="#adb5bd", dash="dash"),
            annotation_text="feature size (the maximum)",
            annotation_position="bottom right",
        )
    figure.update_yaxes(rangemode="tozero")
    return figure


def overlay_figure(
    frames: dict[str, pd.DataFrame],
    column: str,
    smoothing: float = 0.0,
    log_y: bool = False,
    markers: dict[str, int | None] | None = None,
) -> go.Figure:
    """One line per run of the metric `column` (a key of CURVES) over epochs; `markers` = run name -> step to
    mark with an ✕. Smoothing applies to step metrics; evaluations are drawn as measured."""
    curve = CURVES[column]
    kind = curve.kind
    figure = _base_figure(curve.title + (" (log scale)" if log_y else ""), curve.y_title, height=400)
    figure.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.22, xanchor="left", x=0), margin=dict(b=10))
    for i, (name, metrics) in enumerate(frames.items()):
        rows = _column(step_rows(metrics) if kind == metrics_file.STEP else eval_rows(metrics), column)
        color = PALETTE[i % len(PALETTE)]
        y = _smoothed(rows[column], smoothing) if kind == metrics_file.STEP else list(rows[column])
        few = kind != metrics_file.STEP or len(rows) < 20  # a line through one or two points would not show
        figure.add_scatter(
            x=rows["epoch"],
            y=y,
            mode="lines+markers" if few else "lines",
            name=name,
            line=dict(color=color, width=2),
            customdata=rows["step"],
            hovertemplate=f"{name}: %{{y:.4g}} (step %{{customdata}})<extra></extra>",
        )
        step = (markers or {}).get(name)
        if step is not None and len(rows):
            hit = rows[rows["step"] == step]
            if len(hit):
                index = hit.index[0]
                position = list(rows.index).index(index)
                figure.add_scatter(
                    x=[float(hit["epoch"].iloc[0])],
                    y=[y[position]],
                    mode="markers",
                    name=f"{name} collapsed",
                    marker=dict(symbol="x", size=14, color=color, line=dict(width=2)),
                    hovertemplate=f"{name} collapsed at step {step:,}<extra></extra>",
                )
    if log_y:
        tick_values, axis_range = log_ticks([y for trace in figure.data for y in (trace.y if trace.y is not None else ())])
        figure.update_yaxes(type="log", tickvals=tick_values, ticktext=[f"{v:g}" for v in tick_values], range=axis_range)
    figure.update_layout(hovermode="closest", showlegend=True)
    return figure


def log_ticks(values: Sequence[float]) -> tuple[list[float], list[float] | None]:
    """Tick values for a log axis over `values`, each to be labelled in full, and the axis range (in
    log10 units) to set, or None to let plotly fit the values.

    Plotly's own ticks label the steps between decades with one digit ("2", "5" for 0.02 and 0.05),
    which reads as nonsense beside "0.1" to anyone who does not know the convention. So: 1, 2 and 5
    per decade while the values span at most three decades, only the decades beyond that. Values
    too close together for two such ticks get the two around them, and a range that shows both.
    """
    positive = [float(v) for v in values if v is not None and math.isfinite(v) and v > 0]
    if not positive:
        return [], None
    low, high = min(positive), max(positive)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [float(f"{m * 10.0**e:.6g}") for e in range(first, last + 1) for m in steps]
    inside = [t for t in ticks if low <= t <= high]
    if len(inside) >= 2:
        return inside, None
    below = max(t for t in ticks if t <= low)
    around = sorted({below, *inside, min(t for t in ticks if t >= high and t > below)})
    return around, [math.log10(around[0]), math.log10(around[-1])]
