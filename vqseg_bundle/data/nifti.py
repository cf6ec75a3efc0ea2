"""Reader for 3D volumes and 2D images described by a Decathlon-style ``dataset.json`` (the format:
:mod:`vqseg_bundle.data.datalist`; 2D image files, PNG / JPEG / ...: :mod:`vqseg_bundle.data.images2d`).

Every volume is first reoriented from its affine to the bundle's canonical orientation (default
``"PLS"``, see :mod:`vqseg_bundle.data.orientation`), whatever the file's array order or reader.
Training volumes are then cut into 2D slices along ``slice_axis`` (an axis of the reoriented
volume; default the last, ``S``); validation volumes are kept whole with the slice axis moved last.
Unlabeled images never need a label file. A 2D image (a 2D NIfTI or a PNG / JPEG file) is one slice; its
validation "volume" is ``(H, W, 1)``.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from vqseg_bundle.data.datalist import DATASET_JSON, load_datalist, resolve_dataset_json
from vqseg_bundle.data.images2d import (
    IMAGE_2D_SUFFIXES,
    check_color_to_grey,
    check_label_mapping,
    is_image_2d,
    load_image_2d,
    map_label_values,
)
from vqseg_bundle.data.integrity import (
    DataIntegrityError,
    IntegrityReport,
    check_files_exist,
    check_image_array,
    check_label_array,
    check_split_not_empty,
    check_training_splits,
)
from vqseg_bundle.data.intensity import check_normalization, normalize_intensity
from vqseg_bundle.data.orientation import (
    CANONICAL_AXCODES,
    axis_permutation,
    check_orientation,
    orientation_codes,
    reorient,
)
from vqseg_bundle.data.records import RawSplits, VolumeRecord
from vqseg_bundle.data.selection import choose_labeled

__all__ = [
    "DATASET_JSON",
    "resolve_dataset_json",
    "load_datalist",
    "read_volume_array",
    "read_volume",
    "read_image_2d",
    "VALIDATION_SPLITS",
    "Volume",
    "to_slices_last",
    "load_nifti_splits",
]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: the ``dataset.json`` lists that may serve as the validation set (``validation_split``)
VALIDATION_SPLITS = ("validation", "test")


def read_volume_array(path: str, report: IntegrityReport, dtype: type | None = None) -> np.ndarray | None:
    """Decode an image file into a numpy array in its stored voxel order.

    NIfTI files are read with nibabel (scaling applied, voxel order as stored, no reorientation);
    other formats go through MONAI's ``LoadImage`` (ITK for MetaImage / NRRD). Trailing singleton
    dimensions beyond the third are dropped (``(H, W, D, 1)`` -> ``(H, W, D)``).

    Args:
        path: the file.
        report: collector of problems; ``None`` is returned when the file cannot be read.
        dtype: cast to this dtype (``None`` keeps the stored dtype, used for labels).

    Returns:
        The array, or ``None``.
    """
    try:
        if path.lower().endswith(_NIFTI_SUFFIXES):
            array = np.asanyarray(nib.load(path).dataobj)
        else:
            from monai.transforms import LoadImage

            array = np.asarray(LoadImage(image_only=True)(path))
    except Exception as exc:  # any decoder failure is a data problem to report, not a crash
        report.add(path, f"unreadable image file ({type(exc).__name__}: {exc})")
        return None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return array.astype(dtype, copy=False) if dtype is not None else array


def _file_geometry(path: str) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Array in the file's voxel order, its RAS affine (4 x 4) and voxel sizes, from nibabel for NIfTI
    and MONAI's ``LoadImage`` (ITK: MetaImage, NRRD, DICOM series, ...) otherwise."""
    if path.lower().endswith(_NIFTI_SUFFIXES):
        img = nib.load(path)
        array = np.asanyarray(img.dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])  # pixdim, as ITK reads it
    else:
        from monai.transforms import LoadImage

        loaded = LoadImage(image_only=True)(path)  # (x, y[, z]) with a RAS affine (ITK's LPS converted)
        array = np.asarray(loaded)
        small = np.asarray(loaded.affine, dtype=np.float64)
        n = small.shape[0] - 1
        affine = np.eye(4)
        affine[:n, :n], affine[:n, 3] = small[:n, :n], small[:n, n]
        zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :n], axis=0))
    return array, affine, zooms


class Volume(NamedTuple):
    """A decoded volume: ``array`` in the canonical orientation, ``stored`` in the file's voxel order,
    the axis ``codes`` of the file's affine (e.g. ``"LPS"``) and the voxel size along ``array``'s axes
    (``None`` when not positive and finite)."""

    array: np.ndarray
    stored: np.ndarray
    codes: str
    spacing: tuple[float, ...] | None


