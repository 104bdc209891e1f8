"""Reading results.json's ``defenses`` and summarising it: the privacy-utility frontier.

The format (since issue #14) is a list, the undefended encoder first::

    [{"defense": "none", "kind": "none", "utility": {"linear_probe": 0.83, "knn": 0.79},
      "attacks": {"lpla": {"auc": ..., "auc_ci95": [...], "tpr_at_fpr": {...}, ...}, ...}},
     {"defense": "noise:0.5", "kind": "output", ...},
     {"defense": "early-stop:100", "kind": "training", "changes": {"epochs": 100}, ...}]

Runs written before it hold ``{spec: {attack: metrics}}`` without utility; :func:`defense_entries`
reads both, so the report, ``lpla report A B`` and ``lpla study`` read old run directories too.
A frontier point is one defense: its linear-probe accuracy against the strongest attack's AUC
(and, separately, the highest TPR at 1% FPR), the attacker picking its best attack per defense.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lpla.errors import LplaError

__all__ = [
    "FRONTIER_FPR",
    "defense_entries",
    "defenses_across_seeds",
    "frontier_points",
    "pareto_front",
]

#: the FPR of the frontier's TPR panel (``tpr_at_fpr`` key)
FRONTIER_FPR = "0.01"

_OLD_FORMAT = "not measured (a run from before defenses had a utility cost, issue #14)"


def defense_entries(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's defenses as a list of ``{"defense", "kind", "utility", "attacks"}`` entries.

    The old mapping ``{spec: {attack: metrics}}`` becomes a list: ``none`` from the run's own
    attacks and utility, then each spec with its utility ``None`` (not measured then).
    """
    raw = results.get("defenses")
    if raw is None:
        return []
    if isinstance(raw, dict):
        util = results.get("utility") or {}
        none = {
            "defense": "none",
            "kind": "none",
            "utility": {"linear_probe": util.get("linear_probe_acc"), "knn": util.get("knn_acc")},
            "attacks": results.get("attacks") or {},
        }
        return [none] + [
            {
                "defense": str(spec),
                "kind": "output",  # the only kind there was
                "utility": {"linear_probe": None, "knn": None, "skipped": _OLD_FORMAT},
                "attacks": by_attack,
            }
            for spec, by_attack in raw.items()
            if isinstance(by_attack, dict)
        ]
    if not isinstance(raw, list) or not all(_is_entry(e) for e in raw):
        raise LplaError(
            'results.json "defenses" must be a list of {"defense", "utility", "attacks"} entries '
            "(or, from older runs, a mapping of defense to attacks); re-run the audit to rewrite it"
        )
    return list(raw)


def _is_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("defense"), str)
        and isinstance(entry.get("attacks"), dict)
        and isinstance(entry.get("utility") or {}, dict)
    )


def _auc(entry: Mapping[str, Any]) -> tuple[float | None, list[float] | None]:
    """AUC and interval of one attack: a run's (bootstrap) or the mean over seeds (t-interval)."""
    if "auc_mean" in entry:
        return entry.get("auc_mean"), entry.get("auc_ci95_seeds")
    return entry.get("auc"), entry.get("auc_ci95")


def _tpr(entry: Mapping[str, Any], fpr: str) -> tuple[float | None, list[float] | None]:
    if "auc_mean" in entry:
        return (entry.get("tpr_at_fpr_mean") or {}).get(fpr), (
            entry.get("tpr_at_fpr_ci95_seeds") or {}
        ).get(fpr)
    return (entry.get("tpr_at_fpr") or {}).get(fpr), (entry.get("tpr_at_fpr_ci95") or {}).get(fpr)


def _pair(ci: Any) -> tuple[float | None, float | None]:
    if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
        return float(ci[0]), float(ci[1])
    return None, None


