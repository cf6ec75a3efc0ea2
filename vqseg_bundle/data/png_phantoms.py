"""A tiny synthetic 2D image data set (PNG images, 0 / 255 PNG masks, varying sizes) with its ``dataset.json``:
the shape of a 2D data set such as COVID-SemiSeg, for tests and for trying the 2D path without real data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from vqseg_bundle.data.datalist import write_datalist

__all__ = ["PNG_LABEL_MAPPING", "make_png_slice", "make_png_dataset"]

#: the masks' values -> classes (``label_mapping`` of ``configs/train.yaml``)
PNG_LABEL_MAPPING = {0: 0, 255: 1}


def make_png_slice(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One slice: a bright ellipse (the "lesion", class 1) on a noisy grey body.

    Args:
        shape: ``(H, W)`` in pixels.
        rng: random generator.

    Returns:
        ``(image uint8 (H, W), mask uint8 (H, W) with values 0 / 255)``.
    """
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.1, 0.25) * h, rng.uniform(0.1, 0.25) * w
    lesion = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    image = 60.0 + 20.0 * rng.standard_normal((h, w)) + 140.0 * lesion
    return np.clip(image, 0, 255).astype(np.uint8), (255 * lesion).astype(np.uint8)


def make_png_dataset(
    root: str | os.PathLike,
    n_training: int = 4,
    n_validation: int = 2,
    n_unlabeled: int = 4,
    n_test: int = 2,
    sizes: Sequence[tuple[int, int]] = ((40, 48), (52, 44), (36, 36)),
    rgb_images: bool = False,
    seed: int = 0,
) -> Path:
    """Write ``root/{imagesTr,labelsTr,imagesUnl,imagesTs,labelsTs}`` and ``root/dataset.json``.

    Slice ``i`` of each list has size ``sizes[i % len(sizes)]`` (``(H, W)``). The "test" entries are
    ``{"image", "label"}`` pairs (scored by ``validation_split: test``).

    Args:
        root: the data set folder (created).
        n_training, n_validation, n_unlabeled, n_test: slices per list.
        sizes: the image sizes cycled through.
        rgb_images: save the images as RGB PNGs (grey values in all three channels, one channel tinted) instead
            of greyscale.
        seed: random seed.

    Returns:
        The path of ``dataset.json``.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    lists: dict[str, list] = {"training": [], "validation": [], "unlabeled": [], "test": []}
    layout = {
        "training": ("imagesTr", "labelsTr", n_training),
        "validation": ("imagesTr", "labelsTr", n_validation),
        "unlabeled": ("imagesUnl", None, n_unlabeled),
        "test": ("imagesTs", "labelsTs", n_test),
    }
    for key, (img_dir, lab_dir, count) in layout.items():
        for folder in (img_dir, lab_dir):
            if folder:
                (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{key}_{i:03d}.png"
            image, mask = make_png_slice(tuple(sizes[i % len(sizes)]), rng)
            if rgb_images:
                rgb = np.stack([image, image, np.clip(image.astype(np.int16) + 10, 0, 255).astype(np.uint8)], -1)
                Image.fromarray(rgb).save(root / img_dir / name)
            else:
                Image.fromarray(image).save(root / img_dir / name)
            entry = {"image": f"{img_dir}/{name}"}
            if lab_dir:
                Image.fromarray(mask).save(root / lab_dir / name)
                entry["label"] = f"{lab_dir}/{name}"
            lists[key].append(entry)
    header = {
        "name": "png_phantoms",
        "description": "synthetic 2D PNG slices, masks 0 / 255 (label_mapping {0: 0, 255: 1})",
        "labels": {"0": "background", "1": "lesion"},
        "label_mapping": {"0": 0, "255": 1},
    }
    return write_datalist(root, header, lists["training"], lists["unlabeled"], lists["validation"], lists["test"])
