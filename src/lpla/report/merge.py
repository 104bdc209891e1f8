"""Comparing several audit runs: one table row per run x attack, leakage against utility across
the runs, and ``merged.json`` with the same numbers for scripts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lpla.io import write_json_atomic
from lpla.report import plots
from lpla.report.html import verdict
from lpla.report.render import fmt_ci, fmt_num, render_to
from lpla.report.rundir import RunData

__all__ = [
    "build_merged_report",
    "knowledge_table",
    "merged_rows",
    "run_labels",
    "tradeoff_summary",
]


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """Directory names, lengthened with parents until they are unique."""
    parts = [r.path.resolve().parts for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r.path) for r in runs]


def _dataset(results: dict[str, Any]) -> Any:
    for section in ("split", "target", "config"):
        value = (results.get(section) or {}).get("dataset")
        if value:
            return value
    return None


def merged_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """One row per run x attack (plain numbers; the keys :func:`plots.plot_tradeoff` reads)."""
    rows = []
    for label, run in zip(run_labels(runs), runs, strict=True):
        r = run.results
        target = r.get("target") or {}
        util = r.get("utility") or {}
        for attack, e in run.attacks.items():
            ci = e.get("auc_ci95") or [None, None]
            rows.append(
                {
                    "label": label,
                    "run_dir": str(run.path),
                    "title": r.get("title"),
                    "dataset": _dataset(r),
                    "framework": target.get("framework"),
                    "backbone": target.get("backbone"),
                    "epochs": target.get("epochs"),
                    "knowledge": r.get("knowledge"),
                    "attack": attack,
                    "auc": float(e["auc"]),
                    "auc_lo": ci[0],
                    "auc_hi": ci[1],
                    "tpr_at_1pct_fpr": (e.get("tpr_at_fpr") or {}).get("0.01"),
                    "advantage": e.get("advantage"),
                    "n_members": e.get("n_members"),
                    "linear_probe_acc": util.get("linear_probe_acc"),
                    "knn_acc": util.get("knn_acc"),
                }
            )
    return rows


def _tradeoff_points(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Compare like with like: the `same`-knowledge runs when there are any."""
    with_util = [r for r in rows if r["linear_probe_acc"] is not None]
    same = [r for r in with_util if r["knowledge"] == "same"]
    if same and len(same) < len(with_util):
        return same, "runs whose shadow matches the target (knowledge = same)"
    return with_util, "every run with a linear-probe accuracy"


def tradeoff_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per attack: Spearman rho of AUC (and TPR@1%FPR) with linear-probe accuracy."""
    points, _ = _tradeoff_points(rows)
    out: dict[str, dict[str, Any]] = {}
    for attack in dict.fromkeys(r["attack"] for r in points):
        pts = [r for r in points if r["attack"] == attack]
        x = [float(r["linear_probe_acc"]) for r in pts]
        tpts = [r for r in pts if r["tpr_at_1pct_fpr"] is not None]
        out[attack] = {
            "n_runs": len(pts),
            "spearman_auc_vs_probe": plots.spearman_rho(x, [r["auc"] for r in pts]),
            "spearman_tpr1_vs_probe": plots.spearman_rho(
                [float(r["linear_probe_acc"]) for r in tpts],
                [float(r["tpr_at_1pct_fpr"]) for r in tpts],
            ),
        }
    return out


def knowledge_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean AUC per attack and knowledge setting."""
    acc: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["knowledge"] is not None:
            acc.setdefault(r["attack"], {}).setdefault(str(r["knowledge"]), []).append(r["auc"])
    return {a: {k: float(np.mean(v)) for k, v in ks.items()} for a, ks in acc.items()}


def build_merged_report(runs: Sequence[RunData], out: Path) -> Path:
    """Write the comparison page to ``out`` and its numbers to ``out`` with ``.json``."""
    rows = merged_rows(runs)
    points, points_note = _tradeoff_points(rows)
    tradeoff = tradeoff_summary(rows)
    by_knowledge = knowledge_table(rows)
    settings = {k for v in by_knowledge.values() for k in v}
    labels = run_labels(runs)
    verdicts = [verdict(run.attacks) for run in runs]
    write_json_atomic(
        out.with_suffix(".json"),
        {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runs": [
                {
                    "label": lab,
                    "run_dir": str(run.path),
                    "title": run.results.get("title"),
                    "verdict": v.kind,
                    "strongest_attack": v.attack,
                    "summary": v.sentence,
                }
                for lab, run, v in zip(labels, runs, verdicts, strict=True)
            ],
            "rows": rows,
            "tradeoff": tradeoff,
            "auc_by_knowledge": by_knowledge,
        },
    )
    display = [
        r
        | {
            "auc_text": fmt_num(r["auc"]),
            "ci_text": fmt_ci([r["auc_lo"], r["auc_hi"]]),
            "tpr1_text": fmt_num(r["tpr_at_1pct_fpr"]),
            "probe_text": fmt_num(r["linear_probe_acc"]),
            "epochs_text": fmt_num(r["epochs"]),
        }
        for r in rows
    ]
    tradeoff_png = plots.data_uri(plots.plot_tradeoff(points)) if points else None
    knowledge_png = (
        plots.data_uri(plots.plot_knowledge(by_knowledge)) if len(settings) > 1 else None
    )
    return render_to(
        out,
        "merged.html.j2",
        title=f"lpla: {len(runs)} runs compared",
        rows=display,
        tradeoff_png=tradeoff_png,
        points_note=points_note,
        tradeoff=[
            {
                "attack": a,
                "n": s["n_runs"],
                "rho_auc": fmt_num(s["spearman_auc_vs_probe"], 2),
                "rho_tpr": fmt_num(s["spearman_tpr1_vs_probe"], 2),
            }
            for a, s in tradeoff.items()
        ],
        knowledge_png=knowledge_png,
        runs=[
            {
                "label": lab,
                "dir": str(run.path),
                "verdict": v,
                "command": run.results.get("command"),
            }
            for lab, run, v in zip(labels, runs, verdicts, strict=True)
        ],
        json_name=out.with_suffix(".json").name,
    )
