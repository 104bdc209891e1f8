"""The one-sentence verdict of an audit: the strongest attack and what its AUC interval says.

Its own module so that the single-run page (:mod:`lpla.report.html`) and the comparison of runs
(:mod:`lpla.report.merge`) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lpla.report.render import fmt_ci

__all__ = ["Verdict", "verdict"]

#: what every "reversed" sentence says, so that readers (and tests) can find it
REVERSED = "below chance: labels swapped or attack direction inverted"


@dataclass
class Verdict:
    """The strongest attack and what its AUC interval says, in plain words."""

    kind: str  # "leaks", "none", "reversed" or "no-ci"
    attack: str
    sentence: str


def _ci(entry: dict[str, Any]) -> tuple[float, float] | None:
    ci = entry.get("auc_ci95")
    if isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci:
        return float(ci[0]), float(ci[1])
    return None


def verdict(attacks: dict[str, dict[str, Any]]) -> Verdict:
    """Say whether the audit shows leakage, in one sentence.

    ``leaks``: some attack's 95% CI lies above 0.5; the strongest of those (highest AUC) is named.
    ``reversed``: none does, but an attack's CI lies entirely below 0.5 (the strongest attack's,
    or else the one furthest below). Scores that rank members *below* non-members beyond chance
    are a finding, not an absence of one: labels are swapped or the direction learnt on the
    shadow is inverted on this target, so this is never reported as "no leakage".
    ``no-ci``: the strongest attack has no interval. ``none``: its interval includes 0.5.
    """
    cis = {n: _ci(e) for n, e in attacks.items()}
    above = {n: e for n, e in attacks.items() if (c := cis[n]) is not None and c[0] > 0.5}
    pool = above or attacks
    name = max(pool, key=lambda n: float(pool[n]["auc"]))
    if not above:
        below = {n: c[1] for n, c in cis.items() if c is not None and c[1] < 0.5}
        if below and name not in below:
            name = min(below, key=below.__getitem__)
    entry = attacks[name]
    auc, ci = float(entry["auc"]), cis[name]
    n_m, n_n = entry.get("n_members"), entry.get("n_nonmembers")
    sample = (
        f"{n_m} members and {n_n} non-members"
        if n_m is not None and n_n is not None
        else "this sample"
    )
    auc_text = f"AUC {auc:.3f}" + (f" (95% CI {fmt_ci(list(ci))})" if ci is not None else "")
    if ci is None:
        return Verdict(
            "no-ci",
            name,
            (
                f"Undecided: the strongest attack, {name}, reaches {auc_text}, but no confidence "
                "interval was recorded, so it cannot be told apart from chance (0.5)."
            ),
        )
    if ci[0] > 0.5:
        tpr = (entry.get("tpr_at_fpr") or {}).get("0.01")
        extra = (
            f" At 1% FPR it identifies {tpr * 100:.1f}% of the members." if tpr is not None else ""
        )
        return Verdict(
            "leaks",
            name,
            (
                f"Leaks membership: the strongest attack, {name}, reaches {auc_text}; the whole "
                f"interval lies above chance (0.5) with {sample}.{extra}"
            ),
        )
    if ci[1] < 0.5:
        return Verdict(
            "reversed",
            name,
            (
                f"Reversed, {REVERSED}: {name} reaches {auc_text}, an interval entirely below "
                f"0.5 with {sample}, so it ranks members below non-members beyond chance. Check "
                "the membership labels and the direction the attack learnt on the shadow "
                "encoder; this is not a sign of privacy, since the flipped scores would reach "
                f"AUC {1 - auc:.3f}."
            ),
        )
    half = (ci[1] - ci[0]) / 2
    return Verdict(
        "none",
        name,
        (
            f"No leakage detected at this sample size: the strongest attack, {name}, reaches "
            f"{auc_text}, and the interval includes chance (0.5). With {sample}, a leak smaller "
            f"than about ±{half:.2f} AUC cannot be told from chance."
        ),
    )
