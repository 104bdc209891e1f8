"""Comparing several audit runs: one table row per run x attack, leakage against utility across
the runs, and ``merged.json`` with the same numbers for scripts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lpla.io import write_json_atomic
from lpla.report import plots
from lpla.report.defenses import defense_entries, frontier_points
from lpla.report.render import fmt_ci, fmt_num, render_to
from lpla.report.rundir import RunData
from lpla.report.tables import knowledge_table, tradeoff_points, tradeoff_summary
from lpla.report.verdict import verdict

__all__ = [
    "build_merged_report",
    "knowledge_table",
    "merged_defense_rows",
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


def merged_defense_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """One row per run x defense: the frontier point of :func:`frontier_points` with the run's
    label (runs without defenses add none; old runs' dict format is read too)."""
    rows = []
    for label, run in zip(run_labels(runs), runs, strict=True):
        for point in frontier_points(defense_entries(run.results)):
            rows.append({"label": label, "run_dir": str(run.path)} | point)
    return rows


def build_merged_report(runs: Sequence[RunData], out: Path) -> Path:
    """Write the comparison page to ``out`` and its numbers to ``out`` with ``.json``."""
    rows = merged_rows(runs)
    defense_rows = merged_defense_rows(runs)
    points, points_note = tradeoff_points(rows)
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
            "defenses": defense_rows,
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
    frontier = [r | {"defense": f"{r['label']}: {r['defense']}"} for r in defense_rows]
    frontier_png = (
        plots.data_uri(plots.plot_frontier(frontier))
        if sum(r["linear_probe"] is not None for r in frontier) >= 2
        else None
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
                "n": s["n_encoders"],
                "rho_auc": fmt_num(s["spearman_auc_vs_probe"], 2),
                "rho_tpr": fmt_num(s["spearman_tpr1_vs_probe"], 2),
            }
            for a, s in tradeoff.items()
        ],
        knowledge_png=knowledge_png,
        frontier_png=frontier_png,
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
