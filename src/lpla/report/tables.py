"""The tables computed across many runs, one implementation each: ``lpla study`` and
``lpla report A B ...`` read the same rows through these functions, so they cannot disagree.

A row is one (run, attack) with at least the keys ``dataset``, ``framework``, ``backbone``,
``epochs``, ``knowledge``, ``attack``, ``auc``, ``tpr_at_1pct_fpr`` and ``linear_probe_acc``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "knowledge_table",
    "seeds_summary",
    "spearman",
    "spearman_seed_bootstrap",
    "tradeoff_points",
    "tradeoff_summary",
    "views_table",
]


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman rank correlation and its p-value; None below 3 points or with constant input."""
    from scipy.stats import spearmanr

    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    res = spearmanr(x, y)
    rho, pval = float(res.statistic), float(res.pvalue)
    return (None, None) if math.isnan(rho) else (rho, pval)


def tradeoff_points(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Rows that compare like with like: the `same`-knowledge runs when there are any."""
    with_util = [r for r in rows if r.get("linear_probe_acc") is not None]
    same = [r for r in with_util if r.get("knowledge") == "same"]
    if same:
        return same, "runs whose shadow matches the target (knowledge = same)"
    return with_util, "every run with a linear-probe accuracy"


def tradeoff_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per attack: Spearman rho (and p) of AUC, and rho of TPR@1%FPR, with linear-probe accuracy.

    The TPR correlation uses only the runs where that TPR is defined (enough non-members).
    """
    points, _ = tradeoff_points(rows)
    out: dict[str, dict[str, Any]] = {}
    for attack in sorted({r["attack"] for r in points}):
        pts = [r for r in points if r["attack"] == attack]
        rho, pval = spearman([float(r["linear_probe_acc"]) for r in pts], [r["auc"] for r in pts])
        tpts = [r for r in pts if r.get("tpr_at_1pct_fpr") is not None]
        rho_t, _ = spearman(
            [float(r["linear_probe_acc"]) for r in tpts],
            [float(r["tpr_at_1pct_fpr"]) for r in tpts],
        )
        out[attack] = {
            "n_encoders": len(pts),
            "spearman_auc_vs_probe": rho,
            "p_value": pval,
            "spearman_tpr1_vs_probe": rho_t,
        }
        if any(len(r.get("seed_points") or ()) > 1 for r in pts):
            out[attack]["spearman_auc_ci95"] = spearman_seed_bootstrap(pts)
    return out


def spearman_seed_bootstrap(
    rows: list[dict[str, Any]], n_bootstrap: int = 2000, seed: int = 0
) -> list[float] | None:
    """95% interval of Spearman(probe, AUC) that contains training-seed variation.

    Each resample draws the encoders (cells) with replacement and, for each, one of its training
    seeds' (probe accuracy, AUC) points, so the interval reflects both which encoders were
    studied and how much one training run of each varies. None when under 3 points.
    """
    from scipy.stats import rankdata

    cells = [
        [p for p in (r.get("seed_points") or []) if p[0] is not None and p[1] is not None]
        for r in rows
    ]
    cells = [c for c in cells if c]
    if len(cells) < 3:
        return None
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(n_bootstrap):
        picks = [
            cells[i][rng.integers(len(cells[i]))] for i in rng.integers(len(cells), size=len(cells))
        ]
        x, y = np.array([p[0] for p in picks]), np.array([p[1] for p in picks])
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        rhos.append(float(np.corrcoef(rankdata(x), rankdata(y))[0, 1]))
    if len(rhos) < n_bootstrap // 2:
        return None
    return [float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))]


def _target_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r.get("dataset"), r.get("framework"), r.get("backbone"), r.get("epochs"))


def knowledge_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean AUC per (attack, knowledge setting) over the same target encoders.

    Only targets audited under more than one knowledge setting count, so every column averages
    the same encoders (a `same` column over more, or other, encoders would not compare).
    """
    settings: dict[tuple[Any, ...], set[str]] = {}
    for r in rows:
        if r.get("knowledge") is not None:
            settings.setdefault(_target_key(r), set()).add(str(r["knowledge"]))
    table: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.get("knowledge") is None or len(settings[_target_key(r)]) < 2:
            continue
        table.setdefault(r["attack"], {}).setdefault(str(r["knowledge"]), []).append(r["auc"])
    return {a: {k: float(np.mean(v)) for k, v in ks.items()} for a, ks in table.items()}


def views_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean AUC per (attack, K) over the `same`-knowledge runs."""
    acc: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.get("knowledge") != "same":
            continue
        for k, v in (r.get("auc_vs_views") or {}).items():
            acc.setdefault(r["attack"], {}).setdefault(k, []).append(v)
    return {
        a: {k: float(np.mean(v)) for k, v in sorted(ks.items(), key=lambda kv: int(kv[0]))}
        for a, ks in acc.items()
    }


def _t_interval(values: Sequence[float]) -> list[float] | None:
    """95% t-interval of the mean over seeds (None below two seeds), clipped to [0, 1]: every
    quantity it is used for (AUC, TPR) is a rate."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return None
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return [max(0.0, float(v.mean() - half)), min(1.0, float(v.mean() + half))]


def seeds_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each attack's AUC and TPR over replicate runs (different training seeds, same split).

    The interval is a t-interval of the mean over seeds: it contains training randomness, which
    a bootstrap over one run's images does not. Utility is listed per seed beside it.
    """
    attacks = [a for a in runs[0]["attacks"] if all(a in r["attacks"] for r in runs)]
    out: dict[str, Any] = {"n_seeds": len(runs), "attacks": {}}
    for name in attacks:
        entries = [r["attacks"][name] for r in runs]
        aucs = [float(e["auc"]) for e in entries]
        tpr: dict[str, list[float | None]] = {}
        for e in entries:
            for fpr, value in (e.get("tpr_at_fpr") or {}).items():
                tpr.setdefault(fpr, []).append(value)
        out["attacks"][name] = {
            "auc": aucs,
            "auc_mean": float(np.mean(aucs)),
            "auc_sd": float(np.std(aucs, ddof=1)) if len(aucs) > 1 else None,
            "auc_ci95_seeds": _t_interval(aucs),
            "tpr_at_fpr": tpr,
            "tpr_at_fpr_mean": {
                f: None if None in v else float(np.mean([x for x in v if x is not None]))
                for f, v in tpr.items()
            },
            "tpr_at_fpr_ci95_seeds": {
                f: None if None in v else _t_interval([x for x in v if x is not None])
                for f, v in tpr.items()
            },
        }
    probes = [(r.get("utility") or {}).get("linear_probe_acc") for r in runs]
    out["linear_probe_acc"] = probes
    if None not in probes:
        out["linear_probe_acc_mean"] = float(np.mean([p for p in probes if p is not None]))
    return out
