"""Batched, on-device weak / strong augmentation: the distribution of :mod:`vqseg_bundle.transforms.augment`,
applied to a whole ``(B, C, H, W)`` batch at once with per-sample random parameters.

Why written here: MONAI's random transforms work on one item at a time and draw from NumPy, so they
run in DataLoader worker processes on the CPU (on a 2-core machine the workers compete with the
training step; on a GPU they make the step wait for the host). Here every random parameter is drawn
for the whole batch from an explicit ``torch.Generator`` on the batch's device, and each stage is one
batched kernel: no Python loop over samples, no host-device synchronisation.

Same transforms, same order, same parameter distributions as the MONAI pipelines
(``weak_transforms`` / ``strong_intensity_transforms``; the equality of the resulting statistics is
tested in ``tests/speed``):

* weak (geometric), applied identically to an image and its label: rotation ``U(-a, a)`` with
  probability ``rotate_prob``, a flip of each in-plane axis with probability ``flip_prob`` each, a
  zoom ``U(zoom_range)`` with probability ``zoom_prob``; zero padding, bilinear for images and
  nearest for labels. All three are affine maps, so they are composed into one matrix and resampled
  once (``affine_grid`` + ``grid_sample``). A rotation alone equals MONAI's ``Rotate`` and a zoom alone
  MONAI's ``Zoom(keep_size=True)`` (its integer resize, symmetric pad / centre crop and border
  clamping are reproduced; tested). Differences that remain: MONAI resamples twice when a sample is
  both rotated and zoomed (slightly smoother images), and its zoom of labels uses legacy
  ``interpolate(mode="nearest")``, which shifts labels by up to half a pixel against the image;
  here labels are sampled at pixel centres, aligned with the image.
* strong (intensity only), drawn independently per sample and per view: optionally a grey-level colour
  jitter first (brightness, contrast about the mean, random order, clipped; UniMatch's ``ColorJitter``), gamma contrast with
  retained mean / std (``RandAdjustContrastd(retain_stats=True)``), intensity scaling ``x (1 + u)``,
  shift ``x + u`` (each with ``contrast_prob``), Gaussian blur with ``sigma_h, sigma_w ~ U(blur_sigma)``
  (MONAI's "erf" kernel truncated at 4 sigma, zero padding) with ``blur_prob``, additive Gaussian
  noise of standard deviation ``U(0, noise_std)`` with ``noise_prob``.

Shapes: images ``(B, C, H, W)`` float, labels ``(B, 1, H, W)`` or ``(B, H, W)`` integer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from vqseg_bundle.transforms.augment import STRONG_KEYS
from vqseg_bundle.transforms.params import StrongAugmentParams, WeakAugmentParams, unlabeled_params

__all__ = [
    "BatchedWeakAugment",
    "BatchedStrongAugment",
    "BatchedLabeledAugment",
    "BatchedUnlabeledAugment",
    "gaussian_erf_kernels",
]

#: MONAI's GaussianFilter truncation, in standard deviations
_TRUNCATED = 4.0


def _check_image(image: torch.Tensor) -> None:
    if not torch.is_tensor(image) or image.ndim != 4 or not image.is_floating_point():
        raise ValueError(
            f"image must be a float tensor (B, C, H, W), got "
            f"{tuple(image.shape) if torch.is_tensor(image) else type(image).__name__}"
            f"{' ' + str(image.dtype) if torch.is_tensor(image) else ''}"
        )


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=like.device, generator=generator, dtype=torch.float32)


def _bernoulli(n: int, p: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=like.device, generator=generator) < p


def gaussian_erf_kernels(sigma: torch.Tensor, tail: int) -> torch.Tensor:
    """MONAI's "erf" discrete Gaussian kernels for a batch of sigmas, zero-padded to one common length.

    ``k[x] = (erf((x + 1/2) / (sqrt 2 sigma)) - erf((x - 1/2) / (sqrt 2 sigma))) / 2`` for
    ``|x| <= int(max(4 sigma, 0.5) + 0.5)`` (MONAI's own truncation, not renormalised), 0 beyond, so a
    convolution with zero padding ``tail`` gives exactly MONAI's per-sample filter.

    Args:
        sigma: ``(B,)`` positive standard deviations.
        tail: half-length of the returned kernels (at least the largest per-sample tail).

    Returns:
        ``(B, 2 * tail + 1)`` float32 kernels.
    """
    sigma = sigma.float().reshape(-1, 1)
    x = torch.arange(-tail, tail + 1, device=sigma.device, dtype=torch.float32).reshape(1, -1)
    t = 0.70710678 / sigma.abs()
    k = 0.5 * (torch.erf(t * (x + 0.5)) - torch.erf(t * (x - 0.5)))
    own_tail = torch.floor(torch.clamp(sigma * _TRUNCATED, min=0.5) + 0.5)
    return torch.where(x.abs() <= own_tail, k, torch.zeros_like(k))


class BatchedWeakAugment:
    """Random rotation, flips and zoom of a batch, one affine resampling per sample (see module doc).

    Example::

        weak = BatchedWeakAugment(rotate_degrees=20.0)
        image, label = weak(image, label, generator=g)   # (B, 1, H, W), (B, 1, H, W)
    """

    def __init__(self, **params: Any) -> None:
        """
        Args:
            params: the fields of :class:`~vqseg_bundle.transforms.params.WeakAugmentParams` (as
                :func:`vqseg_bundle.transforms.weak_transforms`: same meaning, same defaults).
        """
        self.params = WeakAugmentParams(**params)

    def sample_params(
        self, batch_size: int, spatial_size: Sequence[int], device: torch.device, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Draw the per-sample parameters of a batch: ``angle`` (radians), ``flip_h`` / ``flip_w`` (``-1``:
        flipped), ``zoom`` (1 when not applied), each ``(B,)``; and ``zoomed`` / ``rotated`` flags (bool).

        With ``rot90_prob > 0`` a sample takes, with that probability, UniMatch's ``random_rot_flip`` instead
        of the rotation / flip / zoom chain: a rotation by ``k x 90`` degrees (``k`` uniform in 0..3) and a
        flip of one random axis (exact on square images: pixel centres map onto pixel centres)."""
        u = torch.rand(6, batch_size, device=device, generator=generator)
        rotated = u[0] < self.params.rotate_prob
        angle = torch.where(rotated, (2.0 * u[1] - 1.0) * self.params.rotate_radians, torch.zeros_like(u[1]))
        flip_h = torch.where(u[2] < self.params.flip_prob, -1.0, 1.0)  # MONAI spatial_axis=0: the first (H) axis
        flip_w = torch.where(u[3] < self.params.flip_prob, -1.0, 1.0)
        lo, hi = self.params.zoom_range
        zoomed = u[4] < self.params.zoom_prob
        zoom = torch.where(zoomed, lo + (hi - lo) * u[5], torch.ones_like(u[5]))
        if self.params.rot90_prob > 0:  # UniMatch's rot90 + flip branch replaces the chain for these samples
            v = torch.rand(3, batch_size, device=device, generator=generator)
            r90 = v[0] < self.params.rot90_prob
            k = torch.floor(v[1] * 4.0).clamp_max(3.0)
            axis_h = v[2] < 0.5
            angle = torch.where(r90, k * (math.pi / 2.0), angle)
            flip_h = torch.where(r90, torch.where(axis_h, -1.0, 1.0), flip_h)
            flip_w = torch.where(r90, torch.where(axis_h, 1.0, -1.0), flip_w)
            zoom = torch.where(r90, torch.ones_like(zoom), zoom)
            zoomed = zoomed & ~r90
            rotated = rotated | r90
        if self.params.dihedral:  # a uniform dihedral transform after the rest (see WeakAugmentParams.dihedral)
            d = torch.rand(2, batch_size, device=device, generator=generator)
            quarter_turns = torch.floor(d[0] * 4.0).clamp_max(3.0)
            # the map rotates by ``angle`` and then flips: with angle + k pi/2 and one more flip of the first axis
            # it is F^a . T . R^k for the chain's transform T, a and k independent and uniform; (a, k) -> F^a T R^k
            # is one-to-one onto T's coset, so the quarter turn / mirror a sample ends in is uniform over the 8
            # whatever T is (exact on square images: pixel centres map onto pixel centres)
            angle = angle + quarter_turns * (math.pi / 2.0)
            flip_h = flip_h * torch.where(d[1] < 0.5, -1.0, 1.0)
        return {"angle": angle, "flip_h": flip_h, "flip_w": flip_w, "zoom": zoom, "zoomed": zoomed, "rotated": rotated}

    @staticmethod
    def zoom_geometry(zoom: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """MONAI's ``Zoom(keep_size=True)`` along one axis of ``size`` pixels as an affine map.

        MONAI resizes to ``s = floor(size * zoom)`` pixels (``interpolate``, ``align_corners=False``) and
        then pads symmetrically (``(size - s) // 2`` zeros first) or centre-crops (from ``s // 2 - size // 2``).
        Returns ``(effective zoom s / size, shift of the source in normalised coordinates, first and
        one-past-last output pixel holding image content)``, each ``(B,)``.
        """
        s = torch.floor(size * zoom.double()).clamp_min(1.0)
        before = torch.where(
            s <= size,
            torch.div(size - s, 2, rounding_mode="floor"),
            -(torch.div(s, 2, rounding_mode="floor") - size // 2),
        )
        shift = (size - s - 2.0 * before) / s
        start = before.clamp_min(0.0)
        stop = torch.clamp(before + s, max=float(size))
        return (s / size).float(), shift.float(), start.float(), stop.float()

    @staticmethod
    def matrices(
        angle: torch.Tensor,
        flip_h: torch.Tensor,
        flip_w: torch.Tensor,
        zoom_h: torch.Tensor,
        zoom_w: torch.Tensor,
        shift_h: torch.Tensor,
        shift_w: torch.Tensor,
        spatial_size: Sequence[int],
    ) -> torch.Tensor:
        """``affine_grid`` matrices ``(B, 2, 3)`` (output -> input, normalised, ``align_corners=False``).

        The forward map is rotation by ``angle`` (radians) about the centre, then flips (``flip_h`` /
        ``flip_w``: ``-1`` flips that axis), then a zoom by ``zoom_h`` / ``zoom_w`` whose source is shifted by
        ``shift_h`` / ``shift_w`` (normalised units; see :meth:`zoom_geometry`), the MONAI pipeline's order.
        All arguments are ``(B,)`` tensors.
        """
        h, w = int(spatial_size[0]), int(spatial_size[1])
        # inverse: source = Rot(-angle) . Flip . (Zoom^-1 . out + shift); Rot in normalised coordinates
        # carries the aspect ratio (x_n = x / (W / 2), y_n = y / (H / 2))
        cos, sin = torch.cos(angle), torch.sin(angle)
        r00, r01 = cos * flip_w, sin * flip_h * (h / w)
        r10, r11 = -sin * flip_w * (w / h), cos * flip_h
        theta = torch.zeros(angle.shape[0], 2, 3, device=angle.device)
        theta[:, 0, 0] = r00 / zoom_w
        theta[:, 0, 1] = r01 / zoom_h
        theta[:, 1, 0] = r10 / zoom_w
        theta[:, 1, 1] = r11 / zoom_h
        theta[:, 0, 2] = r00 * shift_w + r01 * shift_h
        theta[:, 1, 2] = r10 * shift_w + r11 * shift_h
        return theta

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            image: ``(B, C, H, W)`` float.
            label: ``(B, 1, H, W)`` or ``(B, H, W)`` integer labels moved with the image, or ``None``.
            generator: random generator on ``image.device``.

        Returns:
            ``(image (B, C, H, W), label int64 of the label's shape or None)``.
        """
        _check_image(image)
        b, _, h, w = image.shape
        if label is not None:
            if label.shape[0] != b or tuple(label.shape[-2:]) != (h, w) or label.ndim not in (3, 4):
                raise ValueError(f"label must be (B, 1, H, W) or (B, H, W) matching image, got {tuple(label.shape)}")
        prm = self.sample_params(b, (h, w), image.device, generator)
        zh, sh, h0, h1 = self.zoom_geometry(prm["zoom"], h)
        zw, sw, w0, w1 = self.zoom_geometry(prm["zoom"], w)
        theta = self.matrices(prm["angle"], prm["flip_h"], prm["flip_w"], zh, zw, sh, sw, (h, w))
        grid = F.affine_grid(theta.to(image.dtype), [b, 1, h, w], align_corners=False)
        # MONAI pads a zoomed-out image with exact zeros outside the resized image ...
        rows = torch.arange(h, device=image.device, dtype=torch.float32).view(1, h, 1)
        cols = torch.arange(w, device=image.device, dtype=torch.float32).view(1, 1, w)
        inside = (
            (rows >= h0.view(-1, 1, 1))
            & (rows < h1.view(-1, 1, 1))
            & (cols >= w0.view(-1, 1, 1))
            & (cols < w1.view(-1, 1, 1))
        )
        inside = inside.unsqueeze(1)
        out = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # ... and its zoom interpolation clamps at the image border (a zero-padded rotation does not): for
        # zoomed samples without rotation resample with border clamping, selected per sample on the device
        border = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
        use_border = (prm["zoomed"] & ~prm["rotated"]).view(b, 1, 1, 1)
        out = torch.where(use_border, border, out) * inside.to(out.dtype)
        if label is None:
            return out, None
        lab = (label if label.ndim == 4 else label.unsqueeze(1)).to(image.dtype)
        # nearest resampling of class indices: exact in float32 for any realistic number of classes
        lab_z = F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        lab_b = F.grid_sample(lab, grid, mode="nearest", padding_mode="border", align_corners=False)
        lab = (torch.where(use_border, lab_b, lab_z) * inside.to(lab.dtype)).round().long()
        return out, (lab if label.ndim == 4 else lab[:, 0])


class BatchedStrongAugment:
    """Intensity-only strong augmentation of a batch (see module doc); geometry untouched.

    Example::

        strong = BatchedStrongAugment()
        view = strong(weak_image, generator=g)   # (B, C, H, W)
    """

    def __init__(self, **params: Any) -> None:
        """
        Args:
            params: the fields of :class:`~vqseg_bundle.transforms.params.StrongAugmentParams` (as
                :func:`vqseg_bundle.transforms.strong_intensity_transforms`: same meaning, same defaults).
        """
        self.params = p = StrongAugmentParams(**params)
        self.blur_tail = int(max(p.blur_sigma[1] * _TRUNCATED, 0.5) + 0.5)

    # -------------------------------------------------------------- stages
    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.params.clip_range is None else x.clamp(*self.params.clip_range)

    def _jitter(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        """Grey-level ColorJitter (torchvision's brightness and contrast; saturation and hue are no-ops on one
        channel): with ``jitter_prob``, ``x * b`` and ``mean + c (x - mean)`` in random order, ``b ~ U(1 +- brightness)``,
        ``c ~ U(1 +- contrast)``, each followed by clipping to ``clip_range``."""
        b = x.shape[0]
        apply = _bernoulli(b, self.params.jitter_prob, x, g).view(b, 1, 1, 1)
        factor_b = (
            _uniform(b, 1.0 - self.params.brightness, 1.0 + self.params.brightness, x, g).view(b, 1, 1, 1).to(x.dtype)
        )
        factor_c = (
            _uniform(b, 1.0 - self.params.contrast, 1.0 + self.params.contrast, x, g).view(b, 1, 1, 1).to(x.dtype)
        )
        contrast_first = _bernoulli(b, 0.5, x, g).view(b, 1, 1, 1)

        def bright(t: torch.Tensor) -> torch.Tensor:
            return self._clip(t * factor_b)

        def contr(t: torch.Tensor) -> torch.Tensor:
            mean = t.mean(dim=(1, 2, 3), keepdim=True)
            return self._clip(mean + factor_c * (t - mean))

        out = torch.where(contrast_first, bright(contr(x)), contr(bright(x)))
        return torch.where(apply, out, x)

    def _gamma(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        apply = _bernoulli(b, self.params.contrast_prob, x, g)
        gamma = _uniform(b, *self.params.gamma_range, x, g).view(b, 1, 1, 1)
        flat = x.reshape(b, -1)
        mean, std = flat.mean(1).view(b, 1, 1, 1), flat.std(1).view(b, 1, 1, 1)  # unbiased, as torch / MONAI
        lo, hi = flat.amin(1).view(b, 1, 1, 1), flat.amax(1).view(b, 1, 1, 1)
        rng = hi - lo
        ret = ((x - lo) / (rng + 1e-7)).clamp_min(0.0) ** gamma * rng + lo
        rflat = ret.reshape(b, -1)
        ret = (ret - rflat.mean(1).view(b, 1, 1, 1)) / (rflat.std(1).view(b, 1, 1, 1) + 1e-8) * std + mean
        return torch.where(apply.view(b, 1, 1, 1), ret, x)

    def _scale_shift(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        do_scale = _bernoulli(b, self.params.contrast_prob, x, g)
        factor = _uniform(b, -self.params.scale_range, self.params.scale_range, x, g)
        do_shift = _bernoulli(b, self.params.contrast_prob, x, g)
        offset = _uniform(b, -self.params.shift_range, self.params.shift_range, x, g)
        scale = torch.where(do_scale, 1.0 + factor, torch.ones_like(factor)).view(b, 1, 1, 1)
        shift = torch.where(do_shift, offset, torch.zeros_like(offset)).view(b, 1, 1, 1)
        # the order of MONAI's pipeline: scale first, then shift
        return x * scale.to(x.dtype) + shift.to(x.dtype)

    def _blur(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b, c, h, w = x.shape
        apply = _bernoulli(b, self.params.blur_prob, x, g)
        sig_h = _uniform(b, *self.params.blur_sigma, x, g)
        sig_w = _uniform(b, *self.params.blur_sigma, x, g)
        t = self.blur_tail
        k_h, k_w = gaussian_erf_kernels(sig_h, t), gaussian_erf_kernels(sig_w, t)
        # samples without blur get a unit impulse: an exact identity, no branch on the host
        delta = torch.zeros(2 * t + 1, device=x.device)
        delta[t] = 1.0
        k_h = torch.where(apply[:, None], k_h, delta).to(x.dtype)
        k_w = torch.where(apply[:, None], k_w, delta).to(x.dtype)
        # separable depthwise convolution over (1, B*C, H, W), zero padding (MONAI's default)
        y = x.reshape(1, b * c, h, w)
        y = F.conv2d(y, k_h.repeat_interleave(c, 0).view(b * c, 1, 2 * t + 1, 1), padding=(t, 0), groups=b * c)
        y = F.conv2d(y, k_w.repeat_interleave(c, 0).view(b * c, 1, 1, 2 * t + 1), padding=(0, t), groups=b * c)
        return y.view(b, c, h, w)

    def _noise(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        b = x.shape[0]
        apply = _bernoulli(b, self.params.noise_prob, x, g)
        std = torch.where(apply, _uniform(b, 0.0, self.params.noise_std, x, g), torch.zeros(b, device=x.device))
        noise = torch.randn(x.shape, device=x.device, generator=g, dtype=x.dtype)
        return x + noise * std.view(b, 1, 1, 1).to(x.dtype)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """
        Args:
            image: ``(B, C, H, W)`` float (a weak view).
            generator: random generator on ``image.device``.

        Returns:
            ``(B, C, H, W)`` strong view, same dtype.
        """
        _check_image(image)
        x = self._jitter(image, generator) if self.params.jitter_prob > 0 else image
        x = self._gamma(x, generator)
        x = self._scale_shift(x, generator)
        x = self._blur(x, generator)
        return self._noise(x, generator)


class BatchedLabeledAugment:
    """Labeled batches: weak augmentation of image and label together.

    ``{"image": (B, 1, H, W) float, "label": (B, 1, H, W) int}`` -> same keys, float32 / int64.
    """

    def __init__(self, **weak_kwargs: Any) -> None:
        """
        Args:
            weak_kwargs: the weak parameters (:class:`~vqseg_bundle.transforms.params.WeakAugmentParams`).
        """
        self.weak = BatchedWeakAugment(**weak_kwargs)

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        if "image" not in batch or "label" not in batch:
            raise ValueError(f"labeled batch needs 'image' and 'label', got keys {sorted(batch)}")
        image, label = self.weak(batch["image"].float(), batch["label"], generator)
        return {"image": image, "label": label}


class BatchedUnlabeledAugment:
    """Unlabeled batches: a weak view and two independent strong views of it.

    ``{"image": (B, 1, H, W)}`` -> ``{"image": weak, "image_s1": strong, "image_s2": strong}``, float32.
    """

    def __init__(self, weak: Mapping[str, Any] | None = None, strong: Mapping[str, Any] | None = None) -> None:
        """
        Args:
            weak: the weak parameters (:class:`~vqseg_bundle.transforms.params.WeakAugmentParams`, the config's
                ``weak_aug``).
            strong: the strong parameters (:class:`~vqseg_bundle.transforms.params.StrongAugmentParams`, the
                config's ``strong_aug``).
        """
        weak, strong = unlabeled_params(weak, strong)
        self.weak = BatchedWeakAugment(**weak)
        self.strong = BatchedStrongAugment(**strong)

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        if "image" not in batch:
            raise ValueError(f"unlabeled batch needs 'image', got keys {sorted(batch)}")
        weak, _ = self.weak(batch["image"].float(), None, generator)
        out = {"image": weak}
        for key in STRONG_KEYS:  # independent draws per view, as the MONAI pipeline's separate transforms
            out[key] = self.strong(weak, generator)
        return out
