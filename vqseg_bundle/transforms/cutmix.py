"""Batch CutMix for weak-to-strong training, applied identically to images, pseudo-labels and confidences.

Two modes (a config choice, ``mode``):

* ``"box"`` (default): one box per sample, as in UniMatch: with probability ``prob`` a box of
  area ``U(area_range) x H x W`` and aspect ratio ``U(ratio_range)`` is pasted from the sample's
  partner in the batch. Fully vectorised on the input's device (no Python loop over samples, no
  host-device synchronisation), random numbers from an explicit ``torch.Generator``. UniMatch
  redraws size and corner until the box fits; here the size is clamped to the image and the
  corner drawn among the positions where it fits, which keeps the box area distribution except
  for boxes larger than the image.
* ``"monai"``: ``monai.transforms.CutMix`` (box size from ``Beta(alpha, alpha)``, one corner for the
  whole batch, always applied); the same boxes are re-applied to the targets with
  ``randomize=False``. It loops over samples in Python and draws from NumPy.

The partner of sample ``i`` is ``perm[i]`` for a random permutation of the batch (UniMatch V2
pairs with the reversed batch), or sample ``i`` of a second batch passed as ``partner`` (UniMatch V1
mixes with a second unlabeled batch: no sample is mixed with itself; with an in-batch permutation of
4 samples a quarter of the boxes are). With a batch of one sample and no partner batch CutMix is a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.transforms import CutMix as MonaiCutMix

__all__ = ["CUTMIX_MODES", "CutMixDraw", "random_box_masks", "BatchCutMix"]

CUTMIX_MODES = ("box", "monai", "none")


def random_box_masks(
    batch_size: int,
    spatial_size: Sequence[int],
    prob: float = 0.5,
    area_range: Sequence[float] = (0.02, 0.4),
    ratio_range: Sequence[float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One random rectangular box per sample.

    Args:
        batch_size: number of masks ``B``.
        spatial_size: ``(H, W)``.
        prob: probability that a sample gets a box (otherwise its mask is all ``False``).
        area_range: box area as a fraction of ``H x W``.
        ratio_range: box aspect ratio (height / width).
        generator: random generator; must live on ``device``.
        device: device of the result (default: the generator's device, else CPU).

    Returns:
        Bool tensor ``(B, H, W)``, ``True`` inside the box.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(spatial_size) != 2 or min(spatial_size) < 1:
        raise ValueError(f"spatial_size must be (H, W) with positive sizes, got {spatial_size}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob must be in [0, 1], got {prob}")
    if len(area_range) != 2 or not 0 < area_range[0] <= area_range[1] <= 1:
        raise ValueError(f"area_range must satisfy 0 < low <= high <= 1, got {area_range}")
    if len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]:
        raise ValueError(f"ratio_range must satisfy 0 < low <= high, got {ratio_range}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    h, w = int(spatial_size[0]), int(spatial_size[1])
    u = torch.rand(5, batch_size, device=device, generator=generator)
    area = (area_range[0] + (area_range[1] - area_range[0]) * u[0]) * (h * w)
    ratio = ratio_range[0] + (ratio_range[1] - ratio_range[0]) * u[1]
    box_h = torch.sqrt(area * ratio).floor().clamp(1, h)
    box_w = torch.sqrt(area / ratio).floor().clamp(1, w)
    top = (u[2] * (h - box_h + 1)).floor()
    left = (u[3] * (w - box_w + 1)).floor()
    apply = u[4] < prob
    rows = torch.arange(h, device=device, dtype=area.dtype).view(1, h, 1)
    cols = torch.arange(w, device=device, dtype=area.dtype).view(1, 1, w)
    inside_r = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
    inside_c = (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
    return inside_r & inside_c & apply.view(-1, 1, 1)


class CutMixDraw(NamedTuple):
    """The random part of one CutMix of a batch: ``box`` ``(B, H, W)`` bool, and ``perm`` ``(B,)`` (the in-batch
    partner of each sample) or ``None`` when the partners are a second batch."""

    box: torch.Tensor
    perm: torch.Tensor | None


class BatchCutMix:
    """Mix each sample of a batch with a partner sample inside a box; same boxes for all targets.

    Example::

        cutmix = BatchCutMix(mode="box")
        image_mix, (label_mix, conf_mix) = cutmix(image, [label, conf], generator=g)
    """

    def __init__(
        self,
        mode: str = "box",
        prob: float = 0.5,
        area_range: Sequence[float] = (0.02, 0.4),
        ratio_range: Sequence[float] = (0.3, 1 / 0.3),
        alpha: float = 1.0,
    ) -> None:
        """
        Args:
            mode: ``"box"`` (per-sample boxes, default), ``"monai"`` (``monai.transforms.CutMix``)
                or ``"none"`` (identity).
            prob: ``"box"`` mode: probability that a sample is mixed.
            area_range: ``"box"`` mode: box area fraction range.
            ratio_range: ``"box"`` mode: box aspect ratio range.
            alpha: ``"monai"`` mode: Beta distribution parameter.
        """
        if mode not in CUTMIX_MODES:
            raise ValueError(f"mode must be one of {CUTMIX_MODES}, got {mode!r}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.mode = mode
        self.prob = float(prob)
        self.area_range = tuple(area_range)
        self.ratio_range = tuple(ratio_range)
        self.alpha = float(alpha)
        # validate the box arguments once, eagerly
        random_box_masks(1, (2, 2), self.prob, self.area_range, self.ratio_range)

    def __call__(
        self,
        image: torch.Tensor,
        targets: Sequence[torch.Tensor] = (),
        generator: torch.Generator | None = None,
        partner: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            image: ``(B, C, H, W)``.
            targets: tensors ``(B, H, W)`` or ``(B, C', H, W)`` (pseudo-labels, confidences, ...)
                mixed with the same boxes and partners; dtypes are kept.
            generator: random generator on ``image.device`` (``"box"`` mode).
            partner: ``(partner image, partner targets)`` of the same shapes: sample ``i`` is mixed with
                sample ``i`` of this second batch (``"box"`` mode) instead of a permuted sample of its own.

        Returns:
            ``(mixed image, [mixed targets])``.
        """
        if image.ndim != 4:
            raise ValueError(f"image must be (B, C, H, W), got shape {tuple(image.shape)}")
        b, _, h, w = image.shape
        for i, t in enumerate(targets):
            if t.shape[0] != b or tuple(t.shape[-2:]) != (h, w) or t.ndim not in (3, 4):
                raise ValueError(f"target {i} must be (B, H, W) or (B, C, H, W) matching image, got {tuple(t.shape)}")
        if partner is not None:
            p_image, p_targets = partner[0], list(partner[1])
            if (
                p_image.shape != image.shape
                or len(p_targets) != len(targets)
                or any(pt.shape != t.shape for pt, t in zip(p_targets, targets, strict=True))
            ):
                raise ValueError(
                    f"partner batch must match the batch: image {tuple(p_image.shape)} vs {tuple(image.shape)}, "
                    f"targets {[tuple(t.shape) for t in p_targets]} vs {[tuple(t.shape) for t in targets]}"
                )
            if self.mode == "monai":
                raise ValueError("a partner batch needs mode 'box' (monai.transforms.CutMix mixes within its batch)")
        if self.mode == "none" or (b == 1 and partner is None):
            return image, list(targets)
        if self.mode == "monai":
            return self._monai(image, targets)
        d = self.draw(b, (h, w), generator, image.device, second_batch=partner is not None)
        if partner is None:
            return self.mix(d, image), [self.mix(d, t) for t in targets]
        mixed = self.mix(d, image, p_image)
        out = [self.mix(d, t, pt) for t, pt in zip(targets, p_targets, strict=True)]
        return mixed, out

    def draw(
        self,
        batch_size: int,
        spatial_size: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        second_batch: bool = False,
    ) -> CutMixDraw:
        """Boxes (and in-batch partners unless ``second_batch``) for :meth:`mix`, so that images can be mixed
        before their pseudo-labels exist (a student that labels its own weak view in the training forward).
        ``"box"`` and ``"none"`` modes only (``"none"`` gives empty boxes)."""
        if self.mode == "monai":
            raise ValueError(
                "BatchCutMix.draw needs mode 'box' or 'none' (monai.transforms.CutMix draws its own boxes)"
            )
        if self.mode == "none":
            box = torch.zeros(batch_size, *spatial_size, dtype=torch.bool, device=device)
            return CutMixDraw(box, None if second_batch else torch.arange(batch_size, device=device))
        box = random_box_masks(
            batch_size, spatial_size, self.prob, self.area_range, self.ratio_range, generator, device
        )
        perm = None if second_batch else torch.randperm(batch_size, device=box.device, generator=generator)
        return CutMixDraw(box, perm)

    @staticmethod
    def mix(draw: CutMixDraw, x: torch.Tensor, partner: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (``(B, H, W)`` or ``(B, C, H, W)``) with the boxes of ``draw`` filled from ``partner`` (a second
        batch of the same shape) or, for an in-batch draw, from ``x[perm]``."""
        if (partner is None) == (draw.perm is None):
            raise ValueError("CutMix.mix: give a partner batch exactly when the draw has no in-batch permutation")
        source = x[draw.perm] if partner is None else partner
        if source.shape != x.shape:
            raise ValueError(f"CutMix.mix: partner {tuple(source.shape)} does not match {tuple(x.shape)}")
        box = draw.box if x.ndim == 3 else draw.box.unsqueeze(1)
        return torch.where(box, source, x)

    def _monai(self, image: torch.Tensor, targets: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        cutmix = MonaiCutMix(batch_size=image.shape[0], alpha=self.alpha)
        mixed = cutmix(image, randomize=True)
        out = []
        for t in targets:
            t4 = t.unsqueeze(1) if t.ndim == 3 else t
            m = cutmix(t4.float(), randomize=False)
            m = m.squeeze(1) if t.ndim == 3 else m
            out.append(m.round().to(t.dtype) if not t.is_floating_point() else m.to(t.dtype))
        return mixed, out
