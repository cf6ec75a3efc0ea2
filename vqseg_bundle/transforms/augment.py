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

import math
from collections.abc import Sequence

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

__all__ = [
    "STRONG_KEYS",
    "weak_transforms",
    "strong_intensity_transforms",
    "labeled_transforms",
    "unlabeled_transforms",
]

#: Keys of the two strong views produced by :func:`unlabeled_transforms`.
STRONG_KEYS = ("image_s1", "image_s2")


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return float(value)


def _check_range(name: str, value: Sequence[float], positive: bool = False) -> tuple[float, float]:
    if len(value) != 2 or float(value[0]) > float(value[1]):
        raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {value}")
    if positive and float(value[0]) <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value[0]), float(value[1])


def weak_transforms(
    keys: Sequence[str] = ("image", "label"),
    rotate_degrees: float = 20.0,
    rotate_prob: float = 0.5,
    flip_prob: float = 0.5,
    zoom_range: Sequence[float] = (0.9, 1.1),
    zoom_prob: float = 0.5,
    rot90_prob: float = 0.0,
) -> list:
    """Geometric (weak) augmentation of an image and, when present in ``keys``, its label.

    Args:
        keys: item keys to transform together; keys containing ``"label"`` are resampled with
            nearest-neighbour interpolation, the others bilinearly.
        rotate_degrees: rotation angle drawn uniformly from ``[-rotate_degrees, rotate_degrees]``.
        rotate_prob: probability of a rotation.
        flip_prob: probability of a flip, drawn independently for each of the two in-plane axes.
        zoom_range: ``(min, max)`` scale factor; the output keeps the input size (crop or pad).
        zoom_prob: probability of scaling.
        rot90_prob: probability that a sample takes UniMatch's ``random_rot_flip`` instead of the chain above:
            rotation by ``k x 90`` degrees, ``k`` uniform in 0..3, then a flip of one random axis (UniMatch:
            0.5, with ``rotate_prob`` 0.5 and no flip or zoom in the chain).

    Returns:
        A list of MONAI dictionary transforms (compose it or extend it).
    """
    keys = tuple(keys)
    if not keys:
        raise ValueError("keys must name at least one item key")
    if rotate_degrees < 0:
        raise ValueError(f"rotate_degrees must be >= 0, got {rotate_degrees}")
    rotate_prob, flip_prob, zoom_prob = (
        _check_prob("rotate_prob", rotate_prob),
        _check_prob("flip_prob", flip_prob),
        _check_prob("zoom_prob", zoom_prob),
    )
    zoom_range = _check_range("zoom_range", zoom_range, positive=True)
    interp = tuple("nearest" if "label" in k else "bilinear" for k in keys)
    angle = math.radians(rotate_degrees)
    rot90_prob = _check_prob("rot90_prob", rot90_prob)
    chain = [
        RandRotated(keys, range_x=angle, prob=rotate_prob, mode=interp, padding_mode="zeros", keep_size=True),
        RandFlipd(keys, prob=flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=flip_prob, spatial_axis=1),
        RandZoomd(
            keys,
            prob=zoom_prob,
            min_zoom=zoom_range[0],
            max_zoom=zoom_range[1],
            mode=tuple("nearest" if "label" in k else "bilinear" for k in keys),
            padding_mode="constant",
            keep_size=True,
        ),
    ]
    if rot90_prob == 0.0:
        return chain
    # RandRotate90 draws k in 1..max_k when applied: prob 3/4 makes k uniform in 0..3
    rot_flip = Compose([RandRotate90d(keys, prob=0.75, max_k=3), RandAxisFlipd(keys, prob=1.0)])
    return [OneOf([rot_flip, Compose(chain)], weights=[rot90_prob, 1.0 - rot90_prob])]


