"""Weak / strong augmentation pipelines (MONAI dictionary transforms; their parameters, shared with the batched
path of :mod:`vqseg_bundle.transforms.batched`) batch CutMix and the
8 in-plane dihedral transforms."""

from vqseg_bundle.transforms.augment import (
    STRONG_KEYS,
    labeled_transforms,
    strong_intensity_transforms,
    unlabeled_transforms,
    weak_transforms,
)
from vqseg_bundle.transforms.cutmix import CUTMIX_MODES, BatchCutMix, random_box_masks
from vqseg_bundle.transforms.dihedral import DIHEDRAL_TRANSFORMS, DihedralTransform, dihedral_transform
from vqseg_bundle.transforms.params import StrongAugmentParams, WeakAugmentParams

__all__ = [
    "BatchCutMix",
    "CUTMIX_MODES",
    "DIHEDRAL_TRANSFORMS",
    "DihedralTransform",
    "STRONG_KEYS",
    "StrongAugmentParams",
    "WeakAugmentParams",
    "labeled_transforms",
    "dihedral_transform",
    "random_box_masks",
    "strong_intensity_transforms",
    "unlabeled_transforms",
    "weak_transforms",
]
