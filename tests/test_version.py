"""The version lives in mimirlite/_version.py only; py.typed ships with the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import mimirlite
from mimirlite._version import __version__

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mimirlite"


def pyproject(expand: bool) -> dict[str, Any]:
    """pyproject.toml as setuptools reads it (``expand``: dynamic fields resolved)."""
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "[tool.setuptools] in pyproject.toml is still beta"
        config: dict[str, Any] = read_configuration(ROOT / "pyproject.toml", expand=expand)
    return config


def test_the_package_the_cli_and_pyproject_agree() -> None:
    assert mimirlite.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", __version__)
    out = subprocess.run(
        [sys.executable, "-m", "mimirlite", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout.strip() == f"mimirlite {__version__}"
    raw = pyproject(expand=False)
    assert "version" not in raw["project"] and "version" in raw["project"]["dynamic"]
    assert pyproject(expand=True)["project"]["version"] == __version__


def test_no_other_module_spells_the_version() -> None:
    literal = re.compile(rf"""["']{re.escape(__version__)}["']""")
    spelled = [
        str(p.relative_to(ROOT))
        for p in PACKAGE.rglob("*.py")
        if p.name != "_version.py" and literal.search(p.read_text())
    ]
    assert spelled == []


def test_py_typed_is_in_what_setuptools_installs(tmp_path: Path) -> None:
    """``build_py`` lays out exactly the files a wheel (and so an install) holds."""
    assert (PACKAGE / "py.typed").is_file()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(PACKAGE, src / "mimirlite", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "-d", str(out)],
        capture_output=True,
        timeout=300,
        check=True,
        cwd=src,
    )
    assert (out / "mimirlite" / "py.typed").is_file()
    assert (out / "mimirlite" / "_version.py").is_file()
