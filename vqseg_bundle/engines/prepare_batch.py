"""MONAI ``prepare_batch`` callables of the semi-supervised trainer: one per loader.

The trainer draws one labeled batch (the engine's own loader, through MONAI's ``prepare_batch`` mechanism:
``engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)``) and one
unlabeled batch (a second loader, through ``prepare_unlabeled_batch`` with the same call) per iteration.
Both follow MONAI's :class:`~monai.engines.utils.PrepareBatch` interface, so either can be replaced in the
config (``train#trainer#prepare_batch``) as in any MONAI workflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys
from vqseg_bundle.transforms.augment import STRONG_KEYS

__all__ = ["PrepareLabeledBatch", "PrepareUnlabeledBatch", "batch_to_device"]

#: a device argument of ``prepare_batch``
Device = str | torch.device | None


def batch_to_device(
    x: Any,
    device: Device,
    dtype: torch.dtype | None = None,
    non_blocking: bool = False,
    channels_last: bool = False,
    **kwargs: Any,
) -> torch.Tensor:
    """One batch entry as a plain tensor on ``device``.

    Args:
        x: a tensor, ``MetaTensor`` (its metadata is dropped: training needs none) or array-like.
        device: target device.
        dtype: target dtype (``None`` keeps it).
        non_blocking: asynchronous host-to-device copy.
        channels_last: a 4-D ``(B, C, H, W)`` result is made channels-last contiguous.
        kwargs: further arguments of ``Tensor.to`` (MONAI's ``to_kwargs``).

    Returns:
        The tensor on ``device``.
    """
    x = torch.as_tensor(x)
    if hasattr(x, "as_tensor"):  # MetaTensor -> plain tensor (no metadata needed in training)
        x = x.as_tensor()
    x = x.to(device, dtype=dtype, non_blocking=non_blocking, **kwargs)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class _PrepareOnDevice(PrepareBatch):
    """A MONAI ``PrepareBatch`` whose entries become plain tensors on the device, optionally channels-last."""

    def __init__(self, channels_last: bool = False) -> None:
        self.channels_last = bool(channels_last)

    def to_device(self, x: Any, device: Device, dtype: torch.dtype, non_blocking: bool, **kwargs: Any) -> torch.Tensor:
        """:func:`batch_to_device` with this callable's ``channels_last``."""
        return batch_to_device(x, device, dtype, non_blocking, self.channels_last, **kwargs)


class PrepareLabeledBatch(_PrepareOnDevice):
    """Labeled batch ``{"image": (B, C, H, W), "label": (B, 1, H, W) or (B, H, W)}`` ->
    ``(image float32 (B, C, H, W), label int64 (B, H, W))`` on the device (MONAI's ``(image, label)`` form).

    Args:
        channels_last: images (and ``(B, 1, H, W)`` labels before the channel is dropped) channels-last.
    """

    def __call__(
        self, batchdata: Mapping[str, Any], device: Device = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batchdata``: the labeled loader's batch; ``device``, ``non_blocking`` and ``kwargs`` (further
        ``Tensor.to`` arguments, the trainer's ``to_kwargs``) as MONAI's ``prepare_batch``."""
        image = self.to_device(batchdata[CommonKeys.IMAGE], device, torch.float32, non_blocking, **kwargs)
        label = self.to_device(batchdata[CommonKeys.LABEL], device, torch.long, non_blocking, **kwargs)
        if label.ndim == 4:
            label = label[:, 0]
        return image, label


class PrepareUnlabeledBatch(_PrepareOnDevice):
    """Unlabeled batch ``{"image", "image_s1", "image_s2"}`` (the weak view and two strong views, each
    ``(B_u, C, H, W)``) -> the same keys as float32 tensors on the device."""

    def __init__(self, keys: Sequence[str] = (CommonKeys.IMAGE, *STRONG_KEYS), channels_last: bool = False) -> None:
        """
        Args:
            keys: the entries read (the weak view first, then the strong views).
            channels_last: the tensors channels-last.
        """
        super().__init__(channels_last)
        self.keys = tuple(keys)

    def __call__(
        self, batchdata: Mapping[str, Any], device: Device = None, non_blocking: bool = False, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """``batchdata``: the unlabeled loader's batch; ``device``, ``non_blocking`` and ``kwargs`` as for
        :class:`PrepareLabeledBatch`.

        Raises:
            ValueError: when an entry of ``keys`` is missing.
        """
        for key in self.keys:
            if key not in batchdata:
                raise ValueError(
                    f"unlabeled batch has no {key!r} (keys: {sorted(batchdata)}); build the unlabeled dataset "
                    "with vqseg_bundle.transforms.unlabeled_transforms"
                )
        return {k: self.to_device(batchdata[k], device, torch.float32, non_blocking, **kwargs) for k in self.keys}
