"""Reader for ACDC in the SSL4MIS layout (HDF5 slices for training, HDF5 volumes for validation).

Layout (``dataset_dir``)::

    train_slices.list            training slice names, in the benchmark's order
    labeled_3_cases.list, ...    labeled subsets (slice names)
    val.list                     validation volume names
    data/slices/<name>.h5        2D training slices: "image" float32 (H, W), "label" uint8 (H, W)
    data/<name>.h5               3D validation volumes: "image" (D, H, W), "label" (D, H, W)

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

from vqseg_bundle.data.integrity import (
    IntegrityReport,
    check_files_exist,
    check_image_array,
    check_label_array,
    check_patient_overlap,
    check_split_not_empty,
    patient_id_from_name,
)
from vqseg_bundle.data.intensity import NORMALIZATION_MODES, normalize_intensity
from vqseg_bundle.data.orientation import CANONICAL_AXCODES, acdc_h5_to_canonical, check_orientation
from vqseg_bundle.data.records import RawSplits, VolumeRecord
from vqseg_bundle.data.selection import cases_in_name, first_patients, parse_labeled

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

TRAIN_LIST = "train_slices.list"
VAL_LIST = "val.list"


def is_acdc_layout(dataset_dir: str | os.PathLike) -> bool:
    """Whether ``dataset_dir`` holds the SSL4MIS ACDC layout (detected by ``train_slices.list``)."""
    return os.path.isfile(os.path.join(dataset_dir, TRAIN_LIST))


def read_list(path: str | os.PathLike) -> list[str]:
    """Names in a ``.list`` file, one per line, blank lines ignored.

    Raises:
        DataIntegrityError: when the file is missing or unreadable.
    """
    report = IntegrityReport("the ACDC list files")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        report.add(path, "missing list file")
    except (OSError, UnicodeDecodeError) as exc:
        report.add(path, f"unreadable list file ({exc})")
    report.raise_if_any()
    return []  # unreachable


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
        labeled: see :func:`vqseg_bundle.data.selection.parse_labeled`; a name with a
            ``<name>.list`` file in ``dataset_dir`` uses that file, ``"labeled_N_cases"`` without
            one takes the first ``N`` patients, an int ``N`` the first ``N`` patients.

    Returns:
        The labeled slice names (in ``train_names`` order) and a description of the rule.

    Raises:
        ValueError: for an unknown split name or too many patients.
        DataIntegrityError: when a list names slices that are not in ``train_slices.list``.
    """
    kind, value = parse_labeled(labeled)
    source = os.path.join(dataset_dir, TRAIN_LIST)
    if kind == "all":
        return list(train_names), "all training slices"
    if kind == "name":
        name = str(value)
        list_path = os.path.join(dataset_dir, name if name.endswith(".list") else f"{name}.list")
        if os.path.isfile(list_path):
            chosen = read_list(list_path)
            unknown = sorted(set(chosen) - set(train_names))
            if unknown:
                report = IntegrityReport("the labeled subset")
                report.add(list_path, f"{len(unknown)} slice(s) not in {TRAIN_LIST}, e.g. {unknown[:3]}")
                report.raise_if_any()
            chosen_set = set(chosen)
            return [n for n in train_names if n in chosen_set], f"list file {os.path.basename(list_path)}"
        n_cases = cases_in_name(name)
        if n_cases is None:
            available = sorted(f[:-5] for f in os.listdir(dataset_dir) if f.endswith(".list"))
            raise ValueError(
                f"labeled={name!r}: no list file {list_path}; expected 'all', a number of patients, "
                f"'labeled_<N>_cases' or one of the list files {available}"
            )
        value = n_cases
    patients = set(first_patients(train_names, int(value), source))
    return [n for n in train_names if patient_id_from_name(n) in patients], f"first {value} patient(s) in list order"


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
        ValueError: for invalid arguments.
    """
    if normalization not in NORMALIZATION_MODES:
        raise ValueError(f"normalization must be one of {NORMALIZATION_MODES}, got {normalization!r}")
    orientation = check_orientation(orientation)
    dataset_dir = os.fspath(dataset_dir)
    train_list = os.path.join(dataset_dir, TRAIN_LIST)
    val_list = os.path.join(dataset_dir, VAL_LIST)
    train_names = read_list(train_list)
    val_names = read_list(val_list)
    check_split_not_empty("training", train_names, train_list)
    labeled_names, rule = select_acdc_labeled(dataset_dir, train_names, labeled)
    labeled_set = set(labeled_names)
    unlabeled_names = [n for n in train_names if n not in labeled_set]
    check_split_not_empty("labeled", labeled_names, f"{dataset_dir} (labeled={labeled!r})")
    if not (isinstance(labeled, str) and labeled.strip().lower() == "all"):
        check_split_not_empty("unlabeled", unlabeled_names, f"{dataset_dir} (labeled={labeled!r})")
    check_split_not_empty("validation", val_names, val_list)
    check_patient_overlap(
        {"labeled": labeled_names, "unlabeled": unlabeled_names, "validation": val_names},
        [("labeled", "validation"), ("unlabeled", "validation")],
        dataset_dir,
    )

    slice_path = {n: os.path.join(dataset_dir, "data", "slices", f"{n}.h5") for n in train_names}
    val_path = {n: os.path.join(dataset_dir, "data", f"{n}.h5") for n in val_names}
    report = IntegrityReport(dataset_dir)
    check_files_exist(slice_path.values(), "training slice", report)
    check_files_exist(val_path.values(), "validation volume", report)
    report.raise_if_any()

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
    )
