"""One log line per input whose header geometry deserves a look before its prediction is trusted.

Every volume is reoriented from its affine to the canonical orientation (``Orientationd``, a flip / transpose of
the voxel grid, no resampling), which is right when the header is. :class:`ReportOrientationd` runs just before that
reorientation and logs, for a file, in one line:

* an oblique affine (an axis more than ``oblique_degrees`` off the nearest world axis): the reorientation uses the
  nearest axes and does not resample;
* a stored slice axis that becomes an in-plane axis after reorientation: the network then sees through-plane
  images, unlike the training slices;
* stored axis codes whose in-plane part differs from the training volumes' (``training_axcodes``): the
  reorientation turns or mirrors the slices, which is correct only if this file's header is; a header written
  under another convention gives a turned or mirrored prediction, which orientation correction (the default,
  :mod:`vqseg_bundle.inferers.orientation_correction`) turns back: docs/results.md "Orientation robustness".

2D image files (PNG, JPEG, ...) carry no orientation in their header and are not compared.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from nibabel.affines import obliquity
from vqseg_bundle.data.orientation import check_orientation, orientation_codes

__all__ = ["ReportOrientationd", "orientation_findings"]

logger = logging.getLogger(__name__)

_PAIRS = ("LR", "PA", "IS")


def _pair(code: str) -> int:
    return next(i for i, p in enumerate(_PAIRS) if code in p)


def orientation_findings(
    affine: np.ndarray,
    ndim: int,
    orientation: str | None,
    slice_axis: int = -1,
    training_axcodes: str | None = None,
    oblique_degrees: float = 1.0,
) -> list[str]:
    """What :class:`ReportOrientationd` says of one input geometry (an empty list: nothing to say).

    Args:
        affine: the input's voxel-to-world affine (RAS; ``(ndim + 1, ndim + 1)`` or 4 x 4).
        ndim: its spatial dimensions (2 or 3).
        orientation: the axis codes it is reoriented to (``None``: not reoriented, nothing compared).
        slice_axis: the axis of the reoriented volume the network slices along.
        training_axcodes: the training volumes' stored axis codes (``None``: not compared).
        oblique_degrees: tolerance of the obliqueness check, in degrees.
    """
    target = check_orientation(orientation)
    a = np.asarray(affine, dtype=np.float64)
    full = np.eye(4)
    k = min(ndim, a.shape[0] - 1)
    full[:k, :k], full[:k, 3] = a[:k, :k], a[:k, -1]
    findings = []
    angle = math.degrees(float(np.max(obliquity(full)[:ndim])))
    if angle > oblique_degrees:
        findings.append(
            f"oblique affine (an axis {angle:.1f} degrees off the world axes): reoriented by its nearest axes, "
            "not resampled"
        )
    if target is None:
        return findings
    codes = orientation_codes(a, ndim)
    goal = target[:ndim]
    if ndim == 3:
        stored_slice = int(slice_axis) % 3  # the stacking axis of a stored volume, as the inferer reads it
        lands = next(j for j, c in enumerate(goal) if _pair(c) == _pair(codes[stored_slice]))
        if lands != int(slice_axis) % 3:
            findings.append(
                f"its stored slice axis {stored_slice} ({codes[stored_slice]}) becomes an in-plane axis after "
                f"reorientation to {target} ({codes} stored): the network sees through-plane images"
            )
    if training_axcodes is not None and ndim == 3:
        train = check_orientation(training_axcodes)
        inplane = [c for i, c in enumerate(codes) if i != int(slice_axis) % 3]
        train_inplane = [c for i, c in enumerate(train) if i != int(slice_axis) % 3]
        if inplane != train_inplane:
            findings.append(
                f"stored in-plane axes {''.join(inplane)} ({codes}), the training volumes' {''.join(train_inplane)} "
                f"({train}): the reorientation to {target} turns or mirrors its slices, right only if its header is"
            )
    return findings


class ReportOrientationd:
    """Log one line per input file whose geometry deserves a look (see module doc), once per file however often it
    is read; the data pass unchanged.

    Items: ``{key: MetaTensor (C, *spatial)}`` as ``LoadImaged`` + ``EnsureChannelFirstd`` give them (the
    affine and the file name from its metadata); an item without an affine is passed on silently.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "image",
        orientation: str | None = "PLS",
        slice_axis: int = -1,
        training_axcodes: str | None = None,
        oblique_degrees: float = 1.0,
    ) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.orientation = check_orientation(orientation)
        self.training_axcodes = check_orientation(training_axcodes)
        self.slice_axis, self.oblique_degrees = int(slice_axis), float(oblique_degrees)
        self._reported: set[str] = set()  # the inference config reads each input twice (check pass, then prediction)

    def __call__(self, data: Mapping) -> Mapping:
        for key in self.keys:
            img = data[key]
            affine = getattr(img, "affine", None)
            meta = getattr(img, "meta", None) or {}
            ndim = len(img.shape) - 1
            if affine is None or ndim not in (2, 3):
                continue
            name = str(meta.get("filename_or_obj", key))
            if name in self._reported:
                continue
            if ndim == 2 and not name.lower().endswith((".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".dcm")):
                continue  # a 2D image file has no orientation header
            findings = orientation_findings(
                np.asarray(affine), ndim, self.orientation, self.slice_axis, self.training_axcodes, self.oblique_degrees
            )
            if findings:
                logger.warning("%s: %s", name, "; ".join(findings))
                self._reported.add(name)
        return data
