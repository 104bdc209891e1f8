"""EncoderMI baselines (Liu et al., CCS 2021): members' augmented views look more alike.

All three read the K(K-1)/2 pairwise similarities of an image's K view embeddings:
``encodermi-t`` thresholds their mean, ``encodermi-v`` feeds the sorted vector to an MLP,
``encodermi-s`` feeds the set to a permutation-invariant (DeepSets) classifier. Numpy and
scikit-learn only.

Like LpLA's norms, similarities live on a scale of their own in each encoder, so a rule fitted on
a shadow encoder may not fit the target's raw similarities. ``calibration="none"`` (default) is
the original EncoderMI, on raw similarities; ``calibration="reference"`` standardises each
encoder's similarities by the same encoder's answers on its reference population, as LpLA does
(:func:`mean_similarity` for EncoderMI-T, :func:`pair_similarities` for -V and -S).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from lpla.attacks.base import ATTACKS, Attack, check_choice, standardise
from lpla.attacks.features import SIMILARITIES, AttackInput, QueryStats
from lpla.errors import LplaError

__all__ = [
    "CALIBRATIONS",
    "EncoderMIS",
    "EncoderMIT",
    "EncoderMIV",
    "deepsets_phi",
    "mean_similarity",
    "pair_similarities",
]

#: ``"none"``: raw similarities (the original EncoderMI); ``"reference"``: standardised per
#: encoder by the same encoder's similarities on its reference population
CALIBRATIONS = ("none", "reference")


def _check_similarity(name: str) -> None:
    SIMILARITIES.get(name)


def _prefix(attack: str) -> str:
    return f"{attack}: " if attack else ""


def _reference(item: AttackInput, attack: str, who: str) -> QueryStats:
    if item.reference is None:
        raise LplaError(
            f"{_prefix(attack)}calibration='reference' needs reference statistics for the "
            f"{who} (the same encoder on population images that are members of no encoder); "
            "pass reference= or use calibration='none'"
        )
    return item.reference


def mean_similarity(
    item: AttackInput, similarity: str, calibration: str, attack: str = "", who: str = "input"
) -> np.ndarray:
    """Mean pair similarity per image ``[N]`` (EncoderMI-T's statistic), calibrated if asked.

    With ``calibration="reference"`` it is ``(m - mean_ref) / sd_ref``, where ``mean_ref`` and
    ``sd_ref`` are the mean and standard deviation over the reference images of *their* mean
    pair similarity, on the same encoder: the statistic is compared with itself. The sd of a
    mean over K(K-1)/2 pairs shrinks with K, so the reference must have the images' K.
    """
    values = item.stats.similarity(similarity).mean(axis=1)
    if calibration == "none":
        return np.asarray(values)
    ref = _reference(item, attack, who)
    if ref.n_views != item.stats.n_views:
        raise LplaError(
            f"{_prefix(attack)}the {who}'s reference has K={ref.n_views} views but its images have "
            f"K={item.stats.n_views}; the spread of a mean over view pairs depends on K "
            "(use .first_views(k) on both)"
        )
    ref_values = ref.similarity(similarity).mean(axis=1)
    return standardise(values, ref_values.mean(), ref_values.std())


def pair_similarities(
    item: AttackInput, similarity: str, calibration: str, attack: str = "", who: str = "input"
) -> np.ndarray:
    """Pair similarities ``[N, K(K-1)/2]`` (the input of EncoderMI-V and -S), calibrated if asked.

    With ``calibration="reference"`` every value is standardised by the mean and standard
    deviation of *all* pair similarities of the reference images on the same encoder (pooled,
    not per sorted position): one increasing affine map per encoder, so sorting commutes with
    it (-V's sorted vector is the sorted calibrated similarities), a set stays a set of any size
    (-S stays permutation-invariant and accepts any K), the shape of the vector (the gap
    between the most and least similar pairs) keeps its proportions, and the reference may
    have another K (a pair's similarity does not depend on how many other views were drawn).
    Per-position moments would rescale each rank separately, tie the reference to the images'
    K and rest the extreme ranks on noisy order statistics.
    """
    values = item.stats.similarity(similarity)
    if calibration == "none":
        return values
    ref = _reference(item, attack, who)
    pooled = ref.similarity(similarity)
    if pooled.size == 0:
        raise LplaError(
            f"{_prefix(attack)}the {who}'s reference has K={ref.n_views} view(s) per image and "
            "so no view pairs to calibrate by; query the reference with K >= 2 views"
        )
    return standardise(values, pooled.mean(), pooled.std())


def _labelled_rows(
    shadows: list[AttackInput], values: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    x, y = [], []
    for s, v in zip(shadows, values, strict=True):
        assert s.member is not None
        x.append(v[s.labelled])
        y.append(s.member[s.labelled])
    return np.concatenate(x), np.concatenate(y).astype(np.int64)


def _mlp_logit(clf: MLPClassifier, x: np.ndarray) -> np.ndarray:
    """Output pre-activation (log-odds) of a fitted binary MLPClassifier.

    ``predict_proba`` saturates at 0 and 1, which ties scores and wastes ROC resolution; the
    logit keeps the ranking.
    """
    acts: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "relu": lambda a: np.maximum(a, 0.0),
        "tanh": np.tanh,
        "logistic": lambda a: 1.0 / (1.0 + np.exp(-a)),
        "identity": lambda a: a,
    }
    hidden = acts[clf.activation]
    h = x
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True)):
        h = h @ w + b
        if i < last:
            h = hidden(h)
    logit = h[:, 0]
    return logit if int(clf.classes_[1]) == 1 else -logit


class _MLPHead:
    """Standardise, then an sklearn MLP; shared by EncoderMI-V and EncoderMI-S."""

    def __init__(self, hidden: Sequence[int], alpha: float, max_iter: int, seed: int) -> None:
        self.scaler = StandardScaler()
        self.clf = MLPClassifier(
            hidden_layer_sizes=tuple(hidden),
            alpha=alpha,
            max_iter=max_iter,
            solver="lbfgs",
            random_state=seed,
        )

    def fit(self, x: np.ndarray, y: np.ndarray) -> _MLPHead:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(self.scaler.fit_transform(x), y)
        return self

    def logit(self, x: np.ndarray) -> np.ndarray:
        return _mlp_logit(self.clf, self.scaler.transform(x))


def _check_mlp_params(name: str, hidden: Sequence[int], alpha: float, max_iter: int) -> None:
    if len(tuple(hidden)) < 1 or any(int(h) < 1 for h in hidden):
        raise LplaError(f"{name}: hidden_layer_sizes must be positive integers; got {hidden}")
    if not alpha >= 0:
        raise LplaError(f"{name}: alpha must be >= 0; got {alpha}")
    if int(max_iter) < 1:
        raise LplaError(f"{name}: max_iter must be >= 1; got {max_iter}")


def _shadow_label(i: int, shadow: AttackInput) -> str:
    return f"shadow #{i} ({shadow.name})" if shadow.name else f"shadow #{i}"


@ATTACKS.register("encodermi-t", "EncoderMI-T: mean pairwise similarity of views, thresholded")
class EncoderMIT(Attack):
    """Mean of the K(K-1)/2 pairwise view similarities; the shadow picks ``threshold_``.

    Args:
        similarity: a registered similarity (``"cosine"``, ...).
        calibration: ``"none"`` (default: the raw mean, the original EncoderMI-T) or
            ``"reference"``: the mean standardised by the mean and sd of the same encoder's
            mean similarity on its reference images (:func:`mean_similarity`), so that the
            shadow's threshold is in units that transfer to the target. Needs ``reference=``
            on the shadows and the target (with their K).
    """

    name = "encodermi-t"
    min_views = 2
    needs_shadow = True
    needs_reference = False  # with the default calibration="none"

    def __init__(self, similarity: str = "cosine", calibration: str = "none") -> None:
        _check_similarity(similarity)
        check_choice(self.name, "calibration", calibration, CALIBRATIONS)
        self.similarity = similarity
        self.calibration = calibration

    def _statistic(self, item: AttackInput, who: str) -> np.ndarray:
        return mean_similarity(item, self.similarity, self.calibration, self.name, who)

    def _fit(self, shadows: list[AttackInput]) -> None:
        for i, s in enumerate(shadows):  # a missing reference is reported as the shadow's
            self._statistic(s, _shadow_label(i, s))
        self.n_pairs_ = shadows[0].stats.similarity(self.similarity).shape[1]

    def _score(self, target: AttackInput) -> np.ndarray:
        return self._statistic(target, "target")


@ATTACKS.register("encodermi-v", "EncoderMI-V: sorted similarity vector -> MLP classifier")
class EncoderMIV(Attack):
    """Sorted (descending) similarity vector -> standardisation -> MLP with 2 hidden layers.

    The vector has K(K-1)/2 entries, so the target must be queried with the same K as the
    shadow. The score is the MLP's log-odds.

    Args:
        similarity: a registered similarity (``"cosine"``, ...).
        calibration: ``"none"`` (default: raw similarities, the original EncoderMI-V) or
            ``"reference"``: each similarity standardised by the pooled mean and sd of the same
            encoder's pair similarities on its reference images (:func:`pair_similarities`).
        hidden_layer_sizes, alpha, max_iter, random_state: the sklearn ``MLPClassifier``'s.
    """

    name = "encodermi-v"
    min_views = 2
    needs_shadow = True
    needs_reference = False  # with the default calibration="none"

    def __init__(
        self,
        similarity: str = "cosine",
        calibration: str = "none",
        hidden_layer_sizes: Sequence[int] = (64, 32),
        alpha: float = 1.0,
        max_iter: int = 200,
        random_state: int = 0,
    ) -> None:
        _check_similarity(similarity)
        check_choice(self.name, "calibration", calibration, CALIBRATIONS)
        _check_mlp_params(self.name, hidden_layer_sizes, alpha, max_iter)
        self.similarity = similarity
        self.calibration = calibration
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _vector(self, item: AttackInput, who: str) -> np.ndarray:
        sims = pair_similarities(item, self.similarity, self.calibration, self.name, who)
        return -np.sort(-sims, axis=1)

    def _fit(self, shadows: list[AttackInput]) -> None:
        k = {s.stats.n_views for s in shadows}
        if len(k) > 1:
            raise LplaError(f"encodermi-v: all shadows need the same K; got {sorted(k)}")
        self.n_views_ = k.pop()
        vectors = [self._vector(s, _shadow_label(i, s)) for i, s in enumerate(shadows)]
        x, y = _labelled_rows(shadows, vectors)
        self.head_ = _MLPHead(
            self.hidden_layer_sizes, self.alpha, self.max_iter, self.random_state
        ).fit(x, y)

    def _score(self, target: AttackInput) -> np.ndarray:
        if target.stats.n_views != self.n_views_:
            raise LplaError(
                f"encodermi-v was fitted on K={self.n_views_} views; the target has "
                f"K={target.stats.n_views}; query the same K (or use encodermi-s, which accepts "
                "any K)"
            )
        return self.head_.logit(self._vector(target, "target"))


def deepsets_phi(values: np.ndarray, centres: np.ndarray, width: float) -> np.ndarray:
    """DeepSets encoding of sets of scalars: mean over elements of a per-element feature map.

    ``values`` is ``[N, M]`` (N sets of M elements). Each element ``s`` maps to
    ``[s, s^2, exp(-(s - c)^2 / 2w^2) for c in centres, sigmoid((s - c) / w) for c in centres]``
    (a soft histogram and a soft empirical CDF); the map is pooled by the mean. Elements are
    sorted before pooling only so that floating-point summation order is fixed: the result is
    then bit-for-bit the same for any order of the elements.
    """
    c = np.asarray(centres, dtype=np.float64)[None, None, :]
    out = np.empty((values.shape[0], 2 + 2 * c.shape[2]))
    for start in range(0, values.shape[0], 4096):  # bounded memory: [chunk, M, features]
        s = np.sort(values[start : start + 4096], axis=1)[:, :, None]
        parts = [
            s,
            s**2,
            np.exp(-0.5 * ((s - c) / width) ** 2),
            0.5 * (1.0 + np.tanh(0.5 * (s - c) / width)),  # the logistic sigmoid, overflow-free
        ]
        out[start : start + 4096] = np.concatenate(parts, axis=2).mean(axis=1)
    return out


@ATTACKS.register("encodermi-s", "EncoderMI-S: set of similarities -> DeepSets classifier")
class EncoderMIS(Attack):
    """Permutation-invariant classifier on the set of pairwise similarities (DeepSets).

    ``phi`` is a fixed bank of per-element functions (:func:`deepsets_phi`, centres at quantiles
    of the shadow's similarities), pooled by the mean, and ``rho`` an sklearn MLP. Because of the
    mean pooling the score does not depend on the order of the pairs, and a set of any size is
    accepted: the target may be queried with another K than the shadow.

    Args:
        similarity: a registered similarity (``"cosine"``, ...).
        calibration: ``"none"`` (default: raw similarities, the original EncoderMI-S) or
            ``"reference"``: each similarity standardised by the pooled mean and sd of the same
            encoder's pair similarities on its reference images (:func:`pair_similarities`;
            the set stays a set, of any size). The centres are then quantiles of the shadow's
            calibrated similarities.
        n_centres: centres of ``phi``'s bumps and steps.
        hidden_layer_sizes, alpha, max_iter, random_state: the sklearn ``MLPClassifier``'s.
    """

    name = "encodermi-s"
    min_views = 2
    needs_shadow = True
    needs_reference = False  # with the default calibration="none"

    def __init__(
        self,
        similarity: str = "cosine",
        calibration: str = "none",
        n_centres: int = 16,
        hidden_layer_sizes: Sequence[int] = (64, 32),
        alpha: float = 1.0,
        max_iter: int = 200,
        random_state: int = 0,
    ) -> None:
        _check_similarity(similarity)
        _check_mlp_params(self.name, hidden_layer_sizes, alpha, max_iter)
        check_choice(self.name, "calibration", calibration, CALIBRATIONS)
        if int(n_centres) < 1:
            raise LplaError(f"encodermi-s: n_centres must be >= 1; got {n_centres}")
        self.similarity = similarity
        self.calibration = calibration
        self.n_centres = n_centres
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def _similarities(self, item: AttackInput, who: str) -> np.ndarray:
        return pair_similarities(item, self.similarity, self.calibration, self.name, who)

    def _embed(self, sims: np.ndarray) -> np.ndarray:
        return deepsets_phi(sims, self.centres_, self.width_)

    def _fit(self, shadows: list[AttackInput]) -> None:
        sims = [self._similarities(s, _shadow_label(i, s)) for i, s in enumerate(shadows)]
        pooled = np.concatenate([v.ravel() for v in sims])
        self.centres_ = np.quantile(pooled, (np.arange(self.n_centres) + 0.5) / self.n_centres)
        spread = float(self.centres_[-1] - self.centres_[0])
        if spread <= 0:
            spread = float(pooled.std()) or 1.0
        self.width_ = spread / max(self.n_centres - 1, 1)
        x, y = _labelled_rows(shadows, [self._embed(v) for v in sims])
        self.head_ = _MLPHead(
            self.hidden_layer_sizes, self.alpha, self.max_iter, self.random_state
        ).fit(x, y)

    def _score(self, target: AttackInput) -> np.ndarray:
        return self.head_.logit(self._embed(self._similarities(target, "target")))
