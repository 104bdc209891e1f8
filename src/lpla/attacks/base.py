"""The attack estimator contract, the attack registry, and the helpers every attack shares.

Every attack is a scikit-learn-style estimator: ``__init__`` stores (and validates) keyword
hyper-parameters and nothing else; ``fit(shadow)`` learns state in attributes ending in ``_``
(always ``threshold_``, the shadow threshold that maximises balanced accuracy) and returns
``self``; ``score(target)`` returns one float per image, higher = more likely a member. Class
attributes say what an attack needs, so that an orchestrator can run every attack its inputs
allow (:func:`applicable_attacks`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Collection, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from lpla.attacks.features import ANSWER_ROLES, AttackInput, PSpec, QueryStats, parse_p
from lpla.errors import LplaError
from lpla.registry import Registry

__all__ = [
    "ATTACKS",
    "Attack",
    "NotFittedError",
    "ShadowArg",
    "answers_needed",
    "applicable_attacks",
    "best_threshold",
    "create_attack",
    "list_attacks",
]

ShadowArg = AttackInput | Sequence[AttackInput] | None


class NotFittedError(LplaError):
    """``score`` (or a fitted attribute) was used before ``fit``."""


class Attack:
    """Base class: validation around ``_fit``/``_score``, the shadow threshold, ``get_params``.

    Subclasses set the class attributes, implement ``_fit(shadows)`` and ``_score(target)``, and
    may override ``_shadow_scores`` when scoring the shadows in-sample would be dishonest.
    """

    name: ClassVar[str] = ""
    min_views: ClassVar[int] = 1
    needs_shadow: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    needs_baseline: ClassVar[bool] = False
    min_shadows: ClassVar[int] = 1
    #: an :data:`~lpla.attacks.features.ANSWER_ROLES` answer the attack reads (a query of its
    #: own, made only when the attack is asked for: see :func:`answers_needed`)
    needs_answer: ClassVar[str | None] = None

    threshold_: float | None

    # --- public API ----------------------------------------------------------------------

    def fit(self, shadow: ShadowArg) -> Self:
        """Learn from one or more shadow inputs whose membership is known; returns ``self``."""
        shadows = self._shadow_list(shadow)
        for attr in [a for a in vars(self) if a.endswith("_")]:
            delattr(self, attr)  # a refit starts from scratch
        self._fit(shadows)
        shadow_scores = self._shadow_scores(shadows) if shadows else None
        if shadow_scores is None:
            self.threshold_ = None
        else:
            self.threshold_ = best_threshold(*shadow_scores)
        return self

    def score(self, target: AttackInput) -> np.ndarray:
        """Membership score per image of ``target`` (float64 ``[N]``, higher = member)."""
        self._check_fitted()
        self._check_input(target, "target")
        scores = np.asarray(self._score(target), dtype=np.float64)
        if scores.shape != (target.stats.n_images,):  # pragma: no cover - a bug in an attack
            raise RuntimeError(f"{self.name} returned scores of shape {scores.shape}")
        return scores

    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword parameters and their current values."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def fitted_params(self) -> dict[str, Any]:
        """The fitted state that fits in ``results.json``: attributes ending in ``_`` whose value
        is a JSON scalar or a flat dict of them (e.g. ``threshold_``, ``density_``), so that a
        result says what the attack chose, not only what it was asked."""
        self._check_fitted()
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_"):
                continue
            if _json_scalar(value):
                out[key] = _plain(value)
            elif isinstance(value, dict) and all(
                isinstance(k, str) and _json_scalar(v) for k, v in value.items()
            ):
                out[key] = {k: _plain(v) for k, v in value.items()}
        return out

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "threshold_")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --- for subclasses ------------------------------------------------------------------

    def _fit(self, shadows: list[AttackInput]) -> None:
        raise NotImplementedError

    def _score(self, target: AttackInput) -> np.ndarray:
        raise NotImplementedError

    def _shadow_scores(self, shadows: list[AttackInput]) -> tuple[np.ndarray, np.ndarray] | None:
        """Scores and labels of the shadows' labelled images (for ``threshold_``); ``None``
        when the shadows cannot be scored (then ``threshold_`` is ``None``)."""
        scores, labels = [], []
        for s in shadows:
            assert s.member is not None
            keep = s.labelled
            scores.append(self._score(s)[keep])
            labels.append(s.member[keep])
        return np.concatenate(scores), np.concatenate(labels)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(
                f"attack {self.name!r} is not fitted; call .fit(shadow) before .score(target)"
            )

    def _check_input(self, item: AttackInput, role: str) -> None:
        if not isinstance(item, AttackInput):
            raise LplaError(
                f"{self.name}: the {role} must be an AttackInput; got {type(item).__name__}"
            )
        if item.stats.n_views < self.min_views:
            who = f"{role} ({item.name})" if item.name else role
            raise LplaError(
                f"attack {self.name!r} needs at least {self.min_views} views per image; the "
                f"{who} has K={item.stats.n_views}; query more views"
            )
        if self.needs_answer is not None and self.needs_answer not in item.answers:
            who = f"{role} ({item.name})" if item.name else role
            raise LplaError(
                f"attack {self.name!r} needs the {self.needs_answer!r} answer for the {who} "
                f"({ANSWER_ROLES.summary(self.needs_answer)}); it is queried when the attack is "
                f"asked for: --attacks {self.name}"
            )

    def _shadow_list(self, shadow: ShadowArg) -> list[AttackInput]:
        if shadow is None:
            shadows: list[AttackInput] = []
        elif isinstance(shadow, AttackInput):
            shadows = [shadow]
        else:
            shadows = list(shadow)
        if self.needs_shadow and len(shadows) < self.min_shadows:
            need = "a shadow input" if self.min_shadows == 1 else f"{self.min_shadows} shadows"
            raise LplaError(
                f"attack {self.name!r} needs {need} with known membership; got {len(shadows)}"
            )
        for i, s in enumerate(shadows):
            self._check_input(s, f"shadow #{i}")
            assert s.member is not None
            labels = s.member[s.labelled]
            if not ((labels == 1).any() and (labels == 0).any()):
                who = f"shadow #{i} ({s.name})" if s.name else f"shadow #{i}"
                raise LplaError(
                    f"{who} needs members (1) and non-members (0); "
                    f"got {int((labels == 1).sum())} and {int((labels == 0).sum())}"
                )
        return shadows


# --- registry ------------------------------------------------------------------------------

ATTACKS: Registry[type[Attack]] = Registry("attack")


def create_attack(name: str, **params: Any) -> Attack:
    """A registered attack from keyword parameters: ``create_attack("lpla", p=[1, 2])``."""
    cls = ATTACKS.get(name)
    allowed = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise LplaError(
            f"attack {name!r} has no parameter {', '.join(unknown)}; "
            f"its parameters are: {', '.join(allowed) or 'none'}"
        )
    return cls(**params)


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


def answers_needed(attacks: Sequence[str] | None) -> tuple[str, ...]:
    """The answers of their own (``needs_answer``) that these attacks need queried; none by
    default (``None``: the attacks the inputs allow), so such queries run only when asked."""
    roles = (ATTACKS.get(name).needs_answer for name in attacks or ())
    return tuple(dict.fromkeys(r for r in roles if r is not None))


def applicable_attacks(
    k: int,
    n_shadows: int,
    has_reference: bool,
    has_baseline: bool = False,
    answers: Collection[str] = (),
) -> list[str]:
    """Attacks that run with default parameters on K views, ``n_shadows`` shadows, a reference,
    (for difficulty calibration) baseline statistics from an encoder that did not train on
    the candidates, and the other ``answers`` (roles) every input has."""
    names = []
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        if k < cls.min_views:
            continue
        if cls.needs_answer is not None and cls.needs_answer not in answers:
            continue
        if getattr(cls, "needs_baseline", False) and not has_baseline:
            continue
        if cls.needs_shadow and n_shadows < cls.min_shadows:
            continue
        if cls.needs_reference and not has_reference:
            continue
        names.append(name)
    return names


# --- shared helpers ------------------------------------------------------------------------


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold (predict member when ``score >= t``) maximising balanced accuracy.

    Placed half-way between two consecutive distinct scores, so that it transfers to another
    encoder's scores without sitting exactly on a shadow score.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels) == 1
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last row of each run of equal scores
    tpr = np.cumsum(y)[last] / n_pos
    fpr = np.cumsum(~y)[last] / n_neg
    gain = tpr - fpr
    j = int(np.argmax(gain))
    if gain[j] <= 0:  # nothing beats "nobody is a member"
        return float(np.nextafter(s[0], math.inf))
    cut = last[j]
    if cut + 1 < s.size:
        return float((s[cut] + s[cut + 1]) / 2)
    return float(np.nextafter(s[cut], -math.inf))


def resolve_p(requested: PSpec | None, stats: QueryStats) -> tuple[float, ...]:
    """The norm orders an attack uses: the requested ones (which must exist) or all computed."""
    if requested is None:
        return stats.p
    p_values = parse_p(requested)
    for p in p_values:
        stats.p_index(p)
    return p_values


def check_choice(attack: str, param: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise LplaError(
            f"{attack}: {param}={value!r} is not one of {', '.join(repr(c) for c in choices)}"
        )


#: a reference standard deviation below this fraction of the feature's scale is rounding noise
REL_STD_FLOOR = 1e-6


def standardise(
    values: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    scale: np.ndarray | float | None = None,
) -> np.ndarray:
    """``(values - mean) / std`` per column; a (near-)constant column becomes 0.

    A column whose ``std`` is at most :data:`REL_STD_FLOOR` times its ``scale`` is constant up
    to float32 rounding (e.g. sd 1e-8 of values around 1): dividing by that ``std`` would turn
    rounding noise into a unit-variance feature that looks as informative as a real one, so
    such a column is returned as zeros instead and carries no weight in any score. ``scale`` is
    the magnitude of the quantity behind the column: ``sqrt(mean**2 + std**2)`` by default, 1
    for logs (the sd of a log is already relative, even when the log is near 0). Being
    relative, the floor treats norms of 1e-3 and of 1e3 alike.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    magnitude = np.sqrt(mean**2 + std**2) if scale is None else np.asarray(scale, np.float64)
    constant = ~(std > REL_STD_FLOOR * magnitude)  # also catches std == magnitude == 0, NaN
    z = (values - mean) / np.where(constant, 1.0, std)
    return np.asarray(np.where(constant, 0.0, z))


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str | np.bool_ | np.number)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.bool_ | np.number) else value


