"""Membership-privacy reports: plots (:mod:`lpla.report.plots`), the self-contained HTML page of
a run or of several (:func:`lpla.report.html.build_report`), and run-directory loading.

Imports are lazy so that ``from lpla.report import plots`` does not pull in Jinja, and importing
the package does not pull in matplotlib.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report", "load_run"]


def __getattr__(name: str) -> Any:
    if name == "build_report":
        from lpla.report.html import build_report

        return build_report
    if name == "load_run":
        from lpla.report.rundir import load_run

        return load_run
    raise AttributeError(f"module 'lpla.report' has no attribute {name!r}")