def strong_intensity_transforms(
    key: str,
    contrast_prob: float = 0.8,
    gamma_range: Sequence[float] = (0.7, 1.5),
    scale_range: float = 0.25,
    shift_range: float = 0.1,
    blur_prob: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 1.5),
    noise_prob: float = 0.5,
    noise_std: float = 0.05,
    jitter_prob: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
    clip_range: Sequence[float] | None = None,
) -> list:
    """Intensity-only (strong) augmentation of one image key; geometry is left untouched.

    The grey-level analogue of the colour jitter + blur of UniMatch / VQ-Seg's strong view.

    Args:
        key: the image key to transform (e.g. ``"image_s1"``).
        contrast_prob: probability of each of gamma, intensity scaling and intensity shift.
        gamma_range: gamma drawn from this range (``RandAdjustContrastd``).
        scale_range: intensities multiplied by ``1 + u``, ``u ~ U(-scale_range, scale_range)``.
        shift_range: intensities shifted by ``u ~ U(-shift_range, shift_range)``.
        blur_prob: probability of a Gaussian blur.
        blur_sigma: ``(min, max)`` of the blur standard deviation in pixels.
        noise_prob: probability of additive Gaussian noise.
        noise_std: maximum standard deviation of that noise (drawn uniformly below it).
        jitter_prob: probability of a grey-level colour jitter, applied first (UniMatch: 0.8): brightness
            ``x * U(1 +- brightness)`` and contrast ``mean + U(1 +- contrast) (x - mean)`` in random order
            (torchvision ``ColorJitter``; its saturation and hue do nothing to one grey channel).
        brightness, contrast: jitter strengths (UniMatch: 0.5 and 0.5).
        clip_range: ``(low, high)`` clipping after each jitter step (as the 8-bit images of torchvision /
            PIL are); ``None``: no clipping.

    Returns:
        A list of MONAI dictionary transforms.
    """
    contrast_prob, blur_prob, noise_prob = (
        _check_prob("contrast_prob", contrast_prob),
        _check_prob("blur_prob", blur_prob),
        _check_prob("noise_prob", noise_prob),
    )
    gamma_range = _check_range("gamma_range", gamma_range, positive=True)
    blur_sigma = _check_range("blur_sigma", blur_sigma, positive=True)
    if scale_range < 0 or shift_range < 0 or noise_std < 0:
        raise ValueError(
            f"scale_range, shift_range and noise_std must be >= 0, got {scale_range}, {shift_range}, {noise_std}"
        )
    jitter_prob = _check_prob("jitter_prob", jitter_prob)
    if brightness < 0 or contrast < 0:
        raise ValueError(f"brightness and contrast must be >= 0, got {brightness}, {contrast}")
    jitter = []
    if jitter_prob > 0:
        clip = (
            []
            if clip_range is None
            else [ScaleIntensityRanged(key, *(_check_range("clip_range", clip_range) * 2), clip=True)]
        )
        steps = RandomOrder(
            [
                Compose([RandScaleIntensityd(key, factors=brightness, prob=1.0), *clip]),
                Compose([RandScaleIntensityFixedMeand(key, factors=contrast, fixed_mean=True, prob=1.0), *clip]),
            ]
        )
        jitter = [OneOf([steps, Identityd(key)], weights=[jitter_prob, 1.0 - jitter_prob])]
    return [
        *jitter,
        RandAdjustContrastd(key, prob=contrast_prob, gamma=gamma_range, retain_stats=True),
        RandScaleIntensityd(key, factors=scale_range, prob=contrast_prob),
        RandShiftIntensityd(key, offsets=shift_range, prob=contrast_prob),
        RandGaussianSmoothd(key, sigma_x=blur_sigma, sigma_y=blur_sigma, prob=blur_prob),
        RandGaussianNoised(key, prob=noise_prob, std=noise_std, sample_std=True),
    ]


def labeled_transforms(**weak_kwargs) -> Compose:
    """Pipeline for labeled items: weak geometric augmentation of image and label.

    Args:
        weak_kwargs: forwarded to :func:`weak_transforms` (``keys`` is fixed to image + label).

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


def unlabeled_transforms(weak: dict | None = None, strong: dict | None = None) -> Compose:
    """Pipeline for unlabeled items: a weak view and two independent strong views of it.

    Args:
        weak: keyword arguments of :func:`weak_transforms` (``keys`` fixed to ``("image",)``).
        strong: keyword arguments of :func:`strong_intensity_transforms` (``key`` set per view).

    Returns:
        ``Compose`` mapping ``{"image"}`` to ``{"image", "image_s1", "image_s2"}``, each float32 ``(1, S, S)``.
    """
    weak = dict(weak or {})
    strong = dict(strong or {})
    for name, kw, fixed in (("weak", weak, "keys"), ("strong", strong, "key")):
        if fixed in kw:
            raise ValueError(f"{name} must not set {fixed!r}: the pipeline fixes it")
    ops = [*weak_transforms(keys=("image",), **weak), CopyItemsd(keys="image", times=2, names=list(STRONG_KEYS))]
    for key in STRONG_KEYS:  # separate transform objects -> independent random draws per view
        ops += strong_intensity_transforms(key, **strong)
    ops.append(EnsureTyped(keys=("image", *STRONG_KEYS), dtype=torch.float32, track_meta=False))
    return Compose(ops)
