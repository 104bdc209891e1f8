"""`lpla study`: grids of cached audits and the performance-privacy trade-off."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import typer

from lpla.cli._common import user_errors


@user_errors
def study_command(
    preset: str = typer.Option("cpu-quick", help="study preset (lpla list studies)"),
    out: Path = typer.Option(
        Path("runs/study"), help="study directory (one sub-directory per cell)"
    ),
    only: str | None = typer.Option(
        None, help="run only cells whose name matches this glob, e.g. 'simclr_*'"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the cells and exit"),
    device: str | None = typer.Option(None, help="override the preset's device"),
    tables_only: bool = typer.Option(
        False, "--tables-only", help="run nothing: rebuild the tables and plots from finished cells"
    ),
) -> None:
    """Run every cell of a study grid (resumable); write the tables and the trade-off plot."""
    import dataclasses

    from lpla.study import PRESETS, run_study

    grid = PRESETS.get(preset)()
    if device is not None:
        grid = dataclasses.replace(grid, base=dataclasses.replace(grid.base, device=device))
    cells = grid.cells()
    if dry_run:
        for name, cfg in cells:
            typer.echo(f"{name}\t{cfg.dataset}\tmembers={cfg.members}")
        typer.echo(f"{len(cells)} cells")
        return
    match = (lambda n: fnmatch.fnmatch(n, only)) if only else None
    run_study(grid, out, log=typer.echo, only=match, tables_only=tables_only)
    typer.echo(f"wrote {out / 'study.md'}, {out / 'study.csv'}, {out / 'tradeoff.png'}")


def register(app: typer.Typer) -> None:
    app.command("study")(study_command)
