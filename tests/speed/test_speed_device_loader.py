"""DeviceBatchLoader: DataLoader semantics (passes, shuffling, shards) and the trainer runs on it; the
fast path's losses match the straightforward (DataLoader + MONAI) path in distribution."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader
from speed_helpers import SIZE, assert_same_distribution, marker_image
from vqseg_bundle.data import InMemorySliceDataset
from vqseg_bundle.data.device_loader import DeviceBatchLoader
from vqseg_bundle.engines import EMATeacher, InfiniteLoader, SemiSupervisedTrainer, make_teacher
from vqseg_bundle.losses import SemiSupervisedLoss, SupervisedSegLoss
from vqseg_bundle.networks import QuantizedPerturbation, VQSegUNet
from vqseg_bundle.transforms import BatchCutMix, labeled_transforms, unlabeled_transforms
from vqseg_bundle.transforms.batched import BatchedLabeledAugment, BatchedUnlabeledAugment


def _dataset(n: int = 10, labeled: bool = True) -> InMemorySliceDataset:
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8).clone()
    labels = (images > 4).to(torch.uint8) if labeled else None
    return InMemorySliceDataset(images, labels)


def _ids(batch) -> list[int]:
    return batch["image"][:, 0, 0, 0].long().tolist()


def test_one_pass_visits_each_slice_once_and_reshuffles():
    loader = DeviceBatchLoader(_dataset(10), batch_size=3, seed=1)
    assert len(loader) == 3
    first = [i for b in loader for i in _ids(b)]
    second = [i for b in loader for i in _ids(b)]
    assert len(first) == 9 and len(set(first)) == 9 and set(first) <= set(range(10))
    assert first != second  # a new permutation every pass
    b = next(iter(loader))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (3, 1, 8, 8)
    assert b["label"].dtype == torch.long and b["label"].shape == (3, 1, 8, 8)
    # labels travel with their images
    assert torch.equal(b["label"][:, 0, 0, 0], (b["image"][:, 0, 0, 0] > 4).long())


def test_same_seed_same_batches_and_no_shuffle_keeps_order():
    a = [_ids(b) for b in DeviceBatchLoader(_dataset(), 2, seed=5)]
    b = [_ids(b) for b in DeviceBatchLoader(_dataset(), 2, seed=5)]
    assert a == b
    ordered = [i for b in DeviceBatchLoader(_dataset(7), 2, shuffle=False, drop_last=False) for i in _ids(b)]
    assert ordered == list(range(7))


def test_ranks_split_one_permutation():
    shards = [DeviceBatchLoader(_dataset(10), 2, seed=3, rank=r, num_replicas=2) for r in range(2)]
    for s in shards:
        s.set_epoch(4)
    seen = [[i for b in s for i in _ids(b)] for s in shards]
    assert len(seen[0]) == len(seen[1]) == 4 and not set(seen[0]) & set(seen[1])


def test_augmentation_is_applied_and_unlabeled_keys():
    image, label = marker_image()
    ds = InMemorySliceDataset(image.expand(6, -1, -1, -1).clone(), label.expand(6, -1, -1, -1).to(torch.uint8))
    b = next(iter(DeviceBatchLoader(ds, 6, BatchedLabeledAugment(flip_prob=1.0, rotate_prob=0.0, zoom_prob=0.0))))
    assert torch.allclose(b["image"], image.flip(-1, -2).expand(6, -1, -1, -1), atol=1e-4)
    assert torch.equal(b["label"], label.flip(-1, -2).expand(6, -1, -1, -1))
    u = next(
        iter(DeviceBatchLoader(InMemorySliceDataset(image.expand(4, -1, -1, -1).clone()), 2, BatchedUnlabeledAugment()))
    )
    assert set(u) == {"image", "image_s1", "image_s2"} and all(v.shape == (2, 1, SIZE, SIZE) for v in u.values())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="images"):
        DeviceBatchLoader([1, 2, 3], 2)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatchLoader(_dataset(), 0)
    with pytest.raises(ValueError, match="no batch"):
        DeviceBatchLoader(_dataset(3), 4)
    with pytest.raises(ValueError, match="rank"):
        DeviceBatchLoader(_dataset(), 2, rank=2, num_replicas=2)
    with pytest.raises(ValueError, match="augmentation"):
        DeviceBatchLoader(_dataset(), 2, augmentation="flip")


def _tiny_net() -> VQSegUNet:
    torch.manual_seed(0)
    return VQSegUNet(
        features=(4, 8, 16, 32, 32),
        dropout=0.0,
        codebook_size=16,
        pfa_channels=None,
        perturbation=QuantizedPerturbation(),
    )


def _marker_datasets(n: int = 8):
    image, label = marker_image()
    images = image.expand(n, -1, -1, -1).clone() * torch.linspace(0.8, 1.0, n).view(n, 1, 1, 1)
    return InMemorySliceDataset(images, label.expand(n, -1, -1, -1).to(torch.uint8)), InMemorySliceDataset(
        images.flip(-1)
    )


def test_trainer_runs_on_device_loaders_like_on_dataloaders():
    lab, unl = _marker_datasets()
    outputs = {}
    for path in ("monai", "batched"):
        net = _tiny_net()
        teacher = make_teacher(net)
        if path == "monai":
            loaders = (
                DataLoader(lab.with_transform(labeled_transforms()), batch_size=2, shuffle=True, drop_last=True),
                DataLoader(unl.with_transform(unlabeled_transforms()), batch_size=2, shuffle=True, drop_last=True),
            )
        else:
            loaders = (
                DeviceBatchLoader(lab, 2, BatchedLabeledAugment()),
                DeviceBatchLoader(unl, 2, BatchedUnlabeledAugment()),
            )
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        trainer = SemiSupervisedTrainer(
            "cpu",
            1,
            *loaders,
            net,
            teacher,
            opt,
            epoch_length=5,
            cutmix=BatchCutMix(),
            loss=SemiSupervisedLoss(align_weight=0.0),
            train_handlers=[EMATeacher(teacher, net, decay=0.99)],
        )
        trainer.run()
        out = trainer.state.output[0]
        assert torch.isfinite(out["loss"]) and int(out["skipped_steps"]) == 0
        outputs[path] = out
    assert set(outputs["monai"]) == set(outputs["batched"])
    # loaders shorter than the epoch were cycled (InfiniteLoader passes)
    assert isinstance(trainer.data_loader, InfiniteLoader) and trainer.data_loader.passes >= 1


def test_losses_match_the_monai_path_in_distribution():
    """Per-sample supervised loss and weak-to-strong consistency of a fixed random network, over many
    augmented batches: the batched path and the MONAI per-sample path give the same distribution."""
    net = _tiny_net().eval()
    n = 160
    image, label = marker_image()
    lab_t, unl_t = labeled_transforms(), unlabeled_transforms()
    lab_t.set_random_state(seed=0)
    unl_t.set_random_state(seed=0)
    ref_l = [lab_t({"image": image.clone(), "label": label.clone()}) for _ in range(n)]
    ref_u = [unl_t({"image": image.clone()}) for _ in range(n)]
    g = torch.Generator().manual_seed(0)
    fast_l = BatchedLabeledAugment()(
        {"image": image.expand(n, -1, -1, -1).clone(), "label": label.expand(n, -1, -1, -1).clone()}, g
    )
    fast_u = BatchedUnlabeledAugment()({"image": image.expand(n, -1, -1, -1).clone()}, g)

    def per_sample(x_l, y_l, x_w, x_s):
        with torch.no_grad():
            logits = net(x_l)
            ce = torch.nn.functional.cross_entropy(logits, y_l[:, 0], reduction="none").mean((1, 2))
            pseudo = net(x_w).argmax(1)
            cons = torch.nn.functional.cross_entropy(net(x_s), pseudo, reduction="none").mean((1, 2))
        return torch.stack([ce, cons], 1)

    stack = lambda items, k: torch.stack([torch.as_tensor(i[k]) for i in items])  # noqa: E731
    ref = per_sample(
        stack(ref_l, "image"), stack(ref_l, "label").long(), stack(ref_u, "image"), stack(ref_u, "image_s1")
    )
    fast = per_sample(fast_l["image"], fast_l["label"], fast_u["image"], fast_u["image_s1"])
    assert_same_distribution(ref, fast, ["sup_ce", "consistency_ce"], atol=2e-3)
    # and the batch loss the trainer uses agrees on the mean
    sup = SupervisedSegLoss()
    with torch.no_grad():
        l_ref = sup(net(stack(ref_l, "image")), stack(ref_l, "label").long()[:, 0])
        l_fast = sup(net(fast_l["image"]), fast_l["label"][:, 0])
    assert abs(float(l_ref - l_fast)) < 0.05 * float(l_ref)
