"""The format and lint tools of the test extra are pinned exactly (issue 23 item 1): an unpinned flake8-bugbear
release (26.11.22, rule B914) once turned a fresh `.ci/run` red with no change in the repository."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every tool `.ci/run` runs as a format check, and the plugins / engines whose releases change its findings
FORMAT_TOOLS = (
    "black",
    "isort",
    "flake8",
    "pycodestyle",
    "pyflakes",
    "mccabe",
    "flake8-bugbear",
    "flake8-comprehensions",
    "flake8-executable",
    "pep8-naming",
)


def _test_extra() -> dict[str, str]:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    specs = {}
    for requirement in extra:
        name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()
        specs[name] = requirement[len(name) :].strip()
    return specs


def test_format_tools_pinned_exactly():
    specs = _test_extra()
    missing = [tool for tool in FORMAT_TOOLS if tool not in specs]
    assert not missing, f"pyproject.toml test extra lacks {missing}"
    loose = {tool: specs[tool] for tool in FORMAT_TOOLS if not re.fullmatch(r"==\d+(\.\d+)*", specs[tool])}
    assert not loose, f"format tools not pinned with ==X.Y.Z in the test extra: {loose}"


def test_ci_runs_the_pinned_format_tools():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "black --check" in ci and "isort --check-only" in ci and "flake8 ." in ci
