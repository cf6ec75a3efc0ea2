"""vqseg_bundle.data.train_loader: one factory for both data backends, the same items from each."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader, Dataset
from vqseg_bundle.data import InMemorySliceDataset, train_loader
from vqseg_bundle.data.device_loader import DeviceBatchLoader


def _slices(labeled: bool = True) -> InMemorySliceDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 16, 16, generator=g)
    return InMemorySliceDataset(images, (images > 0.5).long() if labeled else None)


@pytest.mark.parametrize("backend, kind", [("batched", DeviceBatchLoader), ("monai", DataLoader)])
def test_both_backends_give_the_same_items(backend, kind):
    labeled = train_loader(Dataset(data=_slices()), 2, "labeled", backend=backend)
    unlabeled = train_loader(_slices(False), 2, "unlabeled", weak={}, strong={}, backend=backend, seed=1)
    assert isinstance(labeled, kind) and isinstance(unlabeled, kind)
    batch = next(iter(labeled))
    assert tuple(batch["image"].shape) == (2, 1, 16, 16) and tuple(batch["label"].shape) == (2, 1, 16, 16)
    views = next(iter(unlabeled))
    assert {"image", "image_s1", "image_s2"} <= set(views)
    assert all(tuple(views[k].shape) == (2, 1, 16, 16) for k in ("image", "image_s1", "image_s2"))


def test_unknown_backend_or_stream_is_an_error_naming_it():
    with pytest.raises(ValueError, match="augmentation_backend must be one of"):
        train_loader(_slices(), 2, "labeled", backend="dali")
    with pytest.raises(ValueError, match="stream must be one of"):
        train_loader(_slices(), 2, "validation")
