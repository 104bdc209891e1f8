"""`lpla report`: rebuild the HTML report of a run directory, or compare several runs."""

from __future__ import annotations

from pathlib import Path

import typer

from lpla.cli._common import user_errors


@user_errors
def report_command(
    run_dirs: list[Path] = typer.Argument(
        ..., help="run directories written by `lpla audit` (several: a comparison)"
    ),
    out: Path | None = typer.Option(
        None,
        help="output HTML file (default: DIR/report.html; several runs: merged.html in their "
        "common parent, plus merged.json)",
    ),
) -> None:
    """Build a self-contained HTML report (plots embedded, opens offline) from saved run files."""
    from lpla.report.html import build_report

    path = build_report(run_dirs, out)
    typer.echo(f"wrote {path}")
    if len(run_dirs) > 1:
        typer.echo(f"wrote {path.with_suffix('.json')}")


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
