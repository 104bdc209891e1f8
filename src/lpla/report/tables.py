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

__all__ = ["knowledge_table", "spearman", "tradeoff_points", "tradeoff_summary", "views_table"]


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
    return out


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
