"""The Decathlon-style ``dataset.json`` datalist: the one reader and the one writer of the format.

``dataset.json`` keys (paths relative to the file's folder)::

    "training":   [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...]   labeled pairs
    "unlabeled":  [{"image": "imagesUnl/b.nii.gz"}, ...]  or  ["imagesUnl/b.nii.gz", ...]   (optional)
    "validation": [{"image": ..., "label": ...}, ...]
    "test":       ["imagesTs/c.nii.gz", ...]  (not used for training; read by inference); entries may be
                  {"image", "label"} pairs, scored by evaluation with ``validation_split: test``

Images may be 3D volumes (NIfTI, MetaImage, NRRD) or 2D images (NIfTI, PNG, JPEG, ...: the slices of 2D data sets).

plus descriptive entries (``name``, ``description``, ``labels``, ``numTraining``, ...) that readers ignore.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vqseg_bundle.data.integrity import DataIntegrityError
from vqseg_bundle.fileio import atomic_write_text

__all__ = ["DATASET_JSON", "resolve_dataset_json", "load_datalist", "write_datalist"]

DATASET_JSON = "dataset.json"


def resolve_dataset_json(dataset: str | os.PathLike) -> str:
    """Path of the ``dataset.json`` for a folder holding one, or the json file itself.

    Raises:
        DataIntegrityError: when there is no such file.
    """
    path = os.fspath(dataset)
    if os.path.isdir(path):
        path = os.path.join(path, DATASET_JSON)
    if not os.path.isfile(path):
        raise DataIntegrityError(f"{path}: missing dataset description (expected a Decathlon-style {DATASET_JSON})")
    return path


def _entries(data: dict, key: str, json_path: str, need_label: bool, keep_label: bool = False) -> list[dict[str, str]]:
    # Written by hand: MONAI's load_decathlon_datalist accepts plain path strings only under "test"
    # and requires every listed key to exist; here "unlabeled" may be strings and may be absent.
    base = os.path.dirname(os.path.abspath(json_path))
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise DataIntegrityError(f"{json_path}: {key!r} must be a list, got {type(raw).__name__}")
    out = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"image": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DataIntegrityError(f"{json_path}: {key!r}[{i}] must be a path string or a dict with an 'image' path")
        if need_label and not isinstance(entry.get("label"), str):
            raise DataIntegrityError(f"{json_path}: {key!r}[{i}] ({entry['image']}) has no 'label' path")
        item = {"image": os.path.normpath(os.path.join(base, entry["image"]))}
        if need_label or (keep_label and isinstance(entry.get("label"), str)):  # optional labels ("test" pairs)
            item["label"] = os.path.normpath(os.path.join(base, entry["label"]))
        out.append(item)
    return out


def load_datalist(dataset: str | os.PathLike) -> dict[str, list[dict[str, str]]]:
    """Parse a Decathlon-style ``dataset.json`` into absolute-path lists.

    Args:
        dataset: a folder with ``dataset.json`` or the json file.

    Returns:
        ``{"training": [{"image", "label"}], "unlabeled": [{"image"}], "validation": [{"image", "label"}],
        "test": [{"image"[, "label"]}]}`` with absolute paths; absent keys give empty lists.

    Raises:
        DataIntegrityError: for a missing / invalid json file or malformed entries.
    """
    json_path = resolve_dataset_json(dataset)
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataIntegrityError(f"{json_path}: unreadable dataset description ({exc})") from exc
    if not isinstance(data, dict):
        raise DataIntegrityError(f"{json_path}: expected a JSON object with 'training' / 'validation' lists")
    return {
        "training": _entries(data, "training", json_path, need_label=True),
        "unlabeled": _entries(data, "unlabeled", json_path, need_label=False),
        "validation": _entries(data, "validation", json_path, need_label=True),
        "test": _entries(data, "test", json_path, need_label=False, keep_label=True),
    }


def write_datalist(
    folder: str | os.PathLike,
    header: Mapping[str, Any],
    training: Sequence[Mapping[str, str]],
    unlabeled: Sequence[Mapping[str, str]],
    validation: Sequence[Mapping[str, str]],
    test: Sequence[Any] = (),
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/dataset.json`` (crash-safe: :func:`vqseg_bundle.fileio.atomic_write_text`).

    Args:
        folder: the dataset folder (the entries' paths are relative to it).
        header: the descriptive entries written first (``name``, ``description``, ``labels``, ...).
        training: ``{"image", "label"}`` pairs.
        unlabeled: ``{"image"}`` entries.
        validation: ``{"image", "label"}`` pairs.
        test: test images (path strings or ``{"image"}`` entries).
        extra: entries written last (e.g. the generator's parameters).

    Returns:
        The path of the written file.

    Raises:
        WriteError: when the file cannot be written.
    """
    data = {
        **header,
        "numTraining": len(training),
        "numUnlabeled": len(unlabeled),
        "numValidation": len(validation),
        "training": list(training),
        "unlabeled": list(unlabeled),
        "validation": list(validation),
        "test": list(test),
        **(extra or {}),
    }
    path = Path(folder) / DATASET_JSON
    atomic_write_text(path, json.dumps(data, indent=4))
    return path
