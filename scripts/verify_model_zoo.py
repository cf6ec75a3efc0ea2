"""The MONAI Model Zoo's bundle checks, offline, on this bundle (our implementation of what the Model Zoo's
``ci/verify_bundle.py`` checks, with the same MONAI APIs).

    python scripts/verify_model_zoo.py --mode min     # what the Model Zoo CI runs on every pull request
    python scripts/verify_model_zoo.py --mode full    # + network input / output and TorchScript export

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
import sys
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


class CheckError(Exception):
    """A Model Zoo check failed (the message says which and why)."""


def find_bundle_file(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>.{json,yaml,yml}`` (the last suffix found wins, as in the Model Zoo), or ``None``."""
    found = None
    for suffix in CONFIG_SUFFIXES:
        if (folder / f"{stem}.{suffix}").is_file():
            found = folder / f"{stem}.{suffix}"
    return found


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
) -> None:
    """Run the Model Zoo's checks of ``mode`` (see the module docstring).

    Args:
        mode: ``"min"`` or ``"full"``.
        bundle_root: the bundle folder.
        schema: local copy of the metadata schema (``configs/metadata.json``'s ``schema`` is never downloaded).
        device: device of the network input / output check.
        atol, rtol: tolerance of the TorchScript module against PyTorch (``atol + rtol * max |logit|``).
    """
    if mode not in MODES:
        raise SystemExit(f"error: --mode must be one of {MODES}, got {mode!r}")
    root, schema_path = Path(bundle_root).resolve(), Path(schema).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))  # the bundle's own code, as the Model Zoo CI does
    checks: list[tuple[str, Callable[[], str]]] = [
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
