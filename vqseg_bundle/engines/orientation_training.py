"""Training of the orientation classifier used by orientation correction
(:mod:`vqseg_bundle.inferers.orientation_correction`).

Self-supervised: every training image (labeled and unlabeled, no label used) is taken as being in the training
orientation; a batch is a random sample of them, each given a mild random affine (rotation, scale, shift) and
contrast change so that the classifier learns the anatomy's layout rather than one scanner's framing, then one of
the 8 dihedral transforms, uniformly; the target is that transform. Trained with ignite's supervised trainer.

The classifier is then checked on the validation volumes, each in its 8 orientations: ``identity_accuracy`` (the
share of volumes found in the identity as stored) and ``consistency`` (the share whose 8 orientations are all
turned back to one and the same array, i.e. the detected transform moves with the input). ``reliable`` is
``consistency >= min_consistency``; inference does not use an unreliable classifier (for instance one trained on
images that look the same turned, like the bundle's synthetic demo phantoms).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Events, create_supervised_trainer
from vqseg_bundle.fileio import atomic_torch_save, atomic_write_text
from vqseg_bundle.inferers.orientation_correction import detect_orientation, orientation_record_path
from vqseg_bundle.networks.orientation import OrientationClassifier
from vqseg_bundle.transforms.dihedral import DIHEDRAL_TRANSFORMS, in_plane_dims

__all__ = [
    "random_orientation_views",
    "train_orientation_classifier",
    "validate_orientation_classifier",
    "fit_orientation_classifier",
]

logger = logging.getLogger(__name__)


def random_orientation_views(
    images: torch.Tensor,
    generator: torch.Generator,
    max_rotation_degrees: float = 20.0,
    scale_range: float = 0.15,
    max_shift: float = 0.1,
    gamma_range: float = 0.4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of training views and their transform indices.

    Why written here: MONAI's random transforms act on one item at a time with their own random state; this acts
    on the whole batch with one explicit generator (reproducible, no hidden state), and the labels are the draws.

    Args:
        images: float ``(N, C, S, S)`` in the training orientation, intensities in about ``[0, 1]``.
        generator: the random source (CPU).
        max_rotation_degrees / scale_range / max_shift: uniform in ``+-`` these (shift as a fraction of the half size).
        gamma_range: the intensity gamma is ``exp(u)`` for ``u`` uniform in ``+-gamma_range``.

    Returns:
        ``(views (N, C, S, S), labels (N,) int64)``: view ``i`` is image ``i`` transformed by
        ``DIHEDRAL_TRANSFORMS[labels[i]]`` after the mild augmentation.
    """
    n = images.shape[0]

    def uniform(half: float, *shape: int) -> torch.Tensor:
        return (torch.rand((n, *shape), generator=generator) * 2 - 1) * half

    angle = uniform(math.radians(max_rotation_degrees))
    scale = 1 + uniform(scale_range)
    shift = uniform(max_shift, 2)
    theta = torch.stack(
        [
            torch.stack([scale * angle.cos(), -scale * angle.sin(), shift[:, 0]], dim=1),
            torch.stack([scale * angle.sin(), scale * angle.cos(), shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(images)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, align_corners=False)
    low = views.amin(dim=(1, 2, 3), keepdim=True)
    span = (views.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
    gamma = uniform(gamma_range, 1, 1, 1).exp().to(images)
    views = ((views - low) / span) ** gamma * span + low
    labels = torch.randint(len(DIHEDRAL_TRANSFORMS), (n,), generator=generator)
    views = torch.stack([DIHEDRAL_TRANSFORMS[int(k)].apply(v) for v, k in zip(views, labels, strict=True)])
    return views, labels


def train_orientation_classifier(
    images: torch.Tensor,
    network: Mapping[str, Any],
    iterations: int = 1500,
    batch_size: int = 32,
    lr: float = 0.003,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> OrientationClassifier:
    """Train a classifier on ``images`` (see the module docstring).

    Args:
        images: float ``(N, C, H, W)`` training images in the training orientation (resized here to the network's
            ``image_size``, bilinear).
        network: :class:`OrientationClassifier` arguments (``in_channels``, ``image_size``, ``channels``, ``dropout``).
        iterations, batch_size: the schedule (AdamW, one-cycle learning rate peaking at ``lr``).
        seed: seeds the network's initialisation and the batch / augmentation generator.

    Raises:
        ValueError: no images, or images whose channels differ from the network's.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"orientation training needs images (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    torch.manual_seed(seed)
    classifier = OrientationClassifier(**network).to(device)
    if images.shape[1] != classifier.in_channels:
        raise ValueError(f"images have {images.shape[1]} channels, the classifier {classifier.in_channels}")
    size = classifier.image_size
    data = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=int(iterations))

    def prepare_batch(batch: torch.Tensor, device: Any = None, non_blocking: bool = False):
        views, labels = random_orientation_views(batch, generator)
        return views.to(device, non_blocking=non_blocking), labels.to(device, non_blocking=non_blocking)

    trainer = create_supervised_trainer(
        classifier, optimizer, torch.nn.functional.cross_entropy, device=device, prepare_batch=prepare_batch
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: schedule.step())

    def batches():
        while True:
            yield data[torch.randint(data.shape[0], (int(batch_size),), generator=generator)]

    trainer.run(batches(), max_epochs=1, epoch_length=int(iterations))
    return classifier.eval()


@torch.no_grad()
def validate_orientation_classifier(
    classifier: OrientationClassifier,
    items: Sequence[Mapping[str, Any]],
    slice_axis: int = -1,
    max_slices: int | None = None,
) -> dict[str, Any]:
    """Score the classifier on validation volumes in each of the 8 orientations (see the module docstring).

    Args:
        items: ``{"image": (C, H, W, D) or (C, H, W), "name": str}`` in the training orientation.
        max_slices: the slices scored per volume, as inference scores them (:func:`detect_orientation`).

    Returns:
        ``{"volumes", "identity_accuracy", "consistency", "min_confidence", "detected": {name: transform found as
        stored, for those not found in the identity}}``: ``consistency`` from the classifier's single-view decisions
        (the quality that gates ``reliable``; inference's 8-view decision is equivariant by construction), the
        others from inference's decision on each volume as stored.
    """
    found, confidence, consistent = {}, {}, 0
    for index, item in enumerate(items):
        image = torch.as_tensor(item["image"]).float()
        dims = in_plane_dims(slice_axis, image.ndim - 1)
        seen = set()
        for t in DIHEDRAL_TRANSFORMS:
            # the classifier alone (one view): does its decision move with the input?
            decision = detect_orientation(
                classifier, t.apply(image, dims), slice_axis, equivariant=False, max_slices=max_slices
            ).dihedral
            restored = decision.invert(t.apply(image, dims), dims)
            seen.add((tuple(restored.shape), hash(restored.numpy().tobytes())))
        consistent += len(seen) == 1
        name = str(item.get("name", index))
        # what inference decides for the volume as stored (8 views, equivariant)
        stored = detect_orientation(classifier, image, slice_axis, max_slices=max_slices)
        found[name], confidence[name] = stored["transform"], stored["confidence"]
    n = max(len(items), 1)
    return {
        "volumes": len(items),
        "identity_accuracy": round(sum(v == "identity" for v in found.values()) / n, 4),
        "consistency": round(consistent / n, 4),
        "min_confidence": round(min(confidence.values()), 4) if confidence else None,
        "detected": {k: v for k, v in found.items() if v != "identity"},
    }


def fit_orientation_classifier(
    splits: Any,
    path: str | os.PathLike,
    network: Mapping[str, Any],
    training: Mapping[str, Any],
    slice_axis: int = -1,
    min_consistency: float = 0.9,
    max_slices: int | None = None,
    min_confidence: float = 0.5,
    seed: int = 0,
    device: torch.device | str = "cpu",
    reuse: bool | str = False,
    write: bool = True,
) -> dict[str, Any]:
    """Train, validate and save the classifier: the training configs' entry point.

    Writes ``path`` (flat state dict) and ``orientation.json`` beside it (``network``, ``training``,
    ``validation``, ``reliable``, ``seconds``), each atomically.

    Args:
        splits: :class:`vqseg_bundle.data.SemiSupervisedSplits` (``labeled.images``, ``unlabeled.images``,
            ``validation``).
        path: the weights file (``models/orientation.pt``).
        network / training: :class:`OrientationClassifier` arguments / :func:`train_orientation_classifier`'s
            ``iterations``, ``batch_size``, ``lr``, ``weight_decay``.
        max_slices: the slices per volume the validation scores, as inference (``orientation_max_slices``).
        min_confidence: recorded with ``max_slices`` for evaluation / inference (``orientation_min_confidence``).
        reuse: keep an existing classifier (both files present) instead of training again (the config's ``resume``:
            true or a checkpoint path).
        write: write the files (``False`` on the ranks other than 0 of a distributed run, which train the same
            classifier and keep it to themselves).

    Returns:
        the record written (or found).
    """
    record_path = orientation_record_path(path)
    # the config's `resume` (False, True, "true" / "false" from the command line, or a checkpoint path)
    reuse = reuse not in (False, None) and str(reuse).strip().lower() not in ("false", "none", "", "0")
    if reuse and Path(path).is_file() and record_path.is_file():
        logger.info("orientation classifier: keeping %s (resume)", path)
        return json.loads(record_path.read_text())
    start = time.perf_counter()
    images = [t for t in (splits.labeled.images, splits.unlabeled.images) if t.shape[0]]
    if not images:
        raise ValueError("orientation classifier: the training splits hold no images")
    # the global random state is restored afterwards: the segmentation training that follows draws what it would
    # draw without the classifier
    with torch.random.fork_rng(devices=[]):
        classifier = train_orientation_classifier(
            torch.cat([t.cpu() for t in images]), network, seed=seed, device=device, **dict(training)
        )
        validation = validate_orientation_classifier(classifier.cpu(), splits.validation, slice_axis, max_slices)
    record = {
        "network": dict(network),
        "training": dict(training),
        "seed": int(seed),
        "slice_axis": int(slice_axis),
        "validation": validation,
        "min_consistency": float(min_consistency),
        # what evaluation / inference use (their configs read it from here: "record")
        "inference": {"min_confidence": float(min_confidence), "max_slices": max_slices},
        "reliable": validation["volumes"] > 0 and validation["consistency"] >= float(min_consistency),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if not write:
        return record
    atomic_torch_save(classifier.state_dict(), path)
    atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")
    logger.info(
        "orientation classifier: %s (%.0f s): validation consistency %.2f, identity found for %.2f of %d volumes%s",
        path,
        record["seconds"],
        validation["consistency"],
        validation["identity_accuracy"],
        validation["volumes"],
        "" if record["reliable"] else f" - not reliable (< {min_consistency}), inference will not use it",
    )
    return record
