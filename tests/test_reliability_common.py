"""Shared helpers of the reliability suite (``tests/test_reliability_*.py``), and their own tests.

``assert_user_error`` is the contract every bad input must meet: a non-zero exit code (2 for a
user error), exactly one line on stderr starting ``lpla: error:``, no Python traceback anywhere,
and no partial output left behind. ``COUNTS`` tallies inputs tried, faults injected and outputs
checked for loss; set ``LPLA_RELIABILITY_COUNTS=file.json`` to have each module add its tally to
that file (docs/reliability.md quotes the numbers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
COUNTS: Counter[str] = Counter()
TEMP_MARKERS = (".tmp",)  # lpla.io.atomic_path names its temp files .<name>.<random>.tmp<sfx>


def count(kind: str, n: int = 1) -> None:
    """Tally one event: ``inputs``, ``faults`` or ``outputs_checked`` (and finer keys)."""
    COUNTS[kind] += n


def dump_counts(module: str) -> None:
    """Write the session's tally so far to ``$LPLA_RELIABILITY_COUNTS`` (a JSON file), when set."""
    target = os.environ.get("LPLA_RELIABILITY_COUNTS")
    if not target:
        return
    path = Path(target)
    data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    data["total"] = dict(COUNTS)  # COUNTS is session-wide: the last module's dump is the total
    data.setdefault("modules", []).append(module)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def snapshot(directory: Path | None) -> set[str]:
    """Relative paths of every file under ``directory`` (empty set if it does not exist)."""
    if directory is None or not directory.exists():
        return set()
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def leftover_temps(directory: Path | None) -> list[str]:
    """Temporary files from lpla.io.atomic_path that were not cleaned up."""
    return sorted(
        name
        for name in snapshot(directory)
        if Path(name).name.startswith(".") and any(m in Path(name).name for m in TEMP_MARKERS)
    )


def _streams(result: Any) -> tuple[int, str, str]:
    if isinstance(result, subprocess.CompletedProcess):
        return result.returncode, result.stdout or "", result.stderr or ""
    # click.testing.Result (click >= 8.2 keeps stderr apart)
    stderr = result.stderr if result.stderr_bytes is not None else ""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):  # escaped: a bug, show it
        import traceback

        stderr += "".join(traceback.format_exception(exc))
    return result.exit_code, result.stdout, stderr


def assert_user_error(
    result: Any,
    out_dir: Path | None = None,
    *,
    before: set[str] | None = None,
    code: int | None = 2,
    contains: str | None = None,
) -> str:
    """Check the user-error contract; return the error line.

    ``before`` is :func:`snapshot` of ``out_dir`` taken before the command: no file may appear.
    ``contains`` is a (case-insensitive) piece the error line must name.
    """
    exit_code, stdout, stderr = _streams(result)
    everything = stdout + stderr
    assert "Traceback" not in everything, f"traceback in output:\n{everything}"
    assert exit_code != 0, f"exit code 0 for a bad input; output:\n{everything}"
    if code is not None:
        assert exit_code == code, f"exit code {exit_code} != {code}; output:\n{everything}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("lpla: error:")]
    assert len(errors) == 1, f"want one 'lpla: error:' line on stderr, got:\n{stderr}"
    assert lines[-1] == errors[0], f"the error line must end stderr:\n{stderr}"
    if contains is not None:
        assert contains.lower() in errors[0].lower(), f"{contains!r} not in {errors[0]!r}"
    if out_dir is not None:
        assert not leftover_temps(out_dir), f"temp files left: {leftover_temps(out_dir)}"
        if before is not None:
            new = snapshot(out_dir) - before
            assert not new, f"partial outputs left in {out_dir}: {sorted(new)}"
    count("outputs_checked")
    return errors[0]


def invoke(args: Sequence[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Any:
    """Run ``lpla ARGS`` in-process with typer's CliRunner (cwd switched, tests/ importable)."""
    from typer.testing import CliRunner

    from lpla.cli import app

    old_cwd = Path.cwd()
    sys.path.insert(0, str(TESTS))
    try:
        if cwd is not None:
            os.chdir(cwd)
        return CliRunner().invoke(app, list(args), env=env)
    finally:
        os.chdir(old_cwd)
        sys.path.remove(str(TESTS))


def run_cli(
    args: Sequence[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m lpla.cli ARGS`` in a subprocess (one torch thread, tests/ importable)."""
    full_env = dict(os.environ, LPLA_THREADS="1", PYTHONPATH=str(TESTS), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "lpla.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module", autouse=True)
def _tally(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    dump_counts(request.module.__name__)


# ------------------------------------------------------------------------ tests of the helper


class _FakeResult:
    """A stand-in for click's Result, to show the helper fails on each broken contract."""

    def __init__(self, code: int, stdout: str = "", stderr: str = "") -> None:
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr
        self.stderr_bytes = stderr.encode()
        self.exception: BaseException | None = SystemExit(code)


@pytest.mark.parametrize(
    ("code", "stderr", "problem"),
    [
        (0, "lpla: error: x\n", "exit code 0"),
        (1, "lpla: error: x\n", "!= 2"),
        (2, "Traceback (most recent call last):\nlpla: error: x\n", "traceback"),
        (2, "lpla: error: x\nlpla: error: y\n", "one 'lpla: error:'"),
        (2, "oops\n", "one 'lpla: error:'"),
        (2, "lpla: error: x\nmore\n", "must end"),
    ],
)
def test_assert_user_error_catches_each_broken_contract(
    code: int, stderr: str, problem: str
) -> None:
    with pytest.raises(AssertionError, match=problem):
        assert_user_error(_FakeResult(code, stderr=stderr))


def test_assert_user_error_catches_leftovers(tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    (tmp_path / "results.json").write_text("{")
    with pytest.raises(AssertionError, match="partial outputs"):
        assert_user_error(_FakeResult(2, stderr="lpla: error: x\n"), tmp_path, before=before)
    (tmp_path / "results.json").unlink()
    (tmp_path / ".emb.npz.abc123.tmp.npz").write_bytes(b"")
    with pytest.raises(AssertionError, match="temp files"):
        assert_user_error(_FakeResult(2, stderr="lpla: error: x\n"), tmp_path)


def test_assert_user_error_accepts_a_clean_error(tmp_path: Path) -> None:
    line = assert_user_error(
        _FakeResult(2, stderr="lpla: error: no such file\n"),
        tmp_path,
        before=set(),
        contains="no such",
    )
    assert line == "lpla: error: no such file"
