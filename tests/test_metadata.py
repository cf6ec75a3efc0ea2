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


def test_metadata_channels_match_label_classes():
    meta = json.loads(META.read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(pred["channel_def"])
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 1
