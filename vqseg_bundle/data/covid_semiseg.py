"""COVID-SemiSeg (Inf-Net / Semi-Inf-Net, Fan et al., IEEE TMI 2020) as a ``dataset.json`` 2D data set.

The shared folder (``../shared/data/covid_semiseg``, its README) holds 50 labeled training slices
(``train/labeled/{images,masks}``), 1600 unlabeled slices (``train/unlabeled/images``), 48 labeled test slices
(``test/{images,masks}``) and a 3-class version of the labeled ones (``multiclass/{train,test}``). Images are
greyscale JPEG, masks PNG: 0 / 255 (binary) or 0 / 1 / 2 (background, ground-glass opacity, consolidation).

The split written (``dataset.json`` next to nothing else: entries point at the source files, relative to the
output folder, so nothing is copied):

* ``"training"`` / ``"validation"``: the 50 labeled slices split by a fixed seeded draw, ``val_count`` (10) to
  validation. Why a random draw: the slice names (``0.jpg`` ... ``99.jpg``, numbers of the MedSeg collection)
  carry no patient, so no split by patient is possible; a seeded draw is reproducible and, unlike the first or last
  numbers, does not follow the order of the source collection. Caveat: a validation slice may come from a patient
  that also gave training slices, so validation scores are optimistic; they serve model selection only.
* ``"unlabeled"``: the 1600 unlabeled slices.
* ``"test"``: the 48 test slices with their masks, scored once, at the end (``validation_split: test`` of
  ``configs/evaluate.yaml``); never used for model selection.

Train with ``labeled: all`` and the ``label_mapping`` recorded in the file (binary ``{0: 0, 255: 1}``,
``num_classes`` 2; multiclass ``{0: 0, 1: 1, 2: 2}``, ``num_classes`` 3).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from vqseg_bundle.data.datalist import write_datalist
from vqseg_bundle.data.integrity import DataIntegrityError

__all__ = ["COVID_LAYOUT", "covid_label_mapping", "prepare_covid_semiseg"]

#: the source folders: task -> (labeled images, labeled masks, test images, test masks)
COVID_LAYOUT = {
    "binary": ("train/labeled/images", "train/labeled/masks", "test/images", "test/masks"),
    "multiclass": (
        "multiclass/train/images",
        "multiclass/train/masks",
        "multiclass/test/images",
        "multiclass/test/masks",
    ),
}
UNLABELED_DIR = "train/unlabeled/images"
_CLASSES = {
    "binary": {"0": "background", "1": "infection"},
    "multiclass": {"0": "background", "1": "ground-glass opacity", "2": "consolidation"},
}


def covid_label_mapping(multiclass: bool = False) -> dict[int, int]:
    """The mask value -> class mapping of the task (``label_mapping`` of ``configs/train.yaml``)."""
    return {0: 0, 1: 1, 2: 2} if multiclass else {0: 0, 255: 1}


def _numbered(folder: Path, suffix: str) -> list[Path]:
    files = sorted(folder.glob(f"*{suffix}"), key=lambda p: (len(p.stem), p.stem))
    if not files:
        raise DataIntegrityError(f"{folder}: no {suffix} files (expected the COVID-SemiSeg layout, see its README)")
    return files


def _pairs(source: Path, images: str, masks: str) -> list[tuple[Path, Path]]:
    """``(image .jpg, mask .png)`` pairs of a folder pair, in numeric order; a missing mask is an error naming it."""
    pairs, missing = [], []
    for image in _numbered(source / images, ".jpg"):
        mask = source / masks / f"{image.stem}.png"
        (pairs if mask.is_file() else missing).append((image, mask))
    if missing:
        raise DataIntegrityError(f"{missing[0][1]}: missing mask of {missing[0][0]} ({len(missing)} missing in all)")
    return pairs


def prepare_covid_semiseg(
    source: str | os.PathLike, output: str | os.PathLike, multiclass: bool = False, val_count: int = 10, seed: int = 0
) -> Path:
    """Write ``output/dataset.json`` for COVID-SemiSeg (see the module docstring for the split and why).

    Args:
        source: the COVID-SemiSeg folder.
        output: the data set folder (created; entries point at ``source``'s files relative to it).
        multiclass: the 3-class task instead of the binary one.
        val_count: labeled slices drawn for validation (the rest train).
        seed: seed of ``numpy.random.default_rng`` for that draw.

    Returns:
        The path of ``dataset.json``.

    Raises:
        DataIntegrityError: a missing folder, file or mask.
        ValueError: ``val_count`` not between 1 and the number of labeled slices - 1.
    """
    source, output = Path(source).resolve(), Path(output).resolve()
    task = "multiclass" if multiclass else "binary"
    images, masks, test_images, test_masks = COVID_LAYOUT[task]
    labeled = _pairs(source, images, masks)
    if not 1 <= val_count < len(labeled):
        raise ValueError(f"val_count must be in 1..{len(labeled) - 1}, got {val_count}")
    drawn = set(np.random.default_rng(seed).permutation(len(labeled))[:val_count].tolist())
    output.mkdir(parents=True, exist_ok=True)

    def rel(path: Path) -> str:
        return os.path.relpath(path, output)

    def pair(entry: tuple[Path, Path]) -> dict[str, str]:
        return {"image": rel(entry[0]), "label": rel(entry[1])}

    training = [pair(p) for i, p in enumerate(labeled) if i not in drawn]
    validation = [pair(p) for i, p in enumerate(labeled) if i in drawn]
    unlabeled = [{"image": rel(p)} for p in _numbered(source / UNLABELED_DIR, ".jpg")]
    test = [pair(p) for p in _pairs(source, test_images, test_masks)]
    mapping = covid_label_mapping(multiclass)
    header = {
        "name": f"COVID-SemiSeg ({task})",
        "description": "Inf-Net / Semi-Inf-Net lung-infection benchmark (Fan et al., IEEE TMI 2020): axial chest CT "
        "slices; research and non-commercial use only",
        "source": str(source),
        "labels": _CLASSES[task],
        "label_mapping": {str(k): v for k, v in mapping.items()},
        "split": f"the {len(labeled)} labeled slices: {val_count} drawn for validation with "
        f"numpy.random.default_rng({seed}) (names carry no patient, so no split by patient); the "
        f"{len(test)} test slices for the final report only",
    }
    return write_datalist(
        output, header, training, unlabeled, validation, test, extra={"numTest": len(test), "seed": seed}
    )
