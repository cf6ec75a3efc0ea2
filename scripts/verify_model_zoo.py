"""The MONAI Model Zoo's bundle checks, offline, on this bundle (our implementation of what the Model Zoo's
``ci/verify_bundle.py`` checks, with the same MONAI APIs).

    python scripts/verify_model_zoo.py --mode min     # what the Model Zoo CI runs on every pull request
    python scripts/verify_model_zoo.py --mode full    # + network input / output and TorchScript export

``min`` and ``full`` begin with
    0. format: the Model Zoo's code-format checks run its way (``runtests.sh --codeformat`` from the root of the
       Model Zoo repository, the bundle under ``models/<name>/``): ``isort --check``, ``black
       --skip-magic-trailing-comma --check`` and ``flake8 --count --statistics`` over a temporary Model Zoo root
       holding the zoo's own ``setup.cfg`` / ``pyproject.toml`` settings (:data:`ZOO_SETUP_CFG`,
       :data:`ZOO_PYPROJECT`) and a copy of the bundle's Python files, so the bundle's own settings play no part
       (from the zoo's root ``vqseg_bundle`` is a third-party module, and magic trailing commas are skipped).
       ``--format False`` skips it. The zoo also runs pytype, which this script does not.

``min``:
    1. large files: every entry of ``large_files.{yml,yaml,json}`` is fetched as the Model Zoo does
       (``monai.apps.download_url(url, filepath=<bundle>/<path>, hash_val, hash_type, fuzzy=True)``, empty
       ``hash_val`` / ``hash_type`` dropped): a file already there is kept (and its hash checked when one is given);
       a missing one is downloaded, which fails offline or with an empty url.
    2. directory: ``configs/metadata.json`` and ``LICENSE`` must exist; the preferred files ``models/model.pt`` and
       ``configs/inference.{json,yaml,yml}`` too (the Model Zoo fails a bundle without them unless its maintainers
       list it as an exception).
    3. version: ``version`` of ``configs/metadata.json`` is a key of its ``changelog`` (the Model Zoo also refuses
       a version already released, from its own ``model_info.json``: not available offline).
    4. metadata: ``monai.bundle.verify_metadata`` against the local schema copy (``--schema``), no download.

``full`` adds:
    5. properties: MONAI's inference-workflow properties (``ConfigWorkflow.check_properties``; the Model Zoo checks
       those of the apps in ``supported_apps``, which lists none).
    6. network input / output: ``monai.bundle.verify_net_in_out`` of ``network_def`` in ``configs/inference.*``
       (random weights; the shapes and dtypes of ``network_data_format``).
    7. TorchScript: ``monai.bundle.ckpt_export`` of ``models/model.pt`` to ``models/verify_model.ts`` without
       ``use_trace`` (``torch.jit.script``, as the Model Zoo calls it), then ``torch.jit.load`` of
       ``models/model.ts`` when there is one. Beyond the Model Zoo: the exported module must give the logits of the
       network with ``models/model.pt`` loaded strictly, on a random batch.

Prints one line per check and a closing sentence saying what passed; exits non-zero at the first failure with a
message naming the check.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import fire

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a plain checkout

MODES = ("min", "full")
NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
PREFERRED_MODEL = "models/model.pt"
CONFIG_SUFFIXES = ("json", "yaml", "yml")
NET_ID = "network_def"


# ---------------------------------------------------------------- the Model Zoo's code-format checks, its way
# Where these come from: the MONAI Model Zoo repository (github.com/Project-MONAI/model-zoo, branch dev, read
# 2026-12-06). Its CI workflow .github/workflows/code-format-check.yml (Python 3.10, the unpinned tools of
# requirements-dev.txt) runs `runtests.sh --codeformat` from the repository root, which runs, in this order,
# `python -m isort --check "$(pwd)"`, `python -m black --skip-magic-trailing-comma --check "$(pwd)"` and
# `python -m flake8 "$(pwd)" --count --statistics` (then pytype); a bundle lives in models/<name>/, so the settings
# are those of the zoo's root setup.cfg ([flake8], [isort]) and pyproject.toml ([tool.black]), copied below.
ZOO_FORMAT_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("isort", "--check"),
    ("black", "--skip-magic-trailing-comma", "--check"),
    ("flake8", "--count", "--statistics"),
)
ZOO_SETUP_CFG = """\
[flake8]
select = B,C,E,F,N,P,T4,W,B9
max_line_length = 120
ignore =
    E203
    E501
    E741
    W503
    W504
    C408
    N812
    B023
    B905
    B028
    B907
    C419
