"""The collapse criterion behind Compare's ✕ marks and the runs' verdicts, and its words."""

from __future__ import annotations

import math

import pytest

from byol.collapse import Collapse, collapse_story, criterion_text, describe_collapse, find_collapse, healthy_std, smooth


def collapse_step(step_rows, projector_dim, **settings) -> int | None:
    found = find_collapse(step_rows, projector_dim, **settings)
    return found.step if found else None


def rows(values, start=10, every=10):
    return [{"kind": "step", "step": start + i * every, "z_std": v} for i, v in enumerate(values)]


def test_healthy_run_never_collapses():
    d = 16
    assert collapse_step(rows([healthy_std(d)] * 50), d) is None


def test_collapse_is_the_first_step_it_stays_below():
    d = 64
    healthy = healthy_std(d)
    values = [healthy] * 10 + [healthy * 0.01] * 20
    step = collapse_step(rows(values), d, fraction=0.2, smoothing=0.0)
    assert step == 10 + 10 * 10  # the 11th row
    # Smoothing delays the mark a little, never earlier.
    assert collapse_step(rows(values), d, fraction=0.2, smoothing=0.6) > step


def test_a_short_dip_or_one_only_ending_the_run_is_not_collapse():
    d = 64
    healthy = healthy_std(d)
    blip = [healthy] * 5 + [0.0] * 2 + [healthy] * 5  # fewer than min_points rows below
    assert collapse_step(rows(blip), d, smoothing=0.0, min_points=3) is None
    late = [healthy] * 10 + [0.0] * 2
    assert collapse_step(rows(late), d, smoothing=0.0, min_points=3) is None


def test_a_collapse_that_recovers_is_still_marked_with_its_recovery():
    # What short CPU runs without BN do: the spread falls to almost nothing, then partly comes back.
    d = 64
    healthy = healthy_std(d)
    values = [healthy] * 5 + [healthy * 0.05] * 10 + [healthy * 0.5] * 5
    found = find_collapse(rows(values), d, fraction=0.2, smoothing=0.0, min_points=5)
    assert found == Collapse(step=10 + 5 * 10, recovered_step=10 + 15 * 10)
    assert describe_collapse(found) == "at step 60, spread back at step 160"
    assert describe_collapse(find_collapse(rows(values[:15]), d, smoothing=0.0)) == "at step 60"
    assert describe_collapse(None) == "no"


def test_eval_rows_and_missing_values_are_ignored():
    d = 4
    mixed = rows([0.5, None, 0.001, 0.001, 0.001, 0.001, 0.001]) + [{"kind": "eval", "step": 999, "knn": 10.0}]
    assert collapse_step(mixed, d, smoothing=0.0) == 30


def test_a_collapse_is_told_in_plain_words_with_its_recovery_if_any():
    assert collapse_story(Collapse(15, None)) == (
        "collapsed at step 15: it came to give every picture nearly the same description, and never recovered"
    )
    assert collapse_story(Collapse(1200, 3400)).endswith("and climbed partly out again at step 3,400")
    assert collapse_story(Collapse(15, None), still_training=True).endswith("and has not recovered so far")  # it may yet


def test_smooth_and_criterion_text():
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected
    assert smooth([1.0, None, 3.0], 0.0) == [1.0, None, 3.0]
    assert math.isclose(healthy_std(256), 1 / 16)
    text = criterion_text(0.2, 0.6, 3)
    assert "20%" in text and "1/√d" in text
