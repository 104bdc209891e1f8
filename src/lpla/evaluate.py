"""Run a set of attacks on one target and its shadow(s), and turn scores into metrics.

This is the join between the query layer (embeddings) and the attack layer (statistics -> scores):
``lpla attack`` and ``lpla audit`` both call :func:`run_attacks`. It takes embeddings files (or
in-memory arrays), so it needs no training code and works on any user's precomputed embeddings.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lpla.attacks import ATTACKS, applicable_attacks, create_attack
from lpla.attacks.features import AttackInput, QueryStats, compute_stats
from lpla.embeddings import EmbeddingsFile
from lpla.errors import LplaError
from lpla.metrics import evaluate_scores

DEFAULT_P: tuple[float, ...] = (1.0, 2.0, float("inf"))
DEFAULT_KS: tuple[int, ...] = (1, 2, 5, 10)


@dataclass
class EncoderAnswers:
    """One encoder's answers: candidate images (membership known for shadows) + reference."""

    name: str
    candidates: EmbeddingsFile
    reference: EmbeddingsFile | None = None
    # The same candidates queried on another encoder that never trained on them (difficulty
    # calibration), and that encoder's answers on the reference set.
    baseline: EmbeddingsFile | None = None
    baseline_reference: EmbeddingsFile | None = None


@dataclass
class AttackSettings:
    attacks: Sequence[str] | None = None  # None: every attack the inputs allow
    p: Sequence[float] = DEFAULT_P
    similarities: Sequence[str] = ("cosine",)
    clean_view0: bool = False
    views_grid: Sequence[int] = DEFAULT_KS
    n_bootstrap: int = 1000
    seed: int = 0
    fprs: Sequence[float] = (0.001, 0.01)
    attack_params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class AttackRun:
    results: dict[str, Any]
    scores: dict[str, np.ndarray]
    target_stats: QueryStats
    target_member: np.ndarray


class _StatsCache:
    """Statistics per embeddings file, computed once per run.

    One file can serve twice: an encoder's reference set is also the baseline reference of the
    other encoder (lpla-diff), and streaming statistics over a large file is the costly step.
    """

    def __init__(self, settings: AttackSettings) -> None:
        self.settings = settings
        self._done: dict[int, tuple[EmbeddingsFile, QueryStats]] = {}

    def __call__(self, emb: EmbeddingsFile) -> QueryStats:
        hit = self._done.get(id(emb))
        if hit is None:
            stats = compute_stats(
                emb.embeddings,
                p=tuple(self.settings.p),
                similarities=tuple(self.settings.similarities),
                clean_view0=self.settings.clean_view0,
            )
            hit = self._done[id(emb)] = (emb, stats)  # the file is kept so its id stays unique
        return hit[1]


def _as_input(answers: EncoderAnswers, stats_of: _StatsCache) -> tuple[AttackInput, list[str]]:
    """Statistics for the candidates and the reference; falls back to self-calibration."""
    notes: list[str] = []
    stats = stats_of(answers.candidates)
    if answers.reference is not None:
        ref = stats_of(answers.reference)
    else:
        ref = stats
        notes.append(
            f"{answers.name}: no reference embeddings; features calibrated on the candidates "
            "themselves"
        )
    member = np.asarray(answers.candidates.member, dtype=np.int8)
    index = np.asarray(answers.candidates.index, dtype=np.int64)
    base = base_ref = None
    if answers.baseline is not None and answers.baseline_reference is not None:
        if len(answers.baseline.index) != len(index) or not np.array_equal(
            answers.baseline.index, index
        ):
            raise LplaError(
                f"{answers.name}: baseline embeddings must list the same images as the candidates"
            )
        base = stats_of(answers.baseline)
        base_ref = stats_of(answers.baseline_reference)
    inp = AttackInput(
        stats=stats,
        member=member,
        index=index,
        reference=ref,
        name=answers.name,
        baseline=base,
        baseline_reference=base_ref,
    )
    return inp, notes


