"""Loading the bundle's ``models/model.pt`` (a flat state dict of ``network_def``) with clear errors.

``torch.nn.Module.load_state_dict`` reports a checkpoint from another network or class count as a
long ``RuntimeError`` without the file name; MONAI's ``CheckpointLoader`` adds nothing to it. This
helper names the file and lists missing / unexpected keys and shape mismatches, with a hint. The file is
read by :func:`vqseg_bundle.networks.weights.read_state_dict` (re-exported here).
"""

from __future__ import annotations

import os

import torch
from vqseg_bundle.networks.weights import listed_names, read_state_dict

__all__ = ["load_network_weights", "read_state_dict"]


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
        problems.append(f"shape mismatches: {listed_names(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys: {listed_names(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {listed_names(unexpected)}")
    if problems:
        raise ValueError(
            f"Checkpoint {str(path)!r} does not match the network {type(network).__name__}: "
            + "; ".join(problems)
            + ". Was it trained with another network, backbone or number of classes (num_classes / "
            "in_channels in the config)?"
        )
    network.load_state_dict(state, strict=strict)
    return network