def frontier_points(
    entries: Sequence[Mapping[str, Any]], fpr: str = FRONTIER_FPR
) -> list[dict[str, Any]]:
    """One point per defense: utility and the attacker's best attack against it.

    Keys: ``defense``, ``kind``, ``linear_probe``, ``knn``, ``attack`` / ``auc`` / ``auc_lo`` /
    ``auc_hi`` (the highest AUC and its interval), ``tpr_attack`` / ``tpr1`` / ``tpr1_lo`` /
    ``tpr1_hi`` (the highest TPR at ``fpr``; None where no attack resolves it). Entries may be
    one run's or :func:`defenses_across_seeds`' (means over seeds, t-intervals).
    """
    points = []
    for e in entries:
        aucs = {a: _auc(m) for a, m in (e.get("attacks") or {}).items() if _auc(m)[0] is not None}
        if not aucs:
            continue
        best = max(aucs, key=lambda a: float(aucs[a][0] or 0.0))
        auc_lo, auc_hi = _pair(aucs[best][1])
        tprs = {a: _tpr(m, fpr) for a, m in e["attacks"].items() if _tpr(m, fpr)[0] is not None}
        tpr_best = max(tprs, key=lambda a: float(tprs[a][0] or 0.0)) if tprs else None
        tpr_lo, tpr_hi = _pair(tprs[tpr_best][1]) if tpr_best else (None, None)
        util = e.get("utility") or {}
        points.append(
            {
                "defense": e["defense"],
                "kind": e.get("kind") or ("none" if e["defense"] == "none" else None),
                "linear_probe": util.get("linear_probe"),
                "knn": util.get("knn"),
                "attack": best,
                "auc": float(aucs[best][0] or 0.0),
                "auc_lo": auc_lo,
                "auc_hi": auc_hi,
                "tpr_attack": tpr_best,
                "tpr1": float(tprs[tpr_best][0] or 0.0) if tpr_best else None,
                "tpr1_lo": tpr_lo,
                "tpr1_hi": tpr_hi,
                "n_seeds": e.get("n_seeds", 1),
            }
        )
    return points


def pareto_front(points: Sequence[Mapping[str, Any]], leakage: str = "auc") -> list[str]:
    """The defenses no other defense beats on both axes (higher linear probe and lower
    ``leakage``), in order of utility: the privacy-utility frontier."""
    usable = [p for p in points if p.get("linear_probe") is not None and p.get(leakage) is not None]

    def dominated(p: Mapping[str, Any]) -> bool:
        return any(
            q["linear_probe"] >= p["linear_probe"]
            and q[leakage] <= p[leakage]
            and (q["linear_probe"] > p["linear_probe"] or q[leakage] < p[leakage])
            for q in usable
        )

    front = [p for p in usable if not dominated(p)]
    return [str(p["defense"]) for p in sorted(front, key=lambda p: p["linear_probe"])]


def defenses_across_seeds(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each defense over replicate runs (``--seeds``): its utility's mean and per-seed values,
    and every attack's mean AUC/TPR with a t-interval over seeds (the ``across_seeds`` shape of
    :func:`lpla.report.tables.seeds_summary`). Defenses missing from a run are left out."""
    from lpla.report.tables import seeds_summary

    per_run = [{e["defense"]: e for e in defense_entries(r)} for r in runs]
    if not per_run or not per_run[0]:
        return []
    out = []
    for name, first in per_run[0].items():
        if not all(name in r for r in per_run):
            continue
        entries = [r[name] for r in per_run]
        probes = [(e.get("utility") or {}).get("linear_probe") for e in entries]
        knns = [(e.get("utility") or {}).get("knn") for e in entries]
        summary = seeds_summary(
            [
                {"attacks": e["attacks"], "utility": {"linear_probe_acc": p}}
                for e, p in zip(entries, probes, strict=True)
            ]
        )
        out.append(
            {
                "defense": name,
                "kind": first.get("kind"),
                "n_seeds": len(entries),
                "utility": {
                    "linear_probe": _mean(probes),
                    "knn": _mean(knns),
                    "linear_probe_per_seed": probes,
                    "knn_per_seed": knns,
                },
                "attacks": summary["attacks"],
            }
        )
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return float(sum(float(v) for v in values if v is not None) / len(values))
