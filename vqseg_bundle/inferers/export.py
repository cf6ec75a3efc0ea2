"""ONNX and ``torch.export`` (``.pt2``) exports of the evaluation network (one 2D slice batch in, logits out)
and their checks against PyTorch, and the same check of a TorchScript file.

TorchScript export goes through MONAI (``python -m monai.bundle ckpt_export``: ``torch.jit.script`` by default,
which compiles the networks' lean ``__prepare_scriptable__`` form, :mod:`vqseg_bundle.networks.scriptable`; or
``torch.jit.trace`` with ``--use_trace True``); ONNX and ``torch.export`` are not part of MONAI's bundle commands,
hence these functions (the ``onnx`` and ``onnxruntime`` packages are optional dependencies, imported on use).
ONNX and ``torch.export`` trace the network itself, not its scriptable form.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = [
    "export_onnx",
    "compare_onnx",
    "export_program",
    "compare_program",
    "compare_torchscript",
    "network_for_export",
]


def network_for_export(
    config_file: str | os.PathLike | list,
    ckpt_file: str | os.PathLike | None = None,
    net_id: str = "network_def",
    override: dict | None = None,
) -> tuple[torch.nn.Module, Path, int, int | tuple[int, int]]:
    """The evaluation network of a bundle config with its trained weights, on the CPU in eval mode.

    With ``configs/inference.yaml`` the network and the slice size are those recorded in the settings file
    beside the weights (``models/model.json``, :mod:`vqseg_bundle.inferers.settings`).

    Returns:
        ``(network, weights path, in_channels, image_size)``.
    """
    from monai.bundle import ConfigParser

    from .checkpoint import load_network_weights

    parser = ConfigParser()
    parser.read_config(config_file)
    if ckpt_file is not None:
        parser.update({"ckpt_path": str(ckpt_file)})
    parser.update(dict(override or {}))
    network = parser.get_parsed_content(net_id)
    ckpt = Path(ckpt_file if ckpt_file is not None else parser.get_parsed_content("ckpt_path"))
    load_network_weights(network, ckpt)
    if "model_settings" in parser:  # configs/inference.yaml: the model's recorded settings (or the defaults)
        settings = parser.get_parsed_content("model_settings")
        from .settings import slice_size  # the settings file's, or --image_size: never a guessed size

        in_channels, image_size = int(settings["in_channels"]), slice_size(settings)
    else:
        in_channels = int(parser.get_parsed_content("in_channels"))
        image_size = parser.get_parsed_content("image_size")
    return network.cpu().eval(), ckpt, in_channels, image_size


def _example(in_channels: int, image_size: int | tuple[int, int], batch: int, seed: int) -> torch.Tensor:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(int(s) < 1 for s in size) or int(in_channels) < 1 or int(batch) < 1:
        raise ValueError(
            "expected in_channels >= 1, batch >= 1 and image_size an int or (H, W), "
            f"got {in_channels}, {batch}, {image_size}."
        )
    g = torch.Generator().manual_seed(int(seed))
    return torch.rand((int(batch), int(in_channels), int(size[0]), int(size[1])), generator=g)


def export_onnx(
    network: torch.nn.Module,
    path: str | os.PathLike,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 256,
    opset: int = 17,
    dynamo: bool = False,
) -> Path:
    """Export ``network`` (put in eval mode) to ONNX with a dynamic batch axis.

    Input ``image`` ``(N, in_channels, H, W)`` (``H, W`` fixed to ``image_size``: the inferer
    always feeds that size), output ``pred`` ``(N, K, H, W)`` logits.

    Args:
        network: the evaluation network (``network_def`` with its weights).
        path: output ``.onnx`` file (parent folders are created).
        in_channels, image_size: the example input's layout.
        opset: ONNX opset.
        dynamo: use the ``torch.export``-based exporter (needs ``onnxscript``) instead of the
            TorchScript-based one.

    Returns:
        the written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = network.eval()
    example = _example(in_channels, image_size, 2, 0)
    kwargs: dict = dict(input_names=["image"], output_names=["pred"], opset_version=int(opset), dynamo=dynamo)
    if dynamo:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kwargs["dynamic_axes"] = {"image": {0: "batch"}, "pred": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(network, (example,), str(path), **kwargs)
    return path


def compare_onnx(
    network: torch.nn.Module,
    path: str | os.PathLike,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 256,
    batch: int = 3,
    seed: int = 1,
) -> tuple[float, float]:
    """Compare ONNX Runtime (CPU) and PyTorch logits on a random slice batch.

    ``batch`` differs from the export's example batch (2) on purpose, to exercise the dynamic axis.

    Returns:
        ``(max_abs_diff, max_abs_logit)``: the largest absolute difference and, for a relative
        tolerance, the largest absolute PyTorch logit.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the two outputs differ in shape.
    """
    import onnx
    import onnxruntime as ort

    path = _existing(path, "ONNX file")
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])

    return _compare(network, run, "ONNX", in_channels, image_size, batch, seed)


