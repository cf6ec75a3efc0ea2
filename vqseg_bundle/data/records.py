"""Decoded but not yet resized splits, the common output of the ACDC and NIfTI readers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["VolumeRecord", "RawSplits"]


@dataclass
class VolumeRecord:
    """One validation volume at its original size.

    Attributes:
        name: case name (file stem), e.g. ``patient002_frame01``.
        image: float32 ``(H, W, D)``, normalised, slices along the last axis.
        label: integer ``(H, W, D)``.
        spacing: voxel size in mm along ``(H, W, D)`` (the slice axis last, like the arrays), or ``None``
            when the source stores none (the ACDC HDF5 copy); HD95 / ASD are then in voxels only.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float] | None = None


@dataclass
class RawSplits:
    """Normalised 2D training slices and 3D validation volumes, before resizing.

    Attributes:
        labeled_images / labeled_labels / labeled_names: labeled slices ``(H_i, W_i)``.
        unlabeled_images / unlabeled_names: unlabeled slices ``(H_i, W_i)``.
        validation: whole validation volumes.
        source: where the data came from (quoted in messages and the summary).
        format: ``"acdc_h5"`` or ``"nifti"``.
        labeled_rule: how the labeled subset was chosen (for the summary).
        stored_axcodes: the training volumes' usual stored axis codes (see the field).
    """

    labeled_images: list[np.ndarray] = field(default_factory=list)
    labeled_labels: list[np.ndarray] = field(default_factory=list)
    labeled_names: list[str] = field(default_factory=list)
    unlabeled_images: list[np.ndarray] = field(default_factory=list)
    unlabeled_names: list[str] = field(default_factory=list)
    validation: list[VolumeRecord] = field(default_factory=list)
    source: str = ""
    format: str = ""
    labeled_rule: str = ""
    #: the axis codes most training volumes are stored with (before reorientation; ``None``: no orientation header,
    #: e.g. 2D image files), recorded in models/model.json for inference's orientation report
    stored_axcodes: str | None = None