def check_compatible(target: EncoderAnswers, shadows: Sequence[EncoderAnswers]) -> None:
    """Catch mismatches before any attack sees them, with the fix in the message."""
    t = target.candidates.embeddings
    for sh in shadows:
        s = sh.candidates.embeddings
        if s.shape[1] != t.shape[1]:
            raise LplaError(
                f"target has K={t.shape[1]} views per image but shadow {sh.name} has "
                f"K={s.shape[1]}; "
                "query both with the same --views"
            )
        m = np.asarray(sh.candidates.member)
        if not (m == 1).any() or not (m == 0).any():
            raise LplaError(
                f"shadow {sh.name} needs both members and non-members "
                "(member=1 and member=0 rows); "
                f"it has {(m == 1).sum()} members and {(m == 0).sum()} non-members"
            )
    tm = np.asarray(target.candidates.member)
    if not (tm == 1).any() or not (tm == 0).any():
        raise LplaError(
            "the target's candidates need known membership to be evaluated "
            "(member=1 and member=0 rows); "
            f"got {(tm == 1).sum()} members and {(tm == 0).sum()} non-members"
        )
    for ans in (target, *shadows):
        if (
            ans.reference is not None
            and ans.reference.embeddings.shape[2] != ans.candidates.embeddings.shape[2]
        ):
            raise LplaError(
                f"{ans.name}: reference embeddings have D={ans.reference.embeddings.shape[2]} but "
                f"candidates D={ans.candidates.embeddings.shape[2]}; they must come from the same "
                "encoder and layer"
            )


def overlap_notes(target: EncoderAnswers, shadows: Sequence[EncoderAnswers]) -> list[str]:
    """Warn when a shadow was trained on the target's members (same dataset, same ``index``).

    The attacker's shadow data should not favour the target's members: an overlap lets the shadow
    "know" them and inflates every number. A shadow trained on random halves of the whole
    candidate population (LiRA's paired halves) contains target members and non-members alike;
    that is by design and is flagged only if members are over-represented (z > 3). Files of two
    different datasets (their meta ``dataset`` names differ) cannot overlap.
    """
    t_meta = target.candidates.meta or {}
    t_member = np.asarray(target.candidates.member)
    t_index = np.asarray(target.candidates.index)
    in_members, in_nonmembers = t_index[t_member == 1], t_index[t_member == 0]
    notes = []
    for sh in shadows:
        s_meta = sh.candidates.meta or {}
        t_ds, s_ds = t_meta.get("dataset"), s_meta.get("dataset")
        if t_ds is not None and s_ds is not None and t_ds != s_ds:
            continue
        s_members = np.asarray(sh.candidates.index)[np.asarray(sh.candidates.member) == 1]
        common = np.intersect1d(in_members, s_members)
        if not len(common):
            continue
        shared_nonmembers = len(np.intersect1d(in_nonmembers, s_members))
        if shared_nonmembers and not _over_represented(
            len(common), len(in_members), shared_nonmembers, len(in_nonmembers)
        ):
            continue
        same = (
            f"in {t_ds}"
            if t_ds is not None and s_ds is not None
            else "(if both files index the same dataset)"
        )
        notes.append(
            f"WARNING: {len(common)} of the target's {len(in_members)} members are also "
            f"members of shadow {sh.name} (same index {same}, e.g. {int(common[0])}); the "
            "shadow saw the target's training images, so the attack numbers are optimistic. "
            "Use disjoint shadow data (lpla's splits are)"
        )
    return notes


def _over_represented(hits_m: int, n_m: int, hits_n: int, n_n: int) -> bool:
    """Two-proportion z-test: target members in the shadow's training set more often (z > 3)."""
    pooled = (hits_m + hits_n) / (n_m + n_n)
    se = float(np.sqrt(pooled * (1 - pooled) * (1 / n_m + 1 / n_n)))
    return se > 0 and (hits_m / n_m - hits_n / n_n) / se > 3.0


def check_settings(settings: AttackSettings) -> None:
    """Out-of-range settings are mistakes, not something to drop silently."""
    if any(int(v) < 1 for v in settings.views_grid):
        raise LplaError(
            f"every query budget in --views-grid must be >= 1, got {list(settings.views_grid)}"
        )
    if settings.n_bootstrap < 0:
        raise LplaError(f"--n-bootstrap must be >= 0, got {settings.n_bootstrap}")


