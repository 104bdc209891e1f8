"""lpla.report: plots, the single-run HTML report, merging runs, errors, and the CLI."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from sklearn.metrics import roc_auc_score, roc_curve

from lpla.errors import LplaError
from lpla.report import plots
from lpla.report.html import build_report, verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- fixture run directories --------------------------------------------------------------------


def write_run(
    run_dir: Path,
    *,
    n: int = 128,
    shift: float = 0.8,
    seed: int = 0,
    title: str = "lpla audit",
    framework: str = "simclr",
    knowledge: str = "same",
    probe: float | None = 0.83,
    norms: bool = True,
    scores: bool = True,
) -> dict[str, Any]:
    """A run directory as `lpla audit` writes it, from Gaussian scores with a known shift."""
    g = np.random.default_rng(seed)
    member = np.r_[np.ones(n), np.zeros(n)].astype(np.int8)
    attack_scores = {
        "lpla": np.r_[g.normal(shift, 1, n), g.normal(0, 1, n)],
        "encodermi-t": np.r_[g.normal(shift / 4, 1, n), g.normal(0, 1, n)],
    }
    attacks: dict[str, Any] = {}
    for name, s in attack_scores.items():
        fpr, tpr, _ = roc_curve(member, s)
        auc = float(roc_auc_score(member, s))
        attacks[name] = {
            "auc": auc,
            "auc_ci95": [auc - 0.06, auc + 0.06],
            "tpr_at_fpr": {"0.001": None, "0.01": 0.0546875 if name == "lpla" else 0.015625},
            "balanced_accuracy": 0.641,
            "threshold": 0.0,
            "balanced_accuracy_oracle": 0.672,
            "advantage": 0.344,
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
            "n_members": n,
            "n_nonmembers": n,
            "notes": [f"TPR at 0.1% FPR needs >= 1000 non-members; have {n}"]
            + (["direction learnt on the shadow: members larger"] if name == "lpla" else []),
            "params": {"p": [2.0]},
        }
    results: dict[str, Any] = {
        "lpla_version": "0.1.0",
        "created": "2026-11-23T20:00:00Z",
        "title": title,
        "attacks": attacks,
        "auc_vs_views": {
            "lpla": {"1": 0.6, "2": 0.65, "5": 0.7, "10": 0.71},
            "encodermi-t": {"2": 0.52, "5": 0.53, "10": 0.55},
        },
        "split": {
            "dataset": "fashion-mnist",
            "seed": 0,
            "sizes": {
                "target_member": n,
                "target_nonmember": n,
                "shadow_member": n,
                "shadow_nonmember": n,
                "reference": 256,
            },
            "fingerprint": "abc123",
        },
        "knowledge": knowledge,
        "target": {
            "framework": framework,
            "backbone": "mlp",
            "epochs": 500,
            "dataset": "fashion-mnist",
        },
        "shadow": {
            "framework": "byol" if knowledge == "other-framework" else framework,
            "backbone": "mlp",
            "epochs": 500,
            "dataset": "fashion-mnist",
        },
        "config": {"members": n, "views": 10, "p": ["1", "2", "inf"], "seed": 0},
        "command": f"lpla audit --out {run_dir} --members {n}",
        "versions": {"lpla": "0.1.0", "numpy": np.__version__},
        "timing_s": {"train_target": 30.1, "attacks": 1.2},
    }
    if probe is not None:
        results["utility"] = {
            "linear_probe_acc": probe,
            "knn_acc": 0.80,
            "knn_acc_k200": 0.79,
            "linear_probe_acc_pixels": 0.80,
        }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    if norms:
        p = np.array([1.0, 2.0, np.inf])
        base = g.normal(10, 1, (2 * n, 1)) * np.array([[4.0, 1.0, 0.3]])
        mean_norm = base + member[:, None] * np.array([[2.0, 0.5, 0.1]])
        np.savez(
            run_dir / "norms.npz",
            p=p,
            mean_norm=mean_norm,
            clean_norm=mean_norm * 1.1,
            member=member,
            view_cosine=g.normal(0.8, 0.05, 2 * n) + 0.02 * member,
        )
    if scores:
        np.savez(run_dir / "scores.npz", member=member, **attack_scores)
    return results


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run-a"
    write_run(d)
    return d


def _data_uris(html: str) -> list[str]:
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)


def _external_refs(html: str) -> list[str]:
    """src/href/url() that would reach outside the file (network or another file)."""
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    return [r for r in refs if not (r.startswith("data:") or r.startswith("#"))]


def _table(html: str, table_id: str) -> str:
    m = re.search(rf'<table id="{table_id}"[^>]*>(.*?)</table>', html, re.S)
    assert m is not None, f"no table {table_id}"
    return m.group(1)


def _xy(line: Line2D) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


# --- plots --------------------------------------------------------------------------------------


def test_spearman_rho_matches_hand_computed_values() -> None:
    # d = [0, 1, 1, 0]: rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert plots.spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert plots.spearman_rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert plots.spearman_rho([1, 2], [1, 2]) is None  # fewer than 3 points
    assert plots.spearman_rho([1, 2, 3], [5, 5, 5]) is None  # constant: undefined


def test_roc_figure_log_axes_from_one_over_n_with_chance_line() -> None:
    fpr = np.array([0.0, 0.01, 0.1, 1.0])
    tpr = np.array([0.05, 0.2, 0.5, 1.0])
    fig = plots.roc_figure(
        {"lpla": (fpr, tpr), "encodermi-t": (fpr, fpr)},
        aucs={"lpla": 0.71, "encodermi-t": 0.5},
        n_nonmembers=200,
    )
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlim() == pytest.approx((1 / 200, 1.0))
    labels = [line.get_label() for line in ax.get_lines()]
    assert "lpla (AUC 0.710)" in labels and "chance" in labels
    chance = ax.get_lines()[labels.index("chance")]
    np.testing.assert_allclose(_xy(chance)[0], _xy(chance)[1])
    # FPR 0 is drawn on the left edge (1/N), not dropped by the log scale
    lpla_line = ax.get_lines()[labels.index("lpla (AUC 0.710)")]
    assert _xy(lpla_line)[0][0] == pytest.approx(1 / 200)
    assert plots.plot_roc({"lpla": (fpr, tpr)}).startswith(PNG_MAGIC)


def test_norm_histograms_panels_and_direction() -> None:
    member = np.r_[np.ones(50), np.zeros(50)].astype(np.int8)
    g = np.random.default_rng(1)
    mean_norm = np.c_[
        np.r_[g.uniform(5, 6, 50), g.uniform(1, 2, 50)],  # members higher: AUC 1
        np.r_[g.uniform(1, 2, 50), g.uniform(5, 6, 50)],
    ]  # members lower: AUC 0
    fig = plots.norm_histograms_figure(
        [2.0, np.inf], mean_norm, member, clean_norm=mean_norm, view_cosine=g.normal(size=100)
    )
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert len(titles) == 5  # 2 p + 2 clean + cosine
    assert "p = 2" in titles[0] and "AUC of the raw statistic 1.000 (members higher)" in titles[0]
    assert "p = ∞" in titles[1] and "0.000 (members lower)" in titles[1]
    assert titles[2].startswith("clean view")
    assert "cosine" in titles[4]
    with pytest.raises(ValueError, match="3 values of p"):
        plots.norm_histograms_figure([1.0, 2.0, 3.0], mean_norm, member)


def test_tradeoff_figure_rho_in_titles() -> None:
    pts = [
        {
            "attack": "lpla",
            "label": f"enc{i}",
            "linear_probe_acc": acc,
            "auc": auc,
            "tpr_at_1pct_fpr": tpr,
        }
        for i, (acc, auc, tpr) in enumerate(
            [(0.6, 0.55, 0.01), (0.7, 0.60, 0.03), (0.8, 0.70, 0.02), (0.9, 0.75, 0.05)]
        )
    ]
    pts += [
        {
            "attack": "encodermi-t",
            "label": "enc0",
            "linear_probe_acc": 0.6,
            "auc": 0.5,
            "tpr_at_1pct_fpr": None,
        }
    ]
    fig = plots.tradeoff_figure(pts)
    ax_auc, ax_tpr = fig.axes
    assert "lpla +1.00" in ax_auc.get_title() and "encodermi-t n/a" in ax_auc.get_title()
    assert "lpla +0.80" in ax_tpr.get_title()  # ranks 1,3,2,4
    texts = [t.get_text() for t in ax_auc.texts]
    assert {"enc0", "enc1", "enc2", "enc3"} <= set(texts)
    assert plots.plot_tradeoff(pts).startswith(PNG_MAGIC)


def test_auc_vs_views_and_knowledge_plot_the_given_numbers() -> None:
    fig = plots.auc_vs_views_figure(
        {"lpla": {"10": 0.71, "1": 0.6, "5": 0.7}},
        cis={"lpla": {"1": [0.5, 0.7], "5": [0.6, 0.8], "10": [0.6, 0.8]}},
    )
    line = next(l for l in fig.axes[0].get_lines() if l.get_label() == "lpla")
    np.testing.assert_allclose(_xy(line)[0], [1, 5, 10])
    np.testing.assert_allclose(_xy(line)[1], [0.6, 0.7, 0.71])
    fig = plots.knowledge_figure(
        {
            "lpla": {"other-framework": 0.6, "same": 0.7},
            "encodermi-t": {"same": 0.55, "other-framework": 0.52},
        }
    )
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["same", "other-framework"]
    heights = sorted(round(p.get_height(), 3) for p in ax.patches if isinstance(p, Rectangle))
    assert heights == [0.52, 0.55, 0.6, 0.7]
    assert plots.plot_knowledge({"lpla": {"same": 0.7}}).startswith(PNG_MAGIC)


# --- verdict ------------------------------------------------------------------------------------


def _entry(auc: float, ci: list[float] | None, tpr1: float | None = None) -> dict[str, Any]:
    return {
        "auc": auc,
        "auc_ci95": ci,
        "tpr_at_fpr": {"0.01": tpr1},
        "n_members": 100,
        "n_nonmembers": 100,
    }


def test_verdict_plain_words() -> None:
    v = verdict(
        {"lpla": _entry(0.71, [0.65, 0.77], 0.05), "encodermi-t": _entry(0.55, [0.48, 0.62])}
    )
    assert v.kind == "leaks" and v.attack == "lpla"
    assert v.sentence.startswith(
        "Leaks membership: the strongest attack, lpla, reaches AUC 0.710 (95% CI 0.650–0.770)"
    )
    assert "5.0% of the members" in v.sentence
    v = verdict({"lpla": _entry(0.53, [0.46, 0.60])})
    assert v.kind == "none" and v.sentence.startswith("No leakage detected at this sample size")
    assert "±0.07" in v.sentence
    v = verdict({"lpla": _entry(0.40, [0.33, 0.47])})
    assert v.kind == "reversed"
    assert "below chance: labels swapped or attack direction inverted" in v.sentence
    # a weaker attack whose CI clears 0.5 wins over a stronger-looking one that does not
    v = verdict({"a": _entry(0.62, [0.49, 0.75]), "b": _entry(0.60, [0.56, 0.64])})
    assert (v.kind, v.attack) == ("leaks", "b")
    assert verdict({"a": _entry(0.6, None)}).kind == "no-ci"


def test_verdict_below_chance_is_never_no_leakage() -> None:
    # the strongest attack's interval lies below 0.5
    v = verdict({"lpla": _entry(0.40, [0.33, 0.47]), "encodermi-t": _entry(0.38, [0.30, 0.45])})
    assert (v.kind, v.attack) == ("reversed", "lpla")
    assert v.sentence.startswith(
        "Reversed, below chance: labels swapped or attack direction inverted: lpla reaches "
        "AUC 0.400 (95% CI 0.330–0.470)"
    )
    assert "100 members and 100 non-members" in v.sentence and "AUC 0.600" in v.sentence
    # no attack clears 0.5, the strongest straddles it, another lies below: still reversed,
    # naming the one furthest below chance
    v = verdict(
        {
            "lpla": _entry(0.52, [0.45, 0.59]),
            "norm-threshold": _entry(0.42, [0.36, 0.48]),
            "lpla-ref": _entry(0.35, [0.28, 0.42]),
        }
    )
    assert (v.kind, v.attack) == ("reversed", "lpla-ref")
    for sentence in (v.sentence, verdict({"a": _entry(0.1, [0.05, 0.2])}).sentence):
        assert "no leakage" not in sentence.lower()
    # an attack above chance still wins: leakage shown is leakage
    v = verdict({"lpla": _entry(0.70, [0.64, 0.76]), "lpla-ref": _entry(0.30, [0.24, 0.36])})
    assert (v.kind, v.attack) == ("leaks", "lpla")
    # one upper bound exactly at 0.5 is not below it
    assert verdict({"lpla": _entry(0.44, [0.38, 0.50])}).kind == "none"


def test_verdict_lives_in_its_own_module() -> None:
    from lpla.report import html
    from lpla.report import verdict as verdict_module

    assert html.verdict is verdict_module.verdict and html.Verdict is verdict_module.Verdict
    assert {"Verdict", "verdict"} <= set(html.__all__)
    # the comparison page uses it without going through the single-run page
    code = (
        "import sys, lpla.report.merge; "
        "print('lpla.report.html' in sys.modules, 'lpla.report.verdict' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


# --- single-run report --------------------------------------------------------------------------


def test_build_report_self_contained_with_tables(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    out = build_report(run_dir)
    assert out == run_dir / "report.html"
    html = out.read_text(encoding="utf-8")
    for element_id in (
        "roc-plot",
        "attack-table",
        "norm-hist",
        "auc-vs-k",
        "utility-table",
        "config",
        "score-hist",
        "command",
    ):
        assert f'id="{element_id}"' in html
    images = _data_uris(html)
    assert len(images) == 4  # ROC, norms, scores, AUC vs K
    for b64 in images:
        assert base64.b64decode(b64).startswith(PNG_MAGIC)
    assert _external_refs(html) == []
    assert "<script" not in html and "<link" not in html and "@import" not in html

    table = _table(html, "attack-table")
    lpla = results["attacks"]["lpla"]
    row = re.search(r'<tr class="strongest" data-attack="lpla">(.*?)</tr>', table, re.S)
    assert row is not None  # lpla is the strongest attack and marked as such
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[0] == "lpla"
    assert cells[1] == f"{lpla['auc']:.3f}"
    assert cells[2] == f"{lpla['auc'] - 0.06:.3f}–{lpla['auc'] + 0.06:.3f}"
    assert 'title="TPR at 0.1% FPR needs &gt;= 1000 non-members; have 128">n/a' in cells[3]
    assert cells[4] == "0.055"  # TPR@1%: 7/128
    assert cells[5:9] == ["0.641", "0.672", "0.344", "128 / 128"]
    # per-attack notes in the row, the caveat every attack shares once under the table
    assert "direction learnt on the shadow: members larger" in cells[9]
    assert "needs &gt;= 1000" not in cells[9]
    shared = re.search(r'<ul class="notes" id="shared-notes">(.*?)</ul>', html, re.S)
    assert shared is not None and "every attack: TPR at 0.1% FPR needs &gt;= 1000" in shared.group(
        1
    )
    assert "oracle threshold" in table

    assert "Leaks membership: the strongest attack, lpla" in html
    util = _table(html, "utility-table")
    assert "linear probe on raw pixels (baseline, no encoder)" in util and "0.800" in util
    assert "+0.030" in util  # gain over pixels: 0.83 - 0.80
    config = re.search(r'<pre id="config">(.*?)</pre>', html, re.S)
    assert (
        config is not None
        and json.loads(config.group(1).replace("&#34;", '"')) == results["config"]
    )
    assert f"lpla audit --out {run_dir} --members 128" in html
    assert "other-framework" not in html and '<td id="knowledge">same</td>' in html


def test_report_escapes_everything(tmp_path: Path) -> None:
    d = tmp_path / "evil"
    write_run(d, title='<script>alert("x")</script>', norms=False, scores=False)
    results = json.loads((d / "results.json").read_text())
    results["attacks"]["<img src=x>"] = results["attacks"].pop("encodermi-t")
    results["command"] = "lpla audit --out 'a&b'"
    (d / "results.json").write_text(json.dumps(results))
    html = build_report(d).read_text()
    assert "<script>" not in html and "<img src=x>" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x&gt;" in html and "a&amp;b" in html


def test_report_without_optional_files(tmp_path: Path) -> None:
    d = tmp_path / "bare"
    results = write_run(d, norms=False, scores=False, probe=None)
    del results["auc_vs_views"]
    (d / "results.json").write_text(json.dumps(results))
    html = build_report(d, tmp_path / "elsewhere" / "r.html").read_text()
    assert len(_data_uris(html)) == 1  # only the ROC, from results.json
    assert 'id="norm-hist"' not in html and 'id="auc-vs-k"' not in html
    assert "not drawn: norm histograms: no norms.npz" in html
    assert "No utility was measured" in html


def test_roc_falls_back_to_scores_npz(tmp_path: Path) -> None:
    d = tmp_path / "noroc"
    results = write_run(d, norms=False)
    for e in results["attacks"].values():
        del e["roc"]
    (d / "results.json").write_text(json.dumps(results))
    html = build_report(d).read_text()
    assert 'id="roc-plot"' in html


def test_attack_table_shows_tpr_intervals_when_recorded(tmp_path: Path) -> None:
    d = tmp_path / "with-ci"
    results = write_run(d, norms=False, scores=False)
    results["attacks"]["lpla"]["tpr_at_fpr_ci95"] = {"0.001": None, "0.01": [0.02, 0.1]}
    results["defenses"] = {
        "noise:0.1": {
            "lpla": {
                "auc": 0.6,
                "auc_ci95": [0.55, 0.65],
                "tpr_at_fpr": {"0.01": 0.03},
                "tpr_at_fpr_ci95": {"0.01": [0.01, 0.05]},
                "advantage": 0.2,
            }
        }
    }
    (d / "results.json").write_text(json.dumps(results))
    html = build_report(d).read_text()
    row = re.search(r'data-attack="lpla">(.*?)</tr>', _table(html, "attack-table"), re.S)
    assert row is not None
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    assert cells[4] == '0.055<br><span class="muted tpr-ci">0.020–0.100</span>'
    assert "n/a" in cells[3] and "tpr-ci" not in cells[3]  # no TPR, no interval
    # encodermi-t's entry is an old one, without intervals: the value alone
    other = re.search(r'data-attack="encodermi-t">(.*?)</tr>', html, re.S)
    assert other is not None and "tpr-ci" not in other.group(1)
    assert '0.030<br><span class="muted tpr-ci">0.010–0.050</span>' in _table(html, "defense-table")


# --- defenses: the list format, the old mapping, the frontier -----------------------------------


def _defense(spec: str, kind: str, probe: float | None, aucs: dict[str, float]) -> dict[str, Any]:
    """One entry of results.json's ``defenses`` list, with made-up numbers."""
    return {
        "defense": spec,
        "kind": kind,
        "utility": {"linear_probe": probe, "knn": None if probe is None else probe - 0.03},
        "attacks": {
            name: {
                "auc": auc,
                "auc_ci95": [auc - 0.05, auc + 0.05],
                "tpr_at_fpr": {"0.001": None, "0.01": round(auc - 0.5, 3)},
                "tpr_at_fpr_ci95": {"0.001": None, "0.01": [0.0, round(auc - 0.4, 3)]},
                "advantage": 0.1,
            }
            for name, auc in aucs.items()
        },
    }


