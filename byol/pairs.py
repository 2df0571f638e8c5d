"""The batch-norm experiment: one recipe trained twice (`pair_configs`), named `<base>-bn` and `<base>-no-bn`.

The launcher (jobs.JobRunner.launch_pair_bn_experiment) names a pair this way; the Compare page,
Home and the shipped demos find pairs by these names alone, so a pair trained from the command line
with the same names pairs up too.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import TrainConfig

SUFFIX_BN, SUFFIX_NO_BN = "-bn", "-no-bn"


def pair_names(base: str) -> tuple[str, str]:
    """The two run names of the pair whose shared start is `base`: (with batch norm, without)."""
    return base + SUFFIX_BN, base + SUFFIX_NO_BN


def pair_configs(config: TrainConfig) -> tuple[TrainConfig, TrainConfig]:
    """The experiment's two recipes: `config` with batch norm in the heads and without, all else (seed too) the same."""
    return config.replace(head_bn=True), config.replace(head_bn=False)


def pair_partner(name: str) -> str | None:
    """The other half of a pair's run name, or None when `name` is not part of one."""
    if name.endswith(SUFFIX_NO_BN):  # checked first: "-no-bn" also ends with "-bn"
        return name[: -len(SUFFIX_NO_BN)] + SUFFIX_BN
    if name.endswith(SUFFIX_BN):
        return name[: -len(SUFFIX_BN)] + SUFFIX_NO_BN
    return None


def latest_pair(names: Sequence[str]) -> tuple[str, str] | None:
    """The first (newest, when `names` is newest first) complete pair: (with batch norm, without)."""
    present = set(names)
    for name in names:
        partner = pair_partner(name)
        if partner in present:
            return (partner, name) if name.endswith(SUFFIX_NO_BN) else (name, partner)
    return None
