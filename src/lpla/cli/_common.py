"""Shared CLI helpers: turning user errors into one line and an exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from lpla.errors import LplaError

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Print an :class:`LplaError` as ``lpla: error: ...`` and exit 2, with no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LplaError as exc:
            typer.echo(f"lpla: error: {one_line(str(exc))}", err=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def one_line(message: str) -> str:
    """Join a multi-line message (a YAML or torch error quoted in it) into one line for stderr."""
    parts = [part.strip() for part in message.splitlines()]
    return " ".join(part for part in parts if part and set(part) != {"^"})


def parse_csv(value: str, cast: Callable[[str], Any] = str) -> list[Any]:
    """``"1,2,inf"`` -> ``[1.0, 2.0, inf]`` with ``cast=float``; clear error on bad items."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    out = []
    for item in items:
        try:
            out.append(cast(item))
        except ValueError:
            raise LplaError(f"cannot read {item!r} in {value!r}") from None
    return out


def parse_attack_params(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["encodermi-t.calibration=reference"]`` -> ``{"encodermi-t": {"calibration": ...}}``.

    Values are read as YAML scalars (``0.5``, ``true``, ``[1, 2]``); each attack is built once with
    its parameters here, so a wrong name or value is one clear error before anything runs.
    """
    import yaml

    from lpla.attacks import create_attack

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        attack, dot, param = key.partition(".")
        if not sep or not dot or not attack or not param:
            raise LplaError(
                f"--attack-param {item!r}: write ATTACK.PARAM=VALUE, "
                "e.g. encodermi-t.calibration=reference"
            )
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        out.setdefault(attack.strip(), {})[param.strip()] = value
    for attack, params in out.items():
        try:
            create_attack(attack, **params)
        except TypeError as exc:
            raise LplaError(f"--attack-param for {attack}: {exc}") from None
    return out


def attack_settings(
    attacks: str | None,
    p: str | None,
    n_bootstrap: int | None,
    seed: int | None,
    attack_param: list[str] | dict[str, dict[str, Any]] | None = None,
    views_grid: str | None = None,
) -> Any:
    """The AttackSettings the attack options ask for (an option not given: the default)."""
    from lpla.pipeline import AttackSettings, settings_from

    params = (
        attack_param if isinstance(attack_param, dict) else parse_attack_params(attack_param or [])
    )
    return settings_from(
        AttackSettings,
        attacks=parse_csv(attacks) if attacks else None,
        p=parse_csv(p, float) if p else None,
        views_grid=parse_csv(views_grid, int) if views_grid else None,
        n_bootstrap=n_bootstrap,
        seed=seed,
        attack_params=params or None,
    )
