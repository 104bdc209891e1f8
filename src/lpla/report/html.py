"""``build_report``: a self-contained HTML report of one audit run, or a comparison of several.

The page opens offline: every plot is a base64 PNG inside the file, the CSS is inline, and
nothing is fetched from anywhere. It is rebuilt from the files a run saved (``results.json``,
``norms.npz``, ``scores.npz``), so it can be regenerated after the fact with ``lpla report``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpla.errors import LplaError
from lpla.report import plots
from lpla.report.defenses import defense_entries, frontier_points
from lpla.report.render import fmt_ci, fmt_fpr, fmt_num, render_to
from lpla.report.rundir import RunData, load_run
from lpla.report.verdict import Verdict, verdict

__all__ = ["Verdict", "build_report", "build_run_report", "seed_rows", "verdict"]

DEFAULT_FPRS = ("0.001", "0.01")

_UTILITY_NAMES = {
    "linear_probe_acc": "linear probe accuracy (frozen features)",
    "knn_acc": "weighted kNN accuracy (k = 20)",
    "knn_acc_k200": "weighted kNN accuracy (k = 200)",
    "linear_probe_acc_pixels": "linear probe on raw pixels (baseline, no encoder)",
}


# --- tables ------------------------------------------------------------------------------------


def _fpr_keys(attacks: dict[str, dict[str, Any]]) -> list[str]:
    keys = set(DEFAULT_FPRS)
    for entry in attacks.values():
        keys.update(str(k) for k in (entry.get("tpr_at_fpr") or {}))
    return sorted(keys, key=float)


def _tpr_note(notes: list[str], key: str) -> str:
    pct = fmt_fpr(key)
    for note in notes:
        if f"{pct} FPR" in note:
            return note
    return f"TPR at {pct} FPR cannot be resolved at this sample size"


def _tpr_ci(entry: dict[str, Any], key: str) -> str | None:
    """``lo–hi`` of a TPR's bootstrap interval; ``None`` when the run did not record one
    (results.json written before ``tpr_at_fpr_ci95`` existed)."""
    pair = (entry.get("tpr_at_fpr_ci95") or {}).get(key)
    text = fmt_ci(pair)
    return None if text == "n/a" else text


def shared_notes(attacks: dict[str, dict[str, Any]]) -> list[str]:
    """Notes every attack carries (sample-size caveats): shown once under the table."""
    lists = [[str(n) for n in e.get("notes") or []] for e in attacks.values()]
    if len(lists) < 2:
        return []
    return [n for n in lists[0] if all(n in other for other in lists[1:])]


def attack_rows(attacks: dict[str, dict[str, Any]], strongest: str | None) -> list[dict[str, Any]]:
    """One display row per attack; a missing TPR carries the note that explains it."""
    keys = _fpr_keys(attacks)
    common = set(shared_notes(attacks))
    rows = []
    for name, e in attacks.items():
        notes = [str(n) for n in e.get("notes") or []]
        tprs = []
        for key in keys:
            value = (e.get("tpr_at_fpr") or {}).get(key)
            tprs.append(
                {
                    "text": fmt_num(value),
                    "ci": _tpr_ci(e, key) if value is not None else None,
                    "note": None if value is not None else _tpr_note(notes, key),
                }
            )
        rows.append(
            {
                "name": name,
                "strongest": name == strongest,
                "auc": fmt_num(e.get("auc")),
                "ci": fmt_ci(e.get("auc_ci95")),
                "tprs": tprs,
                "balanced_accuracy": fmt_num(e.get("balanced_accuracy")),
                "balanced_accuracy_oracle": fmt_num(e.get("balanced_accuracy_oracle")),
                "advantage": fmt_num(e.get("advantage")),
                "n": f"{fmt_num(e.get('n_members'))} / {fmt_num(e.get('n_nonmembers'))}",
                "notes": [n for n in notes if n not in common],
                "params": e.get("params") or {},
            }
        )
    return rows


def utility_rows(utility: dict[str, Any] | None) -> list[dict[str, str]]:
    if not utility:
        return []
    rows = [
        {"key": k, "name": _UTILITY_NAMES.get(k, k), "value": fmt_num(v)}
        for k, v in utility.items()
    ]
    probe, pixels = utility.get("linear_probe_acc"), utility.get("linear_probe_acc_pixels")
    if isinstance(probe, int | float) and isinstance(pixels, int | float):
        rows.append(
            {
                "key": "gain",
                "name": "encoder gain over pixels (linear probe)",
                "value": f"{float(probe) - float(pixels):+.3f}",
            }
        )
    return rows


def defense_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One display row per defense: its utility, the strongest attack's AUC and the highest
    TPR at 1% FPR, and the changes from the undefended encoder (``none``)."""
    points = frontier_points(defense_entries(results))
    base = next((p for p in points if p["defense"] == "none"), None)

    def change(p: dict[str, Any], key: str) -> str:
        if base is None or p is base or p.get(key) is None or base.get(key) is None:
            return ""
        return f"{float(p[key]) - float(base[key]):+.3f}"

    return [
        {
            "defense": p["defense"],
            "kind": p["kind"] or "",
            "probe": fmt_num(p["linear_probe"]),
            "knn": fmt_num(p["knn"]),
            "probe_change": change(p, "linear_probe"),
            "attack": p["attack"],
            "auc": fmt_num(p["auc"]),
            "ci": fmt_ci([p["auc_lo"], p["auc_hi"]]),
            "auc_change": change(p, "auc"),
            "tpr1": fmt_num(p["tpr1"]),
            "tpr1_ci": fmt_ci([p["tpr1_lo"], p["tpr1_hi"]]) if p["tpr1_lo"] is not None else None,
            "tpr_attack": p["tpr_attack"] or "",
        }
        for p in points
    ]