def export_program(
    network: torch.nn.Module,
    path: str | os.PathLike,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 256,
    max_batch: int = 1024,
) -> Path:
    """Export ``network`` (put in eval mode) with ``torch.export`` and save the program (``.pt2``).

    Input ``(N, in_channels, H, W)`` with a dynamic batch ``1 <= N <= max_batch`` and ``H, W`` fixed to
    ``image_size`` (the inferer always feeds that size); output ``(N, K, H, W)`` logits. Traced under
    ``torch.no_grad()`` (the quantizer's no-grad blocks would otherwise become grad-mode nodes that the
    exported-program verifier rejects). Load with ``torch.export.load(path).module()``.

    Returns:
        the written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = network.eval()
    example = _example(in_channels, image_size, 2, 0)
    batch = torch.export.Dim("batch", min=1, max=int(max_batch))
    with torch.no_grad():
        program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def compare_program(
    network: torch.nn.Module,
    path: str | os.PathLike,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 256,
    batch: int = 3,
    seed: int = 1,
) -> tuple[float, float]:
    """Compare the saved ``torch.export`` program and PyTorch logits on a random slice batch (``batch`` differs
    from the export's example batch on purpose). Returns ``(max_abs_diff, max_abs_logit)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the two outputs differ in shape.
    """
    module = torch.export.load(str(_existing(path, "exported program"))).module()
    return _compare(network, module, "exported program", in_channels, image_size, batch, seed)


def compare_torchscript(
    network: torch.nn.Module,
    path: str | os.PathLike,
    in_channels: int = 1,
    image_size: int | tuple[int, int] = 256,
    batch: int = 3,
    seed: int = 1,
) -> tuple[float, float]:
    """Compare a saved TorchScript module (``ckpt_export``'s ``models/model.ts``) and PyTorch logits on a random
    slice batch. Returns ``(max_abs_diff, max_abs_logit)``.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the two outputs differ in shape.
    """
    module = torch.jit.load(str(_existing(path, "TorchScript file")), map_location="cpu").eval()
    return _compare(network, module, "TorchScript module", in_channels, image_size, batch, seed)


def _existing(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.")
    return path


def _compare(network, run, what: str, in_channels, image_size, batch: int, seed: int) -> tuple[float, float]:
    """``(max |run(x) - network(x)|, max |network(x)|)`` on a random ``(batch, in_channels, *image_size)`` batch."""
    x = _example(in_channels, image_size, batch, seed)
    with torch.no_grad():
        ref = network.eval()(x).cpu()
        out = run(x)
    if out.shape != ref.shape:
        raise ValueError(
            f"{what} output shape {tuple(out.shape)} differs from PyTorch output shape {tuple(ref.shape)}."
        )
    return float((out - ref).abs().max()), float(ref.abs().max())
