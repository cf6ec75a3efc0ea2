"""Fixtures of tests/inference (helpers and constants live in inference_helpers.py, a unique module name)."""

from __future__ import annotations

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from inference_helpers import image_of, oracle_state_dict, phantom_label, rotation


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
