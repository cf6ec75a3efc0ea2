"""The single data entry point of the training configs: :func:`build_splits`."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from vqseg_bundle.data.acdc import load_acdc_splits
from vqseg_bundle.data.acdc_layout import is_acdc_layout
from vqseg_bundle.data.datalist import DATASET_JSON
from vqseg_bundle.data.datasets import RESIZE_MODES, InMemorySliceDataset, resize_slices
from vqseg_bundle.data.integrity import DataIntegrityError, patient_id_from_name
from vqseg_bundle.data.nifti import load_nifti_splits
from vqseg_bundle.data.orientation import CANONICAL_AXCODES, check_orientation
from vqseg_bundle.data.records import RawSplits

__all__ = [
    "DATASET_FORMATS",
    "SemiSupervisedSplits",
    "detect_format",
    "default_demo_dir",
    "build_splits",
    "validation_fingerprint",
]

logger = logging.getLogger(__name__)

#: Accepted values of ``dataset_format``.
DATASET_FORMATS = ("auto", "acdc_h5", "nifti")
_DEMO_NAMES = ("", "demo")


@dataclass
class SemiSupervisedSplits:
    """Labeled, unlabeled and validation data of one semi-supervised experiment.

    Attributes:
        labeled: items ``{"image": float32 (1, S, S), "label": int64 (1, S, S)}``.
        unlabeled: items ``{"image": float32 (1, S, S)}``.
        validation: list of ``{"image": float32 (1, H, W, D), "label": int64 (1, H, W, D), "name": str}``,
            plus ``"spacing": float64 (3,)`` (mm, slice axis last) when the files store one (NIfTI)
            at the original in-plane size, slices along the last axis.
        source: dataset folder or ``dataset.json`` path.
        format: ``"acdc_h5"`` or ``"nifti"``.
        labeled_rule: how the labeled subset was chosen.
        image_size: ``(S0, S1)``.
        normalization: the per-volume intensity normalisation used.
        orientation: the axis codes slices and volumes are given in (``None``: the stored order).
        stored_axcodes: the axis codes most training volumes are stored with, before reorientation (``None``: no
            orientation header, e.g. 2D image files).
        load_seconds: wall time of :func:`build_splits`.
    """

    labeled: InMemorySliceDataset
    unlabeled: InMemorySliceDataset
    validation: list[dict]
    source: str = ""
    format: str = ""
    labeled_rule: str = ""
    image_size: tuple[int, int] = (256, 256)
    normalization: str = "minmax"
    orientation: str | None = CANONICAL_AXCODES
    stored_axcodes: str | None = None
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def patients(self) -> dict[str, list[str]]:
        """Patient ids per split, in first-appearance order."""
        return {
            "labeled": self.labeled.patients(),
            "unlabeled": self.unlabeled.patients(),
            "validation": list(dict.fromkeys(patient_id_from_name(v["name"]) for v in self.validation)),
        }

    def validation_fingerprint(self) -> dict:
        """What a validation score was measured on (:func:`validation_fingerprint` of :attr:`validation`, with the
        data folder :attr:`source`), recorded in ``models/model.json`` beside the score."""
        return validation_fingerprint(self.validation, self.source)

    def summary(self) -> str:
        """A few lines for the training log: counts, patients, size, normalisation, memory."""
        pats = self.patients()

        def listed(ids: list[str], limit: int = 8) -> str:
            return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")

        mem = self.labeled.images.nbytes + self.unlabeled.images.nbytes
        mem += self.labeled.labels.nbytes if self.labeled.labels is not None else 0
        mem += sum(v["image"].nbytes + v["label"].nbytes for v in self.validation)
        return "\n".join(
            [
                f"dataset: {self.source} (format {self.format}), loaded in {self.load_seconds:.1f} s, "
                f"{mem / 2**20:.0f} MiB in memory",
                f"labeled: {len(self.labeled)} slices from {len(pats['labeled'])} patient(s) "
                f"[{self.labeled_rule}]: {listed(pats['labeled'])}",
                f"unlabeled: {len(self.unlabeled)} slices from {len(pats['unlabeled'])} patient(s)",
                f"validation: {len(self.validation)} volumes from {len(pats['validation'])} patient(s): "
                f"{listed(pats['validation'])}",
                f"training slices resized to {self.image_size[0]}x{self.image_size[1]}, "
                f"per-volume normalization {self.normalization!r}, "
                f"orientation {self.orientation or 'as stored'}",
            ]
        )


def validation_fingerprint(volumes: Sequence[dict], source: str | os.PathLike = "") -> dict:
    """The identity of a validation set: two scores are comparable only when their fingerprints' ``sha256`` agree.

    Args:
        volumes: validation items ``{"name", "image", "label", ...}`` (arrays or tensors, as read: after the
            reorientation and normalisation of the run).
        source: the data folder (or ``dataset.json``) they were read from; recorded, not hashed, so the same files
            in another folder compare equal.

    Returns:
        ``{"data": absolute source, "volumes": count, "sha256": hash of every volume's name, image and label
        (dtype, shape and bytes), in name order}``.
    """
    digest = hashlib.sha256()
    for item in sorted(volumes, key=lambda v: str(v.get("name", ""))):
        digest.update(str(item.get("name", "")).encode("utf-8") + b"\0")
        for key in ("image", "label"):
            value = item.get(key)
            if value is None:
                continue
            array = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
            array = np.ascontiguousarray(array)
            digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode("utf-8"))
            digest.update(array.tobytes())
    data = os.path.abspath(os.fspath(source)) if os.fspath(source) else ""
    return {"data": data, "volumes": len(volumes), "sha256": digest.hexdigest()}


def detect_format(dataset_dir: str | os.PathLike) -> str:
    """``"acdc_h5"`` for a folder with ``train_slices.list``, ``"nifti"`` for a ``dataset.json``
    (folder or file).

    Raises:
        DataIntegrityError: when ``dataset_dir`` does not exist or matches neither layout.
    """
    path = os.fspath(dataset_dir)
    if not os.path.exists(path):
        raise DataIntegrityError(f"{path}: dataset_dir does not exist")
    if os.path.isfile(path) and path.endswith(".json"):
        return "nifti"
    if os.path.isdir(path):
        if is_acdc_layout(path):
            return "acdc_h5"
        if os.path.isfile(os.path.join(path, DATASET_JSON)):
            return "nifti"
    raise DataIntegrityError(
        f"{path}: unknown dataset layout; expected a folder with train_slices.list (ACDC, SSL4MIS layout) "
        f"or a Decathlon-style {DATASET_JSON}, or 'demo' for the built-in phantoms"
    )


def default_demo_dir() -> str:
    """Where the demo phantoms go when no ``cache_dir`` is given: ``<cwd>/.cache/demo_data``."""
    return os.path.join(os.getcwd(), ".cache", "demo_data")


def _validation_items(raw: RawSplits) -> list[dict]:
    items = []
    for v in raw.validation:
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(v.image, dtype=np.float32))[None],
            "label": torch.from_numpy(np.ascontiguousarray(v.label, dtype=np.int64))[None],
            "name": v.name,
        }
        if v.spacing is not None:  # HD95 / ASD in mm too (vqseg_bundle.metrics.CaseMetricsHandler reads it)
            item["spacing"] = torch.tensor(v.spacing, dtype=torch.float64)
        items.append(item)
    return items


def build_splits(
    dataset_dir: str | os.PathLike | None = "demo",
    dataset_format: str = "auto",
    labeled: str | int = "labeled_3_cases",
    image_size: Sequence[int] = (256, 256),
    slice_axis: int = -1,
    normalization: str = "minmax",
    image_resize_mode: str = "nearest-exact",
    num_classes: int = 4,
    cache_dir: str | os.PathLike | None = None,
    labeled_transform: Callable | None = None,
    unlabeled_transform: Callable | None = None,
    orientation: str | None = CANONICAL_AXCODES,
    label_mapping: Mapping[Any, Any] | None = None,
    color_to_grey: str = "luminance",
    validation_split: str = "validation",
) -> SemiSupervisedSplits:
    """Load, check, normalise and resize a semi-supervised dataset, by patient.

    All integrity checks run here, before any training starts: a bad file or split raises
    :class:`~vqseg_bundle.data.integrity.DataIntegrityError` naming the file(s) and problem(s).

    Args:
        dataset_dir: an ACDC folder in the SSL4MIS layout, a folder with a Decathlon-style
            ``dataset.json`` (or the json file), or ``"demo"`` / ``""`` / ``None`` for the built-in
            synthetic phantoms, generated on first use into ``cache_dir``.
        dataset_format: ``"auto"`` (detect), ``"acdc_h5"`` or ``"nifti"``.
        labeled: the labeled subset, by patient: ``"labeled_3_cases"`` / ``"labeled_7_cases"`` (ACDC
            list files; for ``dataset.json`` data the first 3 / 7 patients of ``"training"``), an int
            ``N`` (the first ``N`` patients in list order), or ``"all"``.
        image_size: ``(S0, S1)`` the training slices are resized to once, at load time
            (image per ``image_resize_mode``, label nearest).
        image_resize_mode: interpolation of the training images to ``image_size``: ``"nearest-exact"`` (as
            UniMatch's ``zoom(order=0)``; the labels are resized so too, so image and label stay sampled at the
            same points) or ``"bilinear"`` (as the validation / inference resize).
        slice_axis: axis of the (reoriented) NIfTI volumes cut into training slices (ACDC slices are 2D
            already).
        normalization: per-volume intensity normalisation, ``"minmax"`` (SSL4MIS), ``"zscore"``,
            ``"percentile"`` (0.5-99.5 clip, then [0, 1]) or ``"none"``.
        num_classes: ``C``; labels must be integers in ``0 .. C-1``.
        cache_dir: where the demo dataset is written (default ``<cwd>/.cache/demo_data``).
        labeled_transform: callable applied to labeled items in ``__getitem__`` (can also be set later
            with ``splits.labeled.with_transform(...)``).
        unlabeled_transform: same for unlabeled items.
        orientation: the anatomical orientation every slice and volume is given in, as MONAI axis codes
            (default ``"PLS"``, :mod:`vqseg_bundle.data.orientation`; ``configs/inference.yaml`` uses the
            same), whatever the file's array order: NIfTI / ITK volumes are reoriented from their
            affine, the ACDC HDF5 arrays as the challenge files they were made from. ``None`` keeps
            the stored array order.
        label_mapping: ``dataset.json`` data: the declared mask value -> class mapping (``{0: 0, 255: 1}``
            for 0 / 255 masks); ``None``: the label files hold class indices.
        color_to_grey: ``dataset.json`` data: how a colour 2D image (PNG, JPEG, ...) becomes one grey channel,
            ``"luminance"``, ``"mean"`` or ``"error"`` (:mod:`vqseg_bundle.data.images2d`).
        validation_split: ``dataset.json`` data: the list validated on, ``"validation"`` (model selection) or
            ``"test"`` (labeled test pairs: the final report of a trained model, never model selection).

    Returns:
        :class:`SemiSupervisedSplits`.

    Raises:
        DataIntegrityError: bad files or splits.
        ValueError: invalid arguments.
    """
    start = time.perf_counter()
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format must be one of {DATASET_FORMATS}, got {dataset_format!r}")
    if image_resize_mode not in RESIZE_MODES:
        raise ValueError(f"image_resize_mode must be one of {RESIZE_MODES}, got {image_resize_mode!r}")
    size = tuple(int(s) for s in (image_size if isinstance(image_size, Sequence) else (image_size, image_size)))
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be two positive integers, got {image_size!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    orientation = check_orientation(orientation)

    path = "" if dataset_dir is None else os.fspath(dataset_dir).strip()
    if path in _DEMO_NAMES:
        from vqseg_bundle.data.phantoms import make_demo_dataset

        path = os.fspath(make_demo_dataset(cache_dir if cache_dir else default_demo_dir()))
        fmt = "nifti"
    else:
        fmt = detect_format(path) if dataset_format == "auto" else dataset_format
    if fmt == "acdc_h5":
        if not is_acdc_layout(path):
            raise DataIntegrityError(f"{path}: dataset_format='acdc_h5' but there is no train_slices.list")
        if validation_split != "validation":
            raise ValueError(
                f"validation_split={validation_split!r} needs a dataset.json data set (ACDC: 'validation')"
            )
        raw = load_acdc_splits(
            path, labeled=labeled, normalization=normalization, num_classes=num_classes, orientation=orientation
        )
    else:
        raw = load_nifti_splits(
            path,
            labeled=labeled,
            slice_axis=slice_axis,
            normalization=normalization,
            num_classes=num_classes,
            orientation=orientation,
            label_mapping=label_mapping,
            color_to_grey=color_to_grey,
            validation_split=validation_split,
        )

    label_dtype = torch.uint8 if num_classes <= 256 else torch.int64
    labeled_ds = InMemorySliceDataset(
        resize_slices(raw.labeled_images, size, image_resize_mode),
        resize_slices(raw.labeled_labels, size, "nearest-exact", dtype=label_dtype),
        raw.labeled_names,
        labeled_transform,
    )
    if raw.unlabeled_images:
        unlabeled_images = resize_slices(raw.unlabeled_images, size, image_resize_mode)
    else:
        unlabeled_images = torch.empty((0, 1, *size))
    unlabeled_ds = InMemorySliceDataset(unlabeled_images, None, raw.unlabeled_names, unlabeled_transform)
    splits = SemiSupervisedSplits(
        labeled=labeled_ds,
        unlabeled=unlabeled_ds,
        validation=_validation_items(raw),
        source=raw.source,
        format=raw.format,
        labeled_rule=raw.labeled_rule,
        image_size=size,
        normalization=normalization,
        orientation=orientation,
        stored_axcodes=raw.stored_axcodes,
    )
    splits.load_seconds = time.perf_counter() - start
    logger.info("data splits:\n%s", splits.summary())
    return splits
