"""Terminal tables for attack results (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def print_attack_table(results: dict[str, Any], title: str = "membership inference") -> None:
    table = Table(title=title, title_justify="left")
    for col in (
        "attack", "AUC", "95% CI", "TPR@0.1%", "TPR@1%", "TPR@1% CI", "bal.acc", "bal.acc*", "adv."
    ):  # fmt: skip
        table.add_column(col, justify="right" if col != "attack" else "left")
    rows = sorted(results.get("attacks", {}).items(), key=lambda kv: -kv[1]["auc"])
    for name, r in rows:
        lo, hi = r["auc_ci95"]
        tpr = r.get("tpr_at_fpr", {})
        table.add_row(
            name,
            _fmt(r["auc"]),
            f"[{lo:.3f}, {hi:.3f}]",
            _fmt(tpr.get("0.001")),
            _fmt(tpr.get("0.01")),
            _ci((r.get("tpr_at_fpr_ci95") or {}).get("0.01")),
            _fmt(r.get("balanced_accuracy")),
            _fmt(r.get("balanced_accuracy_oracle")),
            _fmt(r.get("advantage")),
        )
    console = Console(width=None if Console().is_terminal else 120)
    console.print(table)
    console.print(
        "bal.acc: at the threshold chosen on the shadow; bal.acc*: best threshold (oracle)"
    )
    seeds = results.get("across_seeds")
    if seeds:
        _print_seeds(console, seeds)
    util = results.get("utility")
    if util:
        console.print(
            "utility: " + ", ".join(f"{k}={v:.3f}" for k, v in util.items() if isinstance(v, float))
        )


def _ci(ci: Any) -> str:
    return "n/a" if not ci or None in ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _print_seeds(console: Console, seeds: dict[str, Any]) -> None:
    """Each attack over the training seeds: the mean and its t-interval."""
    table = Table(title=f"across {seeds['n_seeds']} training seeds", title_justify="left")
    for col in ("attack", "mean AUC", "95% CI (seeds)", "sd", "mean TPR@1%", "TPR@1% CI (seeds)"):
        table.add_column(col, justify="right" if col != "attack" else "left")
    rows = sorted(seeds["attacks"].items(), key=lambda kv: -kv[1]["auc_mean"])
    for name, s in rows:
        table.add_row(
            name,
            _fmt(s["auc_mean"]),
            _ci(s["auc_ci95_seeds"]),
            _fmt(s["auc_sd"]),
            _fmt(s["tpr_at_fpr_mean"].get("0.01")),
            _ci(s["tpr_at_fpr_ci95_seeds"].get("0.01")),
        )
    console.print(table)
