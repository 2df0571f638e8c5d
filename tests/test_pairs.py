"""The batch-norm experiment: two recipes that differ in batch norm alone; each half's name finds the
other, and the newest complete pair wins."""

import dataclasses

from byol.config import preset
from byol.pairs import latest_pair, pair_configs, pair_names, pair_partner


def test_the_two_recipes_differ_in_batch_norm_alone():
    base = preset("cpu", seed=7, head_bn=False)
    with_bn, without_bn = pair_configs(base)
    assert (with_bn.head_bn, without_bn.head_bn) == (True, False)
    assert dataclasses.replace(without_bn, head_bn=True) == with_bn  # the seed and all else the same


def test_each_half_of_a_pair_names_the_other():
    with_bn, without_bn = pair_names("exp")
    assert (with_bn, without_bn) == ("exp-bn", "exp-no-bn")
    assert pair_partner(with_bn) == without_bn and pair_partner(without_bn) == with_bn
    assert pair_partner("exp") is None


def test_latest_pair_is_the_first_complete_one_with_batch_norm_first():
    assert latest_pair(["new-no-bn", "x", "old-bn", "new-bn", "old-no-bn"]) == ("new-bn", "new-no-bn")
    assert latest_pair(["a-bn", "b-no-bn", "c"]) is None  # halves of different pairs
    assert latest_pair([]) is None