DEFENSES = [
    _defense("none", "none", 0.83, {"lpla": 0.70, "encodermi-t": 0.79}),
    _defense("noise:0.5", "output", 0.80, {"lpla": 0.69, "encodermi-t": 0.70}),
    _defense("quantize:1", "output", 0.60, {"lpla": 0.71, "encodermi-t": 0.72}),
    _defense("early-stop:100", "training", 0.81, {"lpla": 0.62, "encodermi-t": 0.66}),
]


def test_frontier_points_take_the_attackers_best_attack_per_defense() -> None:
    from lpla.report.defenses import frontier_points, pareto_front

    points = {p["defense"]: p for p in frontier_points(DEFENSES)}
    assert (points["none"]["attack"], points["none"]["auc"]) == ("encodermi-t", 0.79)
    assert (points["none"]["auc_lo"], points["none"]["auc_hi"]) == pytest.approx((0.74, 0.84))
    assert (points["quantize:1"]["attack"], points["quantize:1"]["tpr1"]) == ("encodermi-t", 0.22)
    assert points["early-stop:100"]["linear_probe"] == 0.81
    # quantize:1 loses utility and protects less than noise:0.5; noise:0.5 is beaten on both
    # axes by early-stop:100 (0.81 > 0.80, 0.66 < 0.70): neither is on the frontier
    assert pareto_front(list(points.values())) == ["early-stop:100", "none"]


