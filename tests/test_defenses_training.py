"""Training-side defenses, the utility cost of every defense, and `lpla audit --defense` end to end.

What must hold: a spec is parsed and validated once, for both kinds, with one-line errors that
name the fix; each training-side defense changes the target's recipe as documented (and nothing
else); the utility of served features follows what the defense does to them; an audit writes the
``defenses`` list with ``none`` first, trains the defended target like the target but for the
change, and reports the frontier.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from torch import nn

from lpla.audit import AuditConfig, EncoderSpec
from lpla.data.base import ArrayDataset
from lpla.defenses import (
    STRONG_JITTER,
    TrainingDefense,
    check_defense,
    create_defense,
    create_training_defense,
    defense_kind,
    defense_slug,
    list_defenses,
    parse_defense,
)
from lpla.defenses.cost import served_utility
from lpla.errors import LplaError
from lpla.ssl.config import TrainConfig
from lpla.utility import evaluate_utility

# --- specs ---------------------------------------------------------------------------------------


def test_one_spec_language_for_both_kinds() -> None:
    assert parse_defense("early-stop:100") == ("early-stop", 100.0)
    assert parse_defense(" strong-aug ") == ("strong-aug", None)
    assert [defense_kind(s) for s in ("noise:0.1", "none", "weight-decay:0.5")] == [
        "output",
        "output",
        "training",
    ]
    assert isinstance(check_defense("early-stop:10"), TrainingDefense)
    # equal specs share one directory name; other levels do not
    assert defense_slug("noise:0.5") == defense_slug("noise:0.50") == "noise-0.5"
    assert defense_slug("weight-decay:5e-4") == "weight-decay-0.0005"
    assert defense_slug("l2-normalize") == "l2-normalize"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dp-sgd:8", "dp-sgd is not offered: DP-SGD's epsilon assumes"),
        ("dp-sgd", "NT-Xent's negatives"),
        ("blur:3", "unknown defense 'blur'"),
        ("early-stop", r"early-stop needs a level, e\.g\. early-stop:100"),
        ("early-stop:1.5", "whole number of epochs"),
        ("early-stop:0", "whole number of epochs >= 1"),
        ("strong-aug:1.5", r"crop scale in \(0, 1\]"),
        ("strong-aug:0", r"crop scale in \(0, 1\]"),
        ("weight-decay", "weight-decay needs a level"),
        ("weight-decay:0", "must be > 0"),
        ("early-stop:ten", "must be a number"),
    ],
)
def test_bad_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(LplaError, match=message) as info:
        check_defense(spec)
    assert "\n" not in str(info.value)


def test_each_kind_is_refused_where_it_cannot_be_measured() -> None:
    with pytest.raises(LplaError, match=r"early-stop:10 is a training-side defense.*not --encoder"):
        create_defense("early-stop:10")
    with pytest.raises(LplaError, match=r"noise:0\.1 is an output-side defense"):
        create_training_defense("noise:0.1")


# --- what each training-side defense changes -----------------------------------------------------

AUDIT_RECIPE = EncoderSpec().train_fields() | {"optimizer": "adam"}

#: spec -> the TrainConfig fields it must set on the audit's default recipe (docs/method.md §7b)
EXPECTED = {
    "early-stop:100": {"epochs": 100},
    "strong-aug:0.2": {"crop_scale_min": 0.2, "jitter": STRONG_JITTER},
    "weight-decay:0.5": {"weight_decay": 0.5, "optimizer": "adamw"},
}


def test_every_training_defense_is_covered() -> None:
    assert sorted(parse_defense(s)[0] for s in EXPECTED) == list_defenses(kind="training")


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_training_defense_changes_the_recipe_as_documented(spec: str) -> None:
    changes = create_training_defense(spec).changes(AUDIT_RECIPE)
    assert changes == EXPECTED[spec]
    assert all(AUDIT_RECIPE[k] != v for k, v in changes.items())  # each change is a change
    defended = TrainConfig(**(AUDIT_RECIPE | changes))  # a valid recipe
    for field, value in AUDIT_RECIPE.items():
        assert getattr(defended, field) == changes.get(field, value)


def test_the_defaults_and_the_recipe_decide_the_details() -> None:
    assert create_training_defense("strong-aug").changes({"crop_scale_min": 0.8}) == {
        "crop_scale_min": 0.2,
        "jitter": None,  # the framework's own recipe's jitter, already the paper's
    }
    assert create_training_defense("strong-aug:0.5").changes({"jitter": 0.6})["jitter"] == 0.6
    # SGD's L2 term already is weight decay: it stays SGD
    sgd = create_training_defense("weight-decay:0.01").changes({"optimizer": "sgd"})
    assert sgd == {"weight_decay": 0.01, "optimizer": "sgd"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("early-stop:500", "does not stop early: the target trains for 500 epochs"),
        ("early-stop:900", r"give fewer, e\.g\. early-stop:100"),
        ("strong-aug:0.9", r"crops less than the target's recipe \(crop_scale_min 0\.8\)"),
    ],
)
def test_a_level_that_would_not_defend_fails_before_training(spec: str, message: str) -> None:
    with pytest.raises(LplaError, match=message):
        create_training_defense(spec).changes(AUDIT_RECIPE)
    with pytest.raises(LplaError, match=message):
        AuditConfig(defenses=(spec,)).validate()


def test_a_defense_given_twice_is_an_error() -> None:
    with pytest.raises(LplaError, match=r"defense noise:0\.50 is the same as noise:0\.5"):
        AuditConfig(defenses=("noise:0.5", "noise:0.50")).validate()
    AuditConfig(defenses=("none", "noise:0.5", "early-stop:100")).validate()


# --- the utility cost of output-side defenses ---------------------------------------------------


def _quadrants(n: int, seed: int, split: str) -> ArrayDataset:
    """8x8 images of 4 classes: class c lights quadrant c, plus pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    images = rng.integers(0, 60, size=(n, 1, 8, 8))
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 2)
        images[i, 0, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 150
    return ArrayDataset(images.astype(np.uint8), labels, name="quadrants", split=split)


@pytest.fixture(scope="module")
def probe_data() -> tuple[ArrayDataset, ArrayDataset]:
    return _quadrants(200, 0, "train"), _quadrants(100, 1, "test")


def test_served_utility_follows_what_the_defense_does(probe_data) -> None:
    train, test = probe_data
    encoder = nn.Flatten()  # pixels as features: the classes are separable
    reference = np.random.default_rng(2).normal(2.0, 1.0, size=(50, 1, 64)).astype(np.float32)
    fitted = {
        spec: create_defense(spec).fit(reference)
        for spec in ("noise:0.05", "noise:20", "l2-normalize")
    }
    got = served_utility(encoder, train, test, {"none": None, **fitted}, train_limit=None)
    clean = evaluate_utility(encoder, train, test, train_limit=None, pixel_baseline=False)
    # none: the very numbers evaluate_utility gives
    assert got["none"] == {"linear_probe": clean["linear_probe_acc"], "knn": clean["knn_acc"]}
    assert got["none"]["knn"] > 0.95 and got["none"]["linear_probe"] > 0.95
    # unit-L2 answers keep every cosine, so the cosine kNN is unchanged
    assert got["l2-normalize"]["knn"] == got["none"]["knn"]
    # a little noise costs little; noise 20x the answers' norm leaves about chance (1/4)
    assert got["noise:0.05"]["knn"] > 0.9
    assert got["noise:20"]["knn"] < 0.45 and got["noise:20"]["linear_probe"] < 0.45


def test_probe_images_are_served_under_their_own_indices(probe_data) -> None:
    """Train image i gets the noise of index i (its defended clean view); test images get
    indices no train image has, so a train and a test image never share noise."""
    train, test = probe_data
    reference = np.ones((4, 1, 64), np.float32)
    noise = create_defense("noise:1", seed=3).fit(reference)
    seen: list[np.ndarray] = []
    original = noise.apply

    def spy(z: np.ndarray, index: np.ndarray) -> np.ndarray:
        seen.append(np.asarray(index).copy())
        return original(z, index)

    noise.apply = spy  # type: ignore[method-assign]
    served_utility(nn.Flatten(), train, test, {"noise": noise}, train_limit=None)
    train_index, test_index = seen
    np.testing.assert_array_equal(train_index, np.arange(200))
    np.testing.assert_array_equal(test_index, 200 + np.arange(100))


# --- lpla audit --defense end to end -----------------------------------------------------------

TINY = {
    "members": 16,
    "nonmembers": 200,
    "reference": 200,
    "views": 3,
    "views_grid": [1, 3],
    "n_bootstrap": 50,
    "utility_train_limit": 500,
    "target": {"framework": "simclr", "backbone": "mlp", "epochs": 4, "batch_size": 16},
}


@pytest.mark.slow
def test_audit_reports_each_defense_with_its_utility(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lpla.cli import app

    config = tmp_path / "audit.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    args = ["audit", "--config", str(config), "--out", str(out)]
    args += ["--defense", "noise:0.5", "--defense", "early-stop:2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    entries = results["defenses"]
    assert [e["defense"] for e in entries] == ["none", "noise:0.5", "early-stop:2"]
    assert [e["kind"] for e in entries] == ["none", "output", "training"]
    for e in entries:
        assert set(e["attacks"]) == set(results["attacks"])  # the same attacks, every defense
        for name, entry in e["attacks"].items():
            # the shape of results["attacks"] entries, less the ROC points and parameters
            assert set(entry) == set(results["attacks"][name]) - {"roc", "params", "fitted"}
        assert 0.0 <= e["utility"]["linear_probe"] <= 1 and 0.0 <= e["utility"]["knn"] <= 1
    none, noise, early = entries
    assert none["attacks"]["lpla"]["auc"] == results["attacks"]["lpla"]["auc"]
    # none's utility is the target's, measured the same way
    assert none["utility"]["linear_probe"] == results["utility"]["linear_probe_acc"]
    assert none["utility"]["knn"] == results["utility"]["knn_acc"]
    assert noise["utility"] != none["utility"]
    # the defended target: the target's recipe and seed, two epochs, on the same split
    assert early["changes"] == {"epochs": 2} and early["encoder"] == "defenses/early-stop-2/target"
    target_meta = json.loads((out / "target" / "checkpoint.json").read_text())
    defended_meta = json.loads((out / early["encoder"] / "checkpoint.json").read_text())
    assert defended_meta["split_fingerprint"] == target_meta["split_fingerprint"]
    assert defended_meta["train_seed"] == target_meta["train_seed"]
    assert defended_meta["epochs"] == 2 and target_meta["epochs"] == 4
    differ = {
        k
        for k, v in defended_meta["config"].items()
        if target_meta["config"].get(k) != v and k not in ("out", "progress", "resume")
    }
    assert differ == {"epochs", "utility"}  # utility: measured by the audit, not at training
    html = (out / "report.html").read_text()
    assert 'id="defense-table"' in html and 'id="frontier-plot"' in html
    assert 'data-defense="early-stop:2"' in html
    # a re-run trains nothing again: the defended target and every utility are cached
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "[run] train" not in again.output and "[run] utility" not in again.output
    assert json.loads((out / "results.json").read_text())["defenses"] == entries


# --- across seeds and in a study -----------------------------------------------------------------


def _run(probe: float, aucs: dict[str, float]) -> dict:
    """A replicate's results.json, reduced to what the defense summaries read."""

    def entry(auc: float) -> dict:
        return {
            "auc": auc,
            "auc_ci95": [auc - 0.05, auc + 0.05],
            "tpr_at_fpr": {"0.001": 0.0, "0.01": round(auc - 0.55, 3)},
            "tpr_at_fpr_ci95": {"0.001": [0.0, 0.01], "0.01": [0.0, 0.3]},
            "advantage": 0.2,
        }

    defenses = [
        {
            "defense": spec,
            "kind": kind,
            "utility": {"linear_probe": probe - cost, "knn": probe - cost - 0.02},
            "attacks": {"lpla": entry(aucs[spec] - 0.05), "encodermi-t": entry(aucs[spec])},
        }
        for spec, kind, cost in (("none", "none", 0.0), ("early-stop:50", "training", 0.02))
    ]
    return {
        "attacks": defenses[0]["attacks"],
        "utility": {"linear_probe_acc": probe, "knn_acc": probe - 0.02},
        "defenses": defenses,
    }


def test_defenses_across_seeds_average_utility_and_leakage() -> None:
    from lpla.report.defenses import defenses_across_seeds

    runs = [
        _run(0.83, {"none": 0.78, "early-stop:50": 0.62}),
        _run(0.81, {"none": 0.80, "early-stop:50": 0.64}),
        _run(0.82, {"none": 0.79, "early-stop:50": 0.60}),
    ]
    summary = {e["defense"]: e for e in defenses_across_seeds(runs)}
    assert list(summary) == ["none", "early-stop:50"]
    early = summary["early-stop:50"]
    assert early["n_seeds"] == 3 and early["kind"] == "training"
    assert early["utility"]["linear_probe"] == pytest.approx(0.80)
    assert early["utility"]["linear_probe_per_seed"] == pytest.approx([0.81, 0.79, 0.80])
    t = early["attacks"]["encodermi-t"]
    assert t["auc"] == [0.62, 0.64, 0.60] and t["auc_mean"] == pytest.approx(0.62)
    lo, hi = t[
        "auc_ci95_seeds"
    ]  # mean +- t(0.975, 2) * sd / sqrt(3) = 0.62 +- 4.303 * 0.02 / 1.732
    assert (lo, hi) == pytest.approx((0.62 - 0.04969, 0.62 + 0.04969), abs=1e-4)


def test_a_study_writes_the_frontier(tmp_path: Path) -> None:
    from lpla.study import cell_defense_rows, cell_rows, write_study_outputs

    results = _run(0.83, {"none": 0.78, "early-stop:50": 0.62})
    cfg = AuditConfig()
    write_study_outputs(
        cell_rows("cell", cfg, results),
        tmp_path,
        "a study",
        defenses=cell_defense_rows("cell", results),
    )
    summary = json.loads((tmp_path / "study.json").read_text())
    assert [p["defense"] for p in summary["defenses"]] == ["none", "early-stop:50"]
    early = summary["defenses"][1]
    assert early["attack"] == "encodermi-t"
    assert (early["auc"], early["linear_probe"]) == pytest.approx((0.62, 0.81))
    # early-stop:50 costs 0.02 of probe accuracy for 0.16 of AUC: both are on the frontier
    assert summary["frontier"]["cell"]["auc"] == ["early-stop:50", "none"]
    csv_lines = (tmp_path / "defenses.csv").read_text().splitlines()
    assert csv_lines[0].startswith("cell,defense,kind,n_seeds,linear_probe,knn,attack,auc")
    assert len(csv_lines) == 3
    assert (tmp_path / "frontier.png").read_bytes().startswith(b"\x89PNG")
    md = (tmp_path / "study.md").read_text()
    assert "## Defenses: the privacy-utility frontier" in md
    assert "| cell | early-stop:50 * | training | 0.810 | 0.790 | encodermi-t | 0.620 |" in md
