"""`lpla study`: a grid of cached audits and the performance-privacy trade-off across it.

Each cell of the grid (framework x backbone x epochs x knowledge setting) is one
:func:`lpla.audit.run_audit` in its own directory, so a study resumes where it stopped. Cells that
differ only in the attacker's knowledge share the target encoder of the ``same``-knowledge cell
(``AuditConfig.target_dir``) instead of training it again.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpla.audit import AuditConfig, EncoderSpec, encoder_dir, run_audit
from lpla.errors import LplaError
from lpla.io import read_json, write_json_atomic, write_text_atomic
from lpla.registry import Registry
from lpla.report.defenses import defense_entries, frontier_points, pareto_front
from lpla.report.tables import (
    knowledge_table,
    spearman,
    tradeoff_points,
    tradeoff_summary,
    views_table,
)

__all__ = [
    "PRESETS",
    "StudyGrid",
    "cell_defense_rows",
    "cell_rows",
    "run_study",
    "spearman",
    "tradeoff_summary",
    "write_study_outputs",
]


@dataclass
class StudyGrid:
    """The axes of a study; every combination is one audit."""

    base: AuditConfig
    frameworks: tuple[str, ...] = ("simclr",)
    backbones: tuple[str, ...] = ("mlp",)
    epochs: tuple[int, ...] = (300,)
    knowledge: tuple[str, ...] = ("same",)
    description: str = ""
    # "all": every knowledge setting at every training length; "longest": other settings only at the
    # longest (knowledge cells share the target, so this keeps the study's cost down).
    knowledge_at: str = "all"
    # Per-backbone overrides of the target recipe (e.g. a smaller batch for a larger backbone).
    backbone_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Member-set sizes n (the target trains on n images); empty: the base config's only. Cells of
    # an n-axis are named ``..._n{n}_e{epochs}_...``.
    members: tuple[int, ...] = ()

    def cells(self) -> list[tuple[str, AuditConfig]]:
        out = []
        sizes: tuple[int | None, ...] = self.members or (None,)
        for fw, bb, n, ep, kn in itertools.product(
            self.frameworks, self.backbones, sizes, self.epochs, self.knowledge
        ):
            if kn != "same" and self.knowledge_at == "longest" and ep != max(self.epochs):
                continue
            spec = dataclasses.replace(
                self.base.target,
                framework=fw,
                backbone=bb,
                epochs=ep,
                **self.backbone_overrides.get(bb, {}),
            )
            members = self.base.members if n is None else n
            title = f"{fw} / {bb} / " + ("" if n is None else f"n={n} / ") + f"{ep} epochs / {kn}"
            cfg = dataclasses.replace(
                self.base, target=spec, knowledge=kn, members=members, title=title
            )
            size = "" if n is None else f"_n{n}"
            out.append((f"{fw}_{bb}{size}_e{ep}_{kn.replace('+', '-')}", cfg))
        return out


PRESETS: Registry[Callable[[], StudyGrid]] = Registry("study preset")


@PRESETS.register(
    "cpu-quick",
    "4 frameworks x 2 training lengths on embedded Fashion-MNIST + knowledge settings (2 CPUs)",
)
def _cpu_quick() -> StudyGrid:
    base = AuditConfig(n_bootstrap=500, seeds=3)
    return StudyGrid(
        base=base,
        frameworks=("simclr", "byol", "vicreg", "barlow-twins"),
        backbones=("mlp",),
        epochs=(100, 500),
        knowledge=("same", "other-framework", "other-backbone"),
        knowledge_at="longest",
        description=(
            "CPU scale: embedded Fashion-MNIST, 128 stratified members, MLP backbone, weak "
            "augmentation (crop 0.8-1, jitter 0.2), K = 10 views with a clean view 0; 4 frameworks "
            "x 100/500 epochs, "
            "and at 500 epochs the attacker's shadow also with another framework or backbone."
        ),
    )


#: the paper-scale target recipe (GPU): SimCLR ResNet-18, the paper's CIFAR augmentation
PAPER_TARGET = EncoderSpec(
    framework="simclr",
    backbone="resnet18",
    epochs=500,
    batch_size=512,
    lr=1e-3,
    augmentation="simclr",
    crop_scale_min=0.2,
    jitter=0.4,
)

#: the attacks of the calibrated studies: population attacks next to per-image ones (the MLP
#: attacks encodermi-v/-s are left out: fitted on M references x thousands of candidates, they
#: would cost more than the rest of the study; pass --attacks to add them)
CALIBRATED_ATTACKS = (
    "norm-threshold",
    "lpla",
    "lpla-ref",
    "encodermi-t",
    "lpla-lira",
    "lpla-lira-offline",
    "lpla-rmia",
    "lpla-rmia-offline",
    "encodermi-t-lira",
    "encodermi-t-lira-offline",
    "lira-combined",
)


@PRESETS.register(
    "calibrated-cpu",
    "population vs per-image attacks, 8 reference encoders, n = 128/512/2048 x 100/500 epochs",
)
def _calibrated_cpu() -> StudyGrid:
    base = AuditConfig(reference_models=8, attacks=CALIBRATED_ATTACKS)
    return StudyGrid(
        base=base,
        members=(128, 512, 2048),
        epochs=(100, 500),
        description=(
            "CPU scale: the default recipe (SimCLR, MLP, embedded Fashion-MNIST, weak "
            "augmentation, K = 10 views with a clean view 0) with the target trained on n = "
            "128 / 512 / 2048 stratified members for 100 or 500 epochs and evaluated on 1,000 "
            "non-members; 8 reference encoders trained together on random member sets of the "
            "candidates (a keep matrix); population attacks fitted on the same references."
        ),
    )


@PRESETS.register(
    "calibrated-gpu", "paper scale: CIFAR-10 ResNet-18, 16 reference encoders, n = 1k/5k/20k (GPU)"
)
def _calibrated_gpu() -> StudyGrid:
    target = PAPER_TARGET
    base = AuditConfig(
        dataset="cifar10",
        target=target,
        reference_models=16,
        nonmembers=5000,
        reference=5000,
        attacks=CALIBRATED_ATTACKS,
        device="auto",
    )
    return StudyGrid(
        base=base,
        members=(1000, 5000, 20000),
        epochs=(100, 500),
        backbones=("resnet18",),
        description=(
            "Paper scale (GPU): CIFAR-10, SimCLR ResNet-18 (crop 0.2-1, jitter 0.4), n = 1k / 5k "
            "/ 20k members x 100 / 500 epochs, 5,000 non-members, 16 reference encoders."
        ),
    )


#: ``defenses-cpu``'s grid of defense levels on the default recipe (docs/results.md §5)
DEFENSES_CPU = (
    "noise:0.2",
    "noise:0.5",
    "noise:1",
    "quantize:3",
    "quantize:1",
    "l2-normalize",
    "early-stop:50",
    "early-stop:150",
    "strong-aug:0.5",
    "strong-aug:0.2",
    "weight-decay:0.5",
    "weight-decay:5",
)


@PRESETS.register(
    "defenses-cpu",
    "the default audit under 12 defense levels (noise, quantize, l2-normalize, early-stop, "
    "strong-aug, weight-decay) x 3 seeds: the privacy-utility frontier (2 idle CPUs, ~20 min)",
)
def _defenses_cpu() -> StudyGrid:
    # Cost per seed on 2 idle cores, from the default audit's stage times (docs/results.md §1)
    # and defenses-demo's: the audit ~2.3 min, an output-side defense ~15 s (attacks without the
    # K grid + one probe), a training-side one ~25 s (train, query, attack, probe): ~6.5 min.
    base = AuditConfig(n_bootstrap=500, seeds=3, defenses=DEFENSES_CPU)
    return StudyGrid(
        base=base,
        epochs=(base.target.epochs,),
        description=(
            "The default audit recipe (SimCLR, MLP, 128 members of embedded Fashion-MNIST, "
            f"{base.target.epochs} epochs, weak augmentation) under output-side defenses "
            "(noise, quantize, l2-normalize) and training-side ones (early-stop, strong-aug, "
            f"weight-decay), {base.seeds} training seeds: each defense's strongest attack "
            "against the linear-probe accuracy of what the defended encoder serves."
        ),
    )


@PRESETS.register("paper", "CIFAR-10 ResNet-18/50, 7 frameworks, hundreds of epochs (GPU)")
def _paper() -> StudyGrid:
    target = PAPER_TARGET
    base = AuditConfig(
        dataset="cifar10", members=10000, target=target, views=10, device="auto", seeds=3
    )
    return StudyGrid(
        base=base,
        frameworks=("simclr", "moco-v2", "byol", "simsiam", "barlow-twins", "vicreg", "dino"),
        backbones=("resnet18", "resnet50"),
        epochs=(200, 500, 800),
        knowledge=("same", "other-framework", "other-backbone", "other-data"),
        description="Paper scale (GPU): CIFAR-10 with CIFAR-100 as other data; ResNet-18/50.",
        backbone_overrides={"resnet50": {"batch_size": 256}},
    )


def run_study(
    grid: StudyGrid,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    only: Callable[[str], bool] | None = None,
    tables_only: bool = False,
) -> list[dict[str, Any]]:
    """Run (or resume) every cell, then write the table, the trade-off plot and the summary.

    ``tables_only`` runs nothing: it rebuilds the outputs from the cells' saved results.json
    (cells not finished yet are listed and left out).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    defenses: list[dict[str, Any]] = []
    cells = grid.cells()
    for i, (name, cfg) in enumerate(cells, 1):
        if only is not None and not only(name):
            continue
        cell_dir = out / "cells" / name
        if tables_only:
            if (cell_dir / "results.json").is_file():
                saved = read_json(cell_dir / "results.json")
                rows.extend(cell_rows(name, cfg, saved))
                defenses.extend(cell_defense_rows(name, saved))
            else:
                log(f"[missing] {name}: no results.json yet")
            continue
        if cfg.knowledge != "same":  # the same target as the `same` cell: train it once
            base_dir = out / "cells" / (name.rsplit("_", 1)[0] + "_same")
            if not (base_dir / "results.json").is_file():
                base_cfg = dataclasses.replace(
                    cfg, knowledge="same", title=cfg.title.rsplit(" / ", 1)[0]
                )
                run_audit(base_cfg, base_dir, log=lambda m: log("    " + m))
            # one checkpoint, or (with --seeds) the run directory holding one per replicate
            shared = encoder_dir(cfg, base_dir, "target").path if cfg.seeds == 1 else base_dir
            cfg = dataclasses.replace(cfg, target_dir=str(shared))
        log(f"[{i}/{len(cells)}] {name}")
        results = run_audit(cfg, cell_dir, log=lambda m: log("    " + m))
        rows.extend(cell_rows(name, cfg, results))
        defenses.extend(cell_defense_rows(name, results))
    write_study_outputs(rows, out, grid.description, defenses=defenses)
    return rows


