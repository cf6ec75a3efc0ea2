"""The training loaders of both data backends, from one factory (``train#dataloader`` and
``train#unlabeled_dataloader`` of ``configs/train.yaml``).

* ``"batched"``: :class:`~vqseg_bundle.data.device_loader.DeviceBatchLoader` draws whole batches from the
  in-memory slices on the data device and augments them there
  (:mod:`vqseg_bundle.transforms.batched`): no workers, no per-sample Python work.
* ``"monai"``: a MONAI ``DataLoader`` over the slices with MONAI dictionary transforms per sample
  (:func:`~vqseg_bundle.transforms.labeled_transforms`, :func:`~vqseg_bundle.transforms.unlabeled_transforms`).

Both take the same ``weak`` / ``strong`` augmentation options and give the same items: labeled
``{"image": (B, 1, S, S), "label": (B, 1, S, S)}``, unlabeled ``{"image", "image_s1", "image_s2", ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from vqseg_bundle import transforms
from vqseg_bundle.data.device_loader import DeviceBatchLoader
from vqseg_bundle.transforms import batched

__all__ = ["DATA_BACKENDS", "STREAMS", "train_loader"]

DATA_BACKENDS = ("batched", "monai")
STREAMS = ("labeled", "unlabeled")


def train_loader(
    dataset: Any,
    batch_size: int,
    stream: str,
    weak: Mapping[str, Any] | None = None,
    strong: Mapping[str, Any] | None = None,
    backend: str = "batched",
    num_workers: int = 0,
    sampler: Any = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
):
    """A shuffling, last-batch-dropping loader of the ``stream`` slices with its augmentation.

    Args:
        dataset: the slices: an :class:`~vqseg_bundle.data.InMemorySliceDataset`, or a MONAI ``Dataset``
            whose ``data`` is one (``train#dataset`` of the config, so that ``train#dataset#data`` names the
            slices as the Model Zoo asks).
        batch_size: samples per batch.
        stream: ``"labeled"`` (weak augmentation of image and label) or ``"unlabeled"`` (weak view plus two
            strong views).
        weak, strong: options of the weak (geometric) and strong (intensity) augmentation, the same for both
            backends (``weak_aug`` / ``strong_aug`` of the config); ``strong`` is used by the unlabeled stream.
        backend: ``"batched"`` or ``"monai"`` (see the module docstring).
        num_workers, sampler: of the MONAI ``DataLoader`` (the batched loader has no workers and shards by
            ``torch.distributed`` rank itself).
        device, seed: of the batched loader (where batches are built; the base seed of its generators).

    Raises:
        ValueError: unknown ``backend`` or ``stream``.
    """
    if backend not in DATA_BACKENDS:
        raise ValueError(f"augmentation_backend must be one of {DATA_BACKENDS}, got {backend!r}.")
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}.")
    slices = dataset.data if isinstance(dataset, Dataset) else dataset
    weak, strong = dict(weak or {}), dict(strong or {})
    if backend == "batched":
        if stream == "labeled":
            augmentation = batched.BatchedLabeledAugment(**weak)
        else:
            augmentation = batched.BatchedUnlabeledAugment(weak=weak, strong=strong)
        return DeviceBatchLoader(slices, batch_size, augmentation, device=device, seed=seed)
    if stream == "labeled":
        transform = transforms.labeled_transforms(**weak)
    else:
        transform = transforms.unlabeled_transforms(weak=weak, strong=strong)
    return DataLoader(
        slices.with_transform(transform),
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