def _dims_note(target: EncoderAnswers, shadows: Sequence[EncoderAnswers]) -> list[str]:
    d = target.candidates.embeddings.shape[2]
    return [
        f"shadow {sh.name} has D={sh.candidates.embeddings.shape[2]} vs target D={d}: only "
        "dimension-free statistics (norms, similarities) are transferred"
        for sh in shadows
        if sh.candidates.embeddings.shape[2] != d
    ]


def run_attacks(
    target: EncoderAnswers, shadows: Sequence[EncoderAnswers], settings: AttackSettings
) -> AttackRun:
    """Fit every chosen attack on the shadow(s), score the target, and compute the metrics."""
    check_compatible(target, shadows)
    check_settings(settings)
    k = int(target.candidates.embeddings.shape[1])
    stats = _StatsCache(settings)
    t_in, notes = _as_input(target, stats)
    sh_inputs = []
    for sh in shadows:
        inp, n = _as_input(sh, stats)
        sh_inputs.append(inp)
        notes += n
    notes += _dims_note(target, shadows)
    for note in overlap_notes(target, shadows):
        notes.append(note)
        print(f"lpla: warning: {note.removeprefix('WARNING: ')}", file=sys.stderr)
    has_baseline = t_in.baseline is not None and all(s.baseline is not None for s in sh_inputs)
    names = (
        list(settings.attacks)
        if settings.attacks
        else applicable_attacks(k, len(sh_inputs), target.reference is not None, has_baseline)
    )
    for name in names:
        ATTACKS.get(name)
    member = np.asarray(t_in.member, dtype=np.int8)
    labels = (member == 1).astype(np.int64)
    evaluated = member >= 0
    results: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    for name in names:
        attack = _fit(name, sh_inputs, settings)
        s = np.asarray(attack.score(t_in), dtype=np.float64)
        scores[name] = s
        entry = evaluate_scores(
            s[evaluated],
            labels[evaluated],
            threshold=getattr(attack, "threshold_", None),
            fprs=tuple(settings.fprs),
            n_bootstrap=settings.n_bootstrap,
            seed=settings.seed,
        )
        entry["params"] = _public_params(attack)
        results[name] = entry
    auc_vs_k = _auc_vs_views(names, t_in, sh_inputs, settings, k, labels, evaluated)
    out = {"attacks": results, "auc_vs_views": auc_vs_k, "notes": notes, "views": k}
    return AttackRun(out, scores, t_in.stats, member)


def _fit(name: str, shadows: list[AttackInput], settings: AttackSettings) -> Any:
    params = dict(settings.attack_params.get(name, {}))
    attack = create_attack(name, **params)
    need = int(getattr(attack, "min_shadows", 1) or 0)
    if need > 1:
        return attack.fit(shadows)
    if need == 0 and not shadows:
        return attack.fit(None)
    if not shadows:
        raise LplaError(
            f"attack {name!r} needs a shadow encoder; give --shadow or --shadow-embeddings"
        )
    return attack.fit(shadows if len(shadows) > 1 else shadows[0])


def _public_params(attack: Any) -> dict[str, Any]:
    get = getattr(attack, "get_params", None)
    params = get() if callable(get) else dict(vars(attack))
    return {k: v for k, v in params.items() if not k.endswith("_") and _jsonable(v)}


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str, list, tuple))


def _auc_vs_views(
    names: list[str],
    target: AttackInput,
    shadows: list[AttackInput],
    settings: AttackSettings,
    k: int,
    labels: np.ndarray,
    evaluated: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Refit and rescore every attack on the first k views, for the query-budget plot."""
    from sklearn.metrics import roc_auc_score

    grid = sorted({v for v in settings.views_grid if 1 <= v <= k})
    out: dict[str, dict[str, float]] = {}
    for v in grid:
        sub_t = target.first_views(v)  # sliced once per budget, shared by every attack
        sub_s = [s.first_views(v) for s in shadows]
        for name in names:
            if v < ATTACKS.get(name).min_views:
                continue
            try:
                scores = _fit(name, sub_s, settings).score(sub_t)
            except LplaError:
                continue
            auc = float(roc_auc_score(labels[evaluated], np.asarray(scores)[evaluated]))
            out.setdefault(name, {})[str(v)] = auc
    return {name: out[name] for name in names if name in out}
