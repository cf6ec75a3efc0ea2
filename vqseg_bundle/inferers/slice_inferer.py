"""Resize-per-slice inference of a 2D network over 2D images and 3D volumes.

MONAI's :class:`monai.inferers.SliceInferer` runs a 2D network slice by slice but feeds each slice
at its native in-plane size. The protocol of the ACDC semi-supervised literature (SSL4MIS, UniMatch,
BCP, ABD, VQ-Seg) instead resizes every slice to the network's training size, predicts, and resizes
the logits back to the original in-plane size before the argmax. No library inferer does the two
resizes, hence this small class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from vqseg_bundle.transforms.dihedral import DIHEDRAL_TRANSFORMS

__all__ = ["ResizedSliceInferer"]

_TTA_AVERAGES = ("softmax", "logits")
_RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")


class ResizedSliceInferer(Inferer):
    """Run a 2D segmentation network on every slice of a volume at a fixed in-plane size.

    Layouts: a volume ``(B, C, H, W, D)`` (slices along the last axis, the layout of the
    bundle's validation items and of NIfTI volumes loaded with ``EnsureChannelFirstd``) gives
    logits ``(B, K, H, W, D)``; a 2D image ``(B, C, H, W)`` is treated as one slice and gives
    ``(B, K, H, W)``. Each slice is resized to ``roi_size`` (``mode``, ``align_corners=False``),
    the network is run on batches of ``sw_batch_size`` slices, and its ``(N, K, h, w)`` logits are
    resized back to ``(H, W)`` with the same interpolation.

    Flip test-time augmentation (``flip_tta=True``) runs the network on each slice batch three
    times: as is, flipped left-right (last axis of the resized slice) and flipped up-down, and
    un-flips the predictions. Dihedral test-time augmentation (``dihedral_tta=True``) runs it eight
    times instead: the resized slice in each of the 4 quarter turns, without and with a mirror
    (:mod:`vqseg_bundle.transforms.dihedral`), each prediction turned back. ``tta_average="softmax"`` (default) averages the softmax
    probabilities and returns their logarithm, which is a valid logit tensor (its softmax is the
    averaged probability, its argmax the averaged decision); ``tta_average="logits"`` averages
    the raw logits. The averaging happens at the network size, before the resize back.

    If ``inputs`` is a :class:`monai.data.MetaTensor`, the output is a ``MetaTensor`` carrying the
    input's metadata (affine, filename, ...), so that ``SaveImaged`` writes the prediction with
    the input's geometry.

    Args:
        roi_size: in-plane network size ``(S_h, S_w)`` or one int for a square size.
        sw_batch_size: number of slices per network call (per TTA view).
        flip_tta: enable the flip test-time augmentation described above (3 network runs per slice).
        dihedral_tta: enable the dihedral test-time augmentation described above (8 runs per slice; not
            together with ``flip_tta``).
        tta_average: ``"softmax"`` or ``"logits"``, see above.
        mode: interpolation used for both resizes (``"bilinear"`` is the literature protocol).
        slice_axis: spatial axis of a volume along which slices are taken (``0``, ``1``, ``2`` or
            ``-3 .. -1``; default ``-1``, the last). The output keeps the input's axis order.

    Raises:
        ValueError: on invalid arguments (at construction) or inputs of unexpected rank or a
            network that does not return ``(N, K, h, w)`` logits (at call time).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 16,
        flip_tta: bool = False,
        tta_average: str = "softmax",
        dihedral_tta: bool = False,
        mode: str = "bilinear",
        slice_axis: int = -1,
    ) -> None:
        super().__init__()
        if isinstance(roi_size, int):
            roi_size = (roi_size, roi_size)
        roi = tuple(int(s) for s in roi_size)
        if len(roi) != 2 or any(s < 1 for s in roi):
            raise ValueError(f"roi_size must be two positive ints (S_h, S_w), got {roi_size!r}.")
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be a positive int, got {sw_batch_size!r}.")
        if flip_tta and dihedral_tta:
            raise ValueError("flip_tta and dihedral_tta are exclusive (the dihedral views include the flips)")
        if tta_average not in _TTA_AVERAGES:
            raise ValueError(f"tta_average must be one of {_TTA_AVERAGES}, got {tta_average!r}.")
        if mode not in _RESIZE_MODES:
            raise ValueError(f"mode must be one of {_RESIZE_MODES}, got {mode!r}.")
        if isinstance(slice_axis, bool) or not isinstance(slice_axis, int) or not -3 <= slice_axis <= 2:
            raise ValueError(f"slice_axis must be an int in -3..2 (a spatial axis of a 3D volume), got {slice_axis!r}.")
        self.slice_axis = slice_axis % 3
        self.roi_size: tuple[int, int] = roi  # type: ignore[assignment]
        self.sw_batch_size = int(sw_batch_size)
        self.flip_tta = bool(flip_tta)
        self.dihedral_tta = bool(dihedral_tta)
        self.tta_average = tta_average
        self.mode = mode

    def _resize(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        align = None if self.mode in ("nearest", "area") else False
        return F.interpolate(x, size=size, mode=self.mode, align_corners=align)

    def _predict(self, slices: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Network logits of ``slices (N, C, S_h, S_w)``, checked to be ``(N, K, h, w)``."""
        out = network(slices, *args, **kwargs)
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != slices.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                "ResizedSliceInferer expects the network to return logits (N, K, h, w) "
                f"for {slices.shape[0]} "
                f"slices, got {got}."
            )
        return out

    def _predict_tta(
        self, slices: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        views = []
        if self.dihedral_tta:
            for t in DIHEDRAL_TRANSFORMS:
                views.append(t.invert(self._predict(t.apply(slices), network, *args, **kwargs)))
        elif self.flip_tta:
            for dims in ((), (-1,), (-2,)):
                x = torch.flip(slices, dims) if dims else slices
                y = self._predict(x, network, *args, **kwargs)
                views.append(torch.flip(y, dims) if dims else y)
        else:
            return self._predict(slices, network, *args, **kwargs)
        if self.tta_average == "logits":
            return torch.stack(views).mean(0)
        probs = torch.stack([v.float().softmax(dim=1) for v in views]).mean(0)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Predict logits for ``inputs``.

        Args:
            inputs: ``(B, C, H, W, D)`` volume or ``(B, C, H, W)`` image.
            network: 2D network mapping ``(N, C, S_h, S_w)`` to logits ``(N, K, h, w)``.
            args, kwargs: passed on to ``network``.

        Returns:
            logits ``(B, K, H, W, D)`` (or ``(B, K, H, W)`` for 4D input), on the input's device,
            a ``MetaTensor`` with the input's metadata when ``inputs`` is one.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.ndim not in (4, 5):
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(
                f"ResizedSliceInferer expects a (B, C, H, W, D) volume or a (B, C, H, W) image, got {shape}."
            )
        is_2d = inputs.ndim == 4
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        if is_2d:
            x = x.unsqueeze(-1)
        elif self.slice_axis != 2:
            x = x.movedim(2 + self.slice_axis, -1)
        b, c, h, w, d = x.shape
        if min(b, c, h, w, d) == 0:
            raise ValueError(f"ResizedSliceInferer got an empty input of shape {tuple(inputs.shape)}.")
        # (B, C, H, W, D) -> (B * D, C, H, W): slice-major so that a batch holds consecutive slices.
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        if not torch.is_floating_point(slices):
            slices = slices.float()

        out: torch.Tensor | None = None
        for start in range(0, b * d, self.sw_batch_size):
            chunk = self._resize(slices[start : start + self.sw_batch_size], self.roi_size)
            logits = self._resize(self._predict_tta(chunk, network, *args, **kwargs), (h, w))
            if out is None:
                out = logits.new_empty((b * d, logits.shape[1], h, w))
            out[start : start + logits.shape[0]] = logits
        assert out is not None  # b * d >= 1, checked above
        k = out.shape[1]
        result = out.reshape(b, d, k, h, w).permute(0, 2, 3, 4, 1).contiguous()
        if is_2d:
            result = result.squeeze(-1)
        elif self.slice_axis != 2:
            result = result.movedim(-1, 2 + self.slice_axis).contiguous()
        if isinstance(inputs, MetaTensor):
            result = convert_to_dst_type(result, inputs)[0]
        return result

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(roi_size={self.roi_size}, sw_batch_size={self.sw_batch_size}, "
            f"flip_tta={self.flip_tta}, dihedral_tta={self.dihedral_tta}, tta_average={self.tta_average!r}, mode={self.mode!r}, "
            f"slice_axis={self.slice_axis})"
        )
