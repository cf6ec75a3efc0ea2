"""configs/metadata.json is valid against the offline copy of the bundle schema and agrees with the code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"
META = ROOT / "configs" / "metadata.json"


@pytest.mark.skipif(not SCHEMA.exists(), reason=f"schema copy not found at {SCHEMA}")
def test_metadata_verifies_against_schema():
    cmd = [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(META), "--filepath", str(SCHEMA)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "metadata is verified with no error" in result.stdout + result.stderr


def test_metadata_versions_are_released_versions():
    meta = json.loads(META.read_text())
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert "+" not in meta[key], f"{key}={meta[key]} must be a released version without a local tag"
    assert meta["version"] in meta["changelog"], "changelog must contain the current version"


def test_package_version_is_the_bundle_version():
    """pyproject.toml's package version and metadata.json's bundle version are one release number."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == json.loads(META.read_text())["version"]


def test_metadata_channels_match_label_classes():
    meta = json.loads(META.read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(pred["channel_def"])
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1


#: the Python versions the pins must install on: the Model Zoo CI's (3.10) to the newest this bundle supports
PYTHONS = ("3.10", "3.11", "3.12")


def _zoo_requirements(meta: dict) -> list[str]:
    """What the Model Zoo CI installs for the bundle (its ci/get_bundle_requirements.py): monai, torch, numpy and
    every required package at the metadata's versions."""
    pins = [f"monai=={meta['monai_version']}", f"torch=={meta['pytorch_version']}"]
    pins.append(f"numpy=={meta['numpy_version']}")
    return pins + [f"{name}=={version}" for name, version in meta["required_packages_version"].items()]


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_metadata_pins_install_on_python_3_10_to_3_12(tmp_path, python):
    """Issue 23 item 6: numpy_version 2.4.6 and scikit-image 0.26.0 have no Python 3.10 wheels (the zoo CI's
    Python). pip resolves the pinned set for each Python version without installing anything (the command is in
    docs/README.md); skipped when no package index answers."""
    meta = json.loads(META.read_text())
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed"]
    cmd += ["--python-version", python, "--only-binary=:all:", "--target", str(tmp_path / "x")]
    result = subprocess.run(cmd + _zoo_requirements(meta), capture_output=True, text=True, timeout=600)
    said = result.stdout + result.stderr
    if result.returncode != 0 and any(s in said for s in ("NewConnectionError", "Could not fetch", "No route")):
        pytest.skip(f"no package index reachable: {said[-300:]}")
    assert result.returncode == 0, said[-3000:]


def test_metadata_pins_are_the_ones_that_install_on_python_3_10():
    """The pins the dry-run above resolved for 3.10-3.12 (numpy 2.2.x is the last numpy with Python 3.10 wheels,
    scikit-image 0.25.x the last scikit-image); README / model card name the command."""
    meta = json.loads(META.read_text())
    assert meta["numpy_version"] == "2.2.6" and meta["required_packages_version"]["scikit-image"] == "0.25.2"
