"""Membership-inference attacks on encoder embeddings, as scikit-learn-style estimators.

Every attack takes :class:`AttackInput` (per-image query statistics from
:func:`compute_stats`) and lives in one registry::

    attack = create_attack("lpla", p=[1, 2, "inf"]).fit(shadow)
    scores = attack.score(target)          # higher = more likely a member
    threshold = attack.threshold_          # chosen on the shadow (honest balanced accuracy)

Numpy, scipy and scikit-learn only: embeddings from any model can be audited.
"""

from lpla.attacks import encodermi, lira, norm, partcrop, rmia  # noqa: F401  (registers the attacks)
from lpla.attacks.base import (
    ATTACKS,
    Attack,
    NotFittedError,
    applicable_attacks,
    best_threshold,
    create_attack,
    list_attacks,
)
from lpla.attacks.features import (
    SIMILARITIES,
    AttackInput,
    QueryStats,
    compute_stats,
    list_similarities,
    pair_indices,
    parse_p,
)

__all__ = [
    "ATTACKS",
    "SIMILARITIES",
    "Attack",
    "AttackInput",
    "NotFittedError",
    "QueryStats",
    "applicable_attacks",
    "best_threshold",
    "compute_stats",
    "create_attack",
    "list_attacks",
    "list_similarities",
    "pair_indices",
    "parse_p",
]
