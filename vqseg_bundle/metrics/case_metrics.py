"""Per-volume, per-class Dice / Jaccard / HD95 / ASD / sensitivity / specificity with an explicit empty-mask policy.

Sensitivity ``TP / (TP + FN)`` and specificity ``TN / (TN + FP)`` of each class against the rest, per case (the
COVID-SemiSeg benchmark's "Sen." and "Spec.", per slice then averaged, as Inf-Net reports them).

The overlap and distance computations are MONAI's (:class:`monai.metrics.DiceMetric`,
:class:`~monai.metrics.MeanIoU`, :class:`~monai.metrics.HausdorffDistanceMetric` with
``percentile=95`` and :class:`~monai.metrics.SurfaceDistanceMetric` with ``symmetric=True``).
What MONAI leaves implicit is made explicit here:

Empty-mask policy (per case and class; ``status`` in every record):

* ``"ok"``: both masks non-empty; all metrics computed by MONAI.
* ``"both_empty"``: neither the prediction nor the ground truth has the class: Dice = Jaccard = 1,
  HD95 = ASD = 0 (a correct "absent" answer).
* ``"pred_empty"`` (a missed structure) and ``"gt_empty"`` (a spurious structure): Dice =
  Jaccard = 0; surface distances are undefined. With ``empty_distance="nan"`` (default) HD95 and
  ASD are NaN, and the summary reports how many such cases each class has and how many values
  each mean is over, so they are never silently dropped. With ``empty_distance="penalty"`` they
  are set to ``penalty``: ``"diagonal"`` (the image diagonal, in voxels resp. millimetres) or a
  number (used as given for voxel units and for millimetres alike).

Units: ``hd95_vox`` / ``asd_vox`` use unit spacing on every axis, through-plane included (the
benchmark protocol of the ACDC literature, 3D distances over the volume); ``hd95_mm`` /
``asd_mm`` use the voxel spacing when it is known, and are NaN otherwise.

Note: MONAI's undirected HD95 is ``max(p95(d(pred -> gt)), p95(d(gt -> pred)))`` over boundary
voxels, while medpy's ``hd95`` (used by SSL4MIS) takes the 95th percentile of both directions
pooled; the two can differ slightly on the same masks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric

__all__ = [
    "CaseClassMetrics",
    "compute_case_metrics",
    "resolve_class_names",
    "METRIC_NAMES",
    "STATUSES",
    "EMPTY_DISTANCE_MODES",
]

METRIC_NAMES = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm", "sensitivity", "specificity")
STATUSES = ("ok", "both_empty", "pred_empty", "gt_empty")
EMPTY_DISTANCE_MODES = ("nan", "penalty")


@dataclass
class CaseClassMetrics:
    """Metrics of one class in one case (one row of the per-case CSV)."""

    case: str
    class_index: int
    class_name: str
    status: str
    n_gt: int
    n_pred: int
    dice: float
    jaccard: float
    hd95_vox: float
    asd_vox: float
    hd95_mm: float
    asd_mm: float
    spacing: str
    sensitivity: float = math.nan
    specificity: float = math.nan

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _to_label_map(x: torch.Tensor | np.ndarray, num_classes: int, what: str) -> torch.Tensor:
    """``(*S)`` class indices from a channel-first label map ``(1, *S)`` or one-hot / scores ``(K, *S)``."""
    if isinstance(x, MetaTensor):
        t = x.as_tensor()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        t = torch.as_tensor(x)
    t = t.detach().cpu()
    if t.ndim not in (3, 4) or t.shape[0] not in (1, num_classes):
        raise ValueError(
            f"{what} must be channel-first: a label map (1, H, W[, D]) or a one-hot / score map "
            f"({num_classes}, H, W[, D]); got shape {tuple(t.shape)}."
        )
    if t.shape[0] == num_classes:
        return t.argmax(dim=0)
    t = t[0]
    if torch.is_floating_point(t) and not torch.equal(t, t.round()):
        raise ValueError(f"{what} label map has non-integer values; apply argmax / AsDiscrete first.")
    t = t.long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"{what} has label values in [{int(t.min())}, {int(t.max())}], expected [0, {num_classes - 1}]."
        )
    return t


def resolve_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """``num_classes`` names: given ones (``K``, or ``K - 1`` without the background, which is then
    named ``"background"``), or ``class_<i>``."""
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) == num_classes - 1:
        return ["background"] + names
    if len(names) != num_classes:
        raise ValueError(
            f"class_names must have {num_classes} entries (or {num_classes - 1} without the background), "
            f"got {names}."
        )
    return names


def _diagonal(shape: Sequence[int], spacing: Sequence[float] | None) -> float:
    sp = spacing if spacing is not None else [1.0] * len(shape)
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp, strict=False))))


def compute_case_metrics(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    num_classes: int,
    case: str = "case",
    class_names: Sequence[str] | None = None,
    include_background: bool = False,
    spacing: Sequence[float] | None = None,
    empty_distance: str = "nan",
    penalty: str | float = "diagonal",
) -> list[CaseClassMetrics]:
    """Dice, Jaccard, HD95 and ASD of every class of one case (2D image or 3D volume).

    Args:
        pred: channel-first predicted label map ``(1, *S)``, or one-hot / scores ``(K, *S)``
            (argmax taken); ``S`` is ``(H, W)`` or ``(H, W, D)``.
        label: ground truth, same layouts and spatial shape as ``pred``.
        num_classes: ``K``, background included.
        case: case name written in the records.
        class_names: ``K`` names, or ``K - 1`` names without the background; default ``"class_<i>"``.
        include_background: also score class 0.
        spacing: voxel size per spatial axis (mm), ``None`` when unknown (mm metrics NaN).
        empty_distance: ``"nan"`` or ``"penalty"``, the distance for ``pred_empty`` / ``gt_empty``
            (see the module docstring).
        penalty: ``"diagonal"`` or a non-negative number, used when ``empty_distance="penalty"``.

    Returns:
        one :class:`CaseClassMetrics` per scored class, in class order.

    Raises:
        ValueError: on inconsistent shapes, label values outside ``[0, K)``, or invalid options.
    """
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}.")
    if empty_distance not in EMPTY_DISTANCE_MODES:
        raise ValueError(f"empty_distance must be one of {EMPTY_DISTANCE_MODES}, got {empty_distance!r}.")
    if not (penalty == "diagonal" or (isinstance(penalty, (int, float)) and float(penalty) >= 0)):
        raise ValueError(f"penalty must be 'diagonal' or a non-negative number, got {penalty!r}.")
    names = resolve_class_names(class_names, num_classes)
    p = _to_label_map(pred, num_classes, "pred")
    g = _to_label_map(label, num_classes, "label")
    if p.shape != g.shape:
        raise ValueError(f"pred and label spatial shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}.")
    shape = tuple(p.shape)
    if spacing is not None:
        spacing = [float(s) for s in spacing]
        if len(spacing) != len(shape) or any(not s > 0 for s in spacing):
            raise ValueError(f"spacing must have {len(shape)} positive values for shape {shape}, got {spacing}.")

    # one-hot (1, K, *S) as MONAI's metrics expect
    p1 = torch.nn.functional.one_hot(p, num_classes).movedim(-1, 0).unsqueeze(0).float()
    g1 = torch.nn.functional.one_hot(g, num_classes).movedim(-1, 0).unsqueeze(0).float()
    # ignore_empty=False: MONAI then gives 1 when both masks are empty, 0 when only the truth is.
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p1, g1)[0]
    jac = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p1, g1)[0]

    n_gt = g1[0].flatten(1).sum(1).long().tolist()
    n_pred = p1[0].flatten(1).sum(1).long().tolist()
    n_tp = (p1[0] * g1[0]).flatten(1).sum(1).long().tolist()
    n_all = int(np.prod(shape))
    first = 0 if include_background else 1
    classes = list(range(first, num_classes))
    status = {}
    for c in classes:
        if n_gt[c] and n_pred[c]:
            status[c] = "ok"
        elif not n_gt[c] and not n_pred[c]:
            status[c] = "both_empty"
        elif n_gt[c]:
            status[c] = "pred_empty"
        else:
            status[c] = "gt_empty"

    # Surface distances only where both masks exist: MONAI would warn and return NaN / inf otherwise.
    ok = [c for c in classes if status[c] == "ok"]
    dist: dict[str, dict[int, float]] = {m: {} for m in ("hd95_vox", "asd_vox", "hd95_mm", "asd_mm")}
    if ok:
        po, go = p1[:, ok], g1[:, ok]
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        sd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")
        units = [("vox", None)] + ([("mm", spacing)] if spacing is not None else [])
        for unit, sp in units:
            with warnings.catch_warnings():
                # MONAI 1.5-1.6 passes its own deprecated `always_return_as_numpy` internally: not ours to fix
                warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
                hd_v = hd(po, go, spacing=sp)[0].tolist()
                sd_v = sd(po, go, spacing=sp)[0].tolist()
            for j, c in enumerate(ok):
                dist[f"hd95_{unit}"][c] = float(hd_v[j])
                dist[f"asd_{unit}"][c] = float(sd_v[j])

    pen_vox = _diagonal(shape, None) if penalty == "diagonal" else float(penalty)
    pen_mm = (_diagonal(shape, spacing) if penalty == "diagonal" else float(penalty)) if spacing else math.nan
    records = []
    for c in classes:
        s = status[c]
        if s == "ok":
            hv, av = dist["hd95_vox"][c], dist["asd_vox"][c]
            hm, am = dist["hd95_mm"].get(c, math.nan), dist["asd_mm"].get(c, math.nan)
        elif s == "both_empty":
            hv = av = 0.0
            hm = am = 0.0 if spacing is not None else math.nan
        elif empty_distance == "penalty":
            hv = av = pen_vox
            hm = am = pen_mm
        else:
            hv = av = hm = am = math.nan
        records.append(
            CaseClassMetrics(
                case=str(case),
                class_index=c,
                class_name=str(names[c]),
                status=s,
                n_gt=int(n_gt[c]),
                n_pred=int(n_pred[c]),
                dice=float(dice[c]),
                jaccard=float(jac[c]),
                hd95_vox=hv,
                asd_vox=av,
                hd95_mm=hm,
                asd_mm=am,
                spacing="x".join(f"{s:g}" for s in spacing) if spacing is not None else "",
                sensitivity=_ratio(n_tp[c], n_gt[c], s),
                specificity=_ratio(n_all - n_gt[c] - n_pred[c] + n_tp[c], n_all - n_gt[c], s),
            )
        )
    return records


def _ratio(hits: int, total: int, status: str) -> float:
    """``hits / total`` (sensitivity TP / (TP + FN), specificity TN / (TN + FP)); 1 when both masks are empty,
    NaN when ``total`` is 0 otherwise (no positives resp. negatives to find)."""
    if total > 0:
        return hits / total
    return 1.0 if status == "both_empty" else math.nan
