"""When did a run collapse? A label-free criterion on the spread of its normalised projections.

BYOL has no negative pairs, so nothing in its loss stops the networks from mapping every image to
the same vector ("collapse"): the loss then drops to nearly zero while the representation becomes
useless. The training loop logs `z_std`, the mean per-dimension standard deviation of the
L2-normalised online projections. For d-dimensional projections spread evenly over the unit sphere
it is about 1/sqrt(d) (the "healthy level"); for a collapsed run it falls towards 0.

The criterion (`CRITERION` says it in words for the dashboard): a run collapses at the first logged
step where its smoothed z_std falls below `fraction` x 1/sqrt(d) and then stays below for at least
`min_points` logged rows in a row (so a single noisy dip is not called a collapse). If the spread
later climbs back over the line, its spread came back at that step: on short CPU runs without batch
norm the projections often collapse and then partly spread out again, and hiding that first
collapse would hide the very thing the experiment is meant to show. A spread that came back is not a
run that learned: the cpu recipe's run without batch norm spreads out again late and still ends at
raw pixels' kNN accuracy, so the dashboard calls it "spread back", not a recovery. Smoothing is the exponential
moving average that `smooth()` computes, the same one the dashboard draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .metrics_file import is_step

DEFAULT_FRACTION = 0.2
DEFAULT_SMOOTHING = 0.6
DEFAULT_MIN_POINTS = 5

CRITERION = (
    "A run is marked as collapsed at the first logged step where its smoothed projection spread "
    "(z_std, exponential smoothing {smoothing:g}) falls below {fraction:.0%} of the healthy level "
    "1/√d (d = projector output size) and stays there for at least {min_points} logged points in a row; "
    "if the spread later climbs back above that line, it is marked as spread back (its kNN accuracy says whether "
    "it learned anything after)."
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


def collapse_line(projector_dim: int, fraction: float = DEFAULT_FRACTION) -> float:
    """The spread below which a run counts as collapsing: `fraction` of the healthy level."""
    return fraction * healthy_std(projector_dim)


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
        if not is_step(row):
            continue
        value = row.get(column)
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        steps.append(int(row["step"]))
        values.append(float(value))
    return steps, values


@dataclass(frozen=True)
class Collapse:
    step: int  # first logged step of the collapse
    recovered_step: int | None  # first step the spread was back above the line; None = still collapsed


def find_collapse(
    step_rows: Any,
    projector_dim: int,
    fraction: float = DEFAULT_FRACTION,
    smoothing: float = DEFAULT_SMOOTHING,
    min_points: int = DEFAULT_MIN_POINTS,
) -> Collapse | None:
    """The run's first collapse by `CRITERION` (and its recovery, if any), or None when it has none (yet).

    `step_rows`: the run's metrics (DataFrame from `metrics_file.read_frame` or a list of row dicts);
    only rows of kind "step" with a z_std are used.
    """
    steps, values = _steps_and_values(step_rows, "z_std")
    threshold = collapse_line(projector_dim, fraction)
    smoothed = smooth(values, smoothing)
    below = [v is not None and v < threshold for v in smoothed]
    i = 0
    while i < len(below):
        if not below[i]:
            i += 1
            continue
        end = i  # the dip runs from i to end - 1
        while end < len(below) and below[end]:
            end += 1
        if end - i >= min_points:
            return Collapse(steps[i], steps[end] if end < len(below) else None)
        i = end
    return None


def collapse_story(found: Collapse, still_training: bool = False) -> str:
    """The collapse told to a visitor who does not code, to follow "the network" or "it": "collapsed at
    step 15: it came to give every picture nearly the same description, and never recovered" (of a
    run still training: "and has not recovered so far", since it may yet)."""
    if found.recovered_step is not None:
        recovery = f"and climbed partly out again at step {found.recovered_step:,}"
    else:
        recovery = "and has not recovered so far" if still_training else "and never recovered"
    return f"collapsed at step {found.step:,}: it came to give every picture nearly the same description, {recovery}"


def describe_collapse(found: Collapse | None) -> str:
    """The collapse in table words: no / at step 1,200 / at step 1,200, spread back at step 3,400."""
    if found is None:
        return "no"
    text = f"at step {found.step:,}"
    return text + (f", spread back at step {found.recovered_step:,}" if found.recovered_step is not None else "")