def read_volume(
    path: str, report: IntegrityReport, dtype: type | None = None, orientation: str | None = CANONICAL_AXCODES
) -> Volume | None:
    """Decode an image file into a numpy array in the canonical orientation.

    The array is read with nibabel (NIfTI) or MONAI's ``LoadImage`` (other formats, through ITK) and
    reoriented from its affine with MONAI's ``Orientation`` to ``orientation``
    (:func:`vqseg_bundle.data.orientation.reorient`): the same array whatever the file's axis order
    or reader. Trailing singleton dimensions beyond the third are dropped.

    Args:
        path: the file.
        report: collector of problems; ``None`` is returned when the file cannot be read.
        dtype: cast to this dtype (``None`` keeps the stored dtype, used for labels).
        orientation: target axis codes, or ``None`` for the stored voxel order.

    Returns:
        A :class:`Volume`, or ``None`` for an unreadable file.
    """
    try:
        array, affine, zooms = _file_geometry(path)
        while array.ndim > 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        codes = orientation_codes(affine, min(array.ndim, 3))
        spacing: tuple[float, ...] | None = zooms[: array.ndim]
        oriented = array
        if array.ndim in (2, 3):
            oriented, new_affine = reorient(array, affine, orientation)
            if oriented is not array:
                spacing = tuple(zooms[i] for i in axis_permutation(affine, new_affine, array.ndim))
    except Exception as exc:  # any decoder failure is a data problem to report, not a crash
        report.add(path, f"unreadable image file ({type(exc).__name__}: {exc})")
        return None
    if not all(np.isfinite(z) and z > 0 for z in spacing):
        spacing = None
    return Volume(oriented, array, codes, spacing)


def read_image_2d(
    path: str,
    report: IntegrityReport,
    dtype: type | None = None,
    orientation: str | None = CANONICAL_AXCODES,
    color_to_grey: str = "luminance",
    label: bool = False,
) -> Volume | None:
    """Decode a 2D image file (PNG, JPEG, ...) into one grey channel in the canonical orientation.

    Read by :func:`vqseg_bundle.data.images2d.load_image_2d` (MONAI's ``LoadImage``, as the inference config)
    and reoriented like a 2D NIfTI slice. ``stored`` is the image as displayed, ``(rows, columns)``, so that
    messages quote the shape an image viewer shows; ``spacing`` is ``None`` (no physical pixel size).

    Args:
        path: the file.
        report: collector of problems; ``None`` is returned when the file cannot be read.
        dtype: cast to this dtype (``None`` keeps the stored dtype, used for masks).
        orientation: target axis codes (the first two are used), or ``None`` for MONAI's ``(W, H)`` order.
        color_to_grey: how a colour image becomes grey (:data:`vqseg_bundle.data.images2d.COLOR_TO_GREY_MODES`).
        label: whether the file is a mask (colour channels must be equal).

    Returns:
        A :class:`Volume` with a 2D ``array``, or ``None`` for an unreadable file.
    """
    try:
        array, affine = load_image_2d(path, color_to_grey, label)
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        codes = orientation_codes(affine, 2)
        oriented, _ = reorient(array, affine, orientation)
    except Exception as exc:  # any decoder failure is a data problem to report, not a crash
        report.add(path, f"unreadable image file ({type(exc).__name__}: {exc})")
        return None
    return Volume(oriented, np.ascontiguousarray(array.T), codes, None)


def spacing_slices_last(spacing: tuple[float, ...] | None, slice_axis: int) -> tuple[float, float, float] | None:
    """Voxel size (mm) in the order of :func:`to_slices_last` (a 2D image gets 1.0 through-plane)."""
    if spacing is None:
        return None
    if len(spacing) == 2:
        return (float(spacing[0]), float(spacing[1]), 1.0)
    if len(spacing) != 3:
        return None
    order = [0, 1, 2]
    order.append(order.pop(_check_slice_axis(slice_axis) % 3))
    return tuple(float(spacing[i]) for i in order)


def read_spacing(path: str, slice_axis: int) -> tuple[float, float, float] | None:
    """Voxel size (mm) of a NIfTI file in its stored axis order with ``slice_axis`` last (no reorientation).

    From the header's ``pixdim`` (``get_zooms``); a 2D image gets 1.0 through-plane. ``None`` for other
    formats and for zooms that are not positive finite numbers (then distances stay in voxels).
    """
    if not path.lower().endswith(_NIFTI_SUFFIXES):
        return None
    try:
        zooms = tuple(float(z) for z in nib.load(path).header.get_zooms()[:3])
    except Exception:  # the array was readable; an odd header only costs the mm metrics
        return None
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        return None
    return spacing_slices_last(zooms, slice_axis)