def cell_defense_rows(name: str, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One frontier point per defense of a cell: the means over its seeds when it has several."""
    seeds = (results.get("across_seeds") or {}).get("defenses")
    points = frontier_points(seeds or defense_entries(results))
    return [{"cell": name} | p for p in points]


def cell_rows(name: str, cfg: AuditConfig, results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per attack; with --seeds the means over seeds, their t-interval and the per-seed
    (probe, AUC) points that the trade-off's interval resamples."""
    util = results.get("utility") or {}
    seeds = results.get("across_seeds")
    rows = []
    for attack, r in results["attacks"].items():
        row = {
            "cell": name,
            "dataset": cfg.dataset,
            "framework": cfg.target.framework,
            "backbone": cfg.target.backbone,
            "epochs": cfg.target.epochs,
            "knowledge": cfg.knowledge,
            "attack": attack,
            "n_seeds": 1,
            "auc": r["auc"],
            "auc_lo": r["auc_ci95"][0],
            "auc_hi": r["auc_ci95"][1],
            "tpr_at_1pct_fpr": r["tpr_at_fpr"].get("0.01"),
            "tpr_at_1pct_fpr_ci95": (r.get("tpr_at_fpr_ci95") or {}).get("0.01"),
            "tpr_at_0.1pct_fpr": r["tpr_at_fpr"].get("0.001"),
            "tpr_at_0.1pct_fpr_ci95": (r.get("tpr_at_fpr_ci95") or {}).get("0.001"),
            "members": cfg.members,
            "n_nonmembers": r.get("n_nonmembers"),
            "reference_models": cfg.reference_models,
            "roc": r.get("roc"),
            "advantage": r["advantage"],
            "linear_probe_acc": util.get("linear_probe_acc"),
            "knn_acc": util.get("knn_acc"),
            "auc_vs_views": results.get("auc_vs_views", {}).get(attack, {}),
            "seed_points": [[util.get("linear_probe_acc"), r["auc"]]],
        }
        if seeds and attack in seeds["attacks"]:
            s = seeds["attacks"][attack]
            ci = s["auc_ci95_seeds"] or [None, None]
            row |= {
                "n_seeds": seeds["n_seeds"],
                "auc": s["auc_mean"],
                "auc_lo": ci[0],
                "auc_hi": ci[1],
                "tpr_at_1pct_fpr": s["tpr_at_fpr_mean"].get("0.01"),
                "tpr_at_1pct_fpr_ci95": s["tpr_at_fpr_ci95_seeds"].get("0.01"),
                "tpr_at_0.1pct_fpr": s["tpr_at_fpr_mean"].get("0.001"),
                "tpr_at_0.1pct_fpr_ci95": s["tpr_at_fpr_ci95_seeds"].get("0.001"),
                "linear_probe_acc": seeds.get("linear_probe_acc_mean"),
                "seed_points": [
                    [p, a] for p, a in zip(seeds["linear_probe_acc"], s["auc"], strict=True)
                ],
            }
        rows.append(row)
    return rows


_COLUMNS = (
    "cell",
    "framework",
    "backbone",
    "members",
    "epochs",
    "knowledge",
    "attack",
    "n_seeds",
    "auc",
    "auc_lo",
    "auc_hi",
    "tpr_at_1pct_fpr",
    "advantage",
    "linear_probe_acc",
    "knn_acc",
)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def write_study_outputs(
    rows: list[dict[str, Any]],
    out: Path,
    description: str = "",
    *,
    defenses: list[dict[str, Any]] | None = None,
) -> None:
    if not rows:
        raise LplaError("the study produced no results (every cell filtered out?)")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "study.csv", buf.getvalue())
    summary = {
        "tradeoff": tradeoff_summary(rows),
        "auc_by_knowledge": knowledge_table(rows),
        "auc_by_views": views_table(rows),
        "description": description,
        "rows": rows,
    }
    if defenses:
        summary["defenses"] = defenses
        summary["frontier"] = {  # per cell: one encoder's defenses compete with each other
            cell: {
                "auc": pareto_front([p for p in defenses if p["cell"] == cell], "auc"),
                "tpr_at_1pct_fpr": pareto_front([p for p in defenses if p["cell"] == cell], "tpr1"),
            }
            for cell in dict.fromkeys(p["cell"] for p in defenses)
        }
        _write_defenses(defenses, out)
    write_json_atomic(out / "study.json", summary)
    write_text_atomic(out / "study.md", study_markdown(summary))
    _plot(rows, summary, out)