def test_frontier_figure_draws_every_defense(tmp_path: Path) -> None:
    from lpla.report.defenses import frontier_points

    fig = plots.frontier_figure(frontier_points(DEFENSES))
    ax_auc, ax_tpr = fig.axes
    labels = [t.get_text() for t in ax_auc.texts]
    assert labels == ["none", "noise:0.5", "quantize:1", "early-stop:100"]
    legend = [t.get_text() for t in ax_auc.get_legend().get_texts()]
    assert {"none (undefended)", "output-side", "training-side", "frontier"} <= set(legend)
    frontier = next(line for line in ax_auc.get_lines() if line.get_label() == "frontier")
    assert list(frontier.get_xdata()) == [0.81, 0.83]  # early-stop:100 -> none
    assert list(frontier.get_ydata()) == [0.66, 0.79]
    assert [t.get_text() for t in ax_tpr.texts] == labels  # TPR@1%: every defense resolves it
    assert "TPR at 1% FPR" in ax_tpr.get_ylabel()
    assert plots.plot_frontier(frontier_points(DEFENSES)).startswith(PNG_MAGIC)


def test_report_shows_defense_utility_and_the_frontier(tmp_path: Path) -> None:
    d = tmp_path / "defended"
    results = write_run(d, norms=False, scores=False)
    results["defenses"] = DEFENSES
    (d / "results.json").write_text(json.dumps(results))
    html = build_report(d).read_text()
    table = _table(html, "defense-table")
    assert table.count("<tr data-defense=") == 4
    row = re.search(r'data-defense="early-stop:100">(.*?)</tr>', table, re.S)
    assert row is not None
    cells = [
        re.sub(r"<[^>]+>", " ", c).split()
        for c in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1), re.S)
    ]
    # defense, kind, probe, kNN, probe change, strongest attack, AUC, CI, AUC change, TPR (CI)
    assert cells == [
        ["early-stop:100"], ["training"], ["0.810"], ["0.780"], ["-0.020"], ["encodermi-t"],
        ["0.660"], ["0.610–0.710"], ["-0.130"], ["0.160", "0.000–0.260"],
    ]  # fmt: skip
    assert 'id="frontier-plot"' in html and 'href="#defenses"' in html
    assert "bootstrap intervals of this run" in html
    every = _table(html, "defense-attack-table")
    assert every.count("<tr><td") == 4 and "0.720" in every


