"""In-memory slice datasets: decoded, normalised and resized once, held as one contiguous tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import apply_transform
from vqseg_bundle.data.integrity import patient_id_from_name

__all__ = ["InMemorySliceDataset", "resize_slices"]


#: interpolation modes of :func:`resize_slices`
RESIZE_MODES = ("bilinear", "nearest-exact")


def resize_slices(
    slices: Sequence[np.ndarray], size: Sequence[int], mode: str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Stack 2D slices of possibly different shapes into one ``(N, 1, S0, S1)`` tensor.

    Slices are grouped by shape and resized group-wise with ``torch.nn.functional.interpolate``
    (one call per distinct shape instead of one per slice; MONAI's ``Resize`` works per item).
    Images use ``mode="bilinear"`` (``align_corners=False``, no antialiasing, matching the
    resize-per-slice inferer); labels use ``mode="nearest-exact"`` (pixel-centre nearest
    neighbour, no half-pixel shift). Slices already at ``size`` are copied unchanged.

    Args:
        slices: ``N`` arrays of shape ``(H_i, W_i)``.
        size: output in-plane size ``(S0, S1)``.
        mode: ``"bilinear"`` or ``"nearest-exact"``.
        dtype: dtype of the returned tensor (labels are interpolated in float32 and cast back).

    Returns:
        Tensor ``(N, 1, S0, S1)`` of ``dtype``.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {RESIZE_MODES}, got {mode!r}")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be two positive integers, got {size}")
    out = torch.empty((len(slices), 1, *size), dtype=dtype)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(slices):
        if s.ndim != 2:
            raise ValueError(f"slice {i} must be 2D, got shape {s.shape}")
        groups.setdefault(tuple(s.shape), []).append(i)
    for shape, idx in groups.items():
        batch = torch.from_numpy(np.stack([np.asarray(slices[i], dtype=np.float32) for i in idx]))[:, None]
        if shape != size:
            kwargs = {"align_corners": False} if mode == "bilinear" else {}
            batch = F.interpolate(batch, size=size, mode=mode, **kwargs)
        if not dtype.is_floating_point:
            batch = batch.round()
        out[torch.as_tensor(idx)] = batch.to(dtype)
    return out


class InMemorySliceDataset(torch.utils.data.Dataset):
    """2D training slices held in memory as one contiguous tensor.

    Items are ``{"image": float32 (1, S0, S1)}`` plus ``"label": int64 (1, S0, S1)`` when labels
    are held. ``transform`` (e.g. a MONAI ``Compose`` of dictionary transforms) is applied to the
    item dict in ``__getitem__``; it is an attribute named ``transform`` so that MONAI's
    ``DataLoader`` seeds its random state per worker. The tensors live in shared memory after the
    first pickling, so several DataLoader workers (fork or spawn) do not copy the dataset each.

    Attributes:
        images: float32 ``(N, 1, S0, S1)``; may be moved to a GPU by a trainer that samples batches itself.
        labels: ``(N, 1, S0, S1)`` class indices stored as uint8 when ``num_classes <= 256`` (saves
            7/8 of the memory of int64); ``None`` for unlabeled data. Items convert to int64.
        names: one name per slice (e.g. ``patient001_frame01_slice_3``).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        names: Sequence[str] | None = None,
        transform: Callable | None = None,
    ) -> None:
        """
        Args:
            images: float tensor ``(N, 1, S0, S1)``.
            labels: integer tensor ``(N, 1, S0, S1)`` or ``None``.
            names: ``N`` slice names, default ``"slice_<i>"``.
            transform: callable on the item dict, or ``None``.
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must have shape (N, 1, H, W), got {tuple(images.shape)}")
        if labels is not None:
            if labels.shape != images.shape:
                raise ValueError(f"labels shape {tuple(labels.shape)} must equal images shape {tuple(images.shape)}")
            if labels.is_floating_point():
                raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        if names is not None and len(names) != images.shape[0]:
            raise ValueError(f"got {len(names)} names for {images.shape[0]} slices")
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform).__name__}")
        self.images = images.float().contiguous()
        self.labels = labels.contiguous() if labels is not None else None
        self.names = list(names) if names is not None else [f"slice_{i}" for i in range(images.shape[0])]
        self.transform = transform

    @property
    def has_labels(self) -> bool:
        """Whether items carry a ``"label"``."""
        return self.labels is not None

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} slices")
        # clone: a transform that writes in place must never corrupt the shared in-memory copy
        item = {"image": self.images[index].clone()}
        if self.labels is not None:
            item["label"] = self.labels[index].long()
        if self.transform is not None:
            item = apply_transform(self.transform, item)
        return item

    def with_transform(self, transform: Callable | None) -> "InMemorySliceDataset":
        """A dataset sharing this one's tensors (no copy) with another ``transform``."""
        return InMemorySliceDataset(self.images, self.labels, self.names, transform)

    def patients(self) -> list[str]:
        """Patient identifiers of the slices, in first-appearance order."""
        return list(dict.fromkeys(patient_id_from_name(n) for n in self.names))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n={len(self)}, size={tuple(self.images.shape[2:])}, "
            f"labeled={self.has_labels}, "
            f"transform={type(self.transform).__name__ if self.transform else None})"
        )
