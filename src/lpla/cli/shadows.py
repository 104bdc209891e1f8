"""`lpla merge-shadows`: join independent shadow jobs into one membership matrix."""

from __future__ import annotations

from pathlib import Path

import typer

from lpla.cli._common import user_errors


@user_errors
def merge_shadows_command(
    dirs: list[Path] = typer.Argument(
        ..., help="shadow checkpoint directories (lpla train --shadow-index i ...)"
    ),
    out: Path = typer.Option(
        Path("membership.npz"), help="merged (shadows x images) membership matrix"
    ),
) -> None:
    """Check that finished shadow jobs share one design; write their membership matrix."""
    from lpla.shadows import merge_shadows

    summary = merge_shadows(dirs, out)
    typer.echo(f"{summary['finished']}/{summary['of']} shadows merged into {summary['out']}")
    if summary["missing"]:
        typer.echo(f"missing shadow indices: {summary['missing']}", err=True)


def register(app: typer.Typer) -> None:
    app.command("merge-shadows")(merge_shadows_command)
