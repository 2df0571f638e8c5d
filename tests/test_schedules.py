"""Schedules are pure functions: check their tables and that they refuse nonsense."""

import math

import pytest

from byol.schedules import cosine_schedule, learning_rate, target_tau


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.99), (50, 0.995), (100, 1.0), (150, 1.0), (25, 1 - 0.01 * (1 + math.cos(math.pi / 4)) / 2)],
)
def test_tau_cosine_table(step, expected):
    assert target_tau(step, 100, 0.99) == pytest.approx(expected)


def test_tau_rises_monotonically_to_one():
    values = [target_tau(s, 1000, 0.996) for s in range(0, 1001, 50)]
    assert values == sorted(values) and values[0] == pytest.approx(0.996) and values[-1] == pytest.approx(1.0)


def test_fixed_tau_stays_at_base():
    assert {target_tau(s, 100, 0.98, "fixed") for s in range(0, 101, 10)} == {0.98}


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [learning_rate(s, 100, 1.0, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert learning_rate(100, 100, 1.0, 10) == pytest.approx(0.0)


def test_learning_rate_holds_its_peak_until_the_decay_share_starts():
    # 90 steps after the warm-up; a decay share of 0.3 decays over the last 27 of them.
    lrs = [learning_rate(s, 100, 1.0, 10, decay_share=0.3) for s in range(101)]
    assert lrs[:10] == [learning_rate(s, 100, 1.0, 10) for s in range(10)]  # the same warm-up
    assert set(lrs[10:74]) == {1.0}
    assert lrs[74] < 1.0 and all(a >= b for a, b in zip(lrs[73:], lrs[74:]))
    assert lrs[100] == pytest.approx(0.0)
    # The decay itself is the plain cosine, squeezed into its share of the steps.
    assert lrs[73 + 27 // 2] == pytest.approx(cosine_schedule(27 // 2, 27, 1.0, 0.0))


def test_a_decay_share_of_one_is_the_plain_cosine():
    assert [learning_rate(s, 50, 2.0, 5, decay_share=1.0) for s in range(51)] == [learning_rate(s, 50, 2.0, 5) for s in range(51)]


def test_cosine_endpoints():
    assert cosine_schedule(0, 10, 3.0, 1.0) == 3.0 and cosine_schedule(10, 10, 3.0, 1.0) == 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: target_tau(0, 0, 0.99),
        lambda: target_tau(-1, 10, 0.99),
        lambda: target_tau(0, 10, 1.5),
        lambda: target_tau(0, 10, 0.99, "linear"),
        lambda: learning_rate(0, 10, 1.0, -1),
        lambda: learning_rate(0, 10, 1.0, 1, decay_share=0.0),
        lambda: learning_rate(0, 10, 1.0, 1, decay_share=1.5),
    ],
)
def test_schedules_refuse_bad_input(call):
    with pytest.raises(ValueError):
        call()
