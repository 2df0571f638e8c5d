"""When did a run collapse? A label-free criterion on the spread of its normalised projections.

BYOL has no negative pairs, so nothing in its loss stops the networks from mapping every image to
the same vector ("collapse"): the loss then drops to nearly zero while the representation becomes
useless. The training loop logs `z_std`, the mean per-dimension standard deviation of the
L2-normalised online projections. For d-dimensional projections spread evenly over the unit sphere
it is about 1/sqrt(d) (the "healthy level"); for a collapsed run it falls towards 0.

The criterion (`CRITERION` says it in words for the dashboard): a run has collapsed at the first
logged step after which its smoothed z_std stays below `fraction` x 1/sqrt(d) for the rest of the
run, for at least `min_points` logged rows (so one dip at the very end is not called a collapse yet).
Smoothing is the exponential moving average that `smooth()` computes, the same one the dashboard
draws.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

DEFAULT_FRACTION = 0.2
DEFAULT_SMOOTHING = 0.6
DEFAULT_MIN_POINTS = 3

CRITERION = (
    "A run is marked as collapsed at the first logged step after which its smoothed projection spread "
    "(z_std, exponential smoothing {smoothing:g}) stays below {fraction:.0%} of the healthy level "
    "1/√d (d = projector output size) until the end of the run, for at least {min_points} logged points."
)


def criterion_text(
    fraction: float = DEFAULT_FRACTION, smoothing: float = DEFAULT_SMOOTHING, min_points: int = DEFAULT_MIN_POINTS
) -> str:
    """The collapse criterion as one plain sentence, with the numbers filled in."""
    return CRITERION.format(fraction=fraction, smoothing=smoothing, min_points=min_points)


def healthy_std(projector_dim: int) -> float:
    """z_std of projections spread evenly over the unit sphere in `projector_dim` dimensions."""
    if projector_dim < 1:
        raise ValueError(f"projector_dim must be at least 1; got {projector_dim}")
    return 1.0 / math.sqrt(projector_dim)


def smooth(values: Sequence[float | None], weight: float) -> list[float | None]:
    """Exponential moving average with start-up bias correction (TensorBoard's smoothing).

    weight 0 returns the values unchanged; 0.9 averages over roughly the last ten points. Missing
    values (None/NaN) stay missing and do not move the average.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1); got {weight}")
    out: list[float | None] = []
    average, norm = 0.0, 0.0
    for value in values:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            out.append(None)
            continue
        average = weight * average + (1.0 - weight) * float(value)
        norm = weight * norm + (1.0 - weight)
        out.append(average / norm)
    return out


def _steps_and_values(step_rows: Any, column: str) -> tuple[list[int], list[float | None]]:
    """(steps, values) from a DataFrame of metrics or an iterable of row dicts; eval rows are skipped."""
    if hasattr(step_rows, "to_dict"):  # a pandas DataFrame
        rows: Iterable[dict[str, Any]] = step_rows.to_dict("records")
    else:
        rows = step_rows
    steps, values = [], []
    for row in rows:
        if row.get("kind", "step") != "step":
            continue
        value = row.get(column)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        steps.append(int(row["step"]))
        values.append(float(value))
    return steps, values


def collapse_point(
    step_rows: Any,
    projector_dim: int,
    fraction: float = DEFAULT_FRACTION,
    smoothing: float = DEFAULT_SMOOTHING,
    min_points: int = DEFAULT_MIN_POINTS,
) -> int | None:
    """The step at which the run collapsed by `CRITERION`, or None when it has not (yet).

    `step_rows`: the run's metrics (DataFrame from `runs.read_metrics` or a list of row dicts);
    only rows of kind "step" with a z_std are used.
    """
    steps, values = _steps_and_values(step_rows, "z_std")
    if len(values) < min_points:
        return None
    threshold = fraction * healthy_std(projector_dim)
    smoothed = smooth(values, smoothing)
    first_below = None
    for i in range(len(smoothed) - 1, -1, -1):  # walk back from the end while it stays below
        if smoothed[i] is not None and smoothed[i] < threshold:
            first_below = i
        else:
            break
    if first_below is None or len(smoothed) - first_below < min_points:
        return None
    return steps[first_below]
