"""Helpers of tests/inference: synthetic scans with non-identity, anisotropic, oblique geometry, and
an "oracle" 1x1-conv network.

The images are ``100 + 500 * label / 3``: after the per-volume min-max of the inference config they
equal ``label / 3``, and the oracle (logit_k = s (2 c_k x - c_k^2), i.e. nearest centre c_k = k / 3)
recovers the label exactly wherever no resizing blurs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
INFERENCE_CONFIG = BUNDLE_ROOT / "configs" / "inference.yaml"
NUM_CLASSES = 4
ORACLE_DEF = {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": NUM_CLASSES, "kernel_size": 1}


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def phantom_label(shape: tuple[int, ...]) -> np.ndarray:
    """Blocks of classes 1..3, all present on every slice (so min-max scaling is the same everywhere)."""
    lab = np.zeros(shape, np.uint8)
    h, w = shape[:2]
    lab[h // 8 : h // 2, w // 8 : w // 2] = 1
    lab[h // 2 + 1 : h - 2, w // 3 : w - 2] = 2
    lab[2 : h // 3, w // 2 + 2 : w - 1] = 3
    return lab


def canonical_shape(shape: tuple[int, ...], affine: np.ndarray, axcodes: str = "PLS") -> tuple[int, ...]:
    """The array shape after reorientation to ``axcodes`` (the network's view), with nibabel's functions."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    n = len(shape)
    nd = np.eye(n + 1)
    nd[:n, :n], nd[:n, n] = affine[:n, :n], affine[:n, 3]
    ornt = ornt_transform(io_orientation(nd), axcodes2ornt(axcodes[:n]))
    out = [0] * n
    for axis, (target, _) in enumerate(ornt):
        out[int(target)] = shape[axis]
    return tuple(out)


def image_of(label: np.ndarray) -> np.ndarray:
    return (100.0 + 500.0 * label.astype(np.float32) / 3.0).astype(np.float32)


def oracle_state_dict(scale: float = 100.0) -> dict[str, torch.Tensor]:
    c = torch.arange(NUM_CLASSES, dtype=torch.float32) / (NUM_CLASSES - 1)
    return {"weight": (2 * c * scale).view(NUM_CLASSES, 1, 1, 1), "bias": -(c**2) * scale}
