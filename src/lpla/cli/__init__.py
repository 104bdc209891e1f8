"""The ``lpla`` command line: parsing only; the work lives in the library modules.

Each sub-command lives in its own module exposing ``register(app)``. User errors
(:class:`lpla.errors.LplaError`) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from lpla.errors import LplaError

app = typer.Typer(
    name="lpla",
    help="Audit how much a self-supervised image encoder leaks about its training set.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_COMMAND_MODULES = (
    "listing",
    "train",
    "utility",
    "embed",
    "attack",
    "audit",
    "study",
    "report",
    "shadows",
)
for _name in _COMMAND_MODULES:
    importlib.import_module(f"lpla.cli.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except LplaError as exc:
        from lpla.cli._common import one_line

        print(f"lpla: error: {one_line(str(exc))}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print(
            "lpla: interrupted; completed outputs are kept, partial ones discarded", file=sys.stderr
        )
        raise SystemExit(130) from None
