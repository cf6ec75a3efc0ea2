"""Orientation correction: find which in-plane turn / mirror a volume is in, turn it back, segment, turn the
prediction the same way as the input.

A segmentation model trained on slices in one orientation loses up to a quarter of its Dice on the same anatomy
turned by a half turn (a header written under another convention; docs/results.md "Orientation robustness").
Training with all 8 dihedral transforms fixes that but costs canonical Dice at short budgets. This module instead
keeps the segmentation model as trained and puts a small :class:`~vqseg_bundle.networks.OrientationClassifier`
(trained on the same training images, self-supervised: ``vqseg_bundle.engines.orientation_training``) in front:

1. every slice of the volume is resized to the classifier's size and scored over the 8 transforms; the volume's
   score is the mean log-probability over its slices (:func:`detect_orientation`);
2. when the best transform ``T`` is not the identity and its probability (the softmax of that mean) reaches
   ``min_confidence``, the volume is turned back with ``T``'s inverse, segmented by the wrapped inferer, and the
   logits are turned with ``T``, so they lie on the input's own grid; one log line names the file;
3. otherwise the wrapped inferer runs on the input as is.

The turns are exact (``torch.rot90`` / ``torch.flip``, no resampling).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from vqseg_bundle.networks.orientation import OrientationClassifier
from vqseg_bundle.transforms.dihedral import DIHEDRAL_TRANSFORMS, DihedralTransform, dihedral_transform, in_plane_dims

__all__ = [
    "COMPOSE",
    "CORRECTION_MODES",
    "INVERSE",
    "OrientationDecision",
    "correction_mode",
    "OrientationCorrectingInferer",
    "detect_orientation",
    "load_orientation_classifier",
    "orientation_classifier_beside",
    "orientation_record_path",
    "volume_slices",
]

logger = logging.getLogger(__name__)


#: the values of the configs' ``orientation_correction``
CORRECTION_MODES = ("auto", "true", "false")


def correction_mode(value: bool | str) -> str:
    """``orientation_correction`` as ``"auto"`` (use the classifier saved beside the model when there is one, else
    one warning), ``"true"`` (required: a missing file is an error) or ``"false"`` (off); the command line gives
    strings, so ``"True"`` / ``"false"`` are accepted.

    Raises:
        ValueError: any other value.
    """
    text = str(value).strip().lower()
    if text not in CORRECTION_MODES:
        raise ValueError(f"orientation_correction must be one of {CORRECTION_MODES} (or a bool), got {value!r}")
    return text


def orientation_classifier_beside(ckpt_path: str | os.PathLike) -> str:
    """The orientation classifier's weights beside a model file (``models/model.pt`` -> ``models/orientation.pt``)."""
    return os.fspath(Path(ckpt_path).with_name("orientation.pt"))


def orientation_record_path(weights_path: str | os.PathLike) -> Path:
    """The settings / validation record written beside the classifier's weights (``orientation.json``)."""
    return Path(weights_path).with_suffix(".json")


def volume_slices(image: torch.Tensor, slice_axis: int, size: int) -> torch.Tensor:
    """The slices of one item as a batch for the classifier.

    Args:
        image: ``(C, H, W)`` image or ``(C, *spatial)`` volume (3 spatial axes, sliced along ``slice_axis``).
        slice_axis: the spatial axis slices are taken along (``-3..2``; ignored for 2D images).
        size: the classifier's square input size ``S``.

    Returns:
        float32 ``(D, C, S, S)`` (bilinear resize, ``align_corners=False``, as the segmentation inferer).
    """
    x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    elif x.ndim == 4:
        x = x.movedim(1 + slice_axis % 3, -1)
    else:
        raise ValueError(f"expected a (C, H, W) image or a (C, H, W, D) volume, got {tuple(x.shape)}")
    slices = x.permute(3, 0, 1, 2).float()
    return F.interpolate(slices, size=(size, size), mode="bilinear", align_corners=False)


class OrientationDecision(dict):
    """What :func:`detect_orientation` found: ``transform`` (name), ``confidence`` (0..1), ``probabilities``
    (name -> probability of each of the 8), ``slices`` (how many were scored)."""

    @property
    def dihedral(self) -> DihedralTransform:
        """The detected transform as a :class:`DihedralTransform`."""
        return dihedral_transform(self["transform"])