def test_old_runs_with_the_defenses_mapping_still_render(tmp_path: Path) -> None:
    from lpla.report.defenses import defense_entries

    d = tmp_path / "old"
    results = write_run(d, norms=False, scores=False)
    results["defenses"] = {"noise:0.1": {"lpla": {"auc": 0.6, "auc_ci95": [0.55, 0.65]}}}
    (d / "results.json").write_text(json.dumps(results))
    entries = defense_entries(results)
    assert [e["defense"] for e in entries] == ["none", "noise:0.1"]
    assert entries[0]["attacks"] == results["attacks"]  # none: the run's own attacks
    assert entries[0]["utility"] == {"linear_probe": 0.83, "knn": 0.80}
    assert (
        entries[1]["utility"]["linear_probe"] is None
        and "issue #14" in (entries[1]["utility"]["skipped"])
    )
    html = build_report(d).read_text()
    assert 'data-defense="noise:0.1"' in _table(html, "defense-table")
    assert 'id="frontier-plot"' not in html
    assert "not drawn: privacy-utility frontier: fewer than two defenses" in html


def test_a_malformed_defenses_entry_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    results = write_run(d, norms=False, scores=False)
    results["defenses"] = [{"defense": "noise:0.1"}]  # no attacks
    (d / "results.json").write_text(json.dumps(results))
    with pytest.raises(LplaError, match=r'"defenses" must be a list of \{"defense", "utility"'):
        build_report(d)


