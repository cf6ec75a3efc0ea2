"""Tiny networks and in-memory loaders for the trainer tests (32 px, a few images)."""

from __future__ import annotations

import torch
from monai.data import DataLoader
from vqseg_bundle.data import InMemorySliceDataset
from vqseg_bundle.engines import EMATeacher, SemiSupervisedTrainer, make_teacher
from vqseg_bundle.losses import PseudoLabelLoss, SemiSupervisedLoss
from vqseg_bundle.networks import VQSegUNet, build_perturbation
from vqseg_bundle.transforms import BatchCutMix, labeled_transforms, unlabeled_transforms

SIZE = 32


def tiny_unet(**kwargs) -> VQSegUNet:
    """A small VQSegUNet; ``perturbation`` by name (default QPM), ``qpm_eps`` its eps."""
    args = dict(features=(4, 8, 16, 32, 32), dropout=0.0, codebook_size=16, pfa_channels=None)
    eps = kwargs.pop("qpm_eps", None)
    args["perturbation"] = build_perturbation(
        kwargs.pop("perturbation", "qpm"), qpm=None if eps is None else {"eps": eps}
    )
    args.update(kwargs)
    return VQSegUNet(**args)


def tiny_loaders(batch: int = 2, n_labeled: int = 4, n_unlabeled: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_labeled, 1, SIZE, SIZE, generator=g)
    labels = (images > 0.5).long() + (images > 0.8).long()
    lab = InMemorySliceDataset(images, labels, transform=labeled_transforms())
    unl = InMemorySliceDataset(torch.rand(n_unlabeled, 1, SIZE, SIZE, generator=g), transform=unlabeled_transforms())
    return (
        DataLoader(lab, batch_size=batch, shuffle=True, drop_last=True, num_workers=0),
        DataLoader(unl, batch_size=batch, shuffle=True, drop_last=True, num_workers=0),
    )


LOSS_KEYS = (
    "supervised_loss",
    "pseudo_label_loss",
    "sup_weight",
    "unsup_weight",
    "strong_weight",
    "fp_weight",
    "recon_weight",
    "align_weight",
    "align_temperature",
    "vq_weight",
    "rampup_iterations",
    "rampup_shape",
)


def make_loss(unsup_dice_weight: float = 0.0, **kwargs) -> SemiSupervisedLoss:
    """The trainer's objective; ``unsup_dice_weight`` adds the masked Dice to the pseudo-label CE."""
    kwargs.setdefault("align_weight", 0.0)
    if unsup_dice_weight:
        kwargs.setdefault("pseudo_label_loss", PseudoLabelLoss(ce_weight=1.0, dice_weight=unsup_dice_weight))
    return SemiSupervisedLoss(**kwargs)


def make_trainer(net=None, epochs: int = 1, epoch_length: int = 2, handlers=None, ema: bool = True, **kwargs):
    """A trainer on the tiny U-Net and loaders; loss keywords (``LOSS_KEYS``, ``unsup_dice_weight``) build its
    :class:`SemiSupervisedLoss`, the others go to the trainer."""
    net = net if net is not None else tiny_unet()
    loss_kwargs = {k: kwargs.pop(k) for k in (*LOSS_KEYS, "unsup_dice_weight") if k in kwargs}
    kwargs.setdefault("loss", make_loss(**loss_kwargs))
    teacher = make_teacher(net)
    lab, unl = tiny_loaders()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    hs = list(handlers or [])
    if ema:
        hs.insert(0, EMATeacher(teacher, net, decay=0.99))
    kwargs.setdefault("cutmix", BatchCutMix())
    trainer = SemiSupervisedTrainer(
        "cpu", epochs, lab, unl, net, teacher, opt, epoch_length=epoch_length, train_handlers=hs, **kwargs
    )
    return trainer, net, teacher, opt