per_file_ignores = __init__.py: F401, __main__.py: F401
exclude = *.pyi,.git,.eggs,monai/_version.py,versioneer.py,venv,.venv,_version.py

[isort]
known_first_party = models
profile = black
line_length = 120
skip = .git, .eggs, venv, .venv, versioneer.py, _version.py, conf.py
skip_glob = *.pyi
"""
ZOO_PYPROJECT = r"""[tool.black]
line-length = 120
target-version = ['py37', 'py38', 'py39']
include = '\.pyi?$'
exclude = '''
(
  /(
      \.eggs
    | \.git
    | \.hg
    | \.mypy_cache
    | \.tox
    | \.venv
    | \.pytype
    | _build
    | buck-out
    | build
    | dist
  )/
  | monai/_version.py
)
'''
"""
#: folders never part of a bundle submitted to the zoo (environments, caches, run outputs)
_NOT_SUBMITTED = {".git", ".venv", "venv", ".eggs", ".cache", "outputs", "eval", "build", "dist", "__pycache__"}


class CheckError(Exception):
    """A Model Zoo check failed (the message says which and why)."""


def find_bundle_file(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.{json,yaml,yml}`` (the last suffix found wins, as in the Model Zoo), or ``None``."""
    found = None
    for suffix in CONFIG_SUFFIXES:
        if (folder / f"{stem}.{suffix}").is_file():
            found = folder / f"{stem}.{suffix}"
    return found


