"""The Model Zoo's own format checks, as the zoo runs them (issue 23 item 6).

A copy of the bundle placed in the Model Zoo repository's models/ folder failed the zoo's `runtests.sh --codeformat`:
isort from the zoo's root takes `vqseg_bundle` as third-party (71 files), and black runs with
`--skip-magic-trailing-comma` (30 files). scripts/verify_model_zoo.py now runs those checks the zoo's way, and one
set of the project's own settings (pyproject.toml) must pass both ways: .ci/run's `black --check . && isort
--check-only . && flake8 .` and the zoo's.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "verify_model_zoo.py"

#: imports as isort orders them with the bundle's settings before issue 23 (vqseg_bundle first-party)
FIRST_PARTY_ORDER = "import torch\n\nfrom vqseg_bundle.engines import BestModelSaver\n\nprint(torch, BestModelSaver)\n"
#: a call black keeps exploded for its magic trailing comma, and joins with --skip-magic-trailing-comma
MAGIC_COMMA = "def f(a, b):\n    return a + b\n\n\nf(\n    1,\n    2,\n)\n"
#: both ways' formatting
AGREED = (
    "import torch\nfrom vqseg_bundle.engines import BestModelSaver\n\nprint(torch, BestModelSaver)\nprint(max(1, 2))\n"
)


def _script():
    spec = importlib.util.spec_from_file_location("verify_model_zoo_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bundle(folder: Path, source: str) -> Path:
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "example.py").write_text(source)
    return folder


@pytest.mark.parametrize(
    "source,tool", [(FIRST_PARTY_ORDER, "isort --check"), (MAGIC_COMMA, "black --skip-magic-trailing-comma")]
)
def test_zoo_format_check_fails_as_the_zoo_does(tmp_path, source, tool):
    module = _script()
    with pytest.raises(module.CheckError) as err:
        module.check_format(_bundle(tmp_path / "bundle", source))
    message = str(err.value)
    assert tool in message and "scripts/example.py" in message and "models/bundle/" in message


def test_zoo_format_check_passes_the_agreed_formatting(tmp_path):
    said = _script().check_format(_bundle(tmp_path / "bundle", AGREED))
    assert "black --skip-magic-trailing-comma --check" in said and "(1 files)" in said


def test_project_settings_are_the_zoo_compatible_ones(tmp_path):
    """pyproject.toml's own settings give the zoo's formatting: `black .` with them joins a magic trailing comma,
    `isort .` puts vqseg_bundle with the third-party imports."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert config["black"]["skip-magic-trailing-comma"] is True and config["black"]["line-length"] == 120
    assert "vqseg_bundle" in config["isort"]["known_third_party"]
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "a.py").write_text(MAGIC_COMMA)
    (tmp_path / "b.py").write_text(FIRST_PARTY_ORDER)
    for tool in (["black", "-q"], ["isort", "-q"]):
        subprocess.run([sys.executable, "-m", *tool, "."], cwd=tmp_path, check=True, timeout=120)
    assert (tmp_path / "a.py").read_text().endswith("f(1, 2)\n")
    assert (tmp_path / "b.py").read_text().startswith("import torch\nfrom vqseg_bundle.engines import BestModelSaver\n")


def test_the_bundle_passes_the_zoo_format_checks():
    """The whole bundle, the zoo's way (the same check `scripts/verify_model_zoo.py --mode min` starts with)."""
    _script().check_format(ROOT)


def test_verify_model_zoo_runs_the_format_check_first(tmp_path, capsys):
    """`--mode min` starts with the format check (and `--format False` leaves it out)."""
    module = _script()
    root = _bundle(tmp_path / "bundle", MAGIC_COMMA)
    with pytest.raises(SystemExit):
        module.main(mode="min", bundle_root=str(root))
    assert "Model Zoo check 'format' (min mode) failed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        module.main(mode="min", bundle_root=str(root), format=False)
    err = capsys.readouterr().err
    assert "'directory'" in err and "'format'" not in err
