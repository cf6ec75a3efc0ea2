"""Reader for ACDC in the SSL4MIS layout (HDF5 slices for training, HDF5 volumes for validation).

The layout is described once, in :mod:`vqseg_bundle.data.acdc_layout`.

The arrays are SimpleITK's ``GetArrayFromImage`` of the challenge's NIfTI files: a volume is
``(Z, Y, X)``, a slice ``(Y, X)``. They carry no affine; the reader maps them to the bundle's
canonical orientation as the challenge files they came from (see
:mod:`vqseg_bundle.data.orientation`), which for the default ``"PLS"`` is the stored slice ``(Y, X)``
and a volume ``(Y, X, Z)``: the same network input as the challenge's NIfTI file of the case.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import numpy as np
from vqseg_bundle.data.acdc_layout import TRAIN_LIST, VAL_LIST, AcdcLayout, is_acdc_layout, read_list
from vqseg_bundle.data.integrity import IntegrityReport, check_image_array, check_label_array, check_training_splits
from vqseg_bundle.data.intensity import check_normalization, normalize_intensity
from vqseg_bundle.data.orientation import (
    ACDC_H5_AFFINE,
    CANONICAL_AXCODES,
    acdc_h5_to_canonical,
    check_orientation,
    orientation_codes,
)
from vqseg_bundle.data.records import RawSplits, VolumeRecord
from vqseg_bundle.data.selection import choose_labeled

__all__ = [
    "TRAIN_LIST",
    "VAL_LIST",
    "is_acdc_layout",
    "read_list",
    "select_acdc_labeled",
    "volume_key",
    "slice_index",
    "read_h5_arrays",
    "load_acdc_splits",
]


def volume_key(slice_name: str) -> str:
    """The volume a training slice belongs to: ``patient001_frame01_slice_3`` -> ``patient001_frame01``."""
    return slice_name.rsplit("_slice_", 1)[0] if "_slice_" in slice_name else slice_name


def slice_index(slice_name: str) -> int:
    """The slice number of a training slice name (``..._slice_3`` -> 3).

    Raises:
        ValueError: when the name has no ``_slice_<int>`` suffix.
    """
    head, sep, tail = slice_name.rpartition("_slice_")
    if not sep or not tail.isdigit():
        raise ValueError(f"slice name {slice_name!r} does not end with '_slice_<number>'")
    return int(tail)


def select_acdc_labeled(
    dataset_dir: str | os.PathLike, train_names: Sequence[str], labeled: str | int
) -> tuple[list[str], str]:
    """Labeled slice names of the ACDC training set.

    Args:
        dataset_dir: the ACDC folder.
        train_names: all training slice names (``train_slices.list`` order).
        labeled: see :func:`vqseg_bundle.data.selection.choose_labeled`; a name with a
            ``<name>.list`` file in ``dataset_dir`` uses that file, ``"labeled_N_cases"`` without
            one takes the first ``N`` patients, an int ``N`` the first ``N`` patients.

    Returns:
        The labeled slice names (in ``train_names`` order) and a description of the rule.

    Raises:
        ValueError: for an unknown split name or too many patients.
        DataIntegrityError: when a list names slices that are not in ``train_slices.list``.
    """
    layout = AcdcLayout(dataset_dir)
    choice = choose_labeled(
        train_names, labeled, layout.train_list, layout.root, dataset_kind="an ACDC dataset", items=TRAIN_LIST
    )
    return choice.names, choice.rule


def read_h5_arrays(path: str, keys: Sequence[str], report: IntegrityReport) -> dict[str, np.ndarray] | None:
    """Read datasets ``keys`` from one HDF5 file; problems go to ``report`` (``None`` is returned)."""
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in keys if k not in f]
            if missing:
                report.add(path, f"HDF5 file has no dataset(s) {missing} (found {sorted(f.keys())})")
                return None
            return {k: np.asarray(f[k][()]) for k in keys}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.add(path, f"unreadable HDF5 file ({type(exc).__name__}: {exc})")
        return None


def load_acdc_splits(
    dataset_dir: str | os.PathLike,
    labeled: str | int = "labeled_3_cases",
    normalization: str = "minmax",
    num_classes: int = 4,
    orientation: str | None = CANONICAL_AXCODES,
) -> RawSplits:
    """Load ACDC (SSL4MIS layout) into labeled / unlabeled training slices and validation volumes.

    Intensity normalisation is per *volume*: training slices are grouped back by
    ``patientNNN_frameFF`` and share one set of statistics (the HDF5 copy is already min-max
    normalised per volume, so ``"minmax"`` leaves it unchanged). Unlabeled slices are read without
    their label. Slices and volumes are returned in ``orientation``
    (:func:`vqseg_bundle.data.orientation.acdc_h5_to_canonical`): for the default ``"PLS"``, slices
    as stored ``(H, W)`` and validation volumes stored ``(D, H, W)`` as ``(H, W, D)``.

    Args:
        dataset_dir: the ACDC folder.
        labeled: labeled subset, see :func:`select_acdc_labeled`.
        normalization: one of ``"minmax"``, ``"zscore"``, ``"percentile"``, ``"none"``.
        num_classes: valid labels are ``0 .. num_classes-1``.
        orientation: the canonical axis codes (:data:`~vqseg_bundle.data.orientation.CANONICAL_AXCODES`),
            or ``None`` for the stored axes.

    Returns:
        :class:`RawSplits` with slices ``(H, W)`` and volumes ``(H, W, D)`` (slice axis last).

    Raises:
        DataIntegrityError: for any bad file or split (all problems are listed).
        ValueError: for an invalid ``normalization``, ``orientation``.
    """
    check_normalization(normalization)
    orientation = check_orientation(orientation)
    layout = AcdcLayout(dataset_dir)
    dataset_dir = layout.root
    train_names, val_names = layout.read_names()
    labeled_names, rule = select_acdc_labeled(dataset_dir, train_names, labeled)
    labeled_set = set(labeled_names)
    unlabeled_names = [n for n in train_names if n not in labeled_set]
    subset = f"{dataset_dir} (labeled={labeled!r})"
    check_training_splits(
        labeled_names,
        unlabeled_names,
        val_names,
        {"labeled": subset, "unlabeled": subset, "validation": layout.val_list, "dataset": dataset_dir},
        all_labeled=isinstance(labeled, str) and labeled.strip().lower() == "all",
    )

    slice_path, val_path = layout.file_paths(train_names, val_names)
    report = IntegrityReport(dataset_dir)

    images: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for name in train_names:
        path = slice_path[name]
        keys = ("image", "label") if name in labeled_set else ("image",)
        arrays = read_h5_arrays(path, keys, report)
        if arrays is None or not check_image_array(arrays["image"], path, 2, report):
            continue
        if name in labeled_set:
            if not check_label_array(arrays["label"], path, num_classes, arrays["image"].shape, path, report):
                continue
            labels[name] = acdc_h5_to_canonical(arrays["label"], orientation)
        images[name] = acdc_h5_to_canonical(arrays["image"], orientation)

    validation: list[VolumeRecord] = []
    for name in val_names:
        path = val_path[name]
        arrays = read_h5_arrays(path, ("image", "label"), report)
        if arrays is None or not check_image_array(arrays["image"], path, 3, report):
            continue
        if not check_label_array(arrays["label"], path, num_classes, arrays["image"].shape, path, report):
            continue
        image = acdc_h5_to_canonical(normalize_intensity(arrays["image"], normalization), orientation)
        label = acdc_h5_to_canonical(arrays["label"].astype(np.int64), orientation)
        validation.append(VolumeRecord(name=name, image=image, label=label))
    report.raise_if_any()

    # per-volume normalisation of the training slices (slices of one volume share a shape)
    groups: dict[str, list[str]] = {}
    for name in train_names:
        groups.setdefault(volume_key(name), []).append(name)
    for members in groups.values():
        shapes = {images[n].shape for n in members}
        if len(shapes) > 1:  # not one volume after all: normalise slice by slice
            for n in members:
                images[n] = normalize_intensity(images[n], normalization)
            continue
        stacked = normalize_intensity(np.stack([images[n] for n in members]), normalization)
        for n, arr in zip(members, stacked, strict=True):
            images[n] = arr

    return RawSplits(
        labeled_images=[images[n] for n in labeled_names],
        labeled_labels=[labels[n] for n in labeled_names],
        labeled_names=list(labeled_names),
        unlabeled_images=[images[n] for n in unlabeled_names],
        unlabeled_names=unlabeled_names,
        validation=validation,
        source=dataset_dir,
        format="acdc_h5",
        labeled_rule=rule,
        # read as the challenge files the HDF5 arrays came from (vqseg_bundle.data.orientation.ACDC_H5_AFFINE)
        stored_axcodes=orientation_codes(ACDC_H5_AFFINE),
    )
