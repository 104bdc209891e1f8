"""`lpla list`: every registry, so users (and scripts) can see what names exist."""

from __future__ import annotations

from collections.abc import Callable

import typer
from rich.console import Console
from rich.table import Table

from lpla.cli._common import user_errors
from lpla.errors import LplaError
from lpla.registry import Registry


def _registries() -> dict[str, Callable[[], Registry]]:
    """Lazy: importing torch-heavy registries only when listed keeps `lpla list attacks` fast."""

    def datasets() -> Registry:
        from lpla.data.registry import DATASETS

        return DATASETS

    def backbones() -> Registry:
        from lpla.ssl.backbones import BACKBONES

        return BACKBONES

    def frameworks() -> Registry:
        from lpla.ssl.frameworks import FRAMEWORKS

        return FRAMEWORKS

    def augmentations() -> Registry:
        from lpla.ssl.augment import AUGMENTATIONS

        return AUGMENTATIONS

    def attacks() -> Registry:
        from lpla.attacks import ATTACKS

        return ATTACKS

    def defenses() -> Registry:
        from lpla.defenses import DEFENSES

        return DEFENSES

    def knowledge() -> Registry:
        from lpla.audit import KNOWLEDGE

        return KNOWLEDGE

    def studies() -> Registry:
        from lpla.study import PRESETS

        return PRESETS

    return {
        "datasets": datasets,
        "backbones": backbones,
        "frameworks": frameworks,
        "augmentations": augmentations,
        "attacks": attacks,
        "defenses": defenses,
        "knowledge": knowledge,
        "studies": studies,
    }


@user_errors
def list_command(
    what: str = typer.Argument(
        "all",
        help="datasets, backbones, frameworks, augmentations, attacks, defenses, studies or all",
    ),
) -> None:
    """List the registered datasets, backbones, frameworks, augmentations, attacks, etc."""
    regs = _registries()
    if what != "all" and what not in regs:
        raise LplaError(f"unknown registry {what!r}; choose one of: all, {', '.join(regs)}")
    console = Console()
    for name, getter in regs.items():
        if what not in ("all", name):
            continue
        reg = getter()
        table = Table(title=f"{name} ({len(reg)})", title_justify="left", show_header=False)
        table.add_column("name", style="bold cyan")
        table.add_column("summary")
        for entry in reg.names():
            table.add_row(entry, reg.summary(entry))
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