def bundle_python_files(root: Path) -> list[str]:
    """The bundle's Python files as the zoo would receive them: the git-tracked ``.py`` / ``.pyi`` files under
    ``root`` (every such file outside environments, caches and run outputs when ``root`` is not in a git work
    tree), relative to ``root``."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "--cached", "--", "*.py", "*.pyi"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.splitlines()
        return sorted(f for f in listed if (root / f).is_file())
    except (OSError, subprocess.SubprocessError):
        pass
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _NOT_SUBMITTED and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith((".py", ".pyi"))]
    return sorted(found)


def check_format(root: Path) -> str:
    """Check 0: the zoo's isort, black and flake8, run its way (see :data:`ZOO_FORMAT_COMMANDS`)."""
    files = bundle_python_files(root)
    with tempfile.TemporaryDirectory(prefix="model_zoo_") as zoo:
        zoo_root = Path(zoo)
        (zoo_root / "setup.cfg").write_text(ZOO_SETUP_CFG)
        (zoo_root / "pyproject.toml").write_text(ZOO_PYPROJECT)
        bundle = zoo_root / "models" / root.name
        for name in files:
            (bundle / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, bundle / name)
        for tool, *options in ZOO_FORMAT_COMMANDS:
            # as runtests.sh: isort and black take the folder last, flake8 first
            where = [str(zoo_root)]
            cmd = [sys.executable, "-m", tool, *(where + options if tool == "flake8" else options + where)]
            try:
                proc = subprocess.run(cmd, cwd=zoo_root, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as err:
                raise CheckError(f"{tool} could not run ({type(err).__name__}: {err}).") from err
            if proc.returncode != 0:
                said = (proc.stdout + proc.stderr).replace(str(bundle) + os.sep, "").replace(str(zoo_root), "<zoo>")
                lines = [line for line in said.splitlines() if line.strip()]
                lines = lines[:30] + ([f"... ({len(lines) - 30} more lines)"] if len(lines) > 30 else [])
                raise CheckError(
                    f"`{' '.join([tool, *options])}` from the Model Zoo's root (its settings, the bundle in "
                    f"models/{root.name}/) fails:\n    " + "\n    ".join(lines) + "\nFix with `black . && isort .` "
                    "at the bundle root (its pyproject.toml settings agree with the zoo's)."
                )
    commands = ", ".join(" ".join(c) for c in ZOO_FORMAT_COMMANDS)
    return f"{commands}, with the Model Zoo's settings from its root ({len(files)} files)"


def fetch_large_files(root: Path) -> str:
    """Check 1: every large file listed is present or downloaded (``monai.apps.download_url`` semantics)."""
    from monai.apps import download_url
    from monai.bundle import ConfigParser

    listing = find_bundle_file(root, "large_files")
    if listing is None:
        return "no large_files file"
    parser = ConfigParser()
    parser.read_config(str(listing))
    entries = parser.get().get("large_files") or []
    for entry in entries:
        entry = dict(entry)
        path = entry.pop("path")
        entry = {k: v for k, v in entry.items() if not (k in ("hash_val", "hash_type") and v in ("", None))}
        try:
            download_url(filepath=str(root / path), fuzzy=True, **entry)
        except Exception as err:  # an empty url, no network, a wrong hash
            raise CheckError(
                f"{listing.name}: cannot fetch {path} from url {entry.get('url')!r}: {type(err).__name__}: {err}"
            ) from err
    return f"{len(entries)} listed in {listing.name}" + (", all present" if entries else "")


def check_directory(root: Path) -> str:
    """Check 2: the necessary and preferred files exist."""
    for name in NECESSARY_FILES:
        if not (root / name).is_file():
            raise CheckError(f"necessary file {name} does not exist in {root}.")
    if not (root / PREFERRED_MODEL).is_file():
        raise CheckError(
            f"preferred file {PREFERRED_MODEL} does not exist in {root}: train one (README) or list its download "
            "url in large_files.yml."
        )
    if find_bundle_file(root / "configs", "inference") is None:
        raise CheckError(f"no inference config configs/inference.{{{','.join(CONFIG_SUFFIXES)}}} in {root}.")
    return ", ".join((*NECESSARY_FILES, PREFERRED_MODEL, str(inference_config(root).relative_to(root))))


def check_version(root: Path) -> str:
    """Check 3: the metadata's version is in its changelog."""
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    for key in ("version", "changelog"):
        if key not in meta:
            raise CheckError(f"configs/metadata.json has no {key!r}.")
    if meta["version"] not in meta["changelog"]:
        raise CheckError(f"version {meta['version']} is not a key of the changelog of configs/metadata.json.")
    return f"version {meta['version']} in the changelog"


def check_metadata(root: Path, schema: Path) -> str:
    """Check 4: ``monai.bundle.verify_metadata`` against the local schema (present, so nothing is downloaded)."""
    from monai.bundle import verify_metadata

    if not schema.is_file():
        raise CheckError(f"schema file {schema} does not exist (pass --schema).")
    try:
        verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema))
    except Exception as err:
        raise CheckError(f"configs/metadata.json does not validate against {schema.name}: {err}") from err
    return f"metadata valid against {schema.name}"


def inference_config(root: Path) -> Path:
    return find_bundle_file(root / "configs", "inference")


def check_properties(root: Path) -> str:
    """Check 5: MONAI's inference-workflow properties (the Model Zoo: those of ``supported_apps``)."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(inference_config(root)),
        meta_file=str(root / "configs" / "metadata.json"),
        workflow_type="infer",
        bundle_root=str(root),
    )
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise CheckError(f"inference workflow properties missing or wrong: {missing}.")
    return "inference workflow properties"


def check_net_in_out(root: Path, device: str) -> str:
    """Check 6: ``monai.bundle.verify_net_in_out`` of ``network_def``."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id=NET_ID,
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(inference_config(root)),
        bundle_root=str(root),
        device=device,
    )
    fmt = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]
    shape = "x".join(str(s) for s in fmt["inputs"]["image"]["spatial_shape"])
    return f"{NET_ID} in / out ({fmt['inputs']['image']['num_channels']} x {shape} -> {fmt['outputs']['pred']['num_channels']})"