_DEFENSE_COLUMNS = (
    "cell",
    "defense",
    "kind",
    "n_seeds",
    "linear_probe",
    "knn",
    "attack",
    "auc",
    "auc_lo",
    "auc_hi",
    "tpr_attack",
    "tpr1",
    "tpr1_lo",
    "tpr1_hi",
)


def _write_defenses(points: list[dict[str, Any]], out: Path) -> None:
    """``defenses.csv`` and ``frontier.png``: every cell's defenses, one row / point each."""
    from lpla.io import write_bytes_atomic
    from lpla.report import plots

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(_DEFENSE_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(points)
    write_text_atomic(out / "defenses.csv", buf.getvalue())
    several = len({p["cell"] for p in points}) > 1
    labelled = [p | {"defense": f"{p['cell']}: {p['defense']}"} if several else p for p in points]
    write_bytes_atomic(out / "frontier.png", plots.plot_frontier(labelled))


def _defenses_markdown(summary: dict[str, Any]) -> list[str]:
    points = summary.get("defenses") or []
    if not points:
        return []
    front = {(cell, d) for cell, f in summary["frontier"].items() for d in f["auc"]}
    seeds = max(int(p.get("n_seeds") or 1) for p in points)
    interval = f"t-interval over {seeds} seeds" if seeds > 1 else "bootstrap interval"
    lines = [
        "",
        "## Defenses: the privacy-utility frontier\n",
        f"Strongest attack per defense (AUC, 95% {interval}) and the highest TPR at 1% FPR, "
        "against the linear-probe and kNN accuracy of what the defended encoder serves. "
        "Frontier (*): no other defense has both a higher probe accuracy and a lower AUC.\n",
        "| cell | defense | kind | linear probe | kNN | strongest attack | AUC | 95% CI | "
        "TPR@1%FPR (attack) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        star = " *" if (p["cell"], p["defense"]) in front else ""
        ci = "n/a" if p["auc_lo"] is None else f"[{p['auc_lo']:.3f}, {p['auc_hi']:.3f}]"
        tpr = f"{_fmt(p['tpr1'])} ({p['tpr_attack']})" if p["tpr1"] is not None else "n/a"
        lines.append(
            f"| {p['cell']} | {p['defense']}{star} | {p['kind']} | {_fmt(p['linear_probe'])} | "
            f"{_fmt(p['knn'])} | {p['attack']} | {_fmt(p['auc'])} | {ci} | {tpr} |"
        )
    return lines


def study_markdown(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    lines = [
        f"# lpla study\n\n{summary.get('description', '')}\n",
        "## Every encoder and attack\n",
        "| " + " | ".join(_COLUMNS[1:]) + " |",
        "|" + "---|" * (len(_COLUMNS) - 1),
    ]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in _COLUMNS[1:]) + " |" for r in rows]
    lines += [
        "",
        "## Leakage vs utility (same knowledge): Spearman rank correlation with linear-probe "
        "accuracy\n",
        "| attack | encoders | rho (AUC) | 95% CI (cells x seeds) | p-value | rho (TPR@1%FPR) |",
        "|---|---|---|---|---|---|",
    ]
    for a, s in summary["tradeoff"].items():
        ci = s.get("spearman_auc_ci95")
        ci_text = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a"
        lines.append(
            f"| {a} | {s['n_encoders']} | {_fmt(s['spearman_auc_vs_probe'])} | {ci_text} | "
            f"{_fmt(s['p_value'])} | "
            f"{_fmt(s['spearman_tpr1_vs_probe'])} |"
        )
    kn = summary["auc_by_knowledge"]
    settings = sorted({k for v in kn.values() for k in v})
    lines += [
        "",
        "## Mean AUC by attacker knowledge\n",
        "| attack | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for a, v in sorted(kn.items()):
        lines.append(f"| {a} | " + " | ".join(_fmt(v.get(s)) for s in settings) + " |")
    lines += calibrated_markdown(rows)
    vk = summary["auc_by_views"]
    ks = sorted({int(k) for v in vk.values() for k in v})
    lines += [
        "",
        "## Mean AUC by query budget K (same knowledge)\n",
        "| attack | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for a, v in sorted(vk.items()):
        lines.append(f"| {a} | " + " | ".join(_fmt(v.get(str(k))) for k in ks) + " |")
    lines += _defenses_markdown(summary)
    return "\n".join(lines) + "\n"


def _ci(value: Any, ci: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def per_image(attack: str) -> bool:
    """Per-image attacks calibrate each candidate on several reference encoders."""
    from lpla.attacks import ATTACKS

    return attack in ATTACKS and ATTACKS.get(attack).min_shadows > 1


def calibrated_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Population vs per-image attacks on the cells with reference encoders (AUC and TPR at
    0.1% / 1% FPR with their 95% CIs), and per cell which family finds more at low FPR."""
    cal = [r for r in rows if r.get("reference_models")]
    if not cal:
        return []
    lines = [
        "",
        "## Population vs per-image calibrated attacks (reference encoders)\n",
        "| members | epochs | refs | non-members | attack | kind | AUC [95% CI] | "
        "TPR@0.1%FPR [95% CI] | TPR@1%FPR [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cal:
        lines.append(
            f"| {r['members']} | {r['epochs']} | {r['reference_models']} | "
            f"{_fmt(r.get('n_nonmembers'))} | {r['attack']} | "
            f"{'per-image' if per_image(r['attack']) else 'population'} | "
            f"{_ci(r['auc'], [r['auc_lo'], r['auc_hi']])} | "
            f"{_ci(r['tpr_at_0.1pct_fpr'], r['tpr_at_0.1pct_fpr_ci95'])} | "
            f"{_ci(r['tpr_at_1pct_fpr'], r['tpr_at_1pct_fpr_ci95'])} |"
        )
    lines += [
        "",
        "Best of each family per cell (by TPR@1%FPR, then AUC):\n",
        "| cell | best population | TPR@1% | AUC | best per-image | TPR@1% | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in dict.fromkeys(r["cell"] for r in cal):
        best = []
        for family in (False, True):
            group = [r for r in cal if r["cell"] == cell and per_image(r["attack"]) == family]
            if not group:
                best.append(("n/a", None, None))
                continue
            top = max(group, key=lambda r: (r["tpr_at_1pct_fpr"] or 0.0, r["auc"]))
            best.append((top["attack"], top["tpr_at_1pct_fpr"], top["auc"]))
        (pa, pt, pauc), (ia, it, iauc) = best
        lines.append(
            f"| {cell} | {pa} | {_fmt(pt)} | {_fmt(pauc)} | {ia} | {_fmt(it)} | {_fmt(iauc)} |"
        )
    return lines


def _plot(rows: list[dict[str, Any]], summary: dict[str, Any], out: Path) -> None:
    from lpla.io import write_bytes_atomic
    from lpla.report import plots

    same, _ = tradeoff_points(rows)
    if same:
        png = plots.plot_tradeoff(same)
        write_bytes_atomic(out / "tradeoff.png", png)
    kn = summary["auc_by_knowledge"]
    if kn:
        write_bytes_atomic(out / "knowledge.png", plots.plot_knowledge(kn))
    for cell in dict.fromkeys(r["cell"] for r in rows if r.get("reference_models")):
        cell_rows_ = [r for r in rows if r["cell"] == cell and r.get("roc")]
        if not cell_rows_:
            continue
        curves = {r["attack"]: (r["roc"]["fpr"], r["roc"]["tpr"]) for r in cell_rows_}
        png = plots.plot_roc(
            curves,
            aucs={r["attack"]: r["auc"] for r in cell_rows_},
            n_nonmembers=cell_rows_[0].get("n_nonmembers"),
        )
        (out / "roc").mkdir(exist_ok=True)
        write_bytes_atomic(out / "roc" / f"{cell}.png", png)
