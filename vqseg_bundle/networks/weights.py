"""Weight files -> flat state dicts: the one reader of ``torch.save`` / safetensors files in the bundle.

Two layouts are read, over one loader (existence, ``torch.load(weights_only=True)`` or safetensors, errors that
name the file):

* :func:`read_state_dict`: the bundle's own files (``models/model.pt``, an entry of a resumable checkpoint),
  strictly: every value a tensor, a nested entry chosen by ``key`` or found when it is the only one;
* :func:`read_pretrained_state_dict`: third-party pretrained weights (DINOv2, EfficientNet-Lite0), leniently:
  the usual ``{"model" / "state_dict" / "teacher": ...}`` containers unwrapped, ``module.`` / ``backbone.``
  prefixes stripped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["read_state_dict", "read_pretrained_state_dict", "load_weights_file", "listed_names"]

_MAX_LISTED = 8
_PRETRAINED_CONTAINERS = ("model", "state_dict", "teacher")
_PRETRAINED_PREFIXES = ("module.", "backbone.")


def listed_names(names: list[str], limit: int = _MAX_LISTED) -> str:
    """``names`` joined for a message, the first ``limit`` of them and a count of the rest."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_weights_file(path: str | os.PathLike, what: str = "Weights file", missing_hint: str = "") -> Any:
    """The object stored in a weights file, tensors on the CPU.

    Args:
        path: a ``torch.save`` file (read with ``weights_only=True``) or a ``.safetensors`` file; ``~`` is expanded.
        what: how messages name the file (``"Checkpoint file"``, ``"Weights file"``).
        missing_hint: appended to the message when the file does not exist.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file cannot be read (not a PyTorch / safetensors file, a pickle with objects, ...).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.{' ' + missing_hint if missing_hint else ''}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, ...)
        raise ValueError(
            f"{what} {str(path)!r} could not be read as a PyTorch state dict ({type(e).__name__}: {e}). "
            "Expected a state dict saved with torch.save or safetensors (not a TorchScript or ONNX file)."
        ) from e


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a flat state dict of the bundle from ``path``.

    Accepted layouts: a flat ``{name: tensor}`` dict (what the bundle writes to ``models/model.pt``); a dict whose
    entry ``key`` is such a dict; or, with ``key=None``, a dict with exactly one entry holding such a dict (e.g.
    ``{"model": {...}}``). A ``module.`` prefix left by ``DistributedDataParallel`` (on every name) is stripped.

    Args:
        path: checkpoint file.
        key: entry of a nested checkpoint to read (e.g. ``"network"``), ``None`` to auto-detect.

    Returns:
        the state dict, tensors on the CPU.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a PyTorch checkpoint or holds no recognisable state dict.
    """
    obj = load_weights_file(
        path,
        "Checkpoint file",
        "Train the bundle first (it writes models/model.pt) or pass the weights with --ckpt_path /path/to/model.pt.",
    )
    path = Path(path).expanduser()
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = list(obj.keys()) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"Checkpoint file {str(path)!r} has no entry {key!r}; top-level entries: {found}.")
        obj = obj[key]
    elif isinstance(obj, Mapping) and len(obj) == 1 and _is_state_dict(next(iter(obj.values()))):
        obj = next(iter(obj.values()))
    if not _is_state_dict(obj):
        found = listed_names([str(k) for k in obj.keys()]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"Checkpoint file {str(path)!r} does not hold a flat state dict of tensors (top level: {found}). "
            "Pass the entry holding the network weights as `key`."
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def read_pretrained_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a pretrained weights file (``torch.load`` with ``weights_only=True``, or safetensors) into a flat
    state dict.

    Unwraps ``{"model": ...}``, ``{"state_dict": ...}`` and ``{"teacher": ...}`` containers and strips
    ``module.`` / ``backbone.`` prefixes (DDP / DINOv2 training checkpoints).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be read or holds no tensors.
    """
    state = load_weights_file(path, "Weights file")
    for key in _PRETRAINED_CONTAINERS:
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Weights file {str(Path(path).expanduser())!r} holds no state dict of tensors.")
    out = {}
    for k, v in state.items():
        for prefix in _PRETRAINED_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out