def _composition_table() -> list[list[int]]:
    """``table[a][b]``: the index of the transform ``a`` after ``b`` (``a.apply(b.apply(x))``), found on a 3 x 3
    grid of distinct values (which no two of the 8 transforms map alike)."""
    grid = torch.arange(9.0).reshape(3, 3)
    images = [t.apply(grid) for t in DIHEDRAL_TRANSFORMS]
    return [
        [next(k for k, im in enumerate(images) if torch.equal(im, a.apply(b.apply(grid)))) for b in DIHEDRAL_TRANSFORMS]
        for a in DIHEDRAL_TRANSFORMS
    ]


#: ``COMPOSE[a][b]``: index of ``DIHEDRAL_TRANSFORMS[a]`` after ``DIHEDRAL_TRANSFORMS[b]``
COMPOSE: list[list[int]] = _composition_table()
#: ``INVERSE[a]``: index of the inverse of ``DIHEDRAL_TRANSFORMS[a]``
INVERSE: list[int] = [next(b for b in range(8) if COMPOSE[a][b] == 0) for a in range(8)]


@torch.no_grad()
def detect_orientation(
    classifier: OrientationClassifier,
    image: torch.Tensor,
    slice_axis: int = -1,
    batch_size: int = 64,
    equivariant: bool = True,
    max_slices: int | None = None,
) -> OrientationDecision:
    """Which dihedral transform turned ``image`` away from the training orientation.

    Args:
        classifier: a trained :class:`OrientationClassifier` (evaluation mode is set here).
        image: ``(C, H, W)`` or ``(C, H, W, D)`` (see :func:`volume_slices`).
        slice_axis: the spatial axis slices are taken along.
        batch_size: slices per classifier call.
        equivariant: score the slices in each of their 8 orientations too (8 classifier runs): if the input is
            ``T`` of the training orientation, its view ``h`` is ``h T``, so the classifier's log-probability of
            ``k`` on view ``h`` is evidence for ``T = h^-1 k``; the 8 views' evidence is averaged. The decision then
            turns with the input exactly (``g`` of a volume is found as ``g`` after what the volume itself is found
            in, with the same confidence), so a volume is corrected alike in every orientation. ``False``: the
            slices as given only.
        max_slices: score at most this many slices, evenly spaced and away from the two ends (the apex and base
            slices show the least anatomy); ``None``: all. The choice does not depend on the in-plane orientation,
            so the decision stays equivariant.

    Returns:
        :class:`OrientationDecision`; the volume's score is the mean over slices (and views) of the log-probabilities.
    """
    classifier.eval()
    device = next(classifier.parameters()).device
    slices = volume_slices(image, slice_axis, classifier.image_size)
    if max_slices is not None and slices.shape[0] > int(max_slices):
        if int(max_slices) < 1:
            raise ValueError(f"max_slices must be a positive int or None, got {max_slices!r}")
        picks = torch.linspace(0, slices.shape[0] - 1, int(max_slices) + 2)[1:-1].round().long()
        slices = slices[picks]
    views = DIHEDRAL_TRANSFORMS if equivariant else DIHEDRAL_TRANSFORMS[:1]
    total = torch.zeros(8, dtype=torch.float64)
    for h_index, h in enumerate(views):
        evidence = torch.zeros(8, dtype=torch.float64)
        for start in range(0, slices.shape[0], batch_size):
            chunk = h.apply(slices[start : start + batch_size]).to(device)
            evidence += classifier(chunk).float().log_softmax(dim=1).sum(0).double().cpu()
        for k in range(8):  # the view says h T = k, i.e. T = h^-1 k
            total[COMPOSE[INVERSE[h_index]][k]] += evidence[k]
    probs = (total / (slices.shape[0] * len(views))).softmax(0)
    best = int(probs.argmax())
    return OrientationDecision(
        transform=DIHEDRAL_TRANSFORMS[best].name,
        confidence=float(probs[best]),
        probabilities={t.name: round(float(p), 6) for t, p in zip(DIHEDRAL_TRANSFORMS, probs, strict=True)},
        slices=int(slices.shape[0]),
    )


