"""The weak and strong augmentation parameters, shared by both augmentation paths.

One definition (names, defaults, checks) serves the MONAI pipelines of :mod:`vqseg_bundle.transforms.augment`
(per sample, in DataLoader workers) and the batched on-device ones of :mod:`vqseg_bundle.transforms.batched`:
the config's ``weak_aug`` / ``strong_aug`` dicts are the keyword arguments of :class:`WeakAugmentParams` /
:class:`StrongAugmentParams` whichever path runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["WeakAugmentParams", "StrongAugmentParams", "check_prob", "check_range", "unlabeled_params"]


def check_prob(name: str, value: float) -> float:
    """``value`` as a float probability.

    Raises:
        ValueError: when it is not in ``[0, 1]``.
    """
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return float(value)


def check_range(name: str, value: Sequence[float], positive: bool = False) -> tuple[float, float]:
    """``value`` as a ``(low, high)`` float pair.

    Raises:
        ValueError: when it is not a pair with ``low <= high`` (and ``low > 0`` when ``positive``).
    """
    if isinstance(value, (int, float)) or len(value) != 2 or float(value[0]) > float(value[1]):
        raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {value}")
    if positive and float(value[0]) <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value[0]), float(value[1])


def _check_non_negative(**values: float) -> None:
    if any(float(v) < 0 for v in values.values()):
        names = list(values)
        listed = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]
        raise ValueError(f"{listed} must be >= 0, got {', '.join(str(v) for v in values.values())}")


@dataclass(frozen=True)
class WeakAugmentParams:
    """Geometric (weak) augmentation, applied identically to an image and its label (fields documented below).

    Raises:
        ValueError: for a negative angle, a probability outside ``[0, 1]`` or a bad zoom range.
    """

    #: rotation angle drawn uniformly from ``[-rotate_degrees, rotate_degrees]``
    rotate_degrees: float = 20.0
    #: probability of a rotation
    rotate_prob: float = 0.5
    #: probability of a flip, drawn independently for each of the two in-plane axes
    flip_prob: float = 0.5
    #: ``(min, max)`` scale factor; the output keeps the input size (crop or pad)
    zoom_range: Sequence[float] = (0.9, 1.1)
    #: probability of scaling
    zoom_prob: float = 0.5
    #: probability that a sample takes UniMatch's ``random_rot_flip`` instead of the chain above: rotation by
    #: ``k x 90`` degrees, ``k`` uniform in 0..3, then a flip of one random axis (UniMatch: 0.5, with
    #: ``rotate_prob`` 0.5 and no flip or zoom in the chain)
    rot90_prob: float = 0.0
    #: after all of the above, one of the 8 in-plane dihedral transforms (a rotation by ``k x 90`` degrees, ``k``
    #: uniform in 0..3, then a flip of the first axis with probability 0.5), uniformly for every sample, so that
    #: the anatomy is seen in every quarter turn and mirror image (a model that does not depend on which way a
    #: site's headers or scanner orient a slice; docs/results.md "Orientation robustness")
    dihedral: bool = False

    def __post_init__(self) -> None:
        _check_non_negative(rotate_degrees=self.rotate_degrees)
        checked = {
            "rotate_degrees": float(self.rotate_degrees),
            "rotate_prob": check_prob("rotate_prob", self.rotate_prob),
            "flip_prob": check_prob("flip_prob", self.flip_prob),
            "zoom_prob": check_prob("zoom_prob", self.zoom_prob),
            "zoom_range": check_range("zoom_range", self.zoom_range, positive=True),
            "rot90_prob": check_prob("rot90_prob", self.rot90_prob),
        }
        if not isinstance(self.dihedral, bool):
            raise ValueError(f"dihedral must be true or false, got {self.dihedral!r}")
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @property
    def rotate_radians(self) -> float:
        """The largest rotation angle in radians."""
        return math.radians(self.rotate_degrees)


@dataclass(frozen=True)
class StrongAugmentParams:
    """Intensity-only (strong) augmentation of one view; geometry is left untouched (fields documented below).

    The grey-level analogue of the colour jitter + blur of UniMatch / VQ-Seg's strong view, in this order:
    jitter, gamma, scaling, shift, blur, noise.

    Raises:
        ValueError: for a probability outside ``[0, 1]``, a bad range or a negative strength.
    """

    #: probability of each of gamma, intensity scaling and intensity shift
    contrast_prob: float = 0.8
    #: gamma drawn from this range (MONAI's ``RandAdjustContrastd(retain_stats=True)``)
    gamma_range: Sequence[float] = (0.7, 1.5)
    #: intensities multiplied by ``1 + u``, ``u ~ U(-scale_range, scale_range)``
    scale_range: float = 0.25
    #: intensities shifted by ``u ~ U(-shift_range, shift_range)``
    shift_range: float = 0.1
    #: probability of a Gaussian blur
    blur_prob: float = 0.5
    #: ``(min, max)`` of the blur standard deviation in pixels
    blur_sigma: Sequence[float] = (0.1, 1.5)
    #: probability of additive Gaussian noise
    noise_prob: float = 0.5
    #: maximum standard deviation of that noise (drawn uniformly below it)
    noise_std: float = 0.05
    #: probability of a grey-level colour jitter, applied first (UniMatch: 0.8): brightness ``x * U(1 +- brightness)``
    #: and contrast ``mean + U(1 +- contrast) (x - mean)`` in random order (torchvision ``ColorJitter``; its
    #: saturation and hue do nothing to one grey channel)
    jitter_prob: float = 0.0
    #: brightness jitter strength (UniMatch: 0.5)
    brightness: float = 0.0
    #: contrast jitter strength (UniMatch: 0.5)
    contrast: float = 0.0
    #: ``(low, high)`` clipping after each jitter step (as the 8-bit images of torchvision / PIL are); ``None``:
    #: no clipping
    clip_range: Sequence[float] | None = None

    def __post_init__(self) -> None:
        checked = {
            "contrast_prob": check_prob("contrast_prob", self.contrast_prob),
            "blur_prob": check_prob("blur_prob", self.blur_prob),
            "noise_prob": check_prob("noise_prob", self.noise_prob),
            "gamma_range": check_range("gamma_range", self.gamma_range, positive=True),
            "blur_sigma": check_range("blur_sigma", self.blur_sigma, positive=True),
            "jitter_prob": check_prob("jitter_prob", self.jitter_prob),
        }
        _check_non_negative(scale_range=self.scale_range, shift_range=self.shift_range, noise_std=self.noise_std)
        _check_non_negative(brightness=self.brightness, contrast=self.contrast)
        checked.update(
            scale_range=float(self.scale_range),
            shift_range=float(self.shift_range),
            noise_std=float(self.noise_std),
            brightness=float(self.brightness),
            contrast=float(self.contrast),
            clip_range=None if self.clip_range is None else check_range("clip_range", self.clip_range),
        )
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def unlabeled_params(
    weak: Mapping[str, object] | None, strong: Mapping[str, object] | None
) -> tuple[dict[str, object], dict[str, object]]:
    """The weak and strong keyword arguments of an unlabeled pipeline (the config's ``weak_aug`` / ``strong_aug``).

    Args:
        weak: fields of :class:`WeakAugmentParams`, or ``None`` for the defaults.
        strong: fields of :class:`StrongAugmentParams`, or ``None`` for the defaults.

    Returns:
        Copies of both as dicts.

    Raises:
        ValueError: when they name item keys (``keys`` / ``key``): the unlabeled pipelines fix them.
    """
    weak, strong = dict(weak or {}), dict(strong or {})
    for name, kw, fixed in (("weak", weak, "keys"), ("strong", strong, "key")):
        if fixed in kw:
            raise ValueError(f"{name} must not set {fixed!r}: the unlabeled pipeline fixes the item keys")
    return weak, strong
