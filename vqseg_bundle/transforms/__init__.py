"""Weak / strong augmentation pipelines (MONAI dictionary transforms) and batch CutMix."""

from vqseg_bundle.transforms.augment import (
    STRONG_KEYS,
    labeled_transforms,
    strong_intensity_transforms,
    unlabeled_transforms,
    weak_transforms,
)
from vqseg_bundle.transforms.cutmix import CUTMIX_MODES, BatchCutMix, random_box_masks

__all__ = [
    "BatchCutMix",
    "CUTMIX_MODES",
    "STRONG_KEYS",
    "labeled_transforms",
    "random_box_masks",
    "strong_intensity_transforms",
    "unlabeled_transforms",
    "weak_transforms",
]
