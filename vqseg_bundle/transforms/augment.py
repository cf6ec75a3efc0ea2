"""Weak and strong augmentation pipelines built from MONAI dictionary transforms.

Weak-to-strong consistency needs the strong views to be pixel-aligned with the weak view that the
teacher labels: every *geometric* transform (rotation, flip, scaling) is therefore applied once,
in the weak pipeline, and the strong views are copies of the weakly augmented image that then
receive *intensity-only* transforms (contrast / brightness jitter, blur, noise), drawn
independently for each strong view. CutMix is applied later, on batches, by the trainer
(:mod:`vqseg_bundle.transforms.cutmix`), because it mixes images of one batch.

Items in (from :mod:`vqseg_bundle.data`): ``{"image": float32 (1, S, S)}`` plus
``"label": int64 (1, S, S)`` for labeled slices, intensities normalised to about ``[0, 1]``.

Items out:

* labeled: ``{"image": float32 (1, S, S), "label": int64 (1, S, S)}`` (weak view);
* unlabeled: ``{"image": (1, S, S) weak, "image_s1": (1, S, S) strong, "image_s2": (1, S, S) strong}``.

The transforms are ordinary MONAI ``Randomizable`` objects, so MONAI's ``DataLoader`` seeds each
one per worker and ``monai.utils.set_determinism`` makes runs repeatable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    CopyItemsd,
    EnsureTyped,
    Identityd,
    OneOf,
    RandAdjustContrastd,
    RandAxisFlipd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomOrder,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
    RandZoomd,
    ScaleIntensityRanged,
)
from vqseg_bundle.transforms.params import StrongAugmentParams, WeakAugmentParams, unlabeled_params

__all__ = [
    "STRONG_KEYS",
    "weak_transforms",
    "strong_intensity_transforms",
    "labeled_transforms",
    "unlabeled_transforms",
]

#: Keys of the two strong views produced by :func:`unlabeled_transforms`.
STRONG_KEYS = ("image_s1", "image_s2")


def weak_transforms(keys: Sequence[str] = ("image", "label"), **params: Any) -> list:
    """Geometric (weak) augmentation of an image and, when present in ``keys``, its label.

    Args:
        keys: item keys to transform together; keys containing ``"label"`` are resampled with
            nearest-neighbour interpolation, the others bilinearly.
        params: the fields of :class:`~vqseg_bundle.transforms.params.WeakAugmentParams` (``rotate_degrees``,
            ``rotate_prob``, ``flip_prob``, ``zoom_range``, ``zoom_prob``, ``rot90_prob``, ``dihedral``; same
            defaults as the batched path).

    Returns:
        A list of MONAI dictionary transforms (compose it or extend it).

    Raises:
        ValueError: for empty ``keys`` or invalid parameters.
    """
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least one item key")
    p = WeakAugmentParams(**params)
    interp = tuple("nearest" if "label" in k else "bilinear" for k in keys)
    chain = [
        RandRotated(
            keys, range_x=p.rotate_radians, prob=p.rotate_prob, mode=interp, padding_mode="zeros", keep_size=True
        ),
        RandFlipd(keys, prob=p.flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=p.flip_prob, spatial_axis=1),
        RandZoomd(
            keys,
            prob=p.zoom_prob,
            min_zoom=p.zoom_range[0],
            max_zoom=p.zoom_range[1],
            mode=interp,
            padding_mode="constant",
            keep_size=True,
        ),
    ]
    # RandRotate90 draws k in 1..max_k when applied: prob 3/4 makes k uniform in 0..3
    dihedral = [RandRotate90d(keys, prob=0.75, max_k=3), RandFlipd(keys, prob=0.5, spatial_axis=0)]
    if p.rot90_prob > 0.0:
        rot_flip = Compose([RandRotate90d(keys, prob=0.75, max_k=3), RandAxisFlipd(keys, prob=1.0)])
        chain = [OneOf([rot_flip, Compose(chain)], weights=[p.rot90_prob, 1.0 - p.rot90_prob])]
    return chain + dihedral if p.dihedral else chain


def strong_intensity_transforms(key: str, **params: Any) -> list:
    """Intensity-only (strong) augmentation of one image key; geometry is left untouched.

    Args:
        key: the image key to transform (e.g. ``"image_s1"``).
        params: the fields of :class:`~vqseg_bundle.transforms.params.StrongAugmentParams` (``jitter_prob``,
            ``brightness``, ``contrast``, ``clip_range``, ``contrast_prob``, ``gamma_range``, ``scale_range``,
            ``shift_range``, ``blur_prob``, ``blur_sigma``, ``noise_prob``, ``noise_std``; same defaults as the
            batched path).

    Returns:
        A list of MONAI dictionary transforms.

    Raises:
        ValueError: for invalid parameters.
    """
    p = StrongAugmentParams(**params)
    jitter = []
    if p.jitter_prob > 0:
        clip = [] if p.clip_range is None else [ScaleIntensityRanged(key, *(p.clip_range * 2), clip=True)]
        steps = RandomOrder(
            [
                Compose([RandScaleIntensityd(key, factors=p.brightness, prob=1.0), *clip]),
                Compose([RandScaleIntensityFixedMeand(key, factors=p.contrast, fixed_mean=True, prob=1.0), *clip]),
            ]
        )
        jitter = [OneOf([steps, Identityd(key)], weights=[p.jitter_prob, 1.0 - p.jitter_prob])]
    return [
        *jitter,
        RandAdjustContrastd(key, prob=p.contrast_prob, gamma=p.gamma_range, retain_stats=True),
        RandScaleIntensityd(key, factors=p.scale_range, prob=p.contrast_prob),
        RandShiftIntensityd(key, offsets=p.shift_range, prob=p.contrast_prob),
        RandGaussianSmoothd(key, sigma_x=p.blur_sigma, sigma_y=p.blur_sigma, prob=p.blur_prob),
        RandGaussianNoised(key, prob=p.noise_prob, std=p.noise_std, sample_std=True),
    ]


def labeled_transforms(**weak_kwargs: Any) -> Compose:
    """Pipeline for labeled items: weak geometric augmentation of image and label.

    Args:
        weak_kwargs: the weak parameters (:class:`~vqseg_bundle.transforms.params.WeakAugmentParams`; ``keys`` is
            fixed to image + label).

    Returns:
        ``Compose`` mapping ``{"image", "label"}`` to float32 / int64 tensors ``(1, S, S)``.
    """
    return Compose(
        [
            *weak_transforms(keys=("image", "label"), **weak_kwargs),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
            CastToTyped(keys="label", dtype=torch.long),
            EnsureTyped(keys="label", track_meta=False),
        ]
    )


def unlabeled_transforms(weak: Mapping[str, Any] | None = None, strong: Mapping[str, Any] | None = None) -> Compose:
    """Pipeline for unlabeled items: a weak view and two independent strong views of it.

    Args:
        weak: the weak parameters (:class:`~vqseg_bundle.transforms.params.WeakAugmentParams`; ``keys`` fixed to
            ``("image",)``).
        strong: the strong parameters (:class:`~vqseg_bundle.transforms.params.StrongAugmentParams`; ``key`` set
            per view).

    Returns:
        ``Compose`` mapping ``{"image"}`` to ``{"image", "image_s1", "image_s2"}``, each float32 ``(1, S, S)``.
    """
    weak, strong = unlabeled_params(weak, strong)
    ops = [*weak_transforms(keys=("image",), **weak), CopyItemsd(keys="image", times=2, names=list(STRONG_KEYS))]
    for key in STRONG_KEYS:  # separate transform objects -> independent random draws per view
        ops += strong_intensity_transforms(key, **strong)
    ops.append(EnsureTyped(keys=("image", *STRONG_KEYS), dtype=torch.float32, track_meta=False))
    return Compose(ops)