def test_merge_reads_both_defense_formats(tmp_path: Path) -> None:
    new, old = tmp_path / "runs" / "new", tmp_path / "runs" / "old"
    write_run(new, norms=False, scores=False)
    write_run(old, norms=False, scores=False, seed=1)
    for d, defenses in ((new, DEFENSES), (old, {"l2-normalize": {"lpla": {"auc": 0.5}}})):
        results = json.loads((d / "results.json").read_text())
        (d / "results.json").write_text(json.dumps(results | {"defenses": defenses}))
    out = build_report([new, old], tmp_path / "merged.html")
    merged = json.loads((tmp_path / "merged.json").read_text())
    rows = [(r["label"], r["defense"], r["linear_probe"]) for r in merged["defenses"]]
    assert rows[:4] == [("new", p["defense"], p["utility"]["linear_probe"]) for p in DEFENSES]
    assert rows[4:] == [("old", "none", 0.83), ("old", "l2-normalize", None)]
    assert 'id="frontier-plot"' in out.read_text()


def test_verdict_reversed_in_report(tmp_path: Path) -> None:
    d = tmp_path / "reversed"
    results = write_run(d, norms=False, scores=False)
    for e in results["attacks"].values():
        e["auc_ci95"] = [0.30, 0.45]
    (d / "results.json").write_text(json.dumps(results))
    html = build_report(d).read_text()
    assert 'class="verdict reversed"' in html
    assert "below chance: labels swapped or attack direction inverted" in html
    assert "No leakage" not in html