def defense_attack_rows(results: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Every attack's AUC under every defense: the attack names and one row per defense."""
    entries = defense_entries(results)
    names: list[str] = []
    for e in entries:
        names += [a for a in e["attacks"] if a not in names]
    rows = [
        {
            "defense": e["defense"],
            "aucs": [fmt_num((e["attacks"].get(a) or {}).get("auc")) for a in names],
        }
        for e in entries
    ]
    return names, rows


def spec_rows(target: dict[str, Any] | None, shadow: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Target and shadow recipes side by side, differences flagged."""
    target, shadow = target or {}, shadow or {}
    keys = list(target) + [k for k in shadow if k not in target]
    return [
        {
            "key": k,
            "target": target.get(k),
            "shadow": shadow.get(k),
            "differs": bool(shadow) and target.get(k) != shadow.get(k),
        }
        for k in keys
    ]


# --- figures -----------------------------------------------------------------------------------


@dataclass
class Figures:
    roc: str | None = None
    norm_hist: str | None = None
    score_hist: str | None = None
    auc_vs_k: str | None = None
    frontier: str | None = None
    frontier_seeds: int | None = None  # the frontier shows means over this many training seeds
    norm_extra: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _roc_curves(run: RunData) -> dict[str, tuple[Any, Any]]:
    curves: dict[str, tuple[Any, Any]] = {}
    for name, e in run.attacks.items():
        roc = e.get("roc")
        if isinstance(roc, dict) and roc.get("fpr") and roc.get("tpr"):
            curves[name] = (roc["fpr"], roc["tpr"])
        elif run.scores is not None and name in run.scores:
            from sklearn.metrics import roc_curve

            member = run.scores["member"].reshape(-1)
            keep = (member == 0) | (member == 1)
            fpr, tpr, _ = roc_curve(member[keep], run.scores[name].reshape(-1)[keep])
            curves[name] = (fpr, tpr)
    return curves


def run_figures(run: RunData) -> Figures:
    figs = Figures()
    curves = _roc_curves(run)
    n_non = [int(e["n_nonmembers"]) for e in run.attacks.values() if e.get("n_nonmembers")]
    if curves:
        figs.roc = plots.data_uri(
            plots.plot_roc(
                curves,
                aucs={n: float(run.attacks[n]["auc"]) for n in curves},
                n_nonmembers=max(n_non) if n_non else None,
            )
        )
    else:
        figs.missing.append("ROC: results.json has no ROC points and there is no scores.npz")
    if run.norms is not None:
        nm = run.norms
        figs.norm_hist = plots.data_uri(
            plots.plot_norm_histograms(
                nm["p"],
                nm["mean_norm"],
                nm["member"],
                clean_norm=nm.get("clean_norm"),
                view_cosine=nm.get("view_cosine"),
            )
        )
        if "clean_norm" in nm:
            figs.norm_extra.append("the same for the clean (un-augmented) view 0")
        if "view_cosine" in nm:
            figs.norm_extra.append(
                "and the mean pairwise cosine of the views (EncoderMI's statistic)"
            )
    else:
        figs.missing.append("norm histograms: no norms.npz in the run directory")
    if run.scores is not None:
        attack_scores = {k: v for k, v in run.scores.items() if k != "member"}
        if attack_scores:
            figs.score_hist = plots.data_uri(
                plots.plot_score_histograms(attack_scores, run.scores["member"])
            )
    avv = run.results.get("auc_vs_views")
    if isinstance(avv, dict) and any(avv.values()):
        figs.auc_vs_k = plots.data_uri(
            plots.plot_auc_vs_views(avv, run.results.get("auc_vs_views_ci95"))
        )
    _frontier(run.results, figs)
    return figs


def _frontier(results: dict[str, Any], figs: Figures) -> None:
    """The defenses' privacy-utility frontier: the means over seeds when the run has them."""
    entries = defense_entries(results)
    if not entries:
        return
    seeds = (results.get("across_seeds") or {}).get("defenses")
    points = frontier_points(seeds or entries)
    if sum(p["linear_probe"] is not None for p in points) < 2:
        figs.missing.append(
            "privacy-utility frontier: fewer than two defenses (none included) have a measured "
            "utility (utility off, no labelled test split, or a run from before issue #14)"
        )
        return
    figs.frontier = plots.data_uri(plots.plot_frontier(points))
    figs.frontier_seeds = int(seeds[0]["n_seeds"]) if seeds else None


# --- one run -----------------------------------------------------------------------------------


def run_context(run: RunData) -> dict[str, Any]:
    """Everything the single-run template shows, already formatted."""
    r = run.results
    v = verdict(run.attacks)
    split = {"dataset": None, "seed": None, "fingerprint": None} | (r.get("split") or {})
    return {
        "title": str(r.get("title") or "lpla audit"),
        "run_dir": str(run.path),
        "created": r.get("created"),
        "lpla_version": r.get("lpla_version") or (r.get("versions") or {}).get("lpla"),
        "device": r.get("device"),
        "verdict": v,
        "fpr_keys": _fpr_keys(run.attacks),
        "attacks": attack_rows(run.attacks, v.attack),
        "shared_notes": shared_notes(run.attacks),
        "run_notes": [str(n) for n in r.get("notes") or []],
        "figures": run_figures(run),
        "utility": utility_rows(r.get("utility")),
        "defenses": defense_rows(r),
        "defense_attacks": defense_attack_rows(r),
        "seeds": seed_rows(r.get("across_seeds")),
        "n_seeds": (r.get("across_seeds") or {}).get("n_seeds"),
        "split": split,
        "sizes": split.get("sizes") or {},
        "knowledge": r.get("knowledge"),
        "specs": spec_rows(r.get("target"), r.get("shadow")),
        "views": r.get("views"),
        "config": r.get("config"),
        "command": r.get("command"),
        "versions": r.get("versions") or {},
        "timing": r.get("timing_s") or {},
    }


def seed_rows(seeds: dict[str, Any] | None) -> list[dict[str, str]]:
    """The across-seeds table of a ``--seeds`` audit (empty for one training seed)."""
    if not seeds:
        return []
    rows = []
    for name, s in sorted(seeds["attacks"].items(), key=lambda kv: -kv[1]["auc_mean"]):
        tpr_ci = (s.get("tpr_at_fpr_ci95_seeds") or {}).get("0.01")
        rows.append(
            {
                "attack": name,
                "auc": fmt_num(s["auc_mean"]),
                "ci": fmt_ci(s["auc_ci95_seeds"]) if s.get("auc_ci95_seeds") else "n/a",
                "sd": fmt_num(s.get("auc_sd")),
                "per_seed": ", ".join(f"{a:.3f}" for a in s["auc"]),
                "tpr1": fmt_num((s.get("tpr_at_fpr_mean") or {}).get("0.01")),
                "tpr1_ci": fmt_ci(tpr_ci) if tpr_ci else "n/a",
            }
        )
    return rows


def build_run_report(run: RunData, out: Path) -> Path:
    return render_to(out, "report.html.j2", **run_context(run))


def _common_parent(paths: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.resolve()) for p in paths]))


def build_report(
    run_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML report of a run directory (default ``DIR/report.html``) and return its path.

    Given several run directories, write a comparison (default ``merged.html`` in their common
    parent) plus ``merged.json`` beside it (same name, ``.json``).
    """
    dirs = [Path(run_dir)] if isinstance(run_dir, str | os.PathLike) else [Path(d) for d in run_dir]
    if not dirs:
        raise LplaError(
            "no run directory given; pass at least one directory written by `lpla audit`"
        )
    runs = [load_run(d) for d in dirs]
    if len(runs) == 1:
        target = Path(out) if out is not None else dirs[0] / "report.html"
        return build_run_report(runs[0], target)
    from lpla.report.merge import build_merged_report

    target = Path(out) if out is not None else _common_parent(dirs) / "merged.html"
    return build_merged_report(runs, target)