def load_orientation_classifier(
    path: str | os.PathLike, device: torch.device | str = "cpu", flag: str = "--orientation_correction false"
) -> tuple[OrientationClassifier, dict]:
    """The classifier saved by training (``orientation.pt``, a flat state dict) and its record (``orientation.json``).

    Raises:
        FileNotFoundError: a missing weights or record file, naming it and ``flag``.
        ValueError: a record without the network settings, or weights that are not this classifier's.
    """
    weights, record_path = Path(path), orientation_record_path(path)
    for p, what in ((weights, "weights"), (record_path, "settings record")):
        if not p.is_file():
            raise FileNotFoundError(
                f"orientation correction: the classifier's {what} {p} does not exist (written by training when "
                f"`orientation_correction` is on: python -m monai.bundle run train_orientation --config_file "
                f"configs/train.yaml --dataset_dir ...); or turn the correction off with {flag}"
            )
    try:
        record = json.loads(record_path.read_text())
        network = dict(record["network"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{record_path}: not an orientation classifier record ({err})") from err
    classifier = OrientationClassifier(**network)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        classifier.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{weights}: not the weights of the orientation classifier described in {record_path} ({network}): {err}"
        ) from err
    return classifier.to(device).eval(), record


class OrientationCorrectingInferer(Inferer):
    """Wrap a segmentation inferer with orientation correction (see the module docstring).

    Args:
        inferer: the segmentation inferer (e.g. :class:`vqseg_bundle.inferers.ResizedSliceInferer`).
        classifier: a trained :class:`OrientationClassifier`, or the path of one saved by training
            (``models/orientation.pt``, read by :meth:`load` or on the first call).
        enabled: :func:`correction_mode`: ``"auto"`` / ``True`` / ``False`` (``False``: the wrapped inferer alone,
            nothing is read; ``"auto"``: a missing classifier file gives one warning, then the same).
        slice_axis: the spatial axis slices are taken along (as the wrapped inferer's).
        min_confidence: the probability the detected transform needs before a volume is turned; ``"record"``: the
            value training recorded with the classifier (``orientation.json`` ``"inference"``, from train.yaml's
            ``orientation_min_confidence``), so that the configs state it once.
        device: where a classifier read from a path runs.
        equivariant: :func:`detect_orientation`'s ``equivariant`` (8 classifier runs per slice; default).
        max_slices: :func:`detect_orientation`'s ``max_slices`` (``None``: every slice; ``"record"``: as
            ``min_confidence``, from train.yaml's ``orientation_max_slices``).

    A classifier whose record says it was not reliable on its validation volumes (``"reliable": false``, e.g. one
    trained on images that look the same turned) is not used: one warning, then the wrapped inferer alone.

    Shapes: ``inputs`` ``(B, C, H, W, D)`` or ``(B, C, H, W)`` -> the wrapped inferer's logits on the input's grid.

    Attributes:
        decisions: one :class:`OrientationDecision` per item seen (with ``"name"`` and ``"corrected"``), in order.
    """

    def __init__(
        self,
        inferer: Inferer,
        classifier: OrientationClassifier | str | os.PathLike,
        enabled: bool | str = "auto",
        slice_axis: int = -1,
        min_confidence: float | str = 0.5,
        device: torch.device | str = "cpu",
        equivariant: bool = True,
        max_slices: int | str | None = None,
    ) -> None:
        super().__init__()
        from_record = [k for k, v in (("min_confidence", min_confidence), ("max_slices", max_slices)) if v == "record"]
        if from_record and isinstance(classifier, torch.nn.Module):
            raise ValueError(f"{from_record} = 'record' needs the classifier's path (its record), not a module")
        self._from_record = from_record
        min_confidence = 0.5 if min_confidence == "record" else min_confidence
        max_slices = None if max_slices == "record" else max_slices
        if not 0.0 <= float(min_confidence) <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence!r}")
        self.mode = correction_mode(enabled)
        self.inferer, self.enabled, self.device = inferer, self.mode != "false", device
        self.slice_axis, self.min_confidence = int(slice_axis), float(min_confidence)
        self.equivariant = bool(equivariant)
        self.max_slices = None if max_slices is None else int(max_slices)
        self._source = classifier
        self.classifier: OrientationClassifier | None = classifier if isinstance(classifier, torch.nn.Module) else None
        self._loaded = self.classifier is not None
        self.decisions: list[OrientationDecision] = []

    @property
    def roi_size(self) -> Any:
        """The wrapped inferer's slice size (read and set through the wrapper, as the configs do)."""
        return self.inferer.roi_size

    @roi_size.setter
    def roi_size(self, value: Any) -> None:
        self.inferer.roi_size = value

    def load(self) -> OrientationCorrectingInferer:
        """Read the classifier now (a missing or foreign file fails here, before any input is segmented)."""
        if self.enabled and not self._loaded:
            if self.mode == "auto" and not Path(self._source).is_file():
                logger.warning(
                    "orientation correction: no classifier %s beside the model (a model trained before 0.7.0 or with "
                    "--orientation_correction false); inputs are segmented in their reoriented header orientation. "
                    "Train one: python -m monai.bundle run train_orientation --config_file configs/train.yaml",
                    self._source,
                )
                self._loaded = True
                return self
            classifier, record = load_orientation_classifier(self._source, self.device)
            settings = record.get("inference") or {}
            missing = [k for k in self._from_record if k not in settings]
            if missing:
                raise ValueError(
                    f"{orientation_record_path(self._source)}: no recorded {missing} (written by training since "
                    f"0.7.0); retrain the classifier (train_orientation) or give --orientation_{missing[0]}"
                )
            if "min_confidence" in self._from_record:
                self.min_confidence = float(settings["min_confidence"])
            if "max_slices" in self._from_record:
                value = settings["max_slices"]
                self.max_slices = None if value is None else int(value)
            if record.get("reliable", False):
                self.classifier = classifier
                logger.info("orientation correction: %s (%s)", self._source, record.get("validation", {}))
            else:
                logger.warning(
                    "orientation correction: the classifier %s was not reliable on its validation volumes (%s); "
                    "not used",
                    self._source,
                    record.get("validation", {}),
                )
            self._loaded = True
        return self

    @staticmethod
    def _name(inputs: torch.Tensor, index: int) -> str:
        meta = getattr(inputs, "meta", None) or {}
        name = meta.get("filename_or_obj", None)
        if isinstance(name, (list, tuple)):
            name = name[index] if index < len(name) else None
        return os.fspath(name) if name else f"item {index}"

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        self.load()
        if not self.enabled or self.classifier is None:
            return self.inferer(inputs, network, *args, **kwargs)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim not in (4, 5):
            raise ValueError(f"expected a (B, C, H, W[, D]) tensor, got {getattr(inputs, 'shape', type(inputs))}")
        dims = tuple(d + 1 for d in in_plane_dims(self.slice_axis, inputs.ndim - 2))  # batched: one more leading dim
        outputs = []
        for b in range(inputs.shape[0]):
            item = inputs[b : b + 1]
            decision = detect_orientation(
                self.classifier, item[0], self.slice_axis, equivariant=self.equivariant, max_slices=self.max_slices
            )
            decision["name"] = self._name(inputs, b)
            turn = decision.dihedral
            decision["corrected"] = turn.name != "identity" and decision["confidence"] >= self.min_confidence
            self.decisions.append(decision)
            if not decision["corrected"]:
                out = self.inferer(item, network, *args, **kwargs)
                outputs.append(out.as_tensor() if isinstance(out, MetaTensor) else out)
                continue
            logger.info(
                "orientation: %s looks %s from the training orientation (classifier confidence %.3f over %d slices); "
                "segmented turned back, the prediction returned on the input's grid",
                decision["name"],
                turn.name,
                decision["confidence"],
                decision["slices"],
            )
            plain = item.as_tensor() if isinstance(item, MetaTensor) else item
            logits = self.inferer(turn.invert(plain, dims).contiguous(), network, *args, **kwargs)
            logits = logits.as_tensor() if isinstance(logits, MetaTensor) else logits
            outputs.append(turn.apply(logits, dims).contiguous())
        result = torch.cat(outputs)
        if isinstance(inputs, MetaTensor):
            result = convert_to_dst_type(result, inputs)[0]
        return result

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.inferer!r}, enabled={self.enabled}, "
            f"min_confidence={self.min_confidence})"
        )
