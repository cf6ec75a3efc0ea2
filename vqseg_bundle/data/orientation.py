"""One anatomical orientation for every slice the network sees, whatever the file's array order.

The convention (``CANONICAL_AXCODES = "PLS"``, MONAI / nibabel axis codes in RAS world terms):
every volume is reoriented from its affine (or ITK direction) with MONAI's ``Orientation`` so that
array axis 0 runs towards the patient's **P**\\ osterior, axis 1 towards the **L**\\ eft and axis 2
(the slice axis) towards **S**\\ uperior. A 2D slice is then ``(rows, cols)`` = (anterior at the top,
patient's right on the image's left): the radiological display, and exactly the array
``SimpleITK.GetArrayFromImage`` gives, slice by slice, for an image with the identity (LPS)
direction, as the ACDC challenge files are.

* NIfTI read by nibabel (``(X, Y, Z)`` with its affine), and anything MONAI's ``LoadImage`` reads
  (ITK for NIfTI, MetaImage, NRRD and DICOM series; the LPS direction is turned into a RAS affine)
  are reoriented from their affine: an ACDC challenge file (``diag(-sx, -sy, sz)``, "LPS" codes)
  becomes ``(Y, X, Z)``.
* The ACDC HDF5 copy (SSL4MIS preprocessing) has no affine. Its arrays are
  ``GetArrayFromImage`` of the challenge files, ``(Z, Y, X)``: it is read as the challenge file it
  came from (``array.transpose(2, 1, 0)`` with :data:`ACDC_H5_AFFINE`) and reoriented like any other
  volume, which gives ``(Y, X, Z)``: the HDF5 slices as stored. Models trained on the HDF5 layout
  before the convention existed therefore keep their orientation.
* Predictions are written back in each input's own array order and affine (``Invertd`` in
  ``configs/inference.yaml``).

``orientation=None`` (or ``"none"``) anywhere keeps the stored array order (no reorientation).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientation

__all__ = [
    "CANONICAL_AXCODES",
    "ACDC_H5_AFFINE",
    "check_orientation",
    "orientation_codes",
    "reorient",
    "axis_permutation",
    "acdc_h5_to_canonical",
]

#: the orientation every slice reaches the network in (MONAI axis codes, RAS world labels)
CANONICAL_AXCODES = "PLS"

#: the voxel-to-world affine implied for the ACDC HDF5 arrays transposed to ``(X, Y, Z)``: the signs of
#: the challenge files' affines (what ITK writes for the identity direction); spacing 1, as the HDF5
#: copy stores none
ACDC_H5_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])

_NONE = (None, "", "none", "None")


def check_orientation(orientation: str | None) -> str | None:
    """``orientation`` validated: three distinct axis codes such as ``"PLS"`` / ``"RAS"``, or ``None``.

    Raises:
        ValueError: for anything else.
    """
    if orientation in _NONE:
        return None
    if not isinstance(orientation, str) or len(orientation) != 3:
        raise ValueError(f"orientation must be three axis codes such as 'PLS' or None, got {orientation!r}")
    codes = orientation.upper()
    pairs = ("LR", "PA", "IS")
    axes = sorted(next((i for i, p in enumerate(pairs) if c in p), -1) for c in codes)
    if axes != [0, 1, 2]:
        raise ValueError(f"orientation must name each of L/R, P/A, I/S once (e.g. 'PLS', 'RAS'), got {orientation!r}")
    return codes


def orientation_codes(affine: np.ndarray, ndim: int = 3) -> str:
    """The axis codes of an affine (nibabel's ``aff2axcodes``), e.g. ``"LPS"`` for an ACDC file."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    nd = np.eye(ndim + 1)
    k = min(ndim, affine.shape[0] - 1)
    nd[:k, :k] = affine[:k, :k]
    nd[:k, ndim] = affine[:k, -1]
    return "".join(nib.aff2axcodes(nd))


def reorient(
    array: np.ndarray, affine: np.ndarray, orientation: str | None = CANONICAL_AXCODES
) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a 2D / 3D array with MONAI's ``Orientation`` (the transform the inference config uses).

    Args:
        array: ``(X, Y[, Z])`` in the file's voxel order.
        affine: its voxel-to-world affine (RAS, 4 x 4, as nibabel / MONAI give it).
        orientation: target axis codes (a 2D image uses the first two), or ``None`` for no change.

    Returns:
        The reoriented array (a flipped / transposed copy, same dtype) and its affine (4 x 4).
    """
    codes = check_orientation(orientation)
    affine = np.asarray(affine, dtype=np.float64)
    if codes is None:
        return array, affine
    if array.ndim not in (2, 3):
        raise ValueError(f"reorient expects a 2D or 3D array, got shape {array.shape}")
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(array))[None], affine=torch.from_numpy(affine))
    out = Orientation(axcodes=codes[: array.ndim], labels=None)(img)  # labels None: RAS, as the affine
    out_affine = np.asarray(out.affine, dtype=np.float64)
    if out_affine.shape != (4, 4):  # a 2D image: MONAI keeps a 3 x 3 affine
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = out_affine[:2, :2], out_affine[:2, 2]
        out_affine = full
    return np.ascontiguousarray(out.as_tensor()[0].numpy()), out_affine


def axis_permutation(affine_in: np.ndarray, affine_out: np.ndarray, ndim: int = 3) -> list[int]:
    """For each axis of a reoriented array, the input axis it came from (to permute voxel sizes)."""
    a = np.asarray(affine_in, dtype=np.float64)[:ndim, :ndim]
    b = np.asarray(affine_out, dtype=np.float64)[:ndim, :ndim]
    t = np.linalg.solve(a, b)  # a signed permutation
    return [int(np.argmax(np.abs(t[:, j]))) for j in range(ndim)]


def acdc_h5_to_canonical(array_zyx: np.ndarray, orientation: str | None = CANONICAL_AXCODES) -> np.ndarray:
    """An ACDC HDF5 volume ``(Z, Y, X)`` (or slice ``(Y, X)``) in ``orientation``, slice axis last.

    The HDF5 array is read as the challenge file it came from (``transpose`` to ``(X, Y, Z)``, affine
    :data:`ACDC_H5_AFFINE`) and reoriented like every NIfTI volume. With the canonical ``"PLS"``
    this is ``(Y, X, Z)`` (``(Y, X)`` for a slice); with ``orientation=None``, the stored axes with
    the slice axis moved last (the reader's behaviour before the convention).
    """
    if array_zyx.ndim == 2:
        return acdc_h5_to_canonical(array_zyx[None], orientation)[..., 0]
    if array_zyx.ndim != 3:
        raise ValueError(f"expected an ACDC volume (Z, Y, X) or slice (Y, X), got shape {array_zyx.shape}")
    if check_orientation(orientation) is None:
        return np.ascontiguousarray(np.transpose(array_zyx, (1, 2, 0)))
    return reorient(np.transpose(array_zyx, (2, 1, 0)), ACDC_H5_AFFINE, orientation)[0]