def to_slices_last(volume: np.ndarray, slice_axis: int) -> np.ndarray:
    """Move ``slice_axis`` of a 3D volume last (a 2D array becomes one slice ``(H, W, 1)``)."""
    if volume.ndim == 2:
        return volume[..., None]
    return np.ascontiguousarray(np.moveaxis(volume, slice_axis, -1))


def _check_slice_axis(slice_axis: int) -> int:
    if isinstance(slice_axis, bool) or not isinstance(slice_axis, (int, np.integer)) or not -3 <= slice_axis <= 2:
        raise ValueError(f"slice_axis must be an int in -3..2 (an axis of a 3D volume), got {slice_axis!r}")
    return int(slice_axis)


def load_nifti_splits(
    dataset: str | os.PathLike,
    labeled: str | int = "all",
    slice_axis: int = -1,
    normalization: str = "minmax",
    num_classes: int = 4,
    orientation: str | None = CANONICAL_AXCODES,
    label_mapping: Mapping[Any, Any] | None = None,
    color_to_grey: str = "luminance",
    validation_split: str = "validation",
) -> RawSplits:
    """Load a ``dataset.json`` dataset into labeled / unlabeled 2D slices and validation volumes.

    The labeled subset is chosen among the ``"training"`` pairs by patient (see
    :func:`vqseg_bundle.data.integrity.patient_id_from_name`): ``"all"`` keeps them all, ``N`` or
    ``"labeled_N_cases"`` keeps the first ``N`` patients in list order and moves the other
    training volumes to the unlabeled set (their labels are not read). ``"unlabeled"`` entries are
    always unlabeled. Every volume is reoriented from its affine to ``orientation`` (the canonical
    ``"PLS"`` by default, as the ACDC HDF5 reader and the inference config), then intensities are
    normalised per volume and the volume is sliced. A label file must have its image's axis codes.

    Args:
        dataset: folder with ``dataset.json`` or the json file.
        labeled: labeled subset (see above).
        slice_axis: the axis of each reoriented 3D volume along which 2D slices are cut (default:
            last, the ``S`` axis of ``"PLS"``).
        normalization: one of ``"minmax"``, ``"zscore"``, ``"percentile"``, ``"none"``.
        num_classes: valid labels are ``0 .. num_classes-1``.
        orientation: canonical axis codes, or ``None`` for the files' stored voxel order.
        label_mapping: the declared mask value -> class mapping (``{0: 0, 255: 1}`` for 0 / 255 masks), applied
            to every label file before its values are checked; ``None``: the files hold class indices.
        color_to_grey: how a colour 2D image becomes grey (:data:`vqseg_bundle.data.images2d.COLOR_TO_GREY_MODES`).
        validation_split: the ``dataset.json`` list read as the validation set: ``"validation"`` (model selection)
            or ``"test"`` (its entries must then have labels: the final report on the test set).

    Returns:
        :class:`RawSplits`: slices ``(H, W)`` (the two remaining axes, in order), validation
        volumes ``(H, W, D)`` with the slice axis last, with the label's voxel size along those axes.

    Raises:
        DataIntegrityError: for any bad file or split (all problems are listed).
        ValueError: for an invalid ``normalization``, ``slice_axis``, ``orientation``.
    """
    check_normalization(normalization)
    slice_axis = _check_slice_axis(slice_axis)
    orientation = check_orientation(orientation)
    mapping = check_label_mapping(label_mapping, num_classes)
    check_color_to_grey(color_to_grey)
    if validation_split not in VALIDATION_SPLITS:
        raise ValueError(f"validation_split must be one of {VALIDATION_SPLITS}, got {validation_split!r}")
    json_path = resolve_dataset_json(dataset)
    lists = load_datalist(json_path)
    validation_entries = lists[validation_split]
    unlabeled_test = [e["image"] for e in validation_entries if "label" not in e]
    if unlabeled_test:
        raise DataIntegrityError(
            f"{json_path}: {len(unlabeled_test)} {validation_split!r} entries have no 'label' (e.g. "
            f"{unlabeled_test[0]}); validating on {validation_split!r} needs a label for every image"
        )
    check_split_not_empty("training", lists["training"], f"{json_path} 'training'")
    choice = choose_labeled(
        [e["image"] for e in lists["training"]],
        labeled,
        f"{json_path} 'training'",
        dataset_kind="a dataset.json dataset",
        items="'training'",
    )
    labeled_images, rule = set(choice.names), choice.rule
    labeled_entries = [e for e in lists["training"] if e["image"] in labeled_images]
    unlabeled_entries = [{"image": e["image"]} for e in lists["training"] if e["image"] not in labeled_images]
    unlabeled_entries += lists["unlabeled"]
    check_training_splits(
        [e["image"] for e in labeled_entries],
        [e["image"] for e in unlabeled_entries],
        [e["image"] for e in validation_entries],
        {
            "labeled": f"{json_path} 'training'",
            "unlabeled": f"{json_path} 'unlabeled'",
            "validation": f"{json_path} {validation_split!r}",
            "dataset": json_path,
        },
        all_labeled=isinstance(labeled, str) and labeled.strip().lower() == "all",
    )
    report = IntegrityReport(json_path)
    check_files_exist([e["image"] for e in labeled_entries], "labeled image", report)
    check_files_exist([e["label"] for e in labeled_entries], "label", report)
    check_files_exist([e["image"] for e in unlabeled_entries], "unlabeled image", report)
    check_files_exist([e["image"] for e in validation_entries], f"{validation_split} image", report)
    check_files_exist([e["label"] for e in validation_entries], f"{validation_split} label", report)
    report.raise_if_any()

    def read(path: str, dtype: type | None, label: bool) -> Volume | None:
        if is_image_2d(path):
            return read_image_2d(path, report, dtype, orientation, color_to_grey, label)
        return read_volume(path, report, dtype, orientation)

    training_codes: Counter[str] = Counter()  # stored axis codes of the training volumes (3D files)

    def load_pair(entry: dict[str, str]) -> tuple[np.ndarray, np.ndarray | None, tuple | None] | None:
        img = read(entry["image"], np.float32, False)
        if img is None or not check_image_array(img.stored, entry["image"], (2, 3), report):
            return None
        if img.stored.ndim == 3 and not is_image_2d(entry["image"]):
            training_codes[img.codes] += 1
        label, spacing = None, img.spacing
        if "label" in entry:
            lab = read(entry["label"], None, True)
            if lab is not None and mapping is not None:
                array = map_label_values(lab.array, mapping, entry["label"], report)  # reports unknown values
                stored = None if array is None else map_label_values(lab.stored, mapping, entry["label"], report)
                lab = None if array is None else lab._replace(array=array, stored=stored)
            # checked in the files' voxel order, so that messages quote the shapes the files have
            if lab is None or not check_label_array(
                lab.stored, entry["label"], num_classes, img.stored.shape, entry["image"], report
            ):
                return None
            if orientation is not None and lab.codes != img.codes:
                report.add(
                    entry["label"],
                    f"label orientation {lab.codes} differs from its image's {img.codes} ({entry['image']}): "
                    "the two files must share one voxel grid (affine)",
                )
                return None
            label, spacing = to_slices_last(lab.array, slice_axis), lab.spacing
        image = to_slices_last(normalize_intensity(img.array, normalization), slice_axis)
        return image, label, spacing_slices_last(spacing, slice_axis)

    def slices(entries: list[dict[str, str]]) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
        """``(name, image (H, W), label (H, W) or None)`` of every slice of ``entries``' readable volumes."""
        for entry in entries:
            loaded = load_pair(entry)
            if loaded is None:
                continue
            image, label, _ = loaded
            stem = _stem(entry["image"])
            for k in range(image.shape[-1]):
                yield f"{stem}_slice_{k}", image[..., k], None if label is None else label[..., k]

    raw = RawSplits(source=json_path, format="nifti", labeled_rule=rule)
    for name, image, label in slices(labeled_entries):
        raw.labeled_images.append(image)
        raw.labeled_labels.append(label)
        raw.labeled_names.append(name)
    for name, image, _ in slices(unlabeled_entries):
        raw.unlabeled_images.append(image)
        raw.unlabeled_names.append(name)
    raw.stored_axcodes = training_codes.most_common(1)[0][0] if training_codes else None
    for entry in validation_entries:
        loaded = load_pair(entry)
        if loaded is None:
            continue
        image, label, spacing = loaded
        raw.validation.append(
            VolumeRecord(name=_stem(entry["image"]), image=image, label=label.astype(np.int64), spacing=spacing)
        )
    report.raise_if_any()
    return raw


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".h5", *IMAGE_2D_SUFFIXES):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]
