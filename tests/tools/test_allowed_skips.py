"""The skip allowlist (tests/helpers/skips.py), run on tiny test files in a pytest subprocess: in a strict
run an unlisted skip fails the run (naming it and its reason), a listed one does not; a run that is not
strict ignores skips; an entry without its reason is refused. The repository's allowlist parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.nodeproc import REPO, RUN_TIMEOUT, make_env
from tests.helpers.skips import ALLOWLIST, Allowed, load_allowlist

SUITE = """
import pytest

pytest.importorskip("no_such_module_here")
"""
TESTS = """
import pytest


def test_runs() -> None:
    pass


def test_skips() -> None:
    pytest.skip("no frobnicator on this machine")


@pytest.mark.parametrize("n", [1, 2])
def test_skips_each(n: int) -> None:
    pytest.skip(f"case {n} needs a frobnicator")
"""


def run(
    tmp_path: Path, allowed: str | None, *, strict: bool = True, module_skip: bool = False
) -> tuple[int, str]:
    """pytest on the tiny files in ``tmp_path`` with the allowlist ``allowed`` (None: no file)."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.helpers.skips"]\n')
    (tmp_path / "test_tiny.py").write_text(TESTS)
    if module_skip:
        (tmp_path / "test_gone.py").write_text(SUITE)
    listed = tmp_path / "allowed.txt"
    if allowed is not None:
        listed.write_text(allowed)
    env = make_env(MIMIRLITE_ALLOWED_SKIPS=str(listed), MIMIRLITE_STRICT_SKIPS="1" if strict else "0")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return done.returncode, done.stdout + done.stderr


def test_an_unlisted_skip_fails_a_strict_run(tmp_path: Path) -> None:
    code, out = run(tmp_path, "test_tiny.py::test_skips_each  # frobnicators are rare\n")
    assert code == pytest.ExitCode.TESTS_FAILED, out
    assert "1 passed, 3 skipped" in out, out
    assert "skips not in the allowlist" in out
    assert "test_tiny.py::test_skips: no frobnicator on this machine" in out
    assert "test_skips_each" not in out.split("skips not in the allowlist")[1]  # listed: both cases


def test_listed_skips_pass_a_strict_run(tmp_path: Path) -> None:
    allowed = (
        "# why each is fine\n\ntest_tiny.py::test_skips  # no frobnicator\n*::test_skips_each[*]  # rare\n"
    )
    code, out = run(tmp_path, allowed)
    assert code == pytest.ExitCode.OK, out
    assert "skips not in the allowlist" not in out


def test_a_skipped_module_is_a_skip_too(tmp_path: Path) -> None:
    allowed = "test_tiny.py  # every test of the module\n"
    code, out = run(tmp_path, allowed, module_skip=True)
    assert code == pytest.ExitCode.TESTS_FAILED, out
    assert "test_gone.py: could not import 'no_such_module_here'" in out, out
    code, out = run(tmp_path, allowed + "test_gone.py  # needs no_such_module_here\n", module_skip=True)
    assert code == pytest.ExitCode.OK, out


def test_a_run_that_is_not_strict_ignores_skips(tmp_path: Path) -> None:
    code, out = run(tmp_path, None, strict=False, module_skip=True)
    assert code == pytest.ExitCode.OK, out
    code, out = run(tmp_path, None)  # strict, and no allowlist at all: every skip is unlisted
    assert code == pytest.ExitCode.TESTS_FAILED, out


def test_an_entry_needs_its_reason(tmp_path: Path) -> None:
    code, out = run(tmp_path, "test_tiny.py::test_skips\n")
    assert code == pytest.ExitCode.USAGE_ERROR, out
    assert "allowed.txt:1: not `<node id or pattern>  # reason`" in out


def test_patterns() -> None:
    entry = Allowed("tests/a.py::test_x", "why", 1)
    assert entry.matches("tests/a.py::test_x") and entry.matches("tests/a.py::test_x[1-2]")
    assert not entry.matches("tests/a.py::test_xy") and not entry.matches("tests/a.py::test")
    assert Allowed("tests/a.py", "why", 1).matches("tests/a.py::Class::test_y")
    assert not Allowed("tests/a.py", "why", 1).matches("tests/a.pyc")
    assert Allowed("tests/*::test_x[v6]", "why", 1).matches("tests/net/b.py::test_x[v6]")
    assert not Allowed("tests/*::test_x[v6]", "why", 1).matches("tests/net/b.py::test_x[v4]")


def test_the_repository_allowlist_parses() -> None:
    assert ALLOWLIST == REPO / "tests" / "allowed_skips.txt" and ALLOWLIST.exists()
    for entry in load_allowlist(ALLOWLIST):
        assert entry.reason, entry
