"""Dataset integrity checks run by the readers before any training starts.

nnU-Net style: every problem is reported with the offending file and what was expected, so a
user with a bad dataset learns it in seconds rather than after an hour of training. The checks
are plain functions on numpy arrays and file paths; :class:`IntegrityReport` collects the
problems of a whole split so that one run reports them all at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence, Sized
from pathlib import Path

import numpy as np

__all__ = [
    "DataIntegrityError",
    "IntegrityReport",
    "patient_id_from_name",
    "check_files_exist",
    "check_image_array",
    "check_label_array",
    "check_split_not_empty",
    "check_patient_overlap",
    "check_training_splits",
]

# Extensions stripped from a file name before the patient-id rule is applied (longest first).
_KNOWN_EXTENSIONS = (
    ".nii.gz",
    ".nii",
    ".h5",
    ".hdf5",
    ".mha",
    ".mhd",
    ".nrrd",
    ".npy",
    ".npz",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
)
_ACDC_PATIENT = re.compile(r"^(patient\d+)")
_PATIENT_SEPARATORS = re.compile(r"_(frame|slice)")

#: Maximum number of problems quoted in one error message (the count of the rest is given).
MAX_REPORTED_PROBLEMS = 20


class DataIntegrityError(ValueError):
    """A dataset file or split is unusable; the message names the file(s) and the problem."""


def patient_id_from_name(name: str | os.PathLike) -> str:
    """Return the patient identifier encoded in a file or case name.

    The rule, applied to the file name without directory and extension (``.nii.gz``, ``.nii``,
    ``.h5``, ``.hdf5``, ``.mha``, ``.mhd``, ``.nrrd``, ``.npy``, ``.npz``, and the 2D image suffixes ``.png``,
    ``.jpg``, ``.jpeg``, ``.bmp``, ``.tif``, ``.tiff``):

    1. an ACDC name starting with ``patientNNN`` gives ``patientNNN``
       (``patient001_frame12_slice_3`` -> ``patient001``);
    2. otherwise the part before the first ``_frame`` or ``_slice``
       (``case07_frame01`` -> ``case07``, ``la_003_slice_4`` -> ``la_003``);
    3. otherwise the whole stem (``la_003`` -> ``la_003``).

    Splits are made and checked by this identifier, never by slice, so that no patient
    contributes to two of the labeled, unlabeled and validation sets.

    Args:
        name: a file path or a bare case name.

    Returns:
        The patient identifier (a non-empty string).

    Raises:
        ValueError: when the name is empty.
    """
    stem = Path(os.fspath(name)).name
    lowered = stem.lower()
    for ext in _KNOWN_EXTENSIONS:
        if lowered.endswith(ext):
            stem = stem[: -len(ext)]
            break
    if not stem:
        raise ValueError(f"cannot derive a patient id from an empty name: {name!r}")
    match = _ACDC_PATIENT.match(stem)
    if match:
        return match.group(1)
    parts = _PATIENT_SEPARATORS.split(stem, maxsplit=1)
    return parts[0] if parts[0] else stem


class IntegrityReport:
    """Collects ``(file, problem)`` pairs and raises them together as one :class:`DataIntegrityError`."""

    def __init__(self, context: str = "dataset") -> None:
        self.context = context
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str | os.PathLike, problem: str) -> None:
        """Record that ``path`` has ``problem``."""
        self.problems.append((os.fspath(path), problem))

    def __bool__(self) -> bool:
        return bool(self.problems)

    def __len__(self) -> int:
        return len(self.problems)

    def message(self) -> str:
        """The human-readable summary of all recorded problems."""
        lines = [f"{path}: {problem}" for path, problem in self.problems[:MAX_REPORTED_PROBLEMS]]
        more = len(self.problems) - MAX_REPORTED_PROBLEMS
        if more > 0:
            lines.append(f"... and {more} more problem(s)")
        header = f"{len(self.problems)} data integrity problem(s) in {self.context}:"
        return "\n".join([header, *("  " + line for line in lines)])

    def raise_if_any(self) -> None:
        """Raise :class:`DataIntegrityError` when at least one problem was recorded."""
        if self.problems:
            raise DataIntegrityError(self.message())


def check_files_exist(paths: Iterable[str | os.PathLike], role: str, report: IntegrityReport) -> None:
    """Record every path of ``paths`` that is not an existing regular file.

    Args:
        paths: files referenced by a list file or ``dataset.json``.
        role: what the files are (``"training image"``, ``"validation label"``, ...), quoted in the message.
        report: collector of problems.
    """
    for path in paths:
        if not os.path.isfile(path):
            report.add(path, f"missing {role} file (listed in the dataset but not found on disk)")


def check_image_array(
    array: np.ndarray, path: str | os.PathLike, expected_ndim: int | Sequence[int], report: IntegrityReport
) -> bool:
    """Check one image array: dimensionality, non-empty, numeric and finite.

    Args:
        array: the decoded image, e.g. ``(H, W)`` for a slice or ``(H, W, D)`` for a volume.
        path: the file it came from (quoted in the message).
        expected_ndim: the accepted number(s) of dimensions; a 4D array where 3D was expected is
            reported as "4D volume" (multi-channel or time series data must be split first).
        report: collector of problems.

    Returns:
        ``True`` when the array passed every check.
    """
    allowed = (expected_ndim,) if isinstance(expected_ndim, int) else tuple(expected_ndim)
    ok = True
    if array.ndim not in allowed:
        kind = "4D volume" if array.ndim == 4 else f"{array.ndim}D array"
        report.add(
            path,
            f"image is a {kind} of shape {tuple(array.shape)}, expected {' or '.join(map(str, allowed))}D "
            "(split multi-channel / time-series volumes into one file per channel or frame)",
        )
        ok = False
    if array.size == 0:
        report.add(path, f"image is empty (shape {tuple(array.shape)})")
        return False
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        report.add(path, f"image has non-numeric dtype {array.dtype}")
        return False
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            n_inf = int(array.size - finite.sum() - n_nan)
            report.add(path, f"image has non-finite voxels ({n_nan} NaN, {n_inf} Inf)")
            ok = False
    return ok


def check_label_array(
    label: np.ndarray,
    path: str | os.PathLike,
    num_classes: int,
    image_shape: Sequence[int],
    image_path: str | os.PathLike,
    report: IntegrityReport,
) -> bool:
    """Check one label array against its image and the declared number of classes.

    Args:
        label: the decoded label map, same shape as the image.
        path: the label file (quoted in the message).
        num_classes: ``C``; valid labels are the integers ``0 .. C-1``.
        image_shape: shape of the paired image.
        image_path: the paired image file (quoted in the shape-mismatch message).
        report: collector of problems.

    Returns:
        ``True`` when the label passed every check.
    """
    if tuple(label.shape) != tuple(image_shape):
        report.add(
            path,
            f"label shape {tuple(label.shape)} does not match image shape {tuple(image_shape)} "
            f"of {os.fspath(image_path)}",
        )
        return False
    if label.size == 0:
        report.add(path, "label is empty")
        return False
    if not (np.issubdtype(label.dtype, np.number) or label.dtype == np.bool_):
        report.add(path, f"label has non-numeric dtype {label.dtype}")
        return False
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all():
            report.add(path, "label has NaN/Inf voxels")
            return False
        if not np.array_equal(label, np.round(label)):
            bad = label[label != np.round(label)]
            report.add(
                path,
                f"label has non-integer values (e.g. {float(bad.flat[0]):g}); expected integer class "
                "indices (was the label resampled with a non-nearest interpolation?)",
            )
            return False
    lo, hi = label.min(), label.max()
    if lo < 0 or hi > num_classes - 1:
        values = np.unique(label)
        outside = [v for v in values.tolist() if v < 0 or v > num_classes - 1]
        report.add(
            path,
            f"label values {_fmt_values(outside)} are outside 0..{num_classes - 1} "
            f"(num_classes={num_classes}); values present: {_fmt_values(values.tolist())}",
        )
        return False
    return True


def check_split_not_empty(name: str, items: Sized, source: str) -> None:
    """Raise :class:`DataIntegrityError` when a split has no items.

    Args:
        name: the split (``"labeled"``, ``"unlabeled"``, ``"validation"``).
        items: its entries.
        source: where the split comes from (a list file or ``dataset.json`` path), quoted in the message.
    """
    if len(items) == 0:
        raise DataIntegrityError(
            f"{source}: the {name} split is empty; semi-supervised training needs at least one item"
        )


def check_patient_overlap(splits: Mapping[str, Iterable[str]], pairs: Sequence[tuple[str, str]], source: str) -> None:
    """Raise :class:`DataIntegrityError` when a patient appears in two splits that must be disjoint.

    Args:
        splits: split name -> item names or paths; patients come from :func:`patient_id_from_name`.
        pairs: the split pairs to compare, e.g. ``[("labeled", "validation")]``.
        source: the dataset description (quoted in the message).
    """
    report = IntegrityReport(source)
    for first, second in pairs:
        owners: dict[str, str] = {}
        for item in splits[first]:
            owners.setdefault(patient_id_from_name(item), os.fspath(item))
        for item in splits[second]:
            pid = patient_id_from_name(item)
            if pid in owners:
                report.add(
                    item,
                    f"patient {pid!r} is in both the {first} set (e.g. {owners[pid]}) and the {second} set; "
                    "splits must be disjoint by patient",
                )
                owners.pop(pid)  # one message per patient
    report.raise_if_any()


def check_training_splits(
    labeled: Sequence[str],
    unlabeled: Sequence[str],
    validation: Sequence[str],
    sources: Mapping[str, str],
    all_labeled: bool = False,
) -> None:
    """The checks every reader makes on its three splits, in this order: labeled, unlabeled and validation not
    empty (the unlabeled split may be when every training item is labeled), no patient both in training and in
    validation.

    Args:
        labeled: labeled item names or paths.
        unlabeled: unlabeled item names or paths.
        validation: validation item names or paths.
        sources: where each split comes from (keys ``"labeled"``, ``"unlabeled"``, ``"validation"``) and the
            dataset description (``"dataset"``), quoted in the messages.
        all_labeled: every training item is labeled (``labeled="all"``): an empty unlabeled split is fine.

    Raises:
        DataIntegrityError: for the first split that fails.
    """
    check_split_not_empty("labeled", labeled, sources["labeled"])
    if not all_labeled:
        check_split_not_empty("unlabeled", unlabeled, sources["unlabeled"])
    check_split_not_empty("validation", validation, sources["validation"])
    check_patient_overlap(
        {"labeled": labeled, "unlabeled": unlabeled, "validation": validation},
        [("labeled", "validation"), ("unlabeled", "validation")],
        sources["dataset"],
    )


def _fmt_values(values: Sequence[float | int], limit: int = 10) -> str:
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in list(values)[:limit]]
    tail = ", ..." if len(values) > limit else ""
    return "{" + ", ".join(shown) + tail + "}"
