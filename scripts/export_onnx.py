"""Export the bundle's evaluation network to ONNX and check it against PyTorch.

    python scripts/export_onnx.py --config_file configs/inference.yaml --ckpt_file models/model.pt \
        --output models/model.onnx

Builds ``network_def`` from the config (``--key value`` pairs override config ids, as with
``monai.bundle run``; with configs/inference.yaml the network and slice size are those recorded in the
settings file beside the weights, ``models/model.json``), loads the weights, exports with a dynamic batch axis (input ``image``
``(N, in_channels, image_size, image_size)``, output ``pred`` logits), runs ONNX Runtime and
PyTorch on a random slice batch and prints the max absolute difference; exits non-zero when it
exceeds ``atol + rtol * max |logit|``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire
from monai.bundle import ConfigParser

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from a plain checkout

from vqseg_bundle.inferers import load_network_weights
from vqseg_bundle.inferers.export import compare_onnx, export_onnx


def main(
    config_file: str = "configs/inference.yaml",
    ckpt_file: str | None = None,
    output: str = "models/model.onnx",
    net_id: str = "network_def",
    opset: int = 17,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    dynamo: bool = False,
    **override: object,
) -> float:
    """Export and check; returns the max absolute difference (see the module docstring).

    Args:
        config_file: bundle config defining ``net_id``, ``in_channels`` and ``image_size``.
        ckpt_file: weights (flat state dict); default: the config's ``ckpt_path``.
        output: ONNX file to write.
        net_id: config id of the network.
        opset: ONNX opset version.
        atol, rtol: the check passes when the max abs difference is <= atol + rtol * max |logit|.
        dynamo: use the torch.export-based exporter (needs onnxscript).
        override: config ids to override, e.g. ``--bundle_root . --num_classes 4``.
    """
    parser = ConfigParser()
    parser.read_config(config_file)
    if ckpt_file is not None:
        # the network and slice size come from the settings file beside these weights (models/model.json)
        parser.update({"ckpt_path": ckpt_file})
    parser.update(override)
    network = parser.get_parsed_content(net_id)
    ckpt = ckpt_file if ckpt_file is not None else parser.get_parsed_content("ckpt_path")
    load_network_weights(network, ckpt)
    network = network.cpu().eval()
    if "model_settings" in parser:  # configs/inference.yaml: the model's recorded settings (or the defaults)
        settings = parser.get_parsed_content("model_settings")
        in_channels, image_size = int(settings["in_channels"]), settings["image_size"]
    else:
        in_channels = int(parser.get_parsed_content("in_channels"))
        image_size = parser.get_parsed_content("image_size")
    path = export_onnx(
        network, output, in_channels=in_channels, image_size=image_size, opset=opset, dynamo=dynamo
    )
    diff, scale = compare_onnx(network, path, in_channels=in_channels, image_size=image_size)
    print(
        f"exported {path} (weights {ckpt}); max abs diff ONNX Runtime vs PyTorch "
        f"on a random batch: {diff:.3g} "
        f"(max |logit| {scale:.3g})"
    )
    if not diff <= atol + rtol * scale:
        print(
            f"error: difference {diff:.3g} exceeds atol {atol} + rtol {rtol} * {scale:.3g}", file=sys.stderr
        )
        raise SystemExit(1)
    return diff


if __name__ == "__main__":
    fire.Fire(main)
