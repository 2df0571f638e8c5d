"""The batch-norm experiment's names: each half finds the other, and the newest complete pair wins."""

from byol.pairs import latest_pair, pair_names, pair_partner


def test_each_half_of_a_pair_names_the_other():
    with_bn, without_bn = pair_names("exp")
    assert (with_bn, without_bn) == ("exp-bn", "exp-no-bn")
    assert pair_partner(with_bn) == without_bn and pair_partner(without_bn) == with_bn
    assert pair_partner("exp") is None


def test_latest_pair_is_the_first_complete_one_with_batch_norm_first():
    assert latest_pair(["new-no-bn", "x", "old-bn", "new-bn", "old-no-bn"]) == ("new-bn", "new-no-bn")
    assert latest_pair(["a-bn", "b-no-bn", "c"]) is None  # halves of different pairs
    assert latest_pair([]) is None
