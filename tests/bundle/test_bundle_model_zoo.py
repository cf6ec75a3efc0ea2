"""scripts/verify_model_zoo.py (the Model Zoo CI's checks, offline) on a temp copy of the bundle with a tiny trained
model, and the failures it must report: no model, an unfetchable large file, a wrong hash, a version missing from
the changelog."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from bundle_helpers import ROOT, TINY, cli_args, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]

SCRIPT = ROOT / "scripts" / "verify_model_zoo.py"
SCHEMA = ROOT.parent / "shared" / "schema" / "meta_schema_20240725.json"
needs_schema = pytest.mark.skipif(not SCHEMA.is_file(), reason=f"no offline schema copy at {SCHEMA}")


def _load_script():
    spec = importlib.util.spec_from_file_location("verify_model_zoo_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_bundle(dest: Path) -> Path:
    """The files the Model Zoo's checks read (configs, LICENSE, large_files.yml) and an empty models/."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "configs", dest / "configs")
    for name in ("LICENSE", "large_files.yml"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "models").mkdir()
    return dest


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir):
    """A bundle copy with a tiny U-Net (quantized bottleneck, train.yaml's guarded quantizer) trained into its
    models/ (model.pt + model.json)."""
    root = _copy_bundle(tmp_path_factory.mktemp("zoo") / "bundle")
    overrides = {**TINY, "bundle_root": str(root), "data_cache_dir": demo_dir, "vq_levels": ["bottleneck"]}
    proc = run_cli(["--config_file", str(root / "configs" / "train.yaml")] + cli_args(overrides))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "model.json").is_file()
    return root


def _variant(trained: Path, tmp_path: Path, model: bool = True) -> Path:
    """A fresh copy of the bundle, with the trained model.pt / model.json or without."""
    root = _copy_bundle(tmp_path / "bundle")
    if model:
        for name in ("model.pt", "model.json"):
            shutil.copy(trained / "models" / name, root / "models" / name)
    return root


def _run(root: Path, mode: str, capsys) -> tuple[int, str, str]:
    code = 0
    try:
        _load_script().main(mode=mode, bundle_root=str(root), schema=str(SCHEMA))
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_schema
def test_full_mode_on_the_cli_passes_and_exports_by_scripting(trained):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_NUM_THREADS", "1")
    # the README's TorchScript command without --use_trace: torch.jit.script of the quantized U-Net
    export = [sys.executable, "-m", "monai.bundle", "ckpt_export", "--net_id", "network_def"]
    export += [
        "--filepath",
        "models/model.ts",
        "--ckpt_file",
        "models/model.pt",
        "--meta_file",
        "configs/metadata.json",
    ]
    export += ["--config_file", "configs/inference.yaml"]
    proc = subprocess.run(export, cwd=trained, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmd = [sys.executable, str(SCRIPT), "--mode", "full", "--bundle_root", str(trained), "--schema", str(SCHEMA)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("The Model Zoo's full checks passed on") and last.endswith(".")
    version = json.loads((trained / "configs" / "metadata.json").read_text())["version"]
    for said in (
        "configs/metadata.json, LICENSE, models/model.pt",
        f"version {version}",
        "in / out",
        "torch.jit.script",
    ):
        assert said in last, said
    assert "models/model.ts loads" in last
    # the exported file is a scripted module (not a trace) of the quantized network, with its weights
    scripted = torch.jit.load(str(trained / "models" / "verify_model.ts"))
    assert scripted.original_name == "ScriptableUNet"
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    codebook = "quantizers.4.codebook"
    assert torch.equal(scripted.state_dict()[codebook], state[codebook])
    # a size the training never saw: a script is not bound to a traced shape
    assert scripted(torch.rand(1, 1, 48, 80)).shape == (1, 4, 48, 80)


@needs_schema
def test_min_mode_passes_with_a_model_and_names_the_missing_one_without(trained, tmp_path, capsys):
    code, out, err = _run(_variant(trained, tmp_path / "with"), "min", capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("The Model Zoo's min checks passed")
    assert "0 listed in large_files.yml" in out  # the shipped large_files.yml lists nothing yet
    code, out, err = _run(_variant(trained, tmp_path / "without", model=False), "min", capsys)
    assert code == 1 and "'directory'" in err and "preferred file models/model.pt" in err
    assert "passed" not in out


@needs_schema
@pytest.mark.parametrize("case", ["empty_url_file_present", "empty_url_file_missing", "wrong_hash", "right_hash"])
def test_large_files_follow_download_url(trained, tmp_path, capsys, case):
    root = _variant(trained, tmp_path, model=case != "empty_url_file_missing")
    entry = {"path": "models/model.pt", "url": "", "hash_val": "", "hash_type": "md5"}
    if case.endswith("hash"):
        digest = hashlib.md5((trained / "models" / "model.pt").read_bytes()).hexdigest()
        entry.update(url="https://example.invalid/model.pt", hash_val=digest if case == "right_hash" else "0" * 32)
    (root / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))
    code, out, err = _run(root, "min", capsys)
    if case in ("empty_url_file_present", "right_hash"):  # a file already there is kept (and its hash checked)
        assert code == 0, err
        assert "1 listed in large_files.yml, all present" in out
    else:
        assert code == 1 and "'large files'" in err and "cannot fetch models/model.pt" in err


@needs_schema
def test_version_missing_from_the_changelog_fails(trained, tmp_path, capsys):
    root = _variant(trained, tmp_path)
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    code, _, err = _run(root, "min", capsys)
    assert code == 1 and "'version'" in err and "9.9.9" in err


def test_unknown_mode_is_refused():
    with pytest.raises(SystemExit, match="--mode"):
        _load_script().main(mode="regular")
