"""Loading the bundle's ``models/model.pt`` (a flat state dict of ``network_def``) with clear errors.

``torch.nn.Module.load_state_dict`` reports a checkpoint from another network or class count as a
long ``RuntimeError`` without the file name; MONAI's ``CheckpointLoader`` adds nothing to it. This
helper names the file and lists missing / unexpected keys and shape mismatches, with a hint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

__all__ = ["load_network_weights", "read_state_dict"]

_MAX_LISTED = 8


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a flat state dict from ``path``.

    Accepted layouts: a flat ``{name: tensor}`` dict (what the bundle's ``CheckpointSaver`` writes
    to ``models/model.pt``); a dict whose entry ``key`` is such a dict; or, with ``key=None``, a
    dict with exactly one entry holding such a dict (e.g. ``{"model": {...}}``). A ``module.``
    prefix left by ``DistributedDataParallel`` is stripped.

    Args:
        path: checkpoint file.
        key: entry of a nested checkpoint to read (e.g. ``"network"``), ``None`` to auto-detect.

    Returns:
        the state dict, tensors on the CPU.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a PyTorch checkpoint or holds no recognisable state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint file {str(path)!r} does not exist. Train the bundle first (it writes models/model.pt) "
            "or pass the weights with --ckpt_path /path/to/model.pt."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, ...)
        raise ValueError(
            f"Checkpoint file {str(path)!r} could not be read as a PyTorch state dict ({type(e).__name__}: {e}). "
            "Expected a flat state dict saved with torch.save (not a TorchScript or ONNX file)."
        ) from e
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = list(obj.keys()) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"Checkpoint file {str(path)!r} has no entry {key!r}; top-level entries: {found}.")
        obj = obj[key]
    elif isinstance(obj, Mapping) and len(obj) == 1 and _is_state_dict(next(iter(obj.values()))):
        obj = next(iter(obj.values()))
    if not _is_state_dict(obj):
        found = _listed([str(k) for k in obj.keys()]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"Checkpoint file {str(path)!r} does not hold a flat state dict of tensors (top level: {found}). "
            "Pass the entry holding the network weights as `key`."
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_network_weights(
    network: torch.nn.Module, path: str | os.PathLike, key: str | None = None, strict: bool = True
) -> torch.nn.Module:
    """Load the weights in ``path`` into ``network`` (in place), checking that they belong to it.

    Args:
        network: the module built from ``network_def``.
        path: checkpoint file, see :func:`read_state_dict` for the accepted layouts.
        key: entry of a nested checkpoint, ``None`` to auto-detect.
        strict: when ``True`` (default) missing and unexpected keys are errors; shape mismatches
            are always errors.

    Returns:
        ``network``, for use inside config expressions.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file, the missing / unexpected keys and the shape mismatches when
            the checkpoint was written for another network or class count.
    """
    if not isinstance(network, torch.nn.Module):
        raise ValueError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
    state = read_state_dict(path, key=key)
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if mismatched:
        problems.append(f"shape mismatches: {_listed(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if problems:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not match the network {type(network).__name__}: "
            + "; ".join(problems)
            + ". Was it trained with another network, backbone or number of classes (num_classes / "
            "in_channels in the config)?"
        )
    network.load_state_dict(state, strict=strict)
    return network
