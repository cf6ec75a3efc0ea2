"""2D image files (PNG, JPEG, BMP, TIFF) in a ``dataset.json`` data set: reading, colour-to-grey conversion and
the declared mapping of mask values to classes.

The files are read with MONAI's ``LoadImage`` (its default reader order: PIL for PNG / JPEG), the reader the
inference config uses too, so that a slice reaches the network the same way in training and in inference:
MONAI gives ``(W, H)`` (the image's columns first) with an identity affine, which is then reoriented like a
NIfTI slice (:func:`vqseg_bundle.data.orientation.reorient`, first two axis codes of the canonical
orientation). A colour image is converted to one grey channel deliberately (``color_to_grey``), never by taking a
channel silently; a mask must be grey (or have equal colour channels) and its values are mapped to class indices
by ``label_mapping`` (e.g. ``{0: 0, 255: 1}`` for 0 / 255 masks); a value outside the mapping is an error naming
the file. 2D image files carry no physical pixel size, so distances stay in pixels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from vqseg_bundle.data.integrity import IntegrityReport

__all__ = [
    "IMAGE_2D_SUFFIXES",
    "COLOR_TO_GREY_MODES",
    "is_image_2d",
    "check_color_to_grey",
    "check_label_mapping",
    "to_grey",
    "map_label_values",
    "load_image_2d",
]

#: file suffixes read as 2D images (lower case)
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: how a colour image becomes one grey channel: "luminance" (ITU-R BT.601 weights 0.299 R + 0.587 G + 0.114 B,
#: as PIL's ``convert("L")``), "mean" (of the colour channels), "error" (refuse colour images)
COLOR_TO_GREY_MODES = ("luminance", "mean", "error")
_LUMINANCE = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_image_2d(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a 2D image suffix (:data:`IMAGE_2D_SUFFIXES`)."""
    return os.fspath(path).lower().endswith(IMAGE_2D_SUFFIXES)


def check_color_to_grey(mode: str) -> str:
    """``mode`` when it is one of :data:`COLOR_TO_GREY_MODES`.

    Raises:
        ValueError: for another value.
    """
    if mode not in COLOR_TO_GREY_MODES:
        raise ValueError(f"color_to_grey must be one of {COLOR_TO_GREY_MODES}, got {mode!r}")
    return mode


def check_label_mapping(mapping: Mapping[Any, Any] | None, num_classes: int) -> dict[int, int] | None:
    """The declared mask-value -> class mapping as ints (JSON / command-line keys may be strings).

    Args:
        mapping: ``{file value: class index}``, e.g. ``{0: 0, 255: 1}``, or ``None`` (values are class indices).
        num_classes: ``C``; every class index must be in ``0 .. C-1``.

    Raises:
        ValueError: not a mapping, a key or value that is not an integer, a class outside ``0 .. C-1``.
    """
    if mapping is None:
        return None
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(f"label_mapping must be a non-empty mapping of mask values to classes, got {mapping!r}")
    out: dict[int, int] = {}
    for key, value in mapping.items():
        try:
            k, v = int(str(key)), int(str(value))
        except ValueError:
            raise ValueError(f"label_mapping entries must be integers, got {key!r}: {value!r}") from None
        if not 0 <= v < num_classes:
            raise ValueError(f"label_mapping maps {k} to class {v}, outside 0..{num_classes - 1} (num_classes)")
        out[k] = v
    return out


def to_grey(channels: np.ndarray, mode: str, path: str, label: bool = False) -> np.ndarray:
    """One grey array from a channel-first image ``(C, ...)``.

    One channel is returned as is; grey + alpha (2) and RGBA (4) lose the alpha channel first. For an image, 3
    colour channels are combined per ``mode``; for a mask (``label``) they must be equal (a grey mask saved as
    RGB) and the first is taken.

    Args:
        channels: ``(C, *S)``.
        mode: see :data:`COLOR_TO_GREY_MODES`.
        path: the file, quoted in errors.
        label: whether the array is a mask.

    Returns:
        ``(*S)``.

    Raises:
        ValueError: a channel count other than 1-4, a colour image with ``mode="error"``, a colour mask.
    """
    c = channels.shape[0]
    if c == 1:
        return channels[0]
    if c not in (2, 3, 4):
        raise ValueError(f"{path}: {c} channels; expected grey (1), grey + alpha (2), RGB (3) or RGBA (4)")
    colour = channels[:1] if c == 2 else channels[:3]
    if colour.shape[0] == 1 or all(np.array_equal(colour[0], colour[i]) for i in range(1, colour.shape[0])):
        return colour[0]
    if label:
        raise ValueError(f"{path}: a colour mask (its R, G and B differ); masks must be grey class values")
    if mode == "error":
        raise ValueError(f"{path}: a colour image; set color_to_grey to 'luminance' or 'mean' to convert it")
    if mode == "mean":
        return colour.astype(np.float32).mean(axis=0)
    return np.tensordot(_LUMINANCE, colour.astype(np.float32), axes=1)


def map_label_values(
    label: np.ndarray, mapping: Mapping[int, int] | None, path: str, report: IntegrityReport
) -> np.ndarray | None:
    """Class indices of a mask by the declared ``mapping``; ``None`` (and a problem naming the file and the
    values) when the mask holds a value the mapping does not list. ``mapping`` ``None``: ``label`` unchanged."""
    if mapping is None:
        return label
    values = np.unique(label)
    unknown = [v for v in values.tolist() if v not in mapping]
    if unknown:
        shown = ", ".join(f"{v:g}" for v in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        report.add(
            path,
            f"mask values {{{shown}}} are not in label_mapping {dict(mapping)} "
            "(a lossy format such as JPEG changes mask values: store masks as PNG)",
        )
        return None
    lookup = np.zeros(values.shape, dtype=np.int64)
    for i, v in enumerate(values.tolist()):
        lookup[i] = mapping[v]
    return lookup[np.searchsorted(values, label)]


def load_image_2d(path: str, color_to_grey: str = "luminance", label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a 2D image file with MONAI's ``LoadImage`` into one grey channel.

    Args:
        path: the file.
        color_to_grey: see :data:`COLOR_TO_GREY_MODES`.
        label: whether the file is a mask (colour channels must then be equal).

    Returns:
        ``(array, affine)``: the array ``(W, H)`` as MONAI gives it (columns first) and its 4 x 4 affine.

    Raises:
        Exception: whatever the reader raises for an unreadable file; ``ValueError`` for a bad channel layout or
            a file that is not 2D.
    """
    from monai.transforms import LoadImage

    loaded = LoadImage(image_only=True)(path)
    array = np.asarray(loaded)
    channel = loaded.meta.get("original_channel_dim", "no_channel")
    if isinstance(channel, (int, np.integer)):
        array = to_grey(np.moveaxis(array, int(channel), 0), color_to_grey, path, label)
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: a {array.ndim}D array of shape {array.shape}; expected a 2D image")
    small = np.asarray(loaded.affine, dtype=np.float64)
    n = min(small.shape[0] - 1, 3)
    affine = np.eye(4)
    affine[:n, :n], affine[:n, 3] = small[:n, :n], small[:n, -1]
    return array, affine
