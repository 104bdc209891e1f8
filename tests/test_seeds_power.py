"""Statistics an audit can stand on: >= 1000 non-members by default, intervals across training
seeds, and a trade-off correlation whose interval includes seed variation (issue #10)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import t

from lpla.audit import AuditConfig, target_split
from lpla.audit.run import split_sizes
from lpla.report.tables import seeds_summary, spearman_seed_bootstrap


def test_default_audit_evaluates_a_thousand_nonmembers() -> None:
    split = target_split(AuditConfig())
    assert split.sizes["target_member"] == 128
    assert split.sizes["target_nonmember"] == 1000
    assert split.sizes["reference"] == 1000
    # a small pool gets what it leaves, not an error
    assert split_sizes(AuditConfig(members=128), 1797) == (706, 707)
    assert split_sizes(AuditConfig(nonmembers=50, reference=20), 10_000) == (50, 20)


def _entry(auc: float, tpr: float | None) -> dict:
    return {"auc": auc, "tpr_at_fpr": {"0.01": tpr, "0.001": None}}


def test_seeds_summary_is_a_t_interval_over_seeds() -> None:
    runs = [
        {"attacks": {"a": _entry(x, y)}, "utility": {"linear_probe_acc": p}}
        for x, y, p in [(0.60, 0.02, 0.80), (0.64, 0.04, 0.81), (0.68, 0.03, 0.82)]
    ]
    s = seeds_summary(runs)
    a = s["attacks"]["a"]
    assert s["n_seeds"] == 3 and a["auc"] == [0.60, 0.64, 0.68]
    assert a["auc_mean"] == pytest.approx(0.64) and a["auc_sd"] == pytest.approx(0.04)
    half = t.ppf(0.975, 2) * 0.04 / np.sqrt(3)  # 0.0994
    assert a["auc_ci95_seeds"] == pytest.approx([0.64 - half, 0.64 + half])
    assert a["tpr_at_fpr_mean"]["0.01"] == pytest.approx(0.03)
    assert a["tpr_at_fpr_mean"]["0.001"] is None  # undefined in any seed: undefined
    assert s["linear_probe_acc_mean"] == pytest.approx(0.81)
    assert seeds_summary(runs[:1])["attacks"]["a"]["auc_ci95_seeds"] is None
    # rates stay rates: a wide interval around a small TPR is clipped at 0
    spread = [{"attacks": {"a": _entry(0.6, y)}} for y in (0.0, 0.06, 0.0)]
    assert seeds_summary(spread)["attacks"]["a"]["tpr_at_fpr_ci95_seeds"]["0.01"][0] == 0.0


def test_tradeoff_interval_widens_with_seed_noise() -> None:
    probes = np.linspace(0.7, 0.9, 8)
    exact = [{"seed_points": [[p, 0.5 + p / 2]] * 3} for p in probes]
    assert spearman_seed_bootstrap(exact) == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(1)
    noisy = [
        {"seed_points": [[p, 0.5 + p / 2 + rng.normal(0, 0.2)] for _ in range(3)]} for p in probes
    ]
    lo, hi = spearman_seed_bootstrap(noisy)
    assert lo < 0.3 and hi > 0.7  # seed noise this large leaves the sign of rho open
    assert spearman_seed_bootstrap(exact[:2]) is None


@pytest.mark.slow
def test_audit_with_seeds_reports_across_seed_intervals(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpla.cli import app

    cfg = tmp_path / "audit.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "members": 16,
                "nonmembers": 64,
                "reference": 64,
                "views": 3,
                "views_grid": [1, 3],
                "n_bootstrap": 50,
                "utility": False,
                "target": {"framework": "simclr", "backbone": "mlp", "epochs": 2, "batch_size": 16},
            }
        )
    )
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["audit", "--config", cfg, "--seeds", "2", "--out", out])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    seeds = results["across_seeds"]
    assert seeds["n_seeds"] == 2 and seeds["runs"] == ["seeds/seed0", "seeds/seed1"]
    splits = [json.loads((out / r / "results.json").read_text())["split"] for r in seeds["runs"]]
    assert splits[0]["fingerprint"] == splits[1]["fingerprint"]  # same split, other training
    aucs = seeds["attacks"]["norm-threshold"]["auc"]
    assert len(aucs) == 2 and aucs[0] != aucs[1]
    assert results["split"]["sizes"]["target_nonmember"] == 64
    html = (out / "report.html").read_text()
    assert 'id="seeds-table"' in html and "Across 2 training seeds" in html
    assert "across 2 training seeds" in res.output