def tiny_log(values: np.ndarray) -> np.ndarray:
    """Log that maps 0 (an all-zero embedding) to a very negative finite number, not -inf."""
    return np.log(np.maximum(values, np.finfo(np.float64).tiny))


def register_variant(base: type[Attack], name: str, summary: str, **defaults: Any) -> type[Attack]:
    """Register ``base`` under another name with other defaults (e.g. ``mode="offline"``).

    One results table can then hold two settings of one attack side by side (results are keyed
    by attack name); every other parameter, and the ability to override the new defaults, stay.
    """
    sig = inspect.signature(base.__init__)
    unknown = sorted(set(defaults) - set(sig.parameters))
    if unknown:
        raise ValueError(f"{base.__name__} has no parameter {', '.join(unknown)}")
    params = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p
        for p in sig.parameters.values()
    ]
    new_sig = sig.replace(parameters=params)

    def __init__(self: Attack, *args: Any, **kwargs: Any) -> None:
        bound = new_sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        base.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = new_sig  # type: ignore[attr-defined]
    cls = type(
        base.__name__ + "".join(str(v).title() for v in defaults.values()),
        (base,),
        {"__init__": __init__, "name": name, "__doc__": f"{summary}.\n\n{base.__doc__}"},
    )
    ATTACKS.add(name, cls, summary)
    return cls