def check_torchscript(root: Path, atol: float, rtol: float) -> str:
    """Check 7: ``ckpt_export`` by ``torch.jit.script``, the result against the network, and ``models/model.ts``."""
    import torch
    from monai.bundle import ckpt_export
    from vqseg_bundle.inferers.export import compare_torchscript, network_for_export

    config, ckpt = inference_config(root), root / PREFERRED_MODEL
    exported = root / "models" / "verify_model.ts"
    try:
        ckpt_export(
            net_id=NET_ID,
            filepath=str(exported),
            ckpt_file=str(ckpt),
            meta_file=str(root / "configs" / "metadata.json"),
            config_file=str(config),
            bundle_root=str(root),
        )
    except Exception as err:
        raise CheckError(f"ckpt_export (torch.jit.script) of {ckpt} failed: {type(err).__name__}: {err}") from err
    # ckpt_export copies the weights non-strictly: compare with the network that loads them strictly
    network, _, in_channels, image_size = network_for_export(config, ckpt, NET_ID, {"bundle_root": str(root)})
    diff, scale = compare_torchscript(network, exported, in_channels, image_size)
    if not diff <= atol + rtol * scale:
        raise CheckError(
            f"the scripted module {exported} differs from PyTorch with {ckpt.name} by {diff:.3g} on a random batch "
            f"(max |logit| {scale:.3g}), more than atol {atol} + rtol {rtol} * max |logit|."
        )
    said = f"TorchScript export by torch.jit.script to {exported.relative_to(root)} (matches PyTorch to {diff:.3g})"
    provided = root / "models" / "model.ts"
    if provided.is_file():
        try:
            torch.jit.load(str(provided))
        except Exception as err:
            raise CheckError(f"the provided {provided} does not load: {err}") from err
        said += ", models/model.ts loads"
    return said


def main(
    mode: str = "full",
    bundle_root: str = ".",
    schema: str = "../shared/schema/meta_schema_20240725.json",
    device: str = "cpu",
    atol: float = 1e-4,
    rtol: float = 1e-5,
    format: bool = True,
) -> None:
    """Run the Model Zoo's checks of ``mode`` (see the module docstring).

    Args:
        mode: ``"min"`` or ``"full"``.
        bundle_root: the bundle folder.
        schema: local copy of the metadata schema (``configs/metadata.json``'s ``schema`` is never downloaded).
        device: device of the network input / output check.
        atol, rtol: tolerance of the TorchScript module against PyTorch (``atol + rtol * max |logit|``).
        format: run the zoo's code-format checks its way (check 0).
    """
    if mode not in MODES:
        raise SystemExit(f"error: --mode must be one of {MODES}, got {mode!r}")
    root, schema_path = Path(bundle_root).resolve(), Path(schema).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the bundle's own code, as the Model Zoo CI does
    checks: list[tuple[str, Callable[[], str]]] = [("format", lambda: check_format(root))] if format else []
    checks += [
        ("large files", lambda: fetch_large_files(root)),
        ("directory", lambda: check_directory(root)),
        ("version", lambda: check_version(root)),
        ("metadata", lambda: check_metadata(root, schema_path)),
    ]
    if mode == "full":
        checks += [
            ("properties", lambda: check_properties(root)),
            ("network input / output", lambda: check_net_in_out(root, device)),
            ("TorchScript", lambda: check_torchscript(root, atol, rtol)),
        ]
    passed = []
    for name, check in checks:
        try:
            said = check()
        except Exception as err:  # MONAI's checks raise their own errors: each is reported with the check's name
            why = str(err) if isinstance(err, CheckError) else f"{type(err).__name__}: {err}"
            print(f"error: Model Zoo check {name!r} ({mode} mode) failed: {why}", file=sys.stderr)
            raise SystemExit(1) from None
        print(f"{name}: ok ({said})")
        passed.append(said)
    print(f"The Model Zoo's {mode} checks passed on {root}: {'; '.join(passed)}.")


if __name__ == "__main__":
    fire.Fire(main)
