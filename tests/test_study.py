"""`lpla study`: a tiny grid end to end, and the trade-off statistics on known rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lpla.audit import AuditConfig, EncoderSpec
from lpla.study import PRESETS, StudyGrid, run_study, spearman, tradeoff_summary


def test_presets_have_the_promised_cells() -> None:
    quick = PRESETS.get("cpu-quick")()
    names = [n for n, _ in quick.cells()]
    assert len(names) == len(set(names)) == 16
    assert all(c.dataset == "fashion-mnist" for _, c in quick.cells())
    paper = PRESETS.get("paper")()
    assert {c.dataset for _, c in paper.cells()} == {"cifar10"}
    assert {c.target.backbone for _, c in paper.cells()} == {"resnet18", "resnet50"}
    assert len({c.target.framework for _, c in paper.cells()}) == 7


def test_spearman_hand_cases() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40])[0] == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) == (None, None)
    rows = [
        {"knowledge": "same", "attack": "a", "linear_probe_acc": x, "auc": y, "tpr_at_1pct_fpr": y}
        for x, y in [(0.8, 0.6), (0.82, 0.62), (0.85, 0.7), (0.9, 0.65)]
    ]
    s = tradeoff_summary(rows)["a"]
    assert s["n_encoders"] == 4 and s["spearman_auc_vs_probe"] == pytest.approx(0.8)


@pytest.mark.slow
def test_tiny_study_runs_resumes_and_shares_targets(tmp_path: Path) -> None:
    base = AuditConfig(
        members=16,
        views=3,
        views_grid=(1, 3),
        n_bootstrap=50,
        utility=False,
        target=EncoderSpec(epochs=2, batch_size=16),
    )
    grid = StudyGrid(
        base=base,
        frameworks=("simclr", "vicreg"),
        epochs=(2,),
        knowledge=("same", "other-backbone"),
    )
    logs: list[str] = []
    rows = run_study(grid, tmp_path, log=logs.append)
    assert {r["framework"] for r in rows} == {"simclr", "vicreg"}
    assert {r["knowledge"] for r in rows} == {"same", "other-backbone"}
    for f in ("study.csv", "study.md", "study.json"):
        assert (tmp_path / f).is_file()
    summary = json.loads((tmp_path / "study.json").read_text())
    assert set(summary["auc_by_knowledge"]["lpla"]) == {"same", "other-backbone"}
    # the other-backbone cell reused the target trained by the same-knowledge cell
    other = "\n".join(
        logs[logs.index(next(m for m in logs if "simclr_mlp_e2_other-backbone" in m)) :]
    )
    assert "[shared] train_target" in other and "[run] train_shadow" in other
    # a second run recomputes nothing that was trained
    logs2: list[str] = []
    run_study(dataclasses.replace(grid), tmp_path, log=logs2.append)
    assert not any("[run] train" in m for m in logs2)


def test_study_cli_dry_run() -> None:
    from typer.testing import CliRunner

    from lpla.cli import app

    res = CliRunner().invoke(app, ["study", "--preset", "cpu-quick", "--dry-run"])
    assert res.exit_code == 0 and "16 cells" in res.output
    bad = CliRunner().invoke(app, ["study", "--preset", "nope", "--dry-run"])
    assert bad.exit_code == 2 and "unknown study preset" in bad.output


def test_calibrated_presets_cross_member_sizes_and_epochs() -> None:
    cpu = PRESETS.get("calibrated-cpu")()
    cells = dict(cpu.cells())
    assert len(cells) == 6
    assert {(c.members, c.target.epochs) for c in cells.values()} == {
        (n, e) for n in (128, 512, 2048) for e in (100, 500)
    }
    assert all(c.reference_models == 8 for c in cells.values())
    assert "simclr_mlp_n2048_e500_same" in cells
    for c in cells.values():  # every attack it names exists, and the split fits the pool
        c.validate()
    gpu = PRESETS.get("calibrated-gpu")()
    assert all(c.reference_models >= 16 and c.dataset == "cifar10" for _, c in gpu.cells())


def test_calibrated_table_compares_the_two_families() -> None:
    from lpla.study import calibrated_markdown, per_image

    assert per_image("lpla-rmia-offline") and not per_image("lpla")
    base = {"cell": "c", "members": 128, "epochs": 500, "reference_models": 8}
    rows = [
        base
        | {"attack": a, "auc": auc, "auc_lo": auc - 0.05, "auc_hi": auc + 0.05}
        | {"tpr_at_1pct_fpr": t, "tpr_at_1pct_fpr_ci95": [0.0, t + 0.01]}
        | {"tpr_at_0.1pct_fpr": 0.0, "tpr_at_0.1pct_fpr_ci95": [0.0, 0.01], "n_nonmembers": 1000}
        for a, auc, t in [
            ("lpla", 0.61, 0.01),
            ("encodermi-t", 0.62, 0.02),
            ("lpla-lira", 0.69, 0.06),
        ]
    ]
    text = "\n".join(calibrated_markdown(rows))
    assert "| 128 | 500 | 8 | 1000 | lpla-lira | per-image | 0.690 [0.640, 0.740]" in text
    assert "| c | encodermi-t | 0.020 | 0.620 | lpla-lira | 0.060 | 0.690 |" in text
    assert calibrated_markdown([{**rows[0], "reference_models": 0}]) == []