def test_verdict_no_leak_in_report(tmp_path: Path) -> None:
    d = tmp_path / "quiet"
    results = write_run(d, shift=0.0, norms=False, scores=False)
    for e in results["attacks"].values():
        e["auc_ci95"] = [0.45, 0.58]
    (d / "results.json").write_text(json.dumps(results))
    html = build_report(d).read_text()
    assert 'class="verdict none"' in html and "No leakage detected at this sample size" in html


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        (lambda d: None, "no such directory"),
        (lambda d: d.mkdir(), "no results.json"),
        (lambda d: (d.mkdir(), (d / "results.json").write_text("{not json")), "not valid JSON"),
        (lambda d: (d.mkdir(), (d / "results.json").write_text('{"title": "x"}')), 'no "attacks"'),
        (
            lambda d: (d.mkdir(), (d / "results.json").write_text('{"attacks": {"a": {}}}')),
            'numeric "auc"',
        ),
    ],
)
def test_bad_run_directory(tmp_path: Path, setup: Any, why: str) -> None:
    d = tmp_path / "bad"
    setup(d)
    with pytest.raises(LplaError, match="not an lpla run directory") as err:
        build_report(d)
    assert why in str(err.value)


def test_corrupt_npz_is_a_clear_error(run_dir: Path) -> None:
    (run_dir / "norms.npz").write_bytes(b"garbage")
    with pytest.raises(LplaError, match=r"norms\.npz is unreadable"):
        build_report(run_dir)
    np.savez(
        run_dir / "norms.npz",
        p=np.array([2.0]),
        member=np.ones(4, np.int8),
        mean_norm=np.ones((4, 3)),
    )
    with pytest.raises(LplaError, match="mean_norm has shape"):
        build_report(run_dir)


