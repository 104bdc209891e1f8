"""`lpla list` shows every registry and every registered name."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from lpla.cli import app
from lpla.cli.listing import _registries


@pytest.mark.parametrize("what", list(_registries()))
def test_each_registry_lists_all_its_names(what: str) -> None:
    res = CliRunner().invoke(app, ["list", what], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for name in _registries()[what]().names():
        assert name in res.output


def test_list_all_and_help_show_every_command() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["list"], env={"COLUMNS": "200"}).output
    for what in _registries():
        assert what in out
    help_text = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for cmd in (
        "list",
        "train",
        "utility",
        "embed",
        "attack",
        "audit",
        "study",
        "report",
        "merge-shadows",
    ):
        assert cmd in help_text
