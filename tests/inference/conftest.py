"""Synthetic scans with non-identity, anisotropic, oblique geometry, and an "oracle" 1x1-conv network.

The images are ``100 + 500 * label / 3``: after the per-volume min-max of the inference config they
equal ``label / 3``, and the oracle (logit_k = s (2 c_k x - c_k^2), i.e. nearest centre c_k = k / 3)
recovers the label exactly wherever no resizing blurs it.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import itk
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
    """Blocks of classes 1..3 (all present on every slice of a 3D volume, so min-max is the same everywhere)."""
    lab = np.zeros(shape, np.uint8)
    h, w = shape[:2]
    lab[h // 8 : h // 2, w // 8 : w // 2] = 1
    lab[h // 2 + 1 : h - 2, w // 3 : w - 2] = 2
    lab[2 : h // 3, w // 2 + 2 : w - 1] = 3
    return lab


def image_of(label: np.ndarray) -> np.ndarray:
    return (100.0 + 500.0 * label.astype(np.float32) / 3.0).astype(np.float32)


def oracle_state_dict(scale: float = 100.0) -> dict[str, torch.Tensor]:
    c = torch.arange(NUM_CLASSES, dtype=torch.float32) / (NUM_CLASSES - 1)
    return {"weight": (2 * c * scale).view(NUM_CLASSES, 1, 1, 1), "bias": -(c**2) * scale}


@pytest.fixture(scope="session")
def scans(tmp_path_factory) -> dict[str, object]:
    """A folder with an oblique anisotropic 3D NIfTI (37 x 29 x 5, 1.4 x 1.4 x 10 mm), a 2D NIfTI
    (23 x 31) and, in another folder, an oblique MetaImage (.mha, 19 x 27 x 3, 0.9 x 1.3 x 6 mm);
    the labels and expected RAS affines kept in memory; the oracle's weights."""
    root = tmp_path_factory.mktemp("scans")
    nifti_dir = root / "nifti"
    nifti_dir.mkdir()
    out: dict[str, object] = {"root": root, "nifti_dir": nifti_dir, "labels": {}, "affines": {}}
    affine = np.eye(4)
    affine[:3, :3] = rotation(0.35, -0.2, 0.6) @ np.diag([1.4, 1.4, 10.0])
    affine[:3, 3] = [-12.5, 40.0, 7.25]
    lab3 = phantom_label((37, 29, 5))
    nib.save(nib.Nifti1Image(image_of(lab3), affine), nifti_dir / "oblique.nii.gz")
    out["labels"]["oblique"], out["affines"]["oblique"] = lab3, affine
    affine2 = np.diag([0.7, 0.9, 1.0, 1.0])
    affine2[:3, 3] = [3.0, -4.0, 0.0]
    lab2 = phantom_label((23, 31))
    nib.save(nib.Nifti1Image(image_of(lab2), affine2), nifti_dir / "flat2d.nii.gz")
    out["labels"]["flat2d"], out["affines"]["flat2d"] = lab2, affine2
    mha_dir = root / "mha"
    mha_dir.mkdir()
    lab_m = phantom_label((19, 27, 3))  # MONAI's (x, y, z) array order
    itk_img = itk.image_from_array(np.ascontiguousarray(image_of(lab_m).transpose(2, 1, 0)))  # ITK's (z, y, x)
    direction = rotation(0.0, 0.0, 0.3)
    itk_img.SetSpacing([0.9, 1.3, 6.0])
    itk_img.SetOrigin([10.0, -5.0, 3.0])
    itk_img.SetDirection(itk.matrix_from_array(direction))
    itk.imwrite(itk_img, str(mha_dir / "lps.mha"))
    # the geometry by hand: ITK's LPS world to the RAS affine that NIfTI stores
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine_m = np.eye(4)
    affine_m[:3, :3] = lps_to_ras @ direction @ np.diag([0.9, 1.3, 6.0])
    affine_m[:3, 3] = lps_to_ras @ np.array([10.0, -5.0, 3.0])
    out["mha_dir"] = mha_dir
    out["labels"]["lps"], out["affines"]["lps"] = lab_m, affine_m
    ckpt = root / "oracle.pt"
    torch.save(oracle_state_dict(), ckpt)
    out["oracle_ckpt"] = ckpt
    return out
