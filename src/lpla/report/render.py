"""The Jinja environment of the HTML reports: autoescaping on, number formatting in one place,
and the atomic write. Templates live in ``lpla/report/templates``."""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from lpla.io import write_text_atomic

__all__ = ["fmt_ci", "fmt_fpr", "fmt_num", "pretty_json", "render_to"]

TEMPLATES = Path(__file__).parent / "templates"


def fmt_num(value: Any, digits: int = 3) -> str:
    """Numbers as the report prints them; ``None``/NaN as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(pair: Any, digits: int = 3) -> str:
    """``[lo, hi]`` -> ``0.650–0.770``; anything else -> ``n/a``."""
    if not isinstance(pair, list | tuple) or len(pair) != 2 or None in pair:
        return "n/a"
    return f"{fmt_num(float(pair[0]), digits)}–{fmt_num(float(pair[1]), digits)}"


def fmt_fpr(key: Any) -> str:
    """An FPR key of ``tpr_at_fpr`` (``"0.001"``) as a percentage (``0.1%``)."""
    try:
        return f"{float(key) * 100:g}%"
    except (TypeError, ValueError):
        return str(key)


def pretty_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=str)


def fmt_value(value: Any) -> str:
    """A config or metadata value: scalars formatted, containers as compact JSON."""
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str)
    if isinstance(value, float):
        return f"{value:g}"
    return fmt_num(value)


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=fmt_num, ci=fmt_ci, fpr=fmt_fpr, value=fmt_value, pretty_json=pretty_json
    )
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def render_to(out: Path, template: str, **context: Any) -> Path:
    """Render ``template`` and write it to ``out`` atomically."""
    write_text_atomic(out, render(template, **context))
    return out