# --- merge --------------------------------------------------------------------------------------


def test_merge_two_runs(tmp_path: Path) -> None:
    a, b = tmp_path / "runs" / "simclr", tmp_path / "runs" / "byol"
    write_run(a, probe=0.83, shift=0.8)
    # the same target recipe audited with a shadow of another framework: the knowledge table
    # compares the two settings on that one target
    write_run(b, probe=0.75, shift=0.3, seed=1, framework="simclr", knowledge="other-framework")
    out = build_report([a, b], tmp_path / "merged.html")
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [r["label"] for r in merged["runs"]] == ["simclr", "byol"]
    assert len(merged["rows"]) == 4
    row = next(r for r in merged["rows"] if r["label"] == "byol" and r["attack"] == "lpla")
    assert (row["framework"], row["knowledge"], row["linear_probe_acc"]) == (
        "simclr",
        "other-framework",
        0.75,
    )
    assert merged["auc_by_knowledge"]["lpla"].keys() == {"same", "other-framework"}
    # only one `same` run per attack: the rank correlation is undefined
    assert merged["tradeoff"]["lpla"] == {
        "n_encoders": 1,
        "spearman_auc_vs_probe": None,
        "p_value": None,
        "spearman_tpr1_vs_probe": None,
    }
    html = out.read_text()
    table = _table(html, "comparison-table")
    assert table.count("<tr data-run=") == 4
    assert f"{row['auc']:.3f}" in table and "0.750" in table
    assert 'id="tradeoff-plot"' in html and 'id="knowledge-plot"' in html
    assert _external_refs(html) == []
    # default output: merged.html in the runs' common parent
    assert build_report([a, b]) == tmp_path / "runs" / "merged.html"


