"""GPU checks of the fast data path (skipped without CUDA; run by scripts/gpu_checks.sh)."""

from __future__ import annotations

import warnings

import pytest
import torch
from speed_helpers import assert_same_distribution, marker_image, strong_stats, weak_stats
from vqseg_bundle.data import InMemorySliceDataset
from vqseg_bundle.data.device_loader import DeviceBatchLoader
from vqseg_bundle.transforms.batched import BatchedLabeledAugment, BatchedUnlabeledAugment

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
N = 400


def test_cuda_batched_augmentation_matches_cpu_distribution():
    image, label = marker_image()
    out = {}
    for dev in ("cpu", "cuda"):
        g = torch.Generator(device=dev).manual_seed(0)
        x = image.to(dev).expand(N, -1, -1, -1).contiguous()
        y = label.to(dev).expand(N, -1, -1, -1).contiguous()
        lab = BatchedLabeledAugment()({"image": x, "label": y}, g)
        unl = BatchedUnlabeledAugment()({"image": x}, g)
        out[dev] = (weak_stats(lab["image"].cpu(), lab["label"].cpu()), strong_stats(unl["image_s1"].cpu()))
    assert_same_distribution(out["cpu"][0], out["cuda"][0], [f"w{i}" for i in range(8)], atol=0.01)
    assert_same_distribution(out["cpu"][1], out["cuda"][1], [f"s{i}" for i in range(5)], atol=1e-3)


def test_cuda_loader_batches_without_host_sync():
    image, label = marker_image()
    ds = InMemorySliceDataset(image.expand(64, -1, -1, -1).clone(), label.expand(64, -1, -1, -1).to(torch.uint8))
    lab = DeviceBatchLoader(ds, 12, BatchedLabeledAugment(), device="cuda")
    unl = DeviceBatchLoader(InMemorySliceDataset(ds.images), 12, BatchedUnlabeledAugment(), device="cuda")
    next(iter(lab))  # warm up kernels / allocator
    next(iter(unl))
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            it_l, it_u = iter(lab), iter(unl)
            for _ in range(3):
                b, u = next(it_l), next(it_u)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert not syncs, syncs[:3]
    assert b["image"].is_cuda and b["label"].dtype == torch.long and u["image_s2"].is_cuda
