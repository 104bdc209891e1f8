"""Run a set of attacks on one target and its shadow(s), and turn scores into metrics.

This is the join between the query layer (embeddings) and the attack layer (statistics -> scores):
every command that attacks calls :func:`run_attacks`. It takes embeddings files (or in-memory
arrays), so it needs no training code and works on any user's precomputed embeddings. How the
views were made (a clean view 0) is read from each file's metadata.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lpla.attacks import ATTACKS, applicable_attacks, create_attack
from lpla.attacks.features import (
    ANSWER_ROLES,
    AttackInput,
    QueryStats,
    compute_stats,
    feature_stats,
)
from lpla.embeddings import EmbeddingsFile
from lpla.errors import LplaError
from lpla.metrics import evaluate_scores
from lpla.pipeline.answers import EncoderAnswers
from lpla.pipeline.settings import AttackSettings

if TYPE_CHECKING:
    from lpla.defenses import Defense

__all__ = [
    "AttackRun",
    "check_compatible",
    "defended_attacks",
    "defense_entry",
    "output_defense_entries",
    "overlap_notes",
    "run_attacks",
    "run_defended",
    "serving_defenses",
]


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
                clean_view0=emb.clean_view0,
            )
            hit = self._done[id(emb)] = (emb, stats)  # the file is kept so its id stays unique
        return hit[1]

    def features(self, emb: EmbeddingsFile) -> QueryStats:
        """An answer read as it is (a ``features`` role such as PartCrop's), not as views."""
        hit = self._done.get(id(emb))
        if hit is None:
            hit = self._done[id(emb)] = (emb, feature_stats(emb.embeddings))
        return hit[1]


def _as_input(answers: EncoderAnswers, stats_of: _StatsCache) -> tuple[AttackInput, list[str]]:
    """Statistics of every answer; without a reference, the candidates calibrate themselves."""
    notes: list[str] = []
    stats = stats_of(answers.candidates)
    others = {
        role: stats_of.features(f) if ANSWER_ROLES.get(role).features else stats_of(f)
        for role, f in answers.others().items()
    }
    if "reference" not in others:
        others["reference"] = stats
        notes.append(
            f"{answers.name}: no reference embeddings; features calibrated on the candidates "
            "themselves"
        )
    inp = AttackInput(
        stats,
        np.asarray(answers.candidates.member, dtype=np.int8),
        np.asarray(answers.candidates.index, dtype=np.int64),
        name=answers.name,
        answers=others,
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
    for sh in shadows:
        if sh.candidates.clean_view0 != target.candidates.clean_view0:
            raise LplaError(
                f"the target's view 0 is {_clean(target.candidates)} but shadow {sh.name}'s is "
                f"{_clean(sh.candidates)}; query both the same way (--clean-view0 on both or "
                "neither)"
            )
    for ans in (target, *shadows):
        cand = ans.candidates
        for role, other in ans.others().items():
            if other.embeddings.shape[2] != cand.embeddings.shape[2] and role == "reference":
                raise LplaError(
                    f"{ans.name}: reference embeddings have D={other.embeddings.shape[2]} but "
                    f"candidates D={cand.embeddings.shape[2]}; they must come from the same "
                    "encoder and layer"
                )
            if ANSWER_ROLES.get(role).aligned and not np.array_equal(
                np.asarray(other.index), np.asarray(cand.index)
            ):
                raise LplaError(
                    f"{ans.name}: {role} embeddings must list the same images as the candidates, "
                    "in the same order"
                )


def _clean(emb: EmbeddingsFile) -> str:
    return "the clean image" if emb.clean_view0 else "augmented"


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


def _dims_note(target: EncoderAnswers, shadows: Sequence[EncoderAnswers]) -> list[str]:
    d = target.candidates.embeddings.shape[2]
    return [
        f"{sh.name} has D={sh.candidates.embeddings.shape[2]} vs the target's D={d}: only "
        "dimension-free statistics (norms, similarities) are transferred"
        for sh in shadows
        if sh.candidates.embeddings.shape[2] != d
    ]


def run_attacks(
    target: EncoderAnswers, shadows: Sequence[EncoderAnswers], settings: AttackSettings
) -> AttackRun:
    """Fit every chosen attack on the shadow(s), score the target, and compute the metrics."""
    from lpla.runtime import set_threads

    set_threads()  # also the BLAS pools of numpy / scikit-learn (LPLA_THREADS)
    check_compatible(target, shadows)
    settings.validate()
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
    roles = set(t_in.answers).intersection(*(s.answers for s in sh_inputs))
    names = (
        list(settings.attacks)
        if settings.attacks
        else applicable_attacks(k, len(sh_inputs), True, has_baseline, roles)
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
        entry["fitted"] = attack.fitted_params()
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
            cls = ATTACKS.get(name)
            # an attack on an answer of its own (PartCrop's crops) does not read the K views:
            # its row would repeat one number
            if v < cls.min_views or cls.needs_answer is not None:
                continue
            try:
                scores = _fit(name, sub_s, settings).score(sub_t)
            except LplaError:
                continue
            auc = float(roc_auc_score(labels[evaluated], np.asarray(scores)[evaluated]))
            out.setdefault(name, {})[str(v)] = auc
    return {name: out[name] for name in names if name in out}


def serving_defenses(spec: str, encoders: Sequence[EncoderAnswers]) -> dict[str, Defense]:
    """Each encoder's own output-side defense, fitted once on its own reference answers (its
    candidates when it has none), by encoder name.

    Each encoder serves its own noise (seed = its position): noise shared between the target and
    a baseline encoder would cancel in per-image comparisons and flatter the defense's cost. The
    audit fits the target's defense here too when it measures the utility of served features.
    """
    from lpla.defenses import create_defense

    return {
        a.name: create_defense(spec, seed=i).fit(
            np.asarray((a.reference or a.candidates).embeddings, np.float32)
        )
        for i, a in enumerate(encoders)
    }


def _view_answers_only(
    target: EncoderAnswers, shadows: Sequence[EncoderAnswers], settings: AttackSettings
) -> tuple[EncoderAnswers, list[EncoderAnswers], AttackSettings]:
    """Answers and attacks an output-side defense can serve: it serves view embeddings, and
    answers read as features (PartCrop's, made of crops and feature maps) are not those, so
    they and the attacks that need them are left out of defended runs (``attacks == ()`` when
    nothing that was asked for is left)."""
    unserved = {r for r in ANSWER_ROLES.names() if ANSWER_ROLES.get(r).features}
    t, *s = (
        EncoderAnswers(a.name, {r: f for r, f in a.files.items() if r not in unserved})
        for a in (target, *shadows)
    )
    if not settings.attacks:
        return t, s, settings
    attacks = tuple(n for n in settings.attacks if ATTACKS.get(n).needs_answer not in unserved)
    return t, s, dataclasses.replace(settings, attacks=attacks)


def run_defended(
    spec: str,
    target: EncoderAnswers,
    shadows: Sequence[EncoderAnswers],
    settings: AttackSettings,
) -> dict[str, Any]:
    """The same attacks on answers served through an output-side defense: ``{attack: entry}``,
    entries shaped as :func:`defended_attacks` keeps them.

    Every encoder gets its own defense (:func:`serving_defenses`) and every answer it serves
    passes through it; the attacker's shadows are defended too. A ``baseline`` answer was served
    by the *other* encoder of a target/shadow pair, so that encoder's defense applies.
    """
    target, shadows, settings = _view_answers_only(target, shadows, settings)
    if settings.attacks == ():  # only attacks on answers no defense serves were asked for
        return {}
    encoders = [target, *shadows]
    fitted = serving_defenses(spec, encoders)
    partner = (
        {target.name: shadows[0].name, shadows[0].name: target.name} if len(shadows) == 1 else {}
    )

    def serve(owner: str) -> Any:
        def apply(role: str, emb: EmbeddingsFile) -> EmbeddingsFile:
            who = partner.get(owner, owner) if role.startswith("baseline") else owner
            defended = fitted[who].apply(
                np.asarray(emb.embeddings, np.float32), np.asarray(emb.index, np.int64)
            )
            return EmbeddingsFile(defended, emb.member, emb.index, emb.meta, emb.path)

        return apply

    t, *s = (a.map(serve(a.name)) for a in encoders)
    run = run_attacks(t, s, dataclasses.replace(settings, views_grid=()))
    return defended_attacks(run.results["attacks"])


#: what a defense's per-attack entry leaves out of a ``results["attacks"]`` entry: the ROC points
#: (hundreds per attack and defense) and the attack's parameters (the undefended entry has them)
DEFENSE_ENTRY_DROPS = ("roc", "params", "fitted")


def defended_attacks(attacks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-attack entries as a defense's ``attacks`` holds them: ``results["attacks"]`` entries
    (auc, auc_ci95, tpr_at_fpr, tpr_at_fpr_ci95, advantage, ...) without DEFENSE_ENTRY_DROPS."""
    return {
        name: {k: v for k, v in entry.items() if k not in DEFENSE_ENTRY_DROPS}
        for name, entry in attacks.items()
    }


def defense_entry(
    spec: str,
    attacks: dict[str, dict[str, Any]],
    utility: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One item of results.json's ``defenses`` list: ``{"defense", "kind", "utility": {
    "linear_probe", "knn"}, "attacks": {attack: entry}}`` plus ``extra`` keys; ``none`` is the
    undefended encoder. A utility not measured has both values ``None`` and says why."""
    from lpla.defenses import defense_kind
    from lpla.defenses.cost import utility_entry

    kind = "none" if spec == "none" else defense_kind(spec)
    if utility is None:
        utility = utility_entry(None, "not measured in this run")
    return (
        {"defense": spec, "kind": kind, "utility": utility}
        | extra
        | {"attacks": defended_attacks(attacks)}
    )


def output_defense_entries(
    specs: Sequence[str],
    target: EncoderAnswers,
    shadows: Sequence[EncoderAnswers],
    settings: AttackSettings,
    undefended: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The ``defenses`` list of a run that measures output-side defenses' leakage only (no
    utility): ``none`` (the ``undefended`` attack entries) first, then each spec in order."""
    return [defense_entry("none", undefended)] + [
        defense_entry(spec, run_defended(spec, target, shadows, settings))
        for spec in dict.fromkeys(specs)
        if spec != "none"
    ]