def test_merge_spearman_across_three_runs(tmp_path: Path) -> None:
    dirs = []
    for i, (probe, shift) in enumerate([(0.6, 0.2), (0.7, 0.6), (0.8, 1.2)]):
        d = tmp_path / f"x{i}" / "run"  # same directory name: labels must become unique
        write_run(d, probe=probe, shift=shift, seed=i, norms=False, scores=False)
        dirs.append(d)
    build_report(dirs, tmp_path / "m.html")
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [r["label"] for r in merged["runs"]] == ["x0/run", "x1/run", "x2/run"]
    aucs = [r["auc"] for r in merged["rows"] if r["attack"] == "lpla"]
    assert aucs == sorted(aucs)  # larger shift, larger AUC
    assert merged["tradeoff"]["lpla"]["spearman_auc_vs_probe"] == pytest.approx(1.0)


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_report_runner(run_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpla.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert (run_dir / "report.html").is_file() and "wrote" in res.output
    other = tmp_path / "b"
    write_run(other, seed=3, norms=False, scores=False)
    res = runner.invoke(
        app, ["report", str(run_dir), str(other), "--out", str(tmp_path / "cmp.html")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp.html").is_file() and (tmp_path / "cmp.json").is_file()
    res = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert "lpla: error: not an lpla run directory" in res.output
    assert "Traceback" not in res.output


def test_cli_report_subprocess(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub.html"
    res = subprocess.run(
        [sys.executable, "-m", "lpla.cli", "report", str(run_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert len(_data_uris(out.read_text())) == 4
    (tmp_path / "empty").mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "lpla.cli", "report", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "not an lpla run directory" in res.stderr and "no results.json" in res.stderr
    assert "Traceback" not in res.stderr


# --- a real browser -----------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="real-browser check needs Debian's chromium at /usr/bin/chromium "
    "(apt-get install -y chromium)",
)


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless chromium with no network, no profile state and nothing in the background."""
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class _DomScan:
    """Collect img elements and the attack table's rows from a serialised DOM."""

    def __init__(self, dom: str) -> None:
        from html.parser import HTMLParser

        self.images: dict[str, str] = {}
        self.attack_rows: list[str] = []
        scan = self

        class Parser(HTMLParser):
            in_table = False

            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                a = dict(attrs)
                if tag == "img":
                    scan.images[a.get("id") or f"img{len(scan.images)}"] = a.get("src") or ""
                if tag == "table" and a.get("id") == "attack-table":
                    self.in_table = True
                if tag == "tr" and self.in_table and a.get("data-attack"):
                    scan.attack_rows.append(a["data-attack"] or "")

            def handle_endtag(self, tag: str) -> None:
                if tag == "table":
                    self.in_table = False

        Parser().feed(dom)


@needs_chromium
def test_chromium_renders_the_report(run_dir: Path, tmp_path: Path) -> None:
    report = build_report(run_dir)
    res = _chromium(tmp_path, "--dump-dom", report.resolve().as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    scan = _DomScan(dom)
    assert {"roc-plot", "norm-hist", "auc-vs-k", "score-hist"} <= set(scan.images)
    for src in scan.images.values():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert scan.attack_rows == ["lpla", "encodermi-t"]
    results = json.loads((run_dir / "results.json").read_text())
    assert f"{results['attacks']['lpla']['auc']:.3f}" in dom
    assert "Leaks membership" in dom


@needs_chromium
def test_chromium_screenshot_shows_the_plots(run_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    report = build_report(run_dir)
    shot = tmp_path / "shot.png"
    res = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1280,2400", report.resolve().as_uri()
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.read_bytes().startswith(PNG_MAGIC)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape == (2400, 1280, 3)
    # the attacks' curve colours (tab10 blue and orange) occur only inside the embedded plots,
    # so finding them proves the browser decoded and drew the images
    for rgb in ((31, 119, 180), (255, 127, 14)):
        assert (np.abs(pixels - np.array(rgb)).sum(axis=-1) < 30).sum() > 200, rgb
