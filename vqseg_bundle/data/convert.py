"""ACDC (SSL4MIS HDF5 layout) -> NIfTI volumes + Decathlon-style ``dataset.json``.

The front end is ``scripts/prepare_acdc.py``. Training slices are grouped back into one 3D
volume per ``patientNNN_frameFF`` (slice-number order); labeled patients' volumes (image + label)
go to ``"training"``, the other training volumes (image only) to ``"unlabeled"``, the validation
volumes to ``"validation"``.

The files are written as the ACDC challenge distributes them: the HDF5 arrays are SimpleITK's
``GetArrayFromImage`` of the challenge files, ``(Z, Y, X)``, so each NIfTI holds their transpose,
``(X, Y, Z)`` as nibabel reads it, with the challenge's affine signs ``diag(-1, -1, 1)`` (what ITK
writes for the identity direction, :data:`vqseg_bundle.data.orientation.ACDC_H5_AFFINE`). The HDF5
copy stores no voxel spacing, so the spacing is 1 (voxel units): metrics in "mm" on this output are
voxel units. Read back through the bundle's canonical orientation, every case gives the network the
same arrays as the HDF5 reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
from vqseg_bundle.data.acdc import read_h5_arrays, slice_index, volume_key
from vqseg_bundle.data.acdc_layout import TRAIN_LIST, AcdcLayout
from vqseg_bundle.data.datalist import DATASET_JSON, write_datalist
from vqseg_bundle.data.integrity import IntegrityReport, check_image_array, check_split_not_empty, patient_id_from_name
from vqseg_bundle.data.orientation import ACDC_H5_AFFINE
from vqseg_bundle.data.selection import choose_labeled

__all__ = ["choose_labeled_patients", "convert_acdc_to_nifti"]


def choose_labeled_patients(
    dataset_dir: str | os.PathLike, train_names: list[str], labeled: str | int, seed: int | None = None
) -> list[str]:
    """Labeled patients of an ACDC training set, by patient, reproducibly.

    Args:
        dataset_dir: the ACDC folder (for ``<labeled>.list`` files).
        train_names: training slice names in ``train_slices.list`` order.
        labeled: ``"all"``, a number of patients ``N``, ``"labeled_N_cases"`` or the name of a list file.
        seed: ``None`` takes patients in list order (the benchmark's subsets); an int draws ``N``
            patients with ``numpy.random.default_rng(seed)`` (the same seed gives the same patients).

    Returns:
        Patient ids, in ``train_slices.list`` order.
    """
    layout = AcdcLayout(dataset_dir)
    choice = choose_labeled(train_names, labeled, layout.train_list, layout.root, seed, "an ACDC dataset", TRAIN_LIST)
    return choice.patients


def _save(array_zyx: np.ndarray, path: Path, dtype: type) -> None:
    """Write an HDF5-layout volume ``(Z, Y, X)`` as the challenge file it came from: ``(X, Y, Z)``."""
    array = np.ascontiguousarray(np.transpose(array_zyx, (2, 1, 0)), dtype=dtype)
    img = nib.Nifti1Image(array, ACDC_H5_AFFINE)  # the challenge's signs; spacing 1: the HDF5 stores none
    img.header.set_xyzt_units("mm")
    nib.save(img, path)


def convert_acdc_to_nifti(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    labeled: str | int = "labeled_3_cases",
    seed: int | None = None,
    compress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ACDC as NIfTI volumes plus ``dataset.json`` into ``dst``.

    Args:
        src: the ACDC folder in the SSL4MIS layout.
        dst: output folder (``imagesTr``, ``labelsTr``, ``imagesUnl``, ``imagesVal``, ``labelsVal``,
            ``dataset.json``).
        labeled: labeled subset by patient, see :func:`choose_labeled_patients`.
        seed: ``None`` for list order, or a seed to draw the labeled patients reproducibly.
        compress: ``.nii.gz`` (True) or ``.nii`` (False, faster).
        overwrite: allow writing into a folder that already has a ``dataset.json``.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.

    Raises:
        DataIntegrityError: for missing / unreadable / malformed source files.
        FileExistsError: when ``dst/dataset.json`` exists and ``overwrite`` is False.
    """
    layout, out = AcdcLayout(src), Path(dst)
    src = layout.root
    if (out / DATASET_JSON).exists() and not overwrite:
        raise FileExistsError(f"{out / DATASET_JSON} exists; pass overwrite=True to replace it")
    train_names, val_names = layout.read_names()
    check_split_not_empty("validation", val_names, layout.val_list)
    labeled_patients = choose_labeled_patients(src, train_names, labeled, seed)
    labeled_set = set(labeled_patients)

    slice_paths, val_paths = layout.file_paths(train_names, val_names)
    report = IntegrityReport(src)

    volumes: dict[str, list[str]] = {}
    for name in train_names:
        volumes.setdefault(volume_key(name), []).append(name)
    ext = ".nii.gz" if compress else ".nii"
    for sub in ("imagesTr", "labelsTr", "imagesUnl", "imagesVal", "labelsVal"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    training, unlabeled, validation = [], [], []
    for key, members in volumes.items():
        members = sorted(members, key=slice_index)
        is_labeled = patient_id_from_name(key) in labeled_set
        arrays = [
            read_h5_arrays(slice_paths[n], ("image", "label") if is_labeled else ("image",), report) for n in members
        ]
        if any(a is None for a in arrays):
            continue
        shapes = {a["image"].shape for a in arrays}
        if len(shapes) != 1:
            report.add(slice_paths[members[0]], f"slices of volume {key} have different shapes {sorted(shapes)}")
            continue
        image = np.stack([a["image"] for a in arrays]).astype(np.float32)  # (Z, Y, X), as the HDF5 volumes
        if not check_image_array(image, slice_paths[members[0]], 3, report):
            continue
        _save(image, out / ("imagesTr" if is_labeled else "imagesUnl") / f"{key}{ext}", np.float32)
        if is_labeled:
            label = np.stack([a["label"] for a in arrays])
            _save(label, out / "labelsTr" / f"{key}{ext}", np.uint8)
            training.append({"image": f"imagesTr/{key}{ext}", "label": f"labelsTr/{key}{ext}"})
        else:
            unlabeled.append({"image": f"imagesUnl/{key}{ext}"})
    for name in val_names:
        arrays = read_h5_arrays(val_paths[name], ("image", "label"), report)
        if arrays is None or not check_image_array(arrays["image"], val_paths[name], 3, report):
            continue
        _save(arrays["image"], out / "imagesVal" / f"{name}{ext}", np.float32)
        _save(arrays["label"], out / "labelsVal" / f"{name}{ext}", np.uint8)
        validation.append({"image": f"imagesVal/{name}{ext}", "label": f"labelsVal/{name}{ext}"})
    report.raise_if_any()

    header = {
        "name": "ACDC (SSL4MIS preprocessing), converted to NIfTI",
        "description": "Training slices regrouped into 3D volumes (slice order), min-max normalised per "
        "volume by SSL4MIS, written as the challenge distributes its NIfTI files: the transpose (X, Y, Z) of "
        "the HDF5 (Z, Y, X) arrays, affine diag(-1, -1, 1). The HDF5 source stores no voxel spacing: "
        "spacing 1 (voxel units).",
        "reference": "Bernard et al., IEEE TMI 37(11), 2018; research and education use only",
        "tensorImageSize": "3D",
        "modality": {"0": "cine-MRI"},
        "labels": {"0": "background", "1": "right ventricle", "2": "myocardium", "3": "left ventricle"},
        "labeled_patients": labeled_patients,
        "labeled_rule": f"labeled={labeled!r}, seed={seed!r}",
    }
    write_datalist(out, header, training, unlabeled, validation)
    return out
