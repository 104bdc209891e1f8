"""Plots of a membership-privacy audit, as PNG bytes ready to embed in a report.

Every function takes plain arrays and dicts (no run directory, no lpla objects), so the HTML
report, ``lpla study`` and notebooks draw the same figures. ``*_figure`` functions return a
matplotlib :class:`~matplotlib.figure.Figure` (for callers who want SVG or to restyle);
``plot_*`` functions return PNG bytes. Figures are built on the Agg canvas directly, never through
pyplot, so they need no display and keep no global state between calls.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

__all__ = [
    "attack_colors",
    "auc_vs_views_figure",
    "data_uri",
    "frontier_figure",
    "knowledge_figure",
    "norm_histograms_figure",
    "plot_auc_vs_views",
    "plot_frontier",
    "plot_knowledge",
    "plot_norm_histograms",
    "plot_roc",
    "plot_score_histograms",
    "plot_tradeoff",
    "roc_figure",
    "score_histograms_figure",
    "spearman_rho",
    "to_png",
    "tradeoff_figure",
]

DPI = 100
_MEMBER_COLOR = "#d6604d"
_NONMEMBER_COLOR = "#4393c3"
_CHANCE_COLOR = "#888888"


# --- output ----------------------------------------------------------------------------------


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render a figure to PNG bytes (Agg canvas, tight bounding box)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``: an image that needs no file and no network."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def attack_colors(names: Sequence[str]) -> dict[str, str]:
    """One stable colour per attack (tab10 order; tab20's light shades after ten attacks, as a
    run with per-image attacks has eleven), so every plot of a report agrees."""
    palette = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
        "#aec7e8",
        "#ffbb78",
        "#98df8a",
        "#ff9896",
        "#c5b0d5",
        "#c49c94",
        "#f7b6d2",
        "#c7c7c7",
        "#dbdb8d",
        "#9edae5",
    ]
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _p_label(p: float) -> str:
    return "∞" if math.isinf(p) else f"{p:g}"


def _stat_auc(values: np.ndarray, member: np.ndarray) -> float | None:
    """AUC of a raw statistic (members positive); None without both classes."""
    from sklearn.metrics import roc_auc_score

    keep = np.isfinite(values) & ((member == 0) | (member == 1))
    y = member[keep]
    if not ((y == 1).any() and (y == 0).any()):
        return None
    return float(roc_auc_score(y, values[keep]))


# --- ROC -------------------------------------------------------------------------------------


def roc_figure(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    aucs: Mapping[str, float] | None = None,
    n_nonmembers: int | None = None,
    title: str = "ROC (log-log): the low-FPR corner is what matters",
) -> Figure:
    """ROC curves of several attacks on log-log axes, with the chance diagonal.

    ``curves`` maps an attack name to ``(fpr, tpr)``. The axes start at ``1 / n_nonmembers``
    (the smallest non-zero FPR the data can resolve; guessed from the curves when not given);
    points at FPR or TPR 0 are drawn on that edge so a curve that starts high is visible.
    """
    if not curves:
        raise ValueError("roc_figure needs at least one curve")
    all_fpr = np.concatenate(
        [np.asarray(fpr, dtype=np.float64).reshape(-1) for fpr, _ in curves.values()]
    )
    positive = all_fpr[all_fpr > 0]
    if n_nonmembers is not None and n_nonmembers > 0:
        floor = 1.0 / n_nonmembers
    else:
        floor = float(positive.min()) if positive.size else 1e-3
    floor = min(floor, 0.5)
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    colors = attack_colors(list(curves))
    for name, (fpr, tpr) in curves.items():
        x = np.clip(np.asarray(fpr, dtype=np.float64), floor, 1.0)
        y = np.clip(np.asarray(tpr, dtype=np.float64), floor, 1.0)
        label = name if aucs is None or name not in aucs else f"{name} (AUC {aucs[name]:.3f})"
        ax.plot(x, y, color=colors[name], lw=1.8, label=label, drawstyle="default")
    ax.plot([floor, 1.0], [floor, 1.0], ls="--", color=_CHANCE_COLOR, lw=1, label="chance")
    for f in (1e-3, 1e-2):
        if f >= floor:
            ax.axvline(f, color="#cccccc", lw=0.8, ls=":", zorder=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.0)
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate (members found)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    return fig


def plot_roc(
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    aucs: Mapping[str, float] | None = None,
    n_nonmembers: int | None = None,
) -> bytes:
    """PNG of :func:`roc_figure`."""
    return to_png(roc_figure(curves, aucs=aucs, n_nonmembers=n_nonmembers))


# --- histograms ------------------------------------------------------------------------------


def _hist_panel(ax: Axes, values: np.ndarray, member: np.ndarray, title: str, xlabel: str) -> None:
    finite = np.isfinite(values)
    mem = values[finite & (member == 1)]
    non = values[finite & (member == 0)]
    both = np.concatenate([mem, non])
    if both.size == 0:
        ax.set_axis_off()
        ax.set_title(f"{title}\n(no finite values)", fontsize=9)
        return
    lo, hi = np.percentile(both, [0.5, 99.5])
    if not hi > lo:
        lo, hi = float(both.min()) - 0.5, float(both.max()) + 0.5
    n_bins = int(np.clip(2 * np.sqrt(both.size / 2), 10, 40))  # ~2 sqrt(n) per class
    bins = np.linspace(lo, hi, n_bins + 1).tolist()
    ax.hist(
        non,
        bins=bins,
        alpha=0.55,
        color=_NONMEMBER_COLOR,
        label=f"non-members ({non.size})",
        density=True,
    )
    ax.hist(
        mem, bins=bins, alpha=0.55, color=_MEMBER_COLOR, label=f"members ({mem.size})", density=True
    )
    auc = _stat_auc(values, member)
    if auc is not None:
        direction = "members higher" if auc >= 0.5 else "members lower"
        title = f"{title}\nAUC of the raw statistic {auc:.3f} ({direction})"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_yticks([])


def norm_histograms_figure(
    p: ArrayLike,
    mean_norm: Any,
    member: Any,
    *,
    clean_norm: Any | None = None,
    view_cosine: Any | None = None,
) -> Figure:
    """Member vs non-member histograms: one panel per p (mean over views), per p of the clean view
    when given, and of the mean pairwise view cosine when given (EncoderMI's statistic).

    ``mean_norm`` and ``clean_norm`` are ``[N, P]``; ``member`` is 1/0 per image (other values are
    left out). Each panel's title gives the AUC of the raw statistic and its direction.
    """
    ps = [float(v) for v in np.asarray(p, dtype=np.float64).reshape(-1)]
    mem = np.asarray(member).reshape(-1)
    mean = np.asarray(mean_norm, dtype=np.float64).reshape(mem.size, -1)
    if mean.shape[1] != len(ps):
        raise ValueError(f"mean_norm has {mean.shape[1]} columns but {len(ps)} values of p")
    panels: list[tuple[np.ndarray, str, str]] = [
        (mean[:, j], rf"mean $\|z\|_p$ over views, p = {_p_label(v)}", "norm")
        for j, v in enumerate(ps)
    ]
    if clean_norm is not None:
        clean = np.asarray(clean_norm, dtype=np.float64).reshape(mem.size, -1)
        panels += [
            (clean[:, j], rf"clean view $\|z\|_p$, p = {_p_label(v)}", "norm")
            for j, v in enumerate(ps)
        ]
    if view_cosine is not None:
        panels.append(
            (
                np.asarray(view_cosine, dtype=np.float64).reshape(-1),
                "mean pairwise cosine of the views",
                "cosine similarity",
            )
        )
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = _figure(4.0 * cols, 2.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        values, title, xlabel = panels[i]
        _hist_panel(ax, values, mem, title, xlabel)
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    return fig


def plot_norm_histograms(
    p: ArrayLike,
    mean_norm: Any,
    member: Any,
    *,
    clean_norm: Any | None = None,
    view_cosine: Any | None = None,
) -> bytes:
    """PNG of :func:`norm_histograms_figure`."""
    return to_png(
        norm_histograms_figure(p, mean_norm, member, clean_norm=clean_norm, view_cosine=view_cosine)
    )


def score_histograms_figure(scores: Mapping[str, Any], member: Any) -> Figure:
    """Member vs non-member histograms of each attack's scores (higher = called member)."""
    if not scores:
        raise ValueError("score_histograms_figure needs at least one attack")
    mem = np.asarray(member).reshape(-1)
    names = list(scores)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(4.0 * cols, 2.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(names):
            ax.set_axis_off()
            continue
        values = np.asarray(scores[names[i]], dtype=np.float64).reshape(-1)
        _hist_panel(ax, values, mem, f"{names[i]} scores", "score")
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    return fig


def plot_score_histograms(scores: Mapping[str, Any], member: Any) -> bytes:
    """PNG of :func:`score_histograms_figure`."""
    return to_png(score_histograms_figure(scores, member))


# --- AUC against the query budget --------------------------------------------------------------


def auc_vs_views_figure(
    auc_vs_views: Mapping[str, Mapping[str, float]],
    cis: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> Figure:
    """AUC against the number of queried views K, one line per attack (CI bands when given).

    ``auc_vs_views`` is ``{attack: {"K": auc}}`` as in ``results.json``; ``cis`` the same shape
    with ``[lo, hi]``.
    """
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    colors = attack_colors(list(auc_vs_views))
    all_k: set[int] = set()
    for name, by_k in auc_vs_views.items():
        pts = sorted((int(k), float(v)) for k, v in by_k.items() if v is not None)
        if not pts:
            continue
        ks = [k for k, _ in pts]
        all_k.update(ks)
        ax.plot(ks, [v for _, v in pts], marker="o", color=colors[name], label=name, lw=1.8)
        band = (cis or {}).get(name)
        if band:
            cs = sorted((int(k), lo_hi) for k, lo_hi in band.items() if lo_hi is not None)
            if cs:
                ax.fill_between(
                    [k for k, _ in cs],
                    [float(c[0]) for _, c in cs],
                    [float(c[1]) for _, c in cs],
                    color=colors[name],
                    alpha=0.15,
                    lw=0,
                )
    ax.axhline(0.5, ls="--", color=_CHANCE_COLOR, lw=1, label="chance")
    if all_k:
        ax.set_xscale("log")
        ax.set_xticks(sorted(all_k))
        ax.set_xticklabels([str(k) for k in sorted(all_k)])
        ax.minorticks_off()
    ax.set_xlabel("query budget K (augmented views per image)")
    ax.set_ylabel("attack AUC")
    ax.set_title("AUC against the number of queries", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_auc_vs_views(
    auc_vs_views: Mapping[str, Mapping[str, float]],
    cis: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> bytes:
    """PNG of :func:`auc_vs_views_figure`."""
    return to_png(auc_vs_views_figure(auc_vs_views, cis))


# --- leakage against utility -------------------------------------------------------------------


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation; None below 3 points or when either side is constant."""
    from lpla.report.tables import spearman

    return spearman(x, y)[0]


def _rho_text(rho: float | None) -> str:
    return "n/a" if rho is None else f"{rho:+.2f}"


def _rho_title(head: str, items: list[str], per_line: int = 3) -> str:
    """``head`` then "Spearman ρ: a +0.80, b n/a, ..." wrapped every ``per_line`` attacks."""
    items = items or ["n/a"]
    lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
    return head + "\nSpearman ρ: " + ",\n".join(lines)


def _point_label(point: Mapping[str, Any]) -> str:
    for key in ("label", "cell", "run"):
        if point.get(key):
            return str(point[key])
    return ""


def tradeoff_figure(points: Sequence[Mapping[str, Any]], *, label_points: bool = True) -> Figure:
    """Leakage against utility over many encoders: AUC (left) and TPR@1%FPR (right) against
    linear-probe accuracy, one colour per attack, Spearman rho per attack in the titles.

    Each point is a dict with ``linear_probe_acc``, ``auc``, optionally ``tpr_at_1pct_fpr``,
    ``attack`` and ``label`` (or ``cell``); points without a probe accuracy are skipped.
    """
    usable = [
        pt for pt in points if pt.get("linear_probe_acc") is not None and pt.get("auc") is not None
    ]
    by_attack: dict[str, list[Mapping[str, Any]]] = {}
    for pt in usable:
        by_attack.setdefault(str(pt.get("attack", "attack")), []).append(pt)
    colors = attack_colors(list(by_attack))
    fig = _figure(11.5, 4.8)
    ax_auc, ax_tpr = fig.subplots(1, 2)
    rho_auc: list[str] = []
    rho_tpr: list[str] = []
    for name, pts in by_attack.items():
        x = [float(pt["linear_probe_acc"]) for pt in pts]
        y = [float(pt["auc"]) for pt in pts]
        ax_auc.scatter(x, y, color=colors[name], label=name, s=36, edgecolor="white", lw=0.5)
        rho_auc.append(f"{name} {_rho_text(spearman_rho(x, y))}")
        tpts = [
            (float(pt["linear_probe_acc"]), float(pt["tpr_at_1pct_fpr"]), pt)
            for pt in pts
            if pt.get("tpr_at_1pct_fpr") is not None
        ]
        if tpts:
            ax_tpr.scatter(
                [t[0] for t in tpts],
                [t[1] for t in tpts],
                color=colors[name],
                label=name,
                s=36,
                edgecolor="white",
                lw=0.5,
            )
        rho_tpr.append(
            f"{name} {_rho_text(spearman_rho([t[0] for t in tpts], [t[1] for t in tpts]))}"
        )
        if label_points:
            for xv, yv, pt in zip(x, y, pts, strict=True):
                ax_auc.annotate(
                    _point_label(pt),
                    (xv, yv),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color="#444444",
                )
            for xv, yv, pt in tpts:
                ax_tpr.annotate(
                    _point_label(pt),
                    (xv, yv),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color="#444444",
                )
    ax_auc.axhline(0.5, ls="--", color=_CHANCE_COLOR, lw=1)
    ax_auc.set_xlabel("utility: linear-probe accuracy")
    ax_auc.set_ylabel("leakage: attack AUC")
    ax_auc.set_title(_rho_title("leakage (AUC) vs utility", rho_auc), fontsize=9)
    ax_tpr.set_xlabel("utility: linear-probe accuracy")
    ax_tpr.set_ylabel("leakage: TPR at 1% FPR")
    ax_tpr.set_title(_rho_title("leakage (TPR at 1% FPR) vs utility", rho_tpr), fontsize=9)
    for ax in (ax_auc, ax_tpr):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(6))
    if by_attack:
        # one legend for both panels, below them, so it never hides a point
        fig.legend(
            *ax_auc.get_legend_handles_labels(),
            loc="outside lower center",
            ncols=min(len(by_attack), 6),
            fontsize=8,
            frameon=False,
        )
    if not usable:
        ax_auc.text(
            0.5,
            0.5,
            "no encoder with a linear-probe accuracy",
            ha="center",
            transform=ax_auc.transAxes,
        )
    return fig


def plot_tradeoff(points: Sequence[Mapping[str, Any]], *, label_points: bool = True) -> bytes:
    """PNG of :func:`tradeoff_figure`."""
    return to_png(tradeoff_figure(points, label_points=label_points))


# --- the privacy-utility frontier of defenses --------------------------------------------------

_KIND_STYLE = {  # marker, colour, legend label
    "none": ("*", "#222222", "none (undefended)"),
    "output": ("o", "#1f77b4", "output-side"),
    "training": ("s", "#ff7f0e", "training-side"),
}


def frontier_figure(points: Sequence[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """Leakage against utility, one point per defense and level: the strongest attack's AUC
    (left, its interval as error bars) and the highest TPR at 1% FPR (right) against the
    linear-probe accuracy of what the defended encoder serves.

    Points are :func:`lpla.report.defenses.frontier_points` dicts (``defense``, ``kind``,
    ``linear_probe``, ``auc``, ``auc_lo``/``auc_hi``, ``tpr1``, ``tpr1_lo``/``tpr1_hi``); the
    undefended encoder (``none``) is a star, and a dashed line joins the defenses no other beats
    on both axes (the frontier). Points without a probe accuracy are left out.
    """
    from lpla.report.defenses import pareto_front

    usable = [p for p in points if p.get("linear_probe") is not None]
    fig = _figure(11.5, 4.8)
    ax_auc, ax_tpr = fig.subplots(1, 2)
    panels = (
        (ax_auc, "auc", "auc_lo", "auc_hi", "leakage: strongest attack's AUC"),
        (ax_tpr, "tpr1", "tpr1_lo", "tpr1_hi", "leakage: highest TPR at 1% FPR"),
    )
    for ax, key, lo_key, hi_key, ylabel in panels:
        pts = [p for p in usable if p.get(key) is not None]
        seen: set[str] = set()
        for p in pts:
            kind = str(p.get("kind") or "output")
            marker, color, label = _KIND_STYLE.get(kind, _KIND_STYLE["output"])
            x, y = float(p["linear_probe"]), float(p[key])
            lo, hi = p.get(lo_key), p.get(hi_key)
            yerr = None if lo is None or hi is None else [[y - float(lo)], [float(hi) - y]]
            ax.errorbar(
                x,
                y,
                yerr=yerr,
                fmt=marker,
                color=color,
                ms=12 if kind == "none" else 7,
                capsize=2,
                lw=1,
                label=None if kind in seen else label,
                zorder=3,
            )
            seen.add(kind)
            ax.annotate(
                str(p["defense"]),
                (x, y),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
                color="#444444",
            )
        front = pareto_front(pts, leakage=key)
        if len(front) > 1:
            by_name = {str(p["defense"]): p for p in pts}
            ax.plot(
                [float(by_name[n]["linear_probe"]) for n in front],
                [float(by_name[n][key]) for n in front],
                ls="--",
                color="#888888",
                lw=1,
                zorder=2,
                label="frontier",
            )
        if key == "auc":
            ax.axhline(0.5, ls=":", color=_CHANCE_COLOR, lw=1, label="chance")
        ax.margins(x=0.12)  # room for the labels of the points at the edges
        ax.set_xlabel("utility: linear-probe accuracy of the served features")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        if pts:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(
                0.5, 0.5, "no defense with a measured utility", ha="center", transform=ax.transAxes
            )
    ax_auc.set_title(
        title or "privacy-utility frontier: lower and to the right is better", fontsize=9
    )
    ax_tpr.set_title("the same for the low-FPR regime", fontsize=9)
    return fig


def plot_frontier(points: Sequence[Mapping[str, Any]], *, title: str | None = None) -> bytes:
    """PNG of :func:`frontier_figure`."""
    return to_png(frontier_figure(points, title=title))


# --- knowledge settings ------------------------------------------------------------------------


def knowledge_figure(
    table: Mapping[str, Mapping[str, float]],
    cis: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> Figure:
    """Grouped bars: AUC per attacker-knowledge setting (groups), one bar per attack (LpLA
    variants next to the EncoderMI baselines). ``table`` is ``{attack: {setting: auc}}``;
    ``cis`` the same shape with ``[lo, hi]`` drawn as error bars."""
    attacks = list(table)
    settings: list[str] = []
    for by_setting in table.values():
        settings += [s for s in by_setting if s not in settings]
    if "same" in settings:
        settings.remove("same")
        settings.insert(0, "same")
    colors = attack_colors(attacks)
    fig = _figure(max(6.4, 1.6 * len(settings) + 2.5), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / max(len(attacks), 1)
    xs = np.arange(len(settings))
    for i, name in enumerate(attacks):
        vals = [table[name].get(s) for s in settings]
        heights = [np.nan if v is None else float(v) for v in vals]
        err = None
        band = (cis or {}).get(name)
        if band:
            lo = [
                h - float(band[s][0]) if band.get(s) else 0.0
                for s, h in zip(settings, heights, strict=True)
            ]
            hi = [
                float(band[s][1]) - h if band.get(s) else 0.0
                for s, h in zip(settings, heights, strict=True)
            ]
            err = np.array([lo, hi])
        ax.bar(
            xs + (i - (len(attacks) - 1) / 2) * width,
            heights,
            width * 0.95,
            color=colors[name],
            label=name,
            yerr=err,
            capsize=2 if err is not None else 0,
        )
    ax.axhline(0.5, ls="--", color=_CHANCE_COLOR, lw=1, label="chance")
    ax.set_xticks(xs)
    ax.set_xticklabels(settings, rotation=15 if len(settings) > 4 else 0)
    finite = [float(v) for by in table.values() for v in by.values() if v is not None]
    ax.set_ylim(min([0.4, *finite]) - 0.02, max([0.6, *finite]) + 0.05)
    ax.set_xlabel("attacker knowledge (how the shadow encoder differs from the target)")
    ax.set_ylabel("attack AUC")
    ax.set_title("AUC per knowledge setting", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=2)
    return fig


def plot_knowledge(
    table: Mapping[str, Mapping[str, float]],
    cis: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> bytes:
    """PNG of :func:`knowledge_figure`."""
    return to_png(knowledge_figure(table, cis))
