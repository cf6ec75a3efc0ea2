"""Export the bundle's evaluation network to ONNX or as a ``torch.export`` program, and check it against PyTorch.

    python scripts/export_onnx.py --config_file configs/inference.yaml --ckpt_file models/model.pt \
        --output models/model.onnx
    python scripts/export_onnx.py --format pt2 --output models/model.pt2     # torch.export program

Builds ``network_def`` from the config (``--key value`` pairs override config ids, as with ``monai.bundle run``;
with configs/inference.yaml the network and slice size are those recorded in the settings file beside the
weights, ``models/model.json``), loads the weights, exports with a dynamic batch axis (input
``(N, in_channels, image_size, image_size)``, output logits; ONNX names them ``image`` / ``pred``), runs the export
(ONNX Runtime, or the loaded program) and PyTorch on a random slice batch and reports the max absolute
difference; exits non-zero when it exceeds ``atol + rtol * max |logit|``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a plain checkout

from vqseg_bundle.benchmarks.commands import as_flag  # noqa: E402
from vqseg_bundle.inferers.export import (  # noqa: E402
    compare_onnx,
    compare_program,
    export_onnx,
    export_program,
    network_for_export,
)

FORMATS = ("onnx", "pt2")


def main(
    config_file: str = "configs/inference.yaml",
    ckpt_file: str | None = None,
    output: str | None = None,
    format: str = "onnx",
    net_id: str = "network_def",
    opset: int = 17,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    dynamo: bool = False,
    **override: object,
) -> None:
    """Export and check (see the module docstring).

    Args:
        config_file: bundle config defining ``net_id``, ``in_channels`` and ``image_size``.
        ckpt_file: weights (flat state dict); default: the config's ``ckpt_path``.
        output: file to write (default ``models/model.onnx`` or ``models/model.pt2``).
        format: ``"onnx"`` or ``"pt2"`` (``torch.export``; load with ``torch.export.load(path).module()``).
        net_id: config id of the network.
        opset: ONNX opset version.
        atol, rtol: the check passes when the max abs difference is <= atol + rtol * max |logit|.
        dynamo: ONNX only: use the torch.export-based exporter (needs onnxscript).
        override: config ids to override, e.g. ``--bundle_root . --num_classes 4``.
    """
    dynamo = as_flag(dynamo, "dynamo")
    if format not in FORMATS:
        raise SystemExit(f"error: --format must be one of {FORMATS}, got {format!r}")
    output = output or f"models/model.{format}"
    network, ckpt, in_channels, image_size = network_for_export(config_file, ckpt_file, net_id, override)
    if format == "onnx":
        path = export_onnx(network, output, in_channels=in_channels, image_size=image_size, opset=opset, dynamo=dynamo)
        diff, scale = compare_onnx(network, path, in_channels=in_channels, image_size=image_size)
        runtime = "ONNX Runtime"
    else:
        path = export_program(network, output, in_channels=in_channels, image_size=image_size)
        diff, scale = compare_program(network, path, in_channels=in_channels, image_size=image_size)
        runtime = "the torch.export program"
    size = f"{image_size}x{image_size}" if isinstance(image_size, int) else "x".join(str(s) for s in image_size)
    if not diff <= atol + rtol * scale:
        print(
            f"error: {runtime} differs from PyTorch by {diff:.3g} on a random batch, more than atol {atol} + "
            f"rtol {rtol} * max |logit| {scale:.3g}; {path} was written but should not be used.",
            file=sys.stderr,
        )
        raise SystemExit(1)
    print(
        f"Exported the network of {ckpt} to {path} (input N x {in_channels} x {size}); {runtime} matches PyTorch "
        f"on a random batch to {diff:.3g} (max |logit| {scale:.3g})."
    )


if __name__ == "__main__":
    fire.Fire(main)
